"""The model itself: shapes, parameter counts, patch embeddings, attention, position embeddings,
stochastic depth, initialization and a tiny overfitting run.

Every check compares against something computed independently: a PyTorch operator
(``nn.MultiheadAttention``, ``F.scaled_dot_product_attention``, ``F.interpolate``), timm, numpy,
or a parameter count written out by hand.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

import vit_edu
from vit_edu import (
    Attention,
    DropPath,
    LinearPatchEmbed,
    PatchEmbed,
    ViTConfig,
    VisionTransformer,
    attention_with_weights,
    conv_to_linear_,
    create_model,
    linear_to_conv_,
    resize_pos_embed,
    sincos_2d_pos_embed,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(image_size=32, patch_size=8, num_classes=7, dim=32, depth=2, heads=4, mlp_dim=64)

# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "overrides, tokens",
    [
        (dict(), 16 + 1),  # (32/8)^2 = 16 patches + class token
        (dict(pool="mean"), 16 + 1),
        (dict(class_token=False, pool="mean"), 16),
        (dict(pos_embedding="sincos2d"), 16 + 1),
        (dict(pos_embedding="none", class_token=False, pool="mean"), 16),
        (dict(patch_embed="linear"), 16 + 1),
        (dict(image_size=(32, 48)), 4 * 6 + 1),  # non-square image: 4 x 6 grid
        (dict(representation_size=24), 16 + 1),
    ],
)
def test_shapes(overrides: dict, tokens: int) -> None:
    model = VisionTransformer(ViTConfig(**{**TINY, **overrides})).eval()
    h, w = model.config.image_size
    x = torch.randn(3, 3, h, w)
    assert model.config.num_tokens == tokens
    assert model.forward_features(x).shape == (3, tokens, 32)  # [B, T, D]
    assert model(x).shape == (3, 7)  # [B, num_classes]
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (3, overrides.get("representation_size", 32))


def test_pooling_reads_the_right_tokens() -> None:
    """cls pooling returns token 0; mean pooling averages the patch tokens and ignores the class token."""
    tokens = torch.randn(2, 5, 8)
    cls_model = VisionTransformer(ViTConfig(**{**TINY, "dim": 8, "heads": 2}))
    mean_model = VisionTransformer(ViTConfig(**{**TINY, "dim": 8, "heads": 2, "pool": "mean"}))
    torch.testing.assert_close(cls_model.pool(tokens), tokens[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(mean_model.pool(tokens), tokens[:, 1:].mean(dim=1))
    assert isinstance(mean_model.fc_norm, nn.LayerNorm) and isinstance(mean_model.norm, nn.Identity)  # timm's avg layout


def test_no_pos_embedding_is_permutation_equivariant() -> None:
    """Without E_pos, shuffling the patches only shuffles the output tokens (why position embeddings exist)."""
    model = VisionTransformer(ViTConfig(**{**TINY, "pos_embedding": "none", "class_token": False, "pool": "mean"})).eval()
    x = torch.randn(2, 3, 32, 32)
    perm = torch.randperm(16)
    with torch.no_grad():
        tokens = model.patch_embed(x)  # [B, 16, D]
        out = model.norm(torch.nn.Sequential(*model.blocks)(tokens))
        out_perm = model.norm(torch.nn.Sequential(*model.blocks)(tokens[:, perm]))
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ parameter counts

PAPER_COUNTS = {  # timm's numbers with a 1000-class head
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
    "vit_base_patch32_224": 88_224_232,
    "vit_large_patch16_224": 304_326_632,
    "vit_large_patch32_224": 306_535_400,
    "vit_huge_patch14_224": 632_045_800,
    "vit_base_r50_s16_224": 98_659_112,
}


def resnet_params(in_channels: int, layers: tuple) -> tuple[int, int]:
    """Parameters of the BiT ResNet (no conv biases, GroupNorm has weight + bias) and its output channels."""
    n = 7 * 7 * in_channels * 64 + 2 * 64  # stem conv + GroupNorm
    c_in = 64
    for stage, depth in enumerate(layers):
        c_out = 256 * 2**stage
        mid = c_out // 4
        for i in range(depth):
            n += c_in * mid + 9 * mid * mid + mid * c_out  # 1x1, 3x3, 1x1 convolutions
            n += 2 * (mid + mid + c_out)  # three GroupNorms
            if i == 0:  # projection shortcut (channels change in the first block of every stage)
                n += c_in * c_out + 2 * c_out
            c_in = c_out
    return n, c_in


def analytic_params(c: ViTConfig) -> int:
    """The count written out from the paper's equations, independently of any nn.Module."""
    C, (P, _), D, L, M, K = c.in_channels, c.patch_size, c.dim, c.depth, c.mlp_dim, c.num_classes
    if c.hybrid_layers is None:
        patch = D * P * P * C + D  # E (eq. 1) as a conv with bias
    else:
        backbone, features = resnet_params(C, c.hybrid_layers)
        patch = backbone + features * P * P * D + D  # CNN + the 1x1 projection
    cls = D
    pos = c.num_tokens * D
    block = (4 * D * D + 4 * D) + (2 * D * M + M + D) + 4 * D  # qkv + proj, fc1 + fc2, two LayerNorms
    norm = 2 * D
    head = D * K + K
    return patch + cls + pos + L * block + norm + head


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_parameter_counts(name: str) -> None:
    with torch.device("meta"):  # no memory, no init work: even ViT-H builds in well under a second
        model = create_model(name)
        reference = timm.create_model(name, pretrained=False, num_classes=1000)
    count = model.num_parameters()
    assert model.config.num_classes == 1000
    assert count == PAPER_COUNTS[name]
    assert count == analytic_params(model.config)
    assert count == sum(p.numel() for p in reference.parameters())


# ---------------------------------------------------------------------------------------- patch embedding


@pytest.mark.parametrize("patch_size, channels, image_size", [(4, 3, 32), (8, 1, (16, 24)), ((4, 2), 3, (8, 12))])
def test_conv_and_linear_patch_embedding_agree(patch_size, channels, image_size) -> None:
    conv = PatchEmbed(image_size, patch_size, channels, dim=16)
    linear = LinearPatchEmbed(image_size, patch_size, channels, dim=16)
    x = torch.randn(2, channels, *vit_edu.config.to_2tuple(image_size))
    conv_to_linear_(conv, linear)
    with torch.no_grad():
        torch.testing.assert_close(linear(x), conv(x), rtol=1e-5, atol=1e-5)
        # independent reference: the paper's x_p E with patches cut by unfold (in (c p1 p2) order)
        p1, p2 = vit_edu.config.to_2tuple(patch_size)
        cols = F.unfold(x, kernel_size=(p1, p2), stride=(p1, p2)).transpose(1, 2)  # [B, N, C*P*P]
        ref = cols @ conv.proj.weight.reshape(16, -1).T + conv.proj.bias
        torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)
    # and back: a fresh conv gets the linear weights and matches again
    conv2 = PatchEmbed(image_size, patch_size, channels, dim=16)
    linear_to_conv_(linear, conv2)
    torch.testing.assert_close(conv2.proj.weight, conv.proj.weight, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(conv2(x), linear(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides, kind", [(dict(), PatchEmbed), (dict(patch_embed="linear"), LinearPatchEmbed),
                                             (dict(patch_size=1, hybrid_layers=(1,)), vit_edu.HybridEmbed)])
def test_build_patch_embed_follows_the_config(overrides, kind) -> None:
    cfg = ViTConfig(**{**TINY, **overrides})
    embed = vit_edu.patch_embed.build_patch_embed(cfg)
    assert type(embed) is kind and tuple(embed.grid_size) == cfg.grid_size
    assert tuple(embed.patch_size) == cfg.input_patch_size  # in input pixels, also for the hybrid (stride x P)
    assert type(VisionTransformer(cfg).patch_embed) is kind


def test_embed_layer_can_be_passed_in() -> None:
    cfg = ViTConfig(**TINY)
    embed = LinearPatchEmbed(32, 8, 3, 32)
    model = VisionTransformer(cfg, embed_layer=embed).eval()
    assert model.patch_embed is embed
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match=r"embed_layer makes a \(8, 8\) grid of tokens; .* is for \(4, 4\)"):
        VisionTransformer(cfg, embed_layer=PatchEmbed(32, 4, 3, 32))
    with pytest.raises(ValueError, match=r"embed_layer makes tokens of 16 features; the config's dim is 32"):
        VisionTransformer(cfg, embed_layer=PatchEmbed(32, 8, 3, 16))  # was a torch.cat error at forward
    with pytest.raises(TypeError, match=r"embed_layer must have patch_size, grid_size and proj.*Conv2d has no "
                                        r"patch_size, grid_size"):
        VisionTransformer(cfg, embed_layer=nn.Conv2d(3, 32, 8, 8))  # was an AttributeError


@pytest.mark.parametrize("overrides", [dict(), dict(patch_embed="linear"), dict(patch_size=1, hybrid_layers=(1,))])
def test_the_image_is_checked_once_per_forward(monkeypatch, overrides) -> None:
    """The patch embedding checks the image (naming the model in its errors); the model does not check again."""
    model = VisionTransformer(ViTConfig(**{**TINY, **overrides})).eval()
    calls = []
    real = vit_edu.patch_embed.check_image
    monkeypatch.setattr(vit_edu.patch_embed, "check_image", lambda *a: calls.append(a[-1]) or real(*a))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert calls == ["VisionTransformer"]
    with pytest.raises(ValueError, match=r"^VisionTransformer was built for images of size \(32, 32\), got \(16, 16\)"):
        model(torch.randn(1, 3, 16, 16))


def test_patchify_order_and_unpatchify() -> None:
    x = torch.randn(2, 3, 8, 12)
    p = vit_edu.patchify(x, 4)  # [B, 6, 48]
    assert p.shape == (2, 6, 48)
    # patch (row 1, col 2) is token 1*3 + 2 = 5; its pixels flattened in (p1 p2 c) order
    torch.testing.assert_close(p[:, 5], x[:, :, 4:8, 8:12].permute(0, 2, 3, 1).reshape(2, -1), rtol=0, atol=0)
    torch.testing.assert_close(vit_edu.unpatchify(p, 4, (2, 3), channels=3), x, rtol=0, atol=0)


@pytest.mark.parametrize("args, message", [
    ((torch.randn(2, 6, 48), 4, (8, 12)), r"a 8x12 grid of 4x4 patches with 3 channels is \[B, 96, 48\], got "
                                          r"\[2, 6, 48\] \(grid_size is in patches, not pixels\)"),
    ((torch.randn(2, 6, 48), 4, (2, 3), 1), r"with 1 channels is \[B, 6, 16\], got \[2, 6, 48\]"),
    ((torch.randn(6, 48), 4, (2, 3)), r"expects a 3-D tensor \[B, N, P\*P\*C\], got \(6, 48\)"),
])
def test_unpatchify_names_what_does_not_fit(args, message) -> None:
    with pytest.raises(ValueError, match=message):
        vit_edu.unpatchify(*args)


# ---------------------------------------------------------------------------------------------- attention


def _split_heads(attn: Attention, x: torch.Tensor):
    q, k, v = attn.qkv(x).reshape(x.shape[0], x.shape[1], 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    return q, k, v  # each [B, h, N, d]


def test_explicit_attention_matches_pytorch() -> None:
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)  # [B=2, h=4, N=7, d=8]
    out, weights = attention_with_weights(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5)
    assert weights.shape == (2, 4, 7, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 7), rtol=1e-6, atol=1e-6)
    assert (weights >= 0).all()


@pytest.mark.parametrize("shapes", [((2, 7, 8), (2, 7, 6), (2, 7, 8)), ((2, 7, 8), (2, 7, 8), (2, 5, 8))])
def test_attention_names_shapes_that_do_not_fit(shapes) -> None:
    """q and k of different d, or k and v of different token counts: one error with the three shapes (torch's own
    names batch1/batch2 of a bmm the learner never wrote)."""
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError, match=re.escape(f"got q {shapes[0]}, k {shapes[1]}, v {shapes[2]}")):
        attention_with_weights(q, k, v)
    assert attention_with_weights(torch.randn(2, 7, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 3))[0].shape == (2, 7, 3)


def test_old_attention_name_warns_once_and_still_works(monkeypatch) -> None:
    """vit_edu.scaled_dot_product_attention (shadowing torch's name) is a deprecated alias of attention_with_weights."""
    monkeypatch.setattr(vit_edu.attention, "_warned_old_name", False)
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    with pytest.warns(DeprecationWarning, match="renamed vit_edu.attention_with_weights"):
        out, weights = vit_edu.scaled_dot_product_attention(q, k, v)
    expected = attention_with_weights(q, k, v)
    torch.testing.assert_close(out, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(weights, expected[1], rtol=0, atol=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vit_edu.scaled_dot_product_attention(q, k, v)  # once only


def test_attention_dropout_is_a_module_and_both_paths_use_it() -> None:
    """attn_drop shows in print(model) and adds no weights; the fused and the explicit path both follow its p."""
    attn = Attention(16, 2, attn_dropout=0.5)
    assert isinstance(attn.attn_drop, nn.Dropout) and "(attn_drop): Dropout(p=0.5" in repr(attn)
    assert set(attn.state_dict()) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    x = torch.randn(1, 6, 16)
    with torch.no_grad():
        ref = attn.eval()(x)
        for fused in (True, False):
            attn.fused_attn = fused
            assert not torch.allclose(attn.train()(x), ref)  # dropout on in training ...
            torch.testing.assert_close(attn.eval()(x), ref, rtol=1e-5, atol=1e-5)  # ... off in eval
        attn.attn_drop.p = 0.0  # one switch for both paths
        for fused in (True, False):
            attn.fused_attn = fused
            torch.testing.assert_close(attn.train()(x), ref, rtol=1e-5, atol=1e-5)


def test_attention_module_explicit_fused_and_nn_multihead_attention() -> None:
    dim, heads = 32, 4
    attn = Attention(dim, heads, fused_attn=True).eval()
    with torch.no_grad():
        attn.qkv.bias.normal_(0, 0.1)
        attn.proj.bias.normal_(0, 0.1)
    x = torch.randn(2, 9, dim)
    mha = nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)  # q, k, v stacked, heads contiguous: the (three h d) layout
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
        fused = attn(x)
        attn.fused_attn = False
        explicit, weights = attn(x, return_attention=True)
        ref, ref_weights = mha(x, x, x, need_weights=True, average_attn_weights=False)
        q, k, v = _split_heads(attn, x)
        sdpa = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 9, dim))
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(explicit, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(explicit, sdpa, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-5, atol=1e-5)  # [B, h, N, N]
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, heads, 9), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("class_token", [True, False])
def test_return_attention_fused_and_explicit(class_token: bool) -> None:
    cfg = ViTConfig(**{**TINY, "depth": 3, "class_token": class_token, "pool": "cls" if class_token else "mean"})
    model = VisionTransformer(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    T = 16 + int(class_token)
    results = {}
    with torch.no_grad():
        for fused in (True, False):
            model.set_fused_attn(fused)
            assert all(blk.attn.fused_attn is fused for blk in model.blocks)
            logits, attentions = model(x, return_attention=True)
            assert len(attentions) == cfg.depth
            for a in attentions:
                assert a.shape == (2, cfg.heads, T, T)
                torch.testing.assert_close(a.sum(-1), torch.ones(2, cfg.heads, T), rtol=1e-5, atol=1e-5)
            results[fused] = (logits, model(x), attentions)
    (lf, plain_f, att_f), (le, plain_e, att_e) = results[True], results[False]
    for a, b in [(lf, le), (plain_f, plain_e), (lf, plain_f)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(att_f, att_e):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ position embeddings


def test_sincos_2d_matches_numpy() -> None:
    dim, (gh, gw), temperature = 16, (3, 5), 10000.0
    got = sincos_2d_pos_embed(dim, (gh, gw)).numpy()
    # independent formula: omega_i = 1 / T^(i / (dim/4)); features [sin(x w), cos(x w), sin(y w), cos(y w)]
    quarter = dim // 4
    omega = 1.0 / temperature ** (np.arange(quarter) / quarter)
    ref = np.zeros((gh * gw, dim))
    for row in range(gh):
        for col in range(gw):
            n = row * gw + col  # row-major, like the patches
            ref[n] = np.concatenate([np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    model = VisionTransformer(ViTConfig(**{**TINY, "pos_embedding": "sincos2d"}))
    assert "pos_embed" not in dict(model.named_parameters())  # fixed, not learned
    torch.testing.assert_close(model.pos_embed[0, 1:], sincos_2d_pos_embed(32, (4, 4)), rtol=0, atol=0)
    torch.testing.assert_close(model.pos_embed[0, 0], torch.zeros(32), rtol=0, atol=0)


@pytest.mark.parametrize("old_grid, new_grid", [((4, 4), (6, 6)), ((4, 4), (2, 3)), ((3, 5), (6, 4))])
@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_resize_pos_embed_matches_interpolate(old_grid, new_grid, mode) -> None:
    D = 8
    pos = torch.randn(1, 1 + old_grid[0] * old_grid[1], D)
    new = resize_pos_embed(pos, new_grid, old_grid=old_grid, num_prefix_tokens=1, mode=mode)
    assert new.shape == (1, 1 + new_grid[0] * new_grid[1], D)
    torch.testing.assert_close(new[:, 0], pos[:, 0], rtol=0, atol=0)  # class-token position kept
    image = pos[0, 1:].reshape(old_grid[0], old_grid[1], D).permute(2, 0, 1)[None]  # [1, D, h, w]
    ref = F.interpolate(image, size=new_grid, mode=mode, align_corners=False, antialias=True)
    ref = ref[0].permute(1, 2, 0).reshape(-1, D)  # [H*W, D] row-major
    torch.testing.assert_close(new[0, 1:], ref, rtol=1e-6, atol=1e-6)


def test_resize_pos_embed_identity_and_timm() -> None:
    pos = torch.randn(1, 1 + 16, 8)
    assert torch.equal(resize_pos_embed(pos, (4, 4)), pos)  # same grid: untouched
    from timm.layers import resample_abs_pos_embed

    ref = resample_abs_pos_embed(pos, new_size=(6, 5), old_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(resize_pos_embed(pos, (6, 5), (4, 4)), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pos_embedding", ["learned", "sincos2d"])
def test_dynamic_img_size_runs_on_other_sizes(pos_embedding: str) -> None:
    model = VisionTransformer(ViTConfig(**{**TINY, "dynamic_img_size": True, "pos_embedding": pos_embedding})).eval()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 6 * 5 + 1, 32)
        # equals the model rebuilt at that size with the resized table
        big = VisionTransformer(ViTConfig(**{**TINY, "image_size": (48, 40), "pos_embedding": pos_embedding})).eval()
        sd = model.state_dict()
        if pos_embedding == "learned":
            sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], (6, 5), (4, 4))
        big.load_state_dict(sd)
        torch.testing.assert_close(model(x), big(x), rtol=1e-5, atol=1e-5)
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)  # its own size still works


# ----------------------------------------------------------------------------------- stochastic depth


def test_drop_path_identity_in_eval_and_unbiased_in_training() -> None:
    layer = DropPath(0.3)
    x = torch.randn(4000, 1, 8) + 1.0
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    y = layer(x)
    per_sample = (y == 0).all(dim=(1, 2))  # a dropped sample is zeroed as a whole
    kept = ~per_sample
    torch.testing.assert_close(y[kept], x[kept] / 0.7)  # survivors scaled by 1 / keep
    assert abs(per_sample.float().mean().item() - 0.3) < 0.03  # ~ 4.4 standard errors
    ratio = (y.mean(0) / x.mean(0)).mean().item()
    assert abs(ratio - 1.0) < 0.05  # E[drop_path(x)] = x
    assert torch.equal(DropPath(0.0).train()(x), x)


def test_drop_path_rates_rise_linearly() -> None:
    model = VisionTransformer(ViTConfig(**{**TINY, "depth": 5, "drop_path": 0.2}))
    rates = [blk.drop_path1.p for blk in model.blocks]
    np.testing.assert_allclose(rates, np.linspace(0.0, 0.2, 5), rtol=0, atol=1e-12)
    assert all(blk.drop_path2.p == blk.drop_path1.p for blk in model.blocks)


# ---------------------------------------------------------------------------------------------- init


def test_init_matches_timm_distribution() -> None:
    """Linear weights ~ N(0, 0.02^2) as timm's ``trunc_normal_(std=.02)``; biases zero; head zeroed on request.

    timm (and vit_edu) call ``trunc_normal_(w, std=.02)`` whose cut-offs a=-2, b=2 are absolute values,
    i.e. 100 standard deviations: in practice a plain normal. The test pins that behaviour.
    """
    cfg = ViTConfig(image_size=32, patch_size=8, num_classes=10, dim=192, depth=1, heads=3, mlp_dim=768)
    model = VisionTransformer(cfg)
    ours = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Linear)])
    std = ours.std().item()
    assert abs(std - 0.02) < 0.0005, std
    assert abs(ours.mean().item()) < 0.0003
    assert ours.abs().max().item() <= 2.0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.count_nonzero(m.bias) == 0
    assert abs(model.pos_embed.std().item() - 0.02) < 0.004
    assert model.cls_token.abs().max().item() < 1e-4
    tm = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, num_classes=10, embed_dim=192,
                                                          depth=1, num_heads=3, mlp_ratio=4.0)
    theirs = torch.cat([m.weight.flatten() for m in tm.modules() if isinstance(m, nn.Linear)])
    assert stats.ks_2samp(ours.detach().numpy(), theirs.detach().numpy()).pvalue > 1e-3  # same distribution
    zero = VisionTransformer(ViTConfig(**{**TINY, "head_zero_init": True}))
    assert torch.count_nonzero(zero.head.weight) == 0 and torch.count_nonzero(zero.head.bias) == 0
    assert torch.count_nonzero(model.head.weight) > 0


def test_init_is_seeded() -> None:
    torch.manual_seed(123)
    a = VisionTransformer(ViTConfig(**TINY)).state_dict()
    torch.manual_seed(123)
    b = VisionTransformer(ViTConfig(**TINY)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_no_weight_decay_names() -> None:
    model = VisionTransformer(ViTConfig(**TINY))
    skip = model.no_weight_decay()
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "head.bias"} <= skip
    assert "blocks.0.attn.qkv.weight" not in skip and "head.weight" not in skip


# ------------------------------------------------------------------------------------------- training


def test_tiny_model_overfits_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = create_model("vit_nano_patch4_32", image_size=16, dim=32, heads=2, mlp_dim=64)  # 16 patches, fast
    x = torch.randn(16, 3, 16, 16)
    y = torch.randint(0, 10, (16,))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(100):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1])
    assert abs(losses[0] - math.log(10)) < 0.3  # starts near chance
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_small_hybrid_preset_tokens_come_from_the_cnn_feature_map():
    """vit_hybrid_s4_32: stem (/4) + one stage -> an 8x8 map of 256 features -> 64 tokens via a 1x1 patch."""
    model = vit_edu.create_model("vit_hybrid_s4_32").eval()
    c = model.config
    assert (c.backbone_stride, c.grid_size, c.num_tokens) == (4, (8, 8), 64)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fmap = model.patch_embed.backbone(x)
        tokens = model.patch_embed(x)
        logits, attn = model(x, return_attention=True)
    assert fmap.shape == (2, 256, 8, 8)
    # a 1x1 conv on the feature map is a Linear applied to every position's 256-vector
    proj = model.patch_embed.proj
    by_hand = fmap.flatten(2).transpose(1, 2) @ proj.weight.flatten(1).T + proj.bias
    torch.testing.assert_close(tokens, by_hand, rtol=1e-5, atol=1e-5)
    assert logits.shape == (2, 10) and len(attn) == 6 and attn[0].shape == (2, 4, 64, 64)


def test_import_graph_runs_one_way() -> None:
    """convert -> models -> vit; vit.py names no patch embedding kind (the config does), so no hybrid import."""
    import ast
    from pathlib import Path

    def imported(module: str) -> set:
        tree = ast.parse((Path(vit_edu.__file__).parent / f"{module}.py").read_text())
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}

    assert "convert" not in imported("models") and "models" in imported("convert")
    assert not {"convert", "models", "hybrid"} & imported("vit")
    assert "vit" not in imported("patch_embed") | imported("hybrid") | imported("config")


@pytest.mark.parametrize("name", [n for n in vit_edu.list_models() if "hybrid" not in n and "r50" not in n])
def test_parameter_breakdown_counts_every_plain_preset(name):
    with torch.device("meta"):
        model = vit_edu.create_model(name)
    parts = vit_edu.models.parameter_breakdown(model.config)
    assert sum(parts.values()) == model.num_parameters()
    by_module = {"patch_embed": model.patch_embed, "attention": [b.attn for b in model.blocks],
                 "mlp": [b.mlp for b in model.blocks]}
    for part, modules in by_module.items():
        modules = modules if isinstance(modules, list) else [modules]
        assert parts[part] == sum(p.numel() for m in modules for p in m.parameters()), part


@pytest.mark.parametrize("overrides", [dict(qkv_bias=False), dict(representation_size=32), dict(num_classes=0),
                                       dict(class_token=False, pool="mean"), dict(pos_embedding="sincos2d"),
                                       dict(pos_embedding="none", patch_embed="linear")])
def test_parameter_breakdown_follows_the_switches(overrides):
    model = vit_edu.create_model("vit_nano_patch4_32", **overrides)
    assert sum(vit_edu.models.parameter_breakdown(model.config).values()) == model.num_parameters()


def test_parameter_breakdown_refuses_a_hybrid():
    with pytest.raises(ValueError, match="hybrid"):
        vit_edu.models.parameter_breakdown(vit_edu.get_config("vit_hybrid_s4_32"))


def test_jax_init_matches_timm_weight_init_jax() -> None:
    """weight_init="jax" is timm's weight_init="jax" (the paper's Flax init): Xavier-uniform Linears, attention
    biases 0, MLP biases ~N(0, 1e-6^2), a zero head; compared layer by layer with timm's model."""
    kw = dict(image_size=32, patch_size=4, num_classes=10, dim=64, depth=2, heads=4, mlp_dim=128)
    torch.manual_seed(0)
    ours = VisionTransformer(ViTConfig(**kw, weight_init="jax"))
    torch.manual_seed(1)
    tm = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=4, num_classes=10, embed_dim=64,
                                                          depth=2, num_heads=4, mlp_ratio=2.0, weight_init="jax")
    theirs = dict(tm.named_parameters())
    for name, p in ours.named_parameters():
        q = theirs[name]
        assert p.shape == q.shape, name
        if name.startswith("head"):
            assert torch.count_nonzero(p) == 0 and torch.count_nonzero(q) == 0, name
        elif name.endswith("weight") and p.ndim == 2:  # Xavier-uniform: |w| <= sqrt(6 / (fan_in + fan_out))
            bound = math.sqrt(6.0 / sum(p.shape))
            assert p.abs().max() <= bound and q.abs().max() <= bound, name
            assert stats.ks_2samp(p.detach().flatten().numpy(), q.detach().flatten().numpy()).pvalue > 1e-3, name
        elif ".mlp." in name and name.endswith("bias"):
            assert 0 < p.abs().max() < 1e-4 and 0 < q.abs().max() < 1e-4, name
        elif ".attn." in name and name.endswith("bias"):
            assert torch.count_nonzero(p) == 0 and torch.count_nonzero(q) == 0, name
    timm_default = VisionTransformer(ViTConfig(**kw))
    assert ours.blocks[0].attn.qkv.weight.std() > 4 * timm_default.blocks[0].attn.qkv.weight.std()  # ~0.125 vs 0.02
    with pytest.raises(ValueError, match="weight_init"):
        ViTConfig(**kw, weight_init="xavier")


def test_a_config_changed_after_it_was_made_is_checked_again() -> None:
    """``cfg.image_size = 64`` skips __post_init__: the model validates (and normalizes) its own copy."""
    cfg = ViTConfig(**TINY)
    cfg.image_size = 64  # an int, not the (64, 64) __post_init__ makes: was "'int' object is not subscriptable"
    model = VisionTransformer(cfg).eval()
    assert model.config.image_size == (64, 64) and model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    cfg.dropout = 1.5
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1\.5"):
        VisionTransformer(cfg)


def test_models_built_from_one_config_do_not_share_it() -> None:
    cfg = ViTConfig(**TINY)
    a, b = VisionTransformer(cfg), VisionTransformer(cfg)
    a.set_fused_attn(False)
    assert cfg.fused_attn and b.config.fused_attn and b.blocks[0].attn.fused_attn  # b's config still tells the truth
    assert not a.config.fused_attn and not a.blocks[0].attn.fused_attn
    with pytest.raises(TypeError, match=r"set_fused_attn expects True or False, got str 'False'"):
        a.set_fused_attn("False")  # bool("False") is True: it switched the fused kernel on


def test_drop_path_of_one_drops_every_branch_and_bad_rates_are_refused() -> None:
    """p = 1 gave NaN (0 / 0) in training; timm gives zeros. Rates outside [0, 1] fail up front, not as
    bernoulli_'s "got p=-0.5" for p=1.5."""
    x = torch.randn(4, 3, 8)
    assert torch.equal(DropPath(1.0).train()(x), torch.zeros_like(x))
    torch.testing.assert_close(DropPath(1.0).train()(x), timm.layers.DropPath(1.0).train()(x))
    for p in (1.5, -0.5, float("nan")):
        with pytest.raises(ValueError, match=r"drop_path rate must be a number in \[0, 1\], got"):
            DropPath(p)


def test_sincos_refuses_an_empty_grid_or_width() -> None:
    with pytest.raises(ValueError, match=r"grid_size must be a pair of positive ints .*got \(0, 4\)"):
        sincos_2d_pos_embed(8, (0, 4))  # was an empty [0, 8] table
    with pytest.raises(ValueError, match=r"needs dim divisible by 4, got 0"):
        sincos_2d_pos_embed(0, (4, 4))  # was a [16, 0] table


def test_the_hybrids_resnet_checks_its_layers() -> None:
    """layers=(0,) built a stage with no blocks whose 64 channels met a projection for 256; () an IndexError."""
    for layers in [(0,), (), [1.5]]:
        with pytest.raises(ValueError, match=r"layers must be a non-empty sequence of positive ints"):
            vit_edu.ResNetBackbone(layers)
        with pytest.raises(ValueError, match=r"layers must be a non-empty sequence of positive ints"):
            vit_edu.HybridEmbed(64, 1, layers=layers)
    with pytest.raises(TypeError, match=r"from_dict expects a dict of fields, got str"):
        ViTConfig.from_dict("vit_nano_patch4_32")  # was "unknown ViTConfig fields ['2', '3', '4', ...]"


def test_resize_pos_embed_names_what_it_needs_for_something_not_a_tensor() -> None:
    """A NumPy table (from a file read with NumPy) was an AttributeError deep inside; now the type is named."""
    table = torch.randn(1, 17, 8)
    with pytest.raises(TypeError, match=r"pos_embed must be a torch\.Tensor \[1, tokens, D\], got ndarray"):
        resize_pos_embed(table.numpy(), (2, 2))
    assert resize_pos_embed(table, (2, 2)).shape == (1, 5, 8)


def test_conv_linear_copy_refuses_another_patch_shape_with_the_same_feature_count() -> None:
    """2x8 and 4x4 patches both have 16 pixels: the copy used to succeed and give other tokens."""
    for conv, linear in ((PatchEmbed(32, (2, 8), 3, 16), LinearPatchEmbed(32, 4, 3, 16)),
                         (PatchEmbed(32, (4, 8), 3, 16), LinearPatchEmbed(32, (8, 4), 3, 16))):
        p1, p2 = conv.patch_size
        q1, q2 = linear.patch_size
        message = (rf"cannot copy between a PatchEmbed of {p1}x{p2} patches with 3 channels and a LinearPatchEmbed "
                   rf"of {q1}x{q2} patches with 3 channels: expected the same patch size and channels")
        with pytest.raises(ValueError, match=message):
            conv_to_linear_(conv, linear)
        with pytest.raises(ValueError, match=message):
            linear_to_conv_(linear, conv)
    with pytest.raises(ValueError, match=r"PatchEmbed of 4x4 patches with 4 channels and a LinearPatchEmbed of 4x8 "
                                         r"patches with 2 channels"):
        conv_to_linear_(PatchEmbed(32, 4, 4, 16), LinearPatchEmbed(32, (4, 8), 2, 16))
    with pytest.raises(TypeError, match=r"expected a LinearPatchEmbed \(its \.proj a Linear\), got PatchEmbed"):
        conv_to_linear_(PatchEmbed(32, 4, 3, 16), PatchEmbed(32, 4, 3, 16))


def test_switches_and_numbers_of_the_model_parts_are_checked() -> None:
    """A string is truthy: return_attention="no" returned a tuple, fused_attn="False" took the fused path,
    antialias="no" antialiased; temperature <= 0 gave NaN positions; norm_eps=1e30 flattened every token; an integer
    position table was resized and truncated back to integers."""
    model = VisionTransformer(ViTConfig(**TINY)).eval()
    x = torch.randn(1, 3, 32, 32)
    for call in (lambda: model(x, return_attention="no"), lambda: model.forward_features(x, return_attention=1)):
        with pytest.raises(TypeError, match=r"return_attention must be True or False, got (str 'no'|int 1)"):
            call()
    with pytest.raises(TypeError, match=r"fused_attn must be True or False, got str 'False'"):
        Attention(16, 4, fused_attn="False")
    with pytest.raises(TypeError, match=r"antialias must be True or False, got str 'no'"):
        resize_pos_embed(torch.randn(1, 65, 8), (4, 4), antialias="no")
    with pytest.raises(TypeError, match=r"pos_embed must be a floating-point tensor .* got dtype torch\.int64"):
        resize_pos_embed(torch.arange(65 * 4).reshape(1, 65, 4), (4, 4))
    for temperature in (0, -1.0, float("nan"), "1e4"):
        with pytest.raises(ValueError, match=r"temperature must be a finite number > 0 \(e\.g\. 10000\.0\), got"):
            sincos_2d_pos_embed(8, (2, 2), temperature=temperature)
    for eps in (1e30, 0.5):
        with pytest.raises(ValueError, match=r"norm_eps must be at most 0\.01 \(e\.g\. 1e-6; .* got"):
            ViTConfig(**TINY, norm_eps=eps)
    assert ViTConfig(**TINY, norm_eps=1e-12).norm_eps == 1e-12


@pytest.mark.parametrize("side", [224, 384])
def test_attention_products_cost_n_over_6d_of_the_linear_layers(side: int) -> None:
    """Notebook 03: per block the Linear layers cost 12 N D^2 multiply-adds and QK^T, AV 2 N^2 D, a ratio N / (6D),
    counted here by PyTorch's own FLOP counter on a ViT-B/16 block (meta tensors: no memory, no time)."""
    from torch.utils.flop_counter import FlopCounterMode

    n, dim = (side // 16) ** 2 + 1, 768
    with torch.device("meta"):
        block, tokens = vit_edu.Block(dim, 12, 4 * dim, fused_attn=False), torch.randn(1, n, dim)
    with FlopCounterMode(display=False) as counter:
        block(tokens)
    flops = {str(op): count for op, count in counter.get_flop_counts()["Global"].items()}
    assert set(flops) == {"aten.addmm", "aten.bmm"}  # the Linear layers, the two N x N products
    assert flops["aten.addmm"] == 2 * 12 * n * dim ** 2  # 2 FLOPs per multiply-add
    assert flops["aten.bmm"] / flops["aten.addmm"] == pytest.approx(n / (6 * dim))
    assert (flops["aten.bmm"] / flops["aten.addmm"] < 0.05) == (side == 224)  # "small" at 224x224
