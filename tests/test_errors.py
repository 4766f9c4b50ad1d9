"""Bad input fails early with a message that says what was expected and what was received."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

import vit_edu
from vit_edu import VisionTransformer, ViTConfig, create_model, get_config, load_state_dict_file, resize_pos_embed

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = dict(image_size=32, patch_size=8, num_classes=5, dim=32, depth=1, heads=4, mlp_dim=64)


@pytest.fixture(scope="module")
def model() -> VisionTransformer:
    return VisionTransformer(ViTConfig(**SMALL)).eval()


# --------------------------------------------------------------------------------------------- config


def test_image_size_not_divisible_by_patch_size() -> None:
    with pytest.raises(ValueError, match=r"image_size \(30, 30\) must be divisible by the patch size \(8, 8\)"):
        ViTConfig(**{**SMALL, "image_size": 30})
    with pytest.raises(ValueError, match=r"divisible by the patch size \(16, 16\)"):
        get_config("vit_base_patch16_224", image_size=(224, 200))


def test_hybrid_image_size_needs_the_backbone_stride() -> None:
    with pytest.raises(ValueError, match=r"\(16, 16\) \(backbone stride x patch size\)"):
        get_config("vit_base_r50_s16_224", image_size=40)


def test_dim_not_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match=r"dim must be divisible by heads.*dim=30, heads=4"):
        ViTConfig(**{**SMALL, "dim": 30})
    with pytest.raises(ValueError, match=r"dim=30, heads=4"):
        vit_edu.Attention(30, 4)


def test_pool_cls_without_class_token() -> None:
    with pytest.raises(ValueError, match=r"pool='cls' needs class_token=True; use pool='mean'"):
        ViTConfig(**{**SMALL, "class_token": False})


@pytest.mark.parametrize(
    "field, value, error, match",
    [
        ("pool", "max", ValueError, r"pool must be one of \('cls', 'mean'\), got 'max'"),
        ("pos_embedding", "rope", ValueError, r"pos_embedding must be one of .*got 'rope'"),
        ("patch_embed", "mlp", ValueError, r"patch_embed must be one of .*got 'mlp'"),
        ("depth", 0, ValueError, r"depth must be positive, got 0"),
        ("heads", 2.0, TypeError, r"heads must be an int, got float 2.0"),
        ("image_size", (32, 32, 3), TypeError, r"image_size must be an int or a pair of ints"),
        ("dropout", 1.5, ValueError, r"dropout must be in \[0, 1\), got 1.5"),
        ("drop_path", -0.1, ValueError, r"drop_path must be in \[0, 1\)"),
        ("dim", 30, ValueError, r"dim must be divisible by heads"),
        ("image_size", 0, ValueError, r"image_size must be positive, got \(0, 0\)"),
        ("patch_size", (0, 8), ValueError, r"patch_size must be positive, got \(0, 8\)"),
    ],
)
def test_bad_config_values(field, value, error, match) -> None:
    with pytest.raises(error, match=match):
        ViTConfig(**{**SMALL, field: value})


def test_sincos_needs_dim_divisible_by_4() -> None:
    with pytest.raises(ValueError, match=r"sincos2d' needs dim divisible by 4, got dim=6"):
        ViTConfig(**{**SMALL, "dim": 6, "heads": 2, "pos_embedding": "sincos2d"})


# ----------------------------------------------------------------------------------------- model names


def test_unknown_model_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model name 'vit_base_patch8_224'; known models: .*"
                                         r"vit_base_patch16_224.*vit_nano_patch4_32"):
        create_model("vit_base_patch8_224")


def test_unknown_override_field() -> None:
    with pytest.raises(TypeError, match=r"unknown ViTConfig field\(s\) \['hidden_size'\].*expected some of .*'dim'"):
        create_model("vit_nano_patch4_32", hidden_size=64)
    with pytest.raises(ValueError, match=r"unknown ViTConfig fields \['hidden_size'\]"):
        VisionTransformer(ViTConfig(**SMALL), hidden_size=64)
    with pytest.raises(ValueError, match=r"unknown ViTConfig fields \['emb_dim'\]"):
        ViTConfig.from_dict({**SMALL, "emb_dim": 3})


# --------------------------------------------------------------------------------------- forward input


def test_image_size_different_from_config(model) -> None:
    with pytest.raises(ValueError, match=r"built for images of size \(32, 32\), got \(48, 32\).*dynamic_img_size=True"):
        model(torch.randn(1, 3, 48, 32))


def test_forward_size_not_divisible_by_patch_size() -> None:
    dynamic = VisionTransformer(ViTConfig(**{**SMALL, "dynamic_img_size": True})).eval()
    with pytest.raises(ValueError, match=r"image size \(36, 32\) is not divisible by the patch size \(8, 8\)"):
        dynamic(torch.randn(1, 3, 36, 32))
    assert dynamic(torch.randn(1, 3, 40, 24)).shape == (1, 5)  # divisible sizes are fine


def test_wrong_channel_count(model) -> None:
    with pytest.raises(ValueError, match=r"expects 3 input channels, got 1 \(input shape \(2, 1, 32, 32\)\)"):
        model(torch.randn(2, 1, 32, 32))


def test_channels_last_hint(model) -> None:
    with pytest.raises(ValueError, match=r"expects 3 input channels, got 32 .*permute\(0, 3, 1, 2\)"):
        model(torch.randn(2, 32, 32, 3))


def test_wrong_rank_with_hint(model) -> None:
    with pytest.raises(ValueError, match=r"4-D tensor \[B, C, H, W\], got 3-D tensor of shape \(3, 32, 32\).*unsqueeze\(0\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"got 2-D tensor of shape \(32, 32\)$"):
        model(torch.randn(32, 32))


@pytest.mark.parametrize("bad", [np.zeros((1, 3, 32, 32), dtype=np.float32), [[0.0]], None])
def test_non_tensor_input(model, bad) -> None:
    with pytest.raises(TypeError, match=r"expects a torch.Tensor of shape \[B, C, H, W\], got (ndarray|list|NoneType)"):
        model(bad)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_dtype(model, dtype) -> None:
    with pytest.raises(TypeError, match=rf"floating-point image tensor, got dtype {dtype}.*x.float\(\) / 255"):
        model(torch.zeros(1, 3, 32, 32, dtype=dtype))


def test_patch_embedding_checks_its_input_too() -> None:
    embed = vit_edu.PatchEmbed(32, 8, 3, 16)
    with pytest.raises(ValueError, match=r"built for images of size \(32, 32\), got \(16, 16\)"):
        embed(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"not divisible by the patch size \(4, 4\)"):
        vit_edu.patchify(torch.randn(1, 3, 10, 12), 4)


# ------------------------------------------------------------------------------------------ weights


def test_state_dict_from_another_architecture(tmp_path) -> None:
    other = TimmViT(img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=3, num_heads=4, mlp_ratio=4.0)
    path = tmp_path / "deeper.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit this VisionTransformer") as info:
        load_state_dict_file(path, "vit_nano_patch4_32")
    message = str(info.value)
    assert "unexpected keys (12): blocks.2.attn.proj.bias" in message  # the third block is extra
    assert "blocks.0.mlp.fc1.weight: expected (128, 64), got (256, 64)" in message  # mlp_dim 128 vs 256


def test_conv_linear_copy_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"expected Linear weight \(16, 48\)"):
        vit_edu.conv_to_linear_(vit_edu.PatchEmbed(32, 4, 3, 16), vit_edu.LinearPatchEmbed(32, 8, 3, 16))


def test_resize_pos_embed_bad_grid() -> None:
    with pytest.raises(ValueError, match=r"cannot infer a square grid from 12 patch positions; pass old_grid"):
        resize_pos_embed(torch.zeros(1, 13, 8), (4, 4))
    with pytest.raises(ValueError, match=r"old_grid \(3, 3\) has 9 positions but pos_embed has 12"):
        resize_pos_embed(torch.zeros(1, 13, 8), (4, 4), old_grid=(3, 3))
    with pytest.raises(ValueError, match=r"pos_embed must have shape \[1, tokens, D\], got \(13, 8\)"):
        resize_pos_embed(torch.zeros(13, 8), (4, 4))


def test_missing_weights_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no weights file at"):
        load_state_dict_file(tmp_path / "nope.pth", "vit_nano_patch4_32")


def test_file_that_is_not_a_state_dict(tmp_path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match=r"does not hold a state_dict \(a dict of tensors\); got list"):
        load_state_dict_file(path, "vit_nano_patch4_32")
