"""Converters: vit_edu gives the same logits as timm and torchvision (max abs diff <= 1e-5, fp32, eval).

All reference models are built with random weights (``pretrained=False`` / ``weights=None``) and then
perturbed, so no parameter is a trivially-equal zero or one. Nothing is downloaded.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer as TimmViT

import vit_edu
from vit_edu import VisionTransformer, ViTConfig, from_timm, from_torchvision, load_state_dict_file
from vit_edu.convert import load_checked, to_timm_state_dict, to_torchvision_state_dict

pytestmark = pytest.mark.usefixtures("single_thread")

ATOL = 1e-5


def assert_same_logits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert a.abs().max() > 1e-2, "logits are ~0: the comparison would prove nothing"
    diff = (a - b).abs().max().item()
    assert diff <= ATOL, f"max abs diff {diff:.3e} > {ATOL}"


def small_timm(perturb, **kw) -> TimmViT:
    """A small timm ViT (32x32 images, 4x4 patches) with randomized weights, in eval mode."""
    args = dict(img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0)
    return perturb(TimmViT(**{**args, **kw})).eval()


def compare_timm(tm, x: torch.Tensor, features: bool = True) -> VisionTransformer:
    model = from_timm(tm).eval()
    with torch.no_grad():
        assert_same_logits(model(x), tm(x))
        if features:  # the tokens too, not only the pooled logits
            torch.testing.assert_close(model.forward_features(x), tm.forward_features(x), rtol=0, atol=ATOL)
    return model


# -------------------------------------------------------------------------------------------------- timm


@pytest.mark.parametrize(
    "kw, pool, class_token",
    [
        (dict(), "cls", True),
        (dict(global_pool="avg"), "mean", True),  # timm: no final norm, fc_norm after pooling
        (dict(global_pool="avg", class_token=False), "mean", False),
        (dict(global_pool="avg", class_token=False, fc_norm=False), "mean", False),  # norm before pooling
        (dict(qkv_bias=False), "cls", True),
        (dict(img_size=(32, 48)), "cls", True),  # non-square grid
    ],
)
def test_timm_parity(perturb, kw, pool, class_token) -> None:
    tm = small_timm(perturb, **kw)
    h, w = tm.patch_embed.img_size
    model = compare_timm(tm, torch.randn(3, 3, h, w))
    assert model.config.pool == pool and model.config.class_token == class_token
    assert model.num_parameters() == sum(p.numel() for p in tm.parameters())


def test_timm_parity_other_image_size(perturb) -> None:
    tm = small_timm(perturb, img_size=96, patch_size=16, embed_dim=48, num_heads=3)
    model = compare_timm(tm, torch.randn(2, 3, 96, 96))
    assert model.config.image_size == (96, 96) and model.config.grid_size == (6, 6)


def test_timm_dynamic_img_size(perturb) -> None:
    tm = small_timm(perturb, dynamic_img_size=True)
    model = from_timm(tm).eval()
    assert model.config.dynamic_img_size
    x = torch.randn(2, 3, 48, 40)  # built for 32x32: the position table is resized on the fly (bicubic)
    with torch.no_grad():
        assert_same_logits(model(x), tm(x))


def test_timm_preset_configs_are_read_back() -> None:
    """from_timm reads every hyper-parameter of the real presets (on the meta device: no weights needed)."""
    for name in ["vit_base_patch16_224", "vit_large_patch32_224", "vit_huge_patch14_224", "vit_base_r50_s16_224"]:
        with torch.device("meta"):
            tm = timm.create_model(name, pretrained=False, num_classes=1000)
        cfg = vit_edu.convert.config_from_timm(tm)
        ours = vit_edu.get_config(name)
        for field in ["image_size", "patch_size", "dim", "depth", "heads", "mlp_dim", "num_classes", "class_token",
                      "pool", "hybrid_layers", "norm_eps", "qkv_bias"]:
            assert getattr(cfg, field) == getattr(ours, field), (name, field)


def test_timm_hybrid_small(perturb) -> None:
    tm = perturb(timm.create_model("vit_base_r50_s16_224", pretrained=False, depth=2, img_size=64,
                                   num_classes=10)).eval()
    model = compare_timm(tm, torch.randn(2, 3, 64, 64))
    assert model.config.hybrid_layers == (3, 4, 9) and model.config.grid_size == (4, 4)


def test_timm_hybrid_224_odd_size_padding(perturb) -> None:
    """At 224 (and an odd 80, where TF 'SAME' padding is asymmetric) the backbone still matches."""
    tm = perturb(timm.create_model("vit_base_r50_s16_224", pretrained=False, depth=1, num_classes=5)).eval()
    compare_timm(tm, torch.randn(1, 3, 224, 224), features=False)
    tm80 = perturb(timm.create_model("vit_base_r50_s16_224", pretrained=False, depth=1, img_size=80,
                                     num_classes=5)).eval()
    compare_timm(tm80, torch.randn(1, 3, 80, 80), features=False)


@pytest.mark.parametrize(
    "kw, feature",
    [
        (dict(reg_tokens=4), "register tokens"),
        (dict(init_values=1e-5), "layer scale"),
        (dict(qk_norm=True), "qk-norm"),
        (dict(pre_norm=True), "pre-norm"),
        (dict(global_pool="map"), "attention pooling"),
    ],
)
def test_from_timm_refuses_unsupported(perturb, kw, feature) -> None:
    tm = small_timm(perturb, **kw)
    with pytest.raises(ValueError, match=feature):
        from_timm(tm)


def test_from_timm_refuses_unsupported_preset() -> None:
    with torch.device("meta"):
        tm = timm.create_model("vit_small_patch16_224", pretrained=False, reg_tokens=4)
    with pytest.raises(ValueError, match="register tokens"):
        from_timm(tm)


@pytest.mark.parametrize("overrides", [dict(), dict(patch_embed="linear"), dict(pool="mean"),
                                       dict(class_token=False, pool="mean", fc_norm=False)])
def test_to_timm_state_dict_round_trip(perturb, overrides) -> None:
    cfg = ViTConfig(image_size=32, patch_size=4, num_classes=10, dim=64, depth=2, heads=4, mlp_dim=128, **overrides)
    model = perturb(VisionTransformer(cfg)).eval()
    tm = TimmViT(img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
                 global_pool="avg" if cfg.pool == "mean" else "token", class_token=cfg.class_token,
                 fc_norm=cfg.use_fc_norm).eval()
    tm.load_state_dict(to_timm_state_dict(model), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_logits(tm(x), model(x))


def test_pretrained_keeps_weights_with_overrides(perturb, monkeypatch) -> None:
    """create_model(name, pretrained=True, drop_path=0.1) must keep the downloaded weights.

    The download is replaced by a random small timm model, so nothing goes to the network.
    """
    source = small_timm(perturb)
    calls = []

    def fake_create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        return source

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    model = vit_edu.timm_pretrained("vit_tiny_patch16_224", drop_path=0.1, fused_attn=False).eval()
    assert calls == [("vit_tiny_patch16_224", True, {})]
    assert model.config.drop_path == 0.1 and model.blocks[-1].drop_path1.p == pytest.approx(0.1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_logits(model(x), source(x))


@pytest.mark.parametrize("network", ["none", "none behind a proxy", "up"])
def test_pretrained_weights_without_network_come_from_the_cache_or_fail_at_once(monkeypatch, network) -> None:
    """No network (the hub's name cannot be resolved, no proxy): timm looks in Hugging Face's local cache only
    (offline mode, restored after), and a miss is one error at once saying so, not a minute of retries."""
    import socket

    from huggingface_hub import constants

    from vit_edu import models

    def resolve(host, *args, **kwargs):
        if network != "up":
            raise socket.gaierror(-2, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 443))]

    seen = []

    def fake_create_model(name, pretrained=False, **kwargs):
        seen.append(constants.HF_HUB_OFFLINE)
        raise OSError("not found in the cache")

    for variable in models.PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    if network == "none behind a proxy":
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(timm, "create_model", fake_create_model)
    before = constants.HF_HUB_OFFLINE
    with pytest.raises(RuntimeError) as err:
        vit_edu.timm_pretrained("vit_tiny_patch16_224")
    offline = network == "none"
    assert seen == [before or offline] and constants.HF_HUB_OFFLINE == before
    assert ("there is no network (huggingface.co cannot be resolved) and they are not in the local cache" in
            str(err.value)) is offline, err.value
    assert "vit_edu.load_state_dict_file(path, 'vit_tiny_patch16_224')" in str(err.value)


def test_create_model_pretrained_loads_timms_weights_as_they_are(perturb, monkeypatch) -> None:
    """create_model(name, pretrained=True): the preset, with timm's state_dict loaded unchanged (same names)."""
    source = small_timm(perturb)  # the vit_nano_patch4_32 architecture; stands in for the download
    calls = []

    def fake_create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        return source

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    model = vit_edu.create_model("vit_nano_patch4_32", pretrained=True, drop_path=0.1).eval()
    assert calls == [("vit_nano_patch4_32", True, {"num_classes": 10, "img_size": (32, 32)})]
    assert model.config.extra["preset"] == "vit_nano_patch4_32" and model.config.drop_path == 0.1
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_logits(model(x), source(x))


# ------------------------------------------------------------------------------------------ torchvision


TV_ARGS = dict(image_size=32, patch_size=4, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10)


def small_torchvision(perturb, **kw) -> torchvision.models.VisionTransformer:
    return perturb(torchvision.models.VisionTransformer(**{**TV_ARGS, **kw})).eval()


@pytest.mark.parametrize("kw", [dict(), dict(representation_size=48), dict(patch_size=8, image_size=48)])
def test_torchvision_parity(perturb, kw) -> None:
    tv = small_torchvision(perturb, **kw)
    model = from_torchvision(tv).eval()
    assert model.config.representation_size == kw.get("representation_size")
    assert model.num_parameters() == sum(p.numel() for p in tv.parameters())
    x = torch.randn(3, 3, tv.image_size, tv.image_size)
    with torch.no_grad():
        assert_same_logits(model(x), tv(x))
    # and back into a fresh torchvision model
    tv2 = torchvision.models.VisionTransformer(**{**TV_ARGS, **kw}).eval()
    tv2.load_state_dict(to_torchvision_state_dict(model), strict=True)
    with torch.no_grad():
        assert_same_logits(tv2(x), tv(x))


@pytest.mark.parametrize("builder, preset", [(torchvision.models.vit_b_32, "vit_base_patch32_224")])
def test_torchvision_real_builder(builder, preset) -> None:
    tv = builder(weights=None).eval()  # random weights; torchvision zero-inits the head and the biases
    with torch.no_grad():  # so perturb those (cheap: the big matrices are random already)
        for name, p in tv.named_parameters():
            if p.ndim <= 1 or name.startswith("heads") or name in ("class_token", "encoder.pos_embedding"):
                p.add_(torch.randn_like(p) * 0.02)
    model = from_torchvision(tv).eval()
    ours = vit_edu.get_config(preset)
    for field in ["image_size", "patch_size", "dim", "depth", "heads", "mlp_dim", "num_classes"]:
        assert getattr(model.config, field) == getattr(ours, field), field
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert_same_logits(model(x), tv(x))


def test_vit_b_16_config_on_meta() -> None:
    with torch.device("meta"):
        tv = torchvision.models.vit_b_16(weights=None)
        cfg = vit_edu.convert.config_from_torchvision(tv)
    assert (cfg.patch_size, cfg.dim, cfg.depth, cfg.heads, cfg.mlp_dim) == ((16, 16), 768, 12, 12, 3072)


def test_torchvision_name_table_is_its_own_inverse() -> None:
    """One table of names; both directions are derived from it, so a round trip gives every name back."""
    from vit_edu.convert import _EDU_TO_TV, _TV_TO_EDU, _rename

    tv = torchvision.models.VisionTransformer(**{**TV_ARGS, "num_layers": 11, "representation_size": 8})
    names = {k: torch.zeros(1) for k in tv.state_dict()}
    edu = _rename(names, _TV_TO_EDU)
    cfg = ViTConfig(image_size=32, patch_size=4, dim=64, depth=11, heads=4, mlp_dim=128, num_classes=10,
                    representation_size=8)
    assert set(edu) == set(VisionTransformer(cfg).state_dict())
    assert set(_rename(edu, _EDU_TO_TV)) == set(names)
    old = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v for k, v in names.items()}
    assert set(_rename(old, _TV_TO_EDU)) == set(edu)  # older torchvision names are read too


def test_to_torchvision_refuses_other_layouts() -> None:
    model = VisionTransformer(ViTConfig(image_size=32, patch_size=4, dim=32, depth=1, heads=2, mlp_dim=64,
                                        class_token=False, pool="mean"))
    with pytest.raises(ValueError, match="class token"):
        to_torchvision_state_dict(model)


# ------------------------------------------------------------------------------------------------ files

NANO_TIMM = dict(img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0)


def test_load_state_dict_file_torch_save(perturb, tmp_path) -> None:
    tm = perturb(TimmViT(**NANO_TIMM)).eval()
    path = tmp_path / "timm_nano.pth"
    torch.save(tm.state_dict(), path)
    model = load_state_dict_file(path, "vit_nano_patch4_32").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_logits(model(x), tm(x))
    wrapped = tmp_path / "wrapped.pth"  # a training checkpoint {"model": state_dict, ...}
    torch.save({"model": tm.state_dict(), "epoch": 3}, wrapped)
    with torch.no_grad():
        assert_same_logits(load_state_dict_file(wrapped, "vit_nano_patch4_32").eval()(x), tm(x))


def test_load_state_dict_file_safetensors_and_torchvision(perturb, tmp_path) -> None:
    tm = perturb(TimmViT(**{**NANO_TIMM, "num_classes": 3})).eval()  # num_classes read from the file
    path = tmp_path / "timm_nano.safetensors"
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(path))
    model = load_state_dict_file(path, "vit_nano_patch4_32").eval()
    assert model.config.num_classes == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_logits(model(x), tm(x))
    tv = small_torchvision(perturb)
    tv_path = tmp_path / "tv_nano.pth"
    torch.save(tv.state_dict(), tv_path)
    with torch.no_grad():
        assert_same_logits(load_state_dict_file(tv_path, "vit_nano_patch4_32").eval()(x), tv(x))


def test_load_state_dict_file_wrong_architecture(perturb, tmp_path) -> None:
    tm = TimmViT(**{**NANO_TIMM, "embed_dim": 96, "depth": 3, "num_heads": 3})  # not a vit_nano
    path = tmp_path / "other.pth"
    torch.save(tm.state_dict(), path)
    with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): blocks\.2\.") as info:
        load_state_dict_file(path, "vit_nano_patch4_32")
    message = str(info.value)
    assert "shape mismatches" in message
    assert "blocks.0.attn.qkv.weight: expected (192, 64), got (288, 96)" in message
    other_size = tmp_path / "other_size.pth"  # same layers, 64x64 images: only the position table differs
    torch.save(TimmViT(**{**NANO_TIMM, "img_size": 64}).state_dict(), other_size)
    with pytest.raises(ValueError, match=r"shape mismatches \(1\): pos_embed: expected \(1, 65, 64\), got \(1, 257, 64\)"):
        load_state_dict_file(other_size, "vit_nano_patch4_32")
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): .*head\.weight"):
        load_checked(vit_edu.create_model("vit_nano_patch4_32"), {k: v for k, v in tm.state_dict().items()
                                                                 if not k.startswith("head")})


# ------------------------------------------------------------------------------------------ red team A


def test_timm_string_gelu_converts_and_other_activations_are_refused(perturb) -> None:
    """timm's act_layer="gelu" is its own GELU class (not an nn.GELU) computing the same exact GELU."""
    x = torch.randn(2, 3, 32, 32)
    compare_timm(small_timm(perturb, act_layer="gelu"), x)
    for act, feature in (("gelu_tanh", "non-GELU MLP"), (None, "no final norm")):
        kw = dict(act_layer=act) if act else dict(final_norm=False)
        with pytest.raises(ValueError, match=f"does not implement: .*{feature}"):
            from_timm(small_timm(perturb, **kw))


@pytest.mark.parametrize("overrides, words", [
    (dict(fc_norm=True), "fc_norm=True"),
    (dict(image_size=(32, 64)), r"image_size=\(32, 64\), patch_size=\(4, 4\) \(not square\)"),
    (dict(patch_size=(4, 8)), r"patch_size=\(4, 8\) \(not square\)"),
    (dict(num_classes=0), "num_classes=0"),
    (dict(norm_eps=1e-5), r"norm_eps=1e-05 \(its LayerNorms use 1e-6"),  # would load, and give other logits
])
def test_to_torchvision_names_what_it_cannot_hold(overrides, words) -> None:
    cfg = ViTConfig(**{**dict(image_size=32, patch_size=4, dim=64, depth=2, heads=4, mlp_dim=128, num_classes=10),
                       **overrides})
    with pytest.raises(ValueError, match=f"this model differs: .*{words}"):
        to_torchvision_state_dict(VisionTransformer(cfg))


def test_weights_files_are_read_by_their_bytes_not_their_name(perturb, tmp_path) -> None:
    """A safetensors file named .pt, a torch.save file named .safetensors and a torch.compile'd model's
    state_dict ("_orig_mod." names) all load; before, the first was said to "hold pickled Python objects"."""
    tm = perturb(TimmViT(**NANO_TIMM)).eval()
    sd = {k: v.contiguous() for k, v in tm.state_dict().items()}
    save_file(sd, str(tmp_path / "a.pt"))
    torch.save(sd, tmp_path / "b.safetensors")
    torch.save({"model": {"_orig_mod." + k: v for k, v in sd.items()}}, tmp_path / "compiled.pth")
    x = torch.randn(2, 3, 32, 32)
    for name in ("a.pt", "b.safetensors", "compiled.pth"):
        with torch.no_grad():
            assert_same_logits(load_state_dict_file(tmp_path / name, "vit_nano_patch4_32").eval()(x), tm(x))


def test_load_checked_names_a_model_or_arrays_passed_for_a_state_dict() -> None:
    cfg = ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=2, mlp_dim=64, num_classes=10)
    source = VisionTransformer(cfg)
    with pytest.raises(TypeError, match=r"must be a dict of tensors, got VisionTransformer \(a model\? pass its "
                                        r"\.state_dict\(\)\)"):
        load_checked(VisionTransformer(cfg), source)  # was "'VisionTransformer' object is not iterable"
    arrays = {k: v.numpy() for k, v in source.state_dict().items()}
    with pytest.raises(TypeError, match=r"must be a dict of torch\.Tensors; 20 values are not: cls_token \(ndarray\)"):
        load_checked(VisionTransformer(cfg), arrays)  # was "'numpy.ndarray' object has no attribute ..."


def test_pretrained_weights_of_a_model_timm_lacks_are_not_sent_for() -> None:
    """A course preset has no timm weights: the old advice ("save timm.create_model(...) on a machine with
    internet") could not be followed. timm knows its names offline, so nothing is downloaded here."""
    with pytest.raises(ValueError, match=r"timm has no model 'vit_nano_patch4_32', so there are no pretrained "
                                         r"weights to load; .*python -m vit_edu train --model "
                                         r"vit_nano_patch4_32"):
        vit_edu.create_model("vit_nano_patch4_32", pretrained=True)


def test_load_state_dict_file_takes_a_name_or_a_config(perturb, tmp_path) -> None:
    """Both: model_name was silently ignored. A config in model_name's place is taken as the config, and a
    typo in the name fails before the file is read (here: no file at all)."""
    tm = perturb(TimmViT(**NANO_TIMM)).eval()
    path = tmp_path / "w.pth"
    torch.save(tm.state_dict(), path)
    cfg = vit_edu.get_config("vit_nano_patch4_32")
    with pytest.raises(ValueError, match=r"needs model_name \(e\.g\. 'vit_base_patch16_224'\) or config, not both"):
        load_state_dict_file(path, "vit_base_patch16_224", config=cfg)
    with pytest.raises(ValueError, match=r"or config, not neither"):
        load_state_dict_file(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_logits(load_state_dict_file(path, cfg).eval()(x), tm(x))
    with pytest.raises(ValueError, match=r"did you mean 'vit_nano_patch4_32'"):
        load_state_dict_file(tmp_path / "missing.pth", "vit_nano_patch4_23")


# ------------------------------------------------------------------- what a conversion must not drop (red team 2)


def test_to_timm_state_dict_carries_the_fixed_sincos_table(perturb) -> None:
    """The sin-cos table is a buffer outside state_dict(): timm (pos_embed='learn') must get it, not compute
    without it (with pos_embed='none' timm loaded the rest and gave other logits)."""
    model = perturb(vit_edu.create_model("vit_fast_patch8_32", depth=2)).eval()  # sincos2d, mean pool, no cls
    kw = dict(NANO_TIMM, patch_size=8, class_token=False, global_pool="avg")
    tm = TimmViT(**kw).eval()
    tm.load_state_dict(to_timm_state_dict(model), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_logits(tm(x), model(x))
    with pytest.raises(RuntimeError, match="pos_embed"):  # a timm model without positions refuses it
        TimmViT(**kw, pos_embed="none").load_state_dict(to_timm_state_dict(model), strict=True)


def test_conversions_carry_the_dropout_and_drop_path_rates(perturb) -> None:
    """A converted model trains like the original: its dropout, attention dropout and drop-path rates come along."""
    tm = small_timm(perturb, depth=3, proj_drop_rate=0.3, pos_drop_rate=0.3, attn_drop_rate=0.2, drop_path_rate=0.1)
    model = from_timm(tm)
    assert (model.config.dropout, model.config.attn_dropout) == (0.3, 0.2)
    assert model.config.drop_path == pytest.approx(0.1)
    assert [b.drop_path1.p for b in model.blocks] == pytest.approx([b.drop_path1.drop_prob if hasattr(
        b.drop_path1, "drop_prob") else 0.0 for b in tm.blocks])
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)  # the same random masks in the same order: training outputs equal timm's
    ours = model.train()(x)
    torch.manual_seed(1)
    assert (ours - tm.train()(x)).abs().max() <= ATOL and (ours - model(x)).abs().max() > 1e-2  # masks differ per call
    with pytest.warns(UserWarning, match=r"head dropout \(drop_rate\) = 0.1"):  # vit_edu has no head dropout
        from_timm(small_timm(perturb, drop_rate=0.1))
    # torchvision's masks fall on another memory layout (its attention output is a transposed view): rates only
    model = from_torchvision(small_torchvision(perturb, dropout=0.1, attention_dropout=0.2))
    assert (model.config.dropout, model.config.attn_dropout) == (0.1, 0.2)
    assert model.blocks[0].mlp.drop1.p == 0.1 and model.blocks[0].attn.attn_drop.p == 0.2


def test_from_timm_refuses_a_hybrid_cnn_that_computes_otherwise(perturb) -> None:
    """Same parameter names and shapes, other numbers: symmetric padding (padding_same=False) loaded silently and
    gave other logits; a stem-only or a torchvision-style ResNet backbone failed with an AttributeError."""
    from timm.models.vision_transformer_hybrid import _create_vision_transformer_hybrid, _resnetv2

    tm = _create_vision_transformer_hybrid("vit_base_r50_s16_224", backbone=_resnetv2((1,), padding_same=False),
                                           img_size=32, patch_size=1, embed_dim=32, depth=1, num_heads=4)
    with pytest.raises(ValueError, match="'SAME'.*padding_same=False"):
        from_timm(tm)
    with torch.device("meta"):
        stem_only = timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False)
    with pytest.raises(ValueError, match="backbone is a Sequential"):
        from_timm(stem_only)


def test_load_state_dict_file_reads_a_headless_file_as_a_feature_extractor(perturb, tmp_path) -> None:
    """timm's num_classes=0 saves no head: the file is read as such, not refused for missing head.weight."""
    tm = perturb(TimmViT(**{**NANO_TIMM, "num_classes": 0})).eval()
    path = tmp_path / "features.pth"
    torch.save(tm.state_dict(), path)
    model = load_state_dict_file(path, "vit_nano_patch4_32").eval()
    assert model.config.num_classes == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_logits(model(x), tm(x))
    with pytest.raises(ValueError, match=r"missing keys \(2\): head.bias, head.weight"):  # a head asked for
        load_state_dict_file(path, "vit_nano_patch4_32", num_classes=10)


@pytest.mark.parametrize("kw, feature", [
    (dict(block_fn="ResPostBlock"), r"ResPostBlock blocks"),  # same names and shapes, post-norm: loaded silently
    (dict(global_pool="avg", pool_include_prefix=True), r"pool_include_prefix=True"),  # the class token averaged in
    (dict(block_fn="ParallelScalingBlock"), r"ParallelScalingBlock blocks"),  # was an AttributeError
    (dict(attn_layer="diff"), r"DiffAttention attention"),
    (dict(mlp_layer="SwiGLU"), r"SwiGLU MLP"),  # was an AttributeError
])
def test_from_timm_refuses_blocks_and_pooling_it_does_not_compute(perturb, kw, feature) -> None:
    import timm.models.vision_transformer as tvt

    kw = {k: getattr(tvt, v, None) or getattr(timm.layers, v, v) if k in ("block_fn", "mlp_layer") else v
          for k, v in kw.items()}
    with pytest.raises(ValueError, match=f"does not implement: .*{feature}"):
        from_timm(small_timm(perturb, **kw))


def test_pool_include_prefix_without_a_class_token_still_converts(perturb) -> None:
    tm = small_timm(perturb, global_pool="avg", class_token=False, pool_include_prefix=True)
    compare_timm(tm, torch.randn(2, 3, 32, 32))


# --------------------------------------------------------------------- wrapped models, timm options (red team 3)


def _ddp(module: torch.nn.Module, tmp_path) -> torch.nn.Module:
    """A real single-process DistributedDataParallel wrapper (gloo on CPU, rendezvous through a file)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    return torch.nn.parallel.DistributedDataParallel(module)


def test_state_dicts_of_ddp_and_torch_compile_load_in_either_order(perturb, tmp_path) -> None:
    """DDP(torch.compile(m)) saves "module._orig_mod." names and torch.compile(DDP(m)) "_orig_mod.module.": both
    load (before, the second was refused as unexpected keys); any other prefix is named, with the fix."""
    import torch.distributed as dist

    tm = perturb(TimmViT(**NANO_TIMM)).eval()
    try:
        wrapped = {"ddp_of_compiled": _ddp(torch.compile(tm), tmp_path), "compiled_ddp": torch.compile(_ddp(tm, tmp_path))}
        saved = {name: w.state_dict() for name, w in wrapped.items()}
    finally:
        dist.destroy_process_group()
    assert next(iter(saved["compiled_ddp"])).startswith("_orig_mod.module.")  # the wrappers' own names, not made up
    x = torch.randn(2, 3, 32, 32)
    for name, sd in saved.items():
        torch.save(sd, tmp_path / f"{name}.pth")
        with torch.no_grad():
            assert_same_logits(load_state_dict_file(tmp_path / f"{name}.pth", "vit_nano_patch4_32").eval()(x), tm(x))
            assert_same_logits(load_checked(vit_edu.create_model("vit_nano_patch4_32"), sd).eval()(x), tm(x))
    own = tm.state_dict()
    with pytest.raises(ValueError, match=r"every key starts with 'backbone\.', a prefix vit_edu does not take off"):
        load_checked(vit_edu.create_model("vit_nano_patch4_32"), {"module.backbone." + k: v for k, v in own.items()})
    with pytest.raises(ValueError, match=r"two tensors named 'cls_token' once the wrapper prefixes"):
        load_checked(vit_edu.create_model("vit_nano_patch4_32"), {**own, "module.cls_token": own["cls_token"]})


def test_from_timm_refuses_dynamic_img_pad_where_it_pads(perturb) -> None:
    """timm's dynamic_img_pad with dynamic_img_size zero-pads a 34x30 image to 36x32 (9x8 tokens), which vit_edu
    does not compute: refused by name (before, it converted, and the model refused such images only when run).
    Alone, timm takes only its own image size (a multiple of the patch), so padding never acts: it converts."""
    with pytest.raises(ValueError, match=r"does not implement: dynamic_img_pad=True with dynamic_img_size=True"):
        from_timm(small_timm(perturb, dynamic_img_pad=True, dynamic_img_size=True))
    model = compare_timm(small_timm(perturb, dynamic_img_pad=True), torch.randn(2, 3, 32, 32))
    assert not model.config.dynamic_img_size


def test_conversions_keep_the_dtype_and_mode_of_the_source(perturb) -> None:
    """A float64 reference converts to a float64 model with float64 logits (before: a float32 copy, its weights
    rounded, 1e-7 off where float64 agrees to 1e-12); an eval-mode source gives an eval-mode model."""
    tm = small_timm(perturb).double()
    tv = small_torchvision(perturb).double().eval()
    for source, convert in ((tm, from_timm), (tv, from_torchvision)):
        model = convert(source)
        assert next(model.parameters()).dtype == torch.float64 and not model.training
        x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        with torch.no_grad():
            diff = (model(x) - source(x)).abs().max().item()
        assert diff <= 1e-12, f"max abs diff {diff:.3e} in float64"
    assert from_timm(small_timm(perturb).train()).training


def test_a_state_dict_for_another_image_size_or_class_count_is_refused_with_the_way_out(perturb) -> None:
    """The two mismatches of the same architecture used otherwise each name their fix (before: the shapes only),
    and the fix named works: the model then computes as timm's at that size with the same weights."""
    tm = small_timm(perturb, num_classes=7)
    with pytest.raises(ValueError, match=r"head\.weight: expected \(10, 64\), got \(7, 64\).*\n  head: weights for "
                                         r"another number of classes\? Build the model with their num_classes"):
        load_checked(vit_edu.create_model("vit_nano_patch4_32"), tm.state_dict())
    sd = small_timm(perturb).state_dict()
    bigger = vit_edu.create_model("vit_nano_patch4_32", image_size=48)
    with pytest.raises(ValueError, match=r"pos_embed: expected \(1, 145, 64\), got \(1, 65, 64\)\n.*another image "
                                         r"size\? .*resize_pos_embed\(sd\['pos_embed'\], new_grid, old_grid"):
        load_checked(bigger, sd)
    sd["pos_embed"] = vit_edu.pos_embed.resize_pos_embed(sd["pos_embed"], (12, 12), (8, 8), 1)
    model = load_checked(bigger, sd).eval()
    reference = TimmViT(**{**NANO_TIMM, "img_size": 48}).eval()
    reference.load_state_dict(sd)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert_same_logits(model(x), reference(x))


def test_a_weights_file_with_an_unknown_prefix_names_it(perturb, tmp_path) -> None:
    """A file of a model kept inside another ("backbone.blocks...") was "unrecognised" with no word of why."""
    sd = small_timm(perturb).state_dict()
    torch.save({"backbone." + k: v for k, v in sd.items()}, tmp_path / "nested.pth")
    with pytest.raises(ValueError, match=r"unrecognised state_dict: .*; every key starts with 'backbone\.', a prefix "
                                         r"vit_edu does not take off .*removeprefix\('backbone\.'\)"):
        load_state_dict_file(tmp_path / "nested.pth", "vit_nano_patch4_32")
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "linear.pth")  # not a ViT: no prefix to name
    with pytest.raises(ValueError, match=r"unrecognised state_dict: .*got keys like bias, weight$"):
        load_state_dict_file(tmp_path / "linear.pth", "vit_nano_patch4_32")


def test_loading_into_a_non_square_grid_warns_that_the_transpose_loads_too(tmp_path) -> None:
    """A 7x14 table loads into a 14x7 model (the same 98 positions), every position in the wrong place, and a
    state_dict cannot tell: a warning names the other image size. A square grid loads without one."""
    import warnings

    wide = vit_edu.create_model("vit_nano_patch4_32", image_size=(16, 32))  # grid 4 x 8
    path = tmp_path / "wide.pth"
    torch.save(wide.state_dict(), path)
    with pytest.warns(UserWarning, match=r"loaded a position table into a 8x4 grid \(images 32x16\): a state_dict "
                                         r"does not say its grid, and one for 4x8 \(images 16x32\) has the same 32 "
                                         r"positions"):
        load_state_dict_file(path, "vit_nano_patch4_32", image_size=(32, 16))
    square = tmp_path / "square.pth"
    torch.save(vit_edu.create_model("vit_nano_patch4_32").state_dict(), square)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_state_dict_file(square, "vit_nano_patch4_32")


def test_weights_of_an_average_pooling_model_hint_pool_mean(perturb, tmp_path) -> None:
    """timm's global_pool="avg" keeps its last LayerNorm as fc_norm.*, after pooling: loaded into a class-token
    preset the keys differ (missing norm.*, unexpected fc_norm.*), and the message says what to pass."""
    path = tmp_path / "avg.pth"
    torch.save(small_timm(perturb, global_pool="avg").state_dict(), path)
    with pytest.raises(ValueError, match=r"unexpected keys \(2\): fc_norm\.bias, fc_norm\.weight\n  fc_norm: weights "
                                         r"of a model that averages the patch tokens \(timm's global_pool='avg'.*\)\? "
                                         r"Build the model with pool='mean'"):
        load_state_dict_file(path, "vit_nano_patch4_32")
    assert load_state_dict_file(path, "vit_nano_patch4_32", pool="mean").config.use_fc_norm


@pytest.mark.parametrize("loader", ["create_model", "timm_pretrained"])
def test_head_zero_init_holds_for_pretrained_weights(perturb, monkeypatch, loader) -> None:
    """head_zero_init=True with pretrained weights (the paper's fine-tuning: a new zero head on pretrained features)
    was accepted, recorded in the config and ignored: the head came out as timm's, random for a new num_classes."""
    source = small_timm(perturb)  # stands in for the download; its head is random and non-zero
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **kwargs: source)
    if loader == "create_model":
        model = vit_edu.create_model("vit_nano_patch4_32", pretrained=True, head_zero_init=True)
    else:
        model = vit_edu.timm_pretrained("vit_tiny_patch16_224", head_zero_init=True)
    assert model.config.head_zero_init
    assert not model.head.weight.any() and not model.head.bias.any()
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)  # the rest is timm's


@pytest.mark.parametrize("override", [{"pool": "mean"}, {"qkv_bias": False}, {"pos_embedding": "sincos2d"},
                                      {"patch_embed": "linear"}, {"in_channels": 1}])
def test_pretrained_overrides_that_change_the_architecture_are_refused_before_the_download(monkeypatch, override):
    """create_model(name, pretrained=True, pool="mean") downloaded timm's weights (hundreds of MB for ViT-B) and then
    failed in load_state_dict: the names and shapes the override builds are known before any download."""
    calls = []
    monkeypatch.setattr(timm, "create_model", lambda *args, **kwargs: calls.append(args))
    with pytest.raises(ValueError, match=r"timm's weights for vit_nano_patch4_32 do not fit the model that "
                                         rf"{next(iter(override))}=.* build .*nothing was downloaded"):
        vit_edu.create_model("vit_nano_patch4_32", pretrained=True, **override)
    assert calls == []
