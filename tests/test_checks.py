"""The self-checks accept right answers and name the usual mistakes (issue "Classroom assignments").

Each mistake is written here as a small student-style function or class; the check must fail with a
message that names that mistake, so a student learns WHAT is wrong, not only that something is.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vit_edu import checks
from vit_edu.checks import CheckError


# ------------------------------------------------------------------------------------ reference solutions
def patchify(images, patch_size):
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def patchify_loops(images, patch_size):
    """A correct alternative written with reshape + permute."""
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 3, 5, 1)  # b h w p1 p2 c
    return x.reshape(B, (H // P) * (W // P), P * P * C)


class PatchEmbedding(nn.Module):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return rearrange(self.proj(x), "b d h w -> b (h w) d")


class LinearPatchEmbedding(nn.Module):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(patch_size * patch_size * in_channels, dim)

    def forward(self, x):
        return self.proj(patchify(x, self.patch_size))


def add_cls_and_pos(tokens, cls_token, pos_embed):
    return torch.cat([cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + pos_embed


def attention(q, k, v):
    weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    return weights @ v, weights


def attention_fused(q, k, v):
    """Correct alternative: scale q first, fused kernel for out."""
    weights = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    return F.scaled_dot_product_attention(q, k, v), weights


class MultiHeadAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def split(self, x):
        return rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)

    def merge(self, out):
        return rearrange(out, "b h n d -> b n (h d)")

    def forward(self, x):
        q, k, v = self.split(x)
        out, _ = attention(q, k, v)
        return self.proj(self.merge(out))


class MLP(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EncoderBlock(nn.Module):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, mlp_dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def vit_forward(model, images):
    x = model.patch_embed(images)
    x = add_cls_and_pos(x, model.cls_token, model.pos_embed)
    for blk in model.blocks:
        x = blk(x)
    return model.head(model.norm(x)[:, 0])


def attention_rollout(attentions):
    result = None
    for attn in attentions:
        a = attn.mean(dim=1)
        a = a + torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def not_implemented(*args, **kwargs):
    raise NotImplementedError()


class NotImplementedModule(nn.Module):
    def __init__(self, *args):
        super().__init__()
        raise NotImplementedError()


# ------------------------------------------------------------------------------------ right answers pass
@pytest.mark.parametrize("check, solution", [
    (checks.check_patchify, patchify), (checks.check_patchify, patchify_loops),
    (checks.check_patch_embedding, PatchEmbedding), (checks.check_patch_embedding, LinearPatchEmbedding),
    (checks.check_cls_and_pos, add_cls_and_pos),
    (checks.check_attention, attention), (checks.check_attention, attention_fused),
    (checks.check_multi_head_attention, MultiHeadAttention), (checks.check_mlp, MLP),
    (checks.check_encoder_block, EncoderBlock), (checks.check_vit_forward, vit_forward),
    (checks.check_rollout, attention_rollout),
])
def test_reference_passes(check, solution, capsys):
    assert check(solution) is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"✓ {check.__name__} passed (") and out.endswith(" cases)\n")


def test_package_pieces_pass_their_checks():
    """The package's own modules satisfy the contracts (they are the reference, so this is a sanity check)."""
    import vit_edu
    checks.check_patchify(vit_edu.patchify)
    checks.check_attention(vit_edu.attention_with_weights)
    checks.check_mlp(vit_edu.Mlp)
    checks.check_multi_head_attention(vit_edu.Attention)
    checks.check_encoder_block(vit_edu.Block)


def test_rollout_reference_agrees_with_package():
    """The check's reference is vit_edu.explain.analysis.attention_rollout, kept differentiable; the mutants'
    base (rollout_variant with its defaults) agrees with it."""
    from vit_edu.classroom.exercises_blocks import ROLLOUT_EX, rollout_variant
    from vit_edu.explain.analysis import attention_rollout as package_rollout
    torch.manual_seed(0)
    att = [(2 * torch.randn(2, 3, 7, 7)).softmax(-1).requires_grad_() for _ in range(4)]
    ref = ROLLOUT_EX.reference(None, att)
    assert ref.dtype == torch.float32  # the reference keeps the input's dtype
    assert ref.requires_grad  # the judge takes gradients through it
    torch.testing.assert_close(ref, package_rollout(att).float())
    torch.testing.assert_close(ref, rollout_variant(att))
    torch.testing.assert_close(ref, attention_rollout(att))
    torch.testing.assert_close(ref.sum(-1), torch.ones(2, 7))  # rows stay distributions


def test_check_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_attention(attention)
    torch.testing.assert_close(torch.rand(3), expected)


def test_all_checks_registered():
    """The nine model-building exercises are there; every exercise has its check_<name>, exported."""
    assert {"patchify", "patch_embedding", "cls_and_pos", "attention", "multi_head_attention", "mlp",
            "encoder_block", "vit_forward", "rollout"} <= set(checks.CHECKS)
    for name, ex in checks.CHECKS.items():
        assert ex.name == name
        assert callable(getattr(checks, f"check_{name}")) and f"check_{name}" in checks.__all__


# ------------------------------------------------------------------------------ generic failures: stubs, fakes
ALL = [
    (checks.check_patchify, not_implemented), (checks.check_patch_embedding, NotImplementedModule),
    (checks.check_cls_and_pos, not_implemented), (checks.check_attention, not_implemented),
    (checks.check_multi_head_attention, NotImplementedModule), (checks.check_mlp, NotImplementedModule),
    (checks.check_encoder_block, NotImplementedModule), (checks.check_vit_forward, not_implemented),
    (checks.check_rollout, not_implemented),
]


@pytest.mark.parametrize("check, stub", ALL, ids=[c.__name__ for c, _ in ALL])
def test_not_implemented_stub_fails(check, stub):
    with pytest.raises(CheckError, match=rf"^{check.__name__}: not implemented yet"):
        check(stub)


def _memo(fn):
    """Hard-coded answer: the output for the first input, returned for every input (right shape, right once)."""
    cache = {}

    def f(*args):
        if "out" not in cache:
            cache["out"] = fn(*args)
        return cache["out"]
    return f


@pytest.mark.parametrize("check, solution", [
    (checks.check_patchify, patchify), (checks.check_cls_and_pos, add_cls_and_pos),
    (checks.check_attention, attention), (checks.check_vit_forward, vit_forward),
    (checks.check_rollout, attention_rollout),
])
def test_hard_coded_answer_fails(check, solution):
    with pytest.raises(CheckError, match=f"^{check.__name__}: "):
        check(_memo(solution))


def test_hard_coded_module_fails():
    class Frozen(MLP):
        def forward(self, x):
            return torch.zeros_like(x)
    with pytest.raises(CheckError, match="wrong output values"):
        checks.check_mlp(Frozen)


def test_student_exception_is_reported_with_inputs():
    def broken(images, patch_size):
        return images.view(-1, 7, 3)
    with pytest.raises(CheckError, match=r"raised RuntimeError: .*\n  inputs: images \[2, 3, 8, 8\], patch_size=4"):
        checks.check_patchify(broken)


def test_returning_none_is_explained():
    with pytest.raises(CheckError, match="forget to return"):
        checks.check_patchify(lambda images, p: None)


def test_in_place_modification_is_reported():
    def in_place(tokens, cls_token, pos_embed):
        tokens += 0  # harmless value, but a student writing tokens += pos would corrupt the caller's tensor
        tokens.mul_(2)
        return add_cls_and_pos(tokens, cls_token, pos_embed)
    with pytest.raises(CheckError, match="changed its input `tokens` in place"):
        checks.check_cls_and_pos(in_place)


def test_generic_message_names_diff_and_index():
    def off_by_a_bit(images, p):
        out = patchify(images, p).clone()
        out[0, 1, 2] += 1.0
        return out
    with pytest.raises(CheckError, match=r"none of the usual mistakes matches\): max abs diff 1; first wrong entry "
                                         r"at index \(0, 1, 2\)"):
        checks.check_patchify(off_by_a_bit)


# --------------------------------------------------------------------------------------- 1 patchify mutants
PATCHIFY_MUTANTS = {
    r"\(c p1 p2\) order": lambda x, p: rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p),
    "column by column": lambda x, p: rearrange(x, "b c (h p1) (w p2) -> b (w h) (p1 p2 c)", p1=p, p2=p),
    r"\(p2 p1 c\) order": lambda x, p: rearrange(x, "b c (h p1) (w p2) -> b (h w) (p2 p1 c)", p1=p, p2=p),
    "reshaped the image tensor directly": lambda x, p: x.reshape(x.shape[0], -1, p * p * x.shape[1]),
    "moved the channels last and reshaped": lambda x, p: x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, p * p * x.shape[1]),
    r"wrong output shape: expected \[2, 4, 48\], got \[2, 2, 2, 48\]":
        lambda x, p: rearrange(x, "b c (h p1) (w p2) -> b h w (p1 p2 c)", p1=p, p2=p),
    "the grid and the patch sizes are swapped":  # h=P, w=P where the pattern needs p1=P, p2=P
        lambda x, p: rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", h=p, w=p),
    r"(?s)raised EinopsError: .*\n  inputs: images \[1, 3, 8, 12\], patch_size=4":  # square images only
        lambda x, p: rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p, h=x.shape[2] // p, w=x.shape[2] // p),
}


@pytest.mark.parametrize("message", list(PATCHIFY_MUTANTS))
def test_patchify_mutants(message):
    with pytest.raises(CheckError, match=message):
        checks.check_patchify(PATCHIFY_MUTANTS[message])


# ---------------------------------------------------------------------------------- 2 patch embedding mutants
class ConvColumnMajor(PatchEmbedding):
    def forward(self, x):
        return rearrange(self.proj(x), "b d h w -> b (w h) d")


class ConvNoTranspose(PatchEmbedding):
    def forward(self, x):
        y = self.proj(x)
        return y.reshape(y.shape[0], -1, y.shape[1])


class ConvFlattenOnly(PatchEmbedding):
    def forward(self, x):
        return self.proj(x).flatten(2)


class ConvStride1(PatchEmbedding):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__(image_size, patch_size, in_channels, dim)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=1)


class LinearChannelsFirst(LinearPatchEmbedding):
    def forward(self, x):
        p = self.patch_size
        return self.proj(rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p))


class LinearRawReshape(LinearPatchEmbedding):
    def forward(self, x):
        return self.proj(x.reshape(x.shape[0], -1, self.proj.in_features))


class ConvPadded(PatchEmbedding):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__(image_size, patch_size, in_channels, dim)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, padding=patch_size // 2)


class LinearWrongSize(LinearPatchEmbedding):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__(image_size, patch_size, in_channels, dim)
        self.proj = nn.Linear(patch_size * patch_size, dim)


class NoProj(nn.Module):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)


@pytest.mark.parametrize("module, message", [
    (ConvColumnMajor, "column-major order"),
    (ConvNoTranspose, r"reshaped the Conv2d output \[B, D, h, w\] straight to \[B, N, D\]"),
    (ConvFlattenOnly, r"got \[B, D, N\]: after flatten\(2\) also transpose\(1, 2\)"),
    (ConvStride1, r"`self.proj` should be nn.Conv2d\(3, 16, kernel_size=4, stride=4\)"),
    (LinearWrongSize, r"should be .* or nn.Linear\(48, 16\), got nn.Linear\(16, 16\)"),
    (ConvPadded, r"without padding"),
    (LinearRawReshape, "reshaped the image tensor directly"),
    (NoProj, "has no attribute `proj`"),
])
def test_patch_embedding_mutants(module, message):
    with pytest.raises(CheckError, match=message):
        checks.check_patch_embedding(module)


class ConvValid(PatchEmbedding):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__(image_size, patch_size, in_channels, dim)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, padding="valid")


class LazyLinearPatchEmbedding(LinearPatchEmbedding):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__(image_size, patch_size, in_channels, dim)
        self.proj = nn.LazyLinear(dim)


@pytest.mark.parametrize("module", [LinearChannelsFirst, ConvValid, LazyLinearPatchEmbedding])
def test_patch_embedding_judges_behaviour_not_attributes(module):
    """(c p1 p2) is as good as (p1 p2 c) for a Linear (the exercise fixes no order); padding="valid" is padding 0;
    a LazyLinear is a Linear once it has seen an input."""
    checks.check_patch_embedding(module)


def test_patch_embedding_wants_a_class():
    with pytest.raises(CheckError, match="pass the class itself"):
        checks.check_patch_embedding(PatchEmbedding(8, 4, 3, 16))


# -------------------------------------------------------------------------------------- 3 cls + pos mutants
def cat(*xs):
    return torch.cat(xs, dim=1)


CLS_MUTANTS = {
    "the position embedding is missing": lambda t, c, p: cat(c.expand(t.shape[0], -1, -1), t),
    "the class token is at the end; it goes in FRONT": lambda t, c, p: cat(t, c.expand(t.shape[0], -1, -1)) + p,
    r"class token misses pos_embed\[:, 0\]": lambda t, c, p: cat(c.expand(t.shape[0], -1, -1), t + p[:, 1:]),
    "the class token is missing": lambda t, c, p: t + p[:, 1:],
    r"wrong output shape: expected \[2, 5, 8\], got \[1, 5, 8\]\n  hint: the batch axis is 1":
        lambda t, c, p: cat(c, t[:1]) + p,
}


@pytest.mark.parametrize("message", list(CLS_MUTANTS))
def test_cls_and_pos_mutants(message):
    with pytest.raises(CheckError, match=message):
        checks.check_cls_and_pos(CLS_MUTANTS[message])


def test_cls_without_expand_reports_the_error():
    with pytest.raises(CheckError, match=r"raised RuntimeError: .*\n  likely cause: the class token \[1, 1, D\] was "
                                         r"not expanded .*\n  inputs: tokens \[2, 4, 8\], cls_token \[1, 1, 8\]"):
        checks.check_cls_and_pos(lambda t, c, p: torch.cat([c, t], dim=1) + p)


# ------------------------------------------------------------------------------------ 4 attention mutants
def _attn(scale=lambda d: d ** -0.5, dim=-1, softmax=True):
    def f(q, k, v):
        logits = q @ k.transpose(-2, -1) * scale(q.shape[-1])
        w = logits.softmax(dim) if softmax else logits
        return w @ v, w
    return f


ATTENTION_MUTANTS = {
    r"wrong weights: the 1/sqrt\(d\) scale is missing": _attn(scale=lambda d: 1.0),
    r"scaled by 1/d instead of 1/sqrt\(d\)": _attn(scale=lambda d: 1.0 / d),
    r"multiplied by sqrt\(d\)": _attn(scale=lambda d: d ** 0.5),
    r"softmax is over the wrong axis \(dim=-2": _attn(dim=-2),
    r"softmax is over the heads axis": _attn(dim=1),
    "the softmax is missing": _attn(softmax=False),
    r"the outputs are swapped: return \(out, weights\)": lambda q, k, v: attention(q, k, v)[::-1],
    r"must return a tuple \(out, weights\), got a tensor of shape \[2, 4, 6, 8\]": lambda q, k, v: attention(q, k, v)[0],
    r"wrong out: out uses the transposed weights":
        lambda q, k, v: (attention(q, k, v)[1].transpose(-2, -1) @ v, attention(q, k, v)[1]),
    r"wrong out: the 1/sqrt\(d\) scale is missing":
        lambda q, k, v: (_attn(scale=lambda d: 1.0)(q, k, v)[0], attention(q, k, v)[1]),
    r"scale uses the number of heads": lambda q, k, v: _attn(scale=lambda d: q.shape[1] ** -0.5)(q, k, v),
    r"wrong weights: the weights are returned transposed \(keys as rows\)":
        lambda q, k, v: (attention(q, k, v)[0], attention(q, k, v)[1].transpose(-2, -1)),
}


@pytest.mark.parametrize("message", list(ATTENTION_MUTANTS))
def test_attention_mutants(message):
    with pytest.raises(CheckError, match=message):
        checks.check_attention(ATTENTION_MUTANTS[message])


# ---------------------------------------------------------------------------------- 5 multi-head mutants
class SplitHThreeD(MultiHeadAttention):
    def split(self, x):
        return rearrange(self.qkv(x), "b n (h three d) -> three b h n d", three=3, h=self.heads)


class HeadsDH(MultiHeadAttention):
    def split(self, x):
        return rearrange(self.qkv(x), "b n (three d h) -> three b h n d", three=3, h=self.heads)

    def merge(self, out):
        return rearrange(out, "b h n d -> b n (d h)")


class HeadCountAsHeadSize(MultiHeadAttention):
    def split(self, x):  # d=heads where the pattern needs h=heads
        return rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, d=self.heads)


class MergeReshape(MultiHeadAttention):
    def merge(self, out):
        B, H, N, d = out.shape
        return out.reshape(B, N, H * d)


class SplitReshape(MultiHeadAttention):
    def split(self, x):
        B, N, D = x.shape
        return [t.reshape(B, self.heads, N, D // self.heads) for t in self.qkv(x).chunk(3, dim=-1)]


class NoScaleMHA(MultiHeadAttention):
    def forward(self, x):
        q, k, v = self.split(x)
        return self.proj(self.merge((q @ k.transpose(-2, -1)).softmax(-1) @ v))


class ModelDimScale(MultiHeadAttention):
    def forward(self, x):
        q, k, v = self.split(x)
        return self.proj(self.merge((q @ k.transpose(-2, -1) / math.sqrt(x.shape[-1])).softmax(-1) @ v))


class NoProjMHA(MultiHeadAttention):
    def forward(self, x):
        q, k, v = self.split(x)
        return self.merge(attention(q, k, v)[0])


class ReturnsTuple(MultiHeadAttention):
    def forward(self, x):
        q, k, v = self.split(x)
        out, w = attention(q, k, v)
        return self.proj(self.merge(out)), w


class NoQkvBias(MultiHeadAttention):
    """Wrong: the contract's qkv has a bias (the cell after the check copies it into nn.MultiheadAttention and
    loads the state into vit_edu.Attention, which a qkv without one breaks)."""

    def __init__(self, dim, heads):
        super().__init__(dim, heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)


class SeparateQKV(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)


@pytest.mark.parametrize("module, message", [
    (SplitHThreeD, r"split as \(h three d\); the contract .* stacks them as \(three h d\)"),
    (HeadsDH, r"the heads are split as \(d h\) instead of \(h d\)"),
    (HeadCountAsHeadSize, "the number of heads and the head size are swapped: 8 heads of 4 features"),
    (MergeReshape, "the heads are merged with a plain reshape"),
    (SplitReshape, "split into heads with a plain reshape"),
    (NoScaleMHA, r"the 1/sqrt\(d\) scale is missing"),
    (ModelDimScale, "the scale uses the model dim D"),
    (NoProjMHA, "the output projection is missing"),
    (ReturnsTuple, "should be a single torch.Tensor, got a tuple of 2 items"),
    (SeparateQKV, r"has no attribute `qkv`; the exercise asks for `self.qkv` = nn.Linear\(32, 96\)"),
])
def test_multi_head_attention_mutants(module, message):
    with pytest.raises(CheckError, match=message):
        checks.check_multi_head_attention(module)


def test_layers_without_the_contracts_bias_are_rejected():
    """A layer the contract gives a bias (here qkv; the adversarial sets hold fc1, fc2, proj) passed without one."""
    with pytest.raises(CheckError, match=r"`self.qkv` should be nn.Linear\(32, 96\) with a bias"):
        checks.check_multi_head_attention(NoQkvBias)


# ----------------------------------------------------------------------------------------- 6 MLP mutants
def _mlp_with(act):
    class M(MLP):
        def forward(self, x):
            return self.fc2(act(self.fc1(x)))
    return M


class MLPResidual(MLP):
    def forward(self, x):
        return x + super().forward(x)


@pytest.mark.parametrize("module, message", [
    (_mlp_with(F.relu), "ReLU is used instead of GELU"),
    (_mlp_with(lambda t: t), "the activation is missing"),
    (MLPResidual, "the residual belongs to the encoder block"),
])
def test_mlp_mutants(module, message):
    with pytest.raises(CheckError, match=message):
        checks.check_mlp(module)


def test_a_parameter_never_filled_is_named_and_the_flags_are_restored():
    """While the check builds the module, torch.empty's memory reads as NaN (torch's deterministic mode): an
    uninitialised parameter fails whatever the memory held, and the student's own settings come back after."""
    class EmptyBias(MLP):
        def __init__(self, dim, hidden_dim):
            super().__init__(dim, hidden_dim)
            self.fc2.bias = nn.Parameter(torch.empty(dim))

    for mode, warn_only in [(False, False), (True, False), (True, True)]:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
        fill = torch.utils.deterministic.fill_uninitialized_memory
        try:
            with pytest.raises(CheckError, match=r"fc2\.bias is never given a starting value"):
                checks.check_mlp(EmptyBias)
            checks.check_mlp(MLP)  # nn.Linear fills its own
            assert torch.are_deterministic_algorithms_enabled() is mode
            assert torch.is_deterministic_algorithms_warn_only_enabled() is warn_only
            assert torch.utils.deterministic.fill_uninitialized_memory is fill
        finally:
            torch.use_deterministic_algorithms(False)


def test_mlp_with_tanh_gelu_passes():
    """The paper's JAX code uses the tanh approximation of GELU (flax's default): not a mistake."""
    checks.check_mlp(_mlp_with(lambda t: F.gelu(t, approximate="tanh")))
    checks.check_mlp(_mlp_with(nn.GELU(approximate="tanh")))


def test_mlp_with_dropout_passes():
    class WithDropout(MLP):
        def __init__(self, dim, hidden_dim):
            super().__init__(dim, hidden_dim)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
    checks.check_mlp(WithDropout)  # the check evaluates in eval() mode


# --------------------------------------------------------------------------------------- 7 block mutants
def _block(fwd):
    class B(EncoderBlock):
        def forward(self, x):
            return fwd(self, x)
    return B


class BlockEps(EncoderBlock):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.norm1 = nn.LayerNorm(dim)


class BlockBadAttn(EncoderBlock):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.attn = NoScaleMHA(dim, heads)


class BlockReluMlp(EncoderBlock):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.mlp = _mlp_with(F.relu)(dim, mlp_dim)


def _post_norm(s, x):
    x = s.norm1(x + s.attn(x))
    return s.norm2(x + s.mlp(x))


def _no_attn_res(s, x):
    x = s.attn(s.norm1(x))
    return x + s.mlp(s.norm2(x))


def _no_mlp_res(s, x):
    x = x + s.attn(s.norm1(x))
    return s.mlp(s.norm2(x))


def _swapped(s, x):
    x = x + s.attn(s.norm2(x))
    return x + s.mlp(s.norm1(x))


def _normed_res(s, x):
    x = s.norm1(x)
    x = x + s.attn(x)
    x = s.norm2(x)
    return x + s.mlp(x)


def _parallel(s, x):
    h = x + s.attn(s.norm1(x))
    return h + s.mlp(s.norm2(x))


def _mlp_residual_of_input(s, x):
    h = x + s.attn(s.norm1(x))
    return x + s.mlp(s.norm2(h))


@pytest.mark.parametrize("module, message", [
    (_block(_post_norm), "this is post-norm"),
    (_block(_no_attn_res), "the attention residual is missing"),
    (_block(_no_mlp_res), "the MLP residual is missing"),
    (_block(_swapped), "norm1 and norm2 are swapped"),
    (_block(_normed_res), "the residual adds the normalised input"),
    (_block(_parallel), "the MLP reads the block input x"),
    (_block(_mlp_residual_of_input), "the MLP's residual adds the block input x"),
    (BlockEps, r"self.norm1 has eps=1e-5 \(PyTorch's default\); .* eps=1e-6"),
    (BlockBadAttn, r"wrong self.attn\(x\): the 1/sqrt\(d\) scale is missing"),
    (BlockReluMlp, r"wrong self.mlp\(x\): ReLU is used instead of GELU"),
])
def test_encoder_block_mutants(module, message):
    with pytest.raises(CheckError, match=message):
        checks.check_encoder_block(module)


# ------------------------------------------------------------------------------------------ 8 ViT mutants
def _vit(cls="front", pos=True, norm=True, pool="cls", blocks=True):
    def f(model, images):
        x = model.patch_embed(images)
        c = model.cls_token.expand(x.shape[0], -1, -1)
        if cls == "front":
            x = torch.cat([c, x], 1)
        elif cls == "end":
            x = torch.cat([x, c], 1)
        if pos:
            x = x + (model.pos_embed if cls else model.pos_embed[:, 1:])
        for blk in (model.blocks if blocks else []):
            x = blk(x)
        if norm:
            x = model.norm(x)
        return model.head(x[:, 0] if pool == "cls" else x[:, 1] if pool == "first_patch" else x.mean(1))
    return f


def _vit_in_training_mode(model, images):
    model.train()  # the model arrives in eval mode; its dropout is now on
    return _vit()(model, images)


def _vit_norm_before_the_blocks_too(model, images):
    x = model.patch_embed(images)
    x = model.norm(torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], 1) + model.pos_embed)
    for blk in model.blocks:
        x = blk(x)
    return model.head(model.norm(x)[:, 0])


@pytest.mark.parametrize("fn, message", [
    (_vit(cls=None), "the class token is missing"),
    (_vit(pos=False), "the position embedding is missing"),
    (_vit(cls="end"), "the class token is appended at the end"),
    (_vit(norm=False), "the final LayerNorm model.norm is missing"),
    (_vit(pool="mean"), "the logits come from the mean of all tokens"),
    (_vit(blocks=False), "the blocks are skipped"),
    (_vit(pool="first_patch"), r"the logits come from x\[:, 1\], the first patch token"),
    (_vit_norm_before_the_blocks_too, "model.norm is also applied to the embeddings before the blocks"),
    (_vit_in_training_mode, "two calls on the same input give different answers"),
    (lambda model, images: model(images), r"vit_forward called model\(\.\.\.\)"),
    (lambda model, images: model.head(model.forward_features(images)[:, 0]), r"called model.forward_features"),
    (lambda model, images: torch.cat([model.cls_token, model.patch_embed(images)], 1),  # [1, 1, D] for a batch
     r"likely cause: the class token \[1, 1, D\] was not expanded to the batch"),
])
def test_vit_forward_mutants(fn, message):
    with pytest.raises(CheckError, match=message):
        checks.check_vit_forward(fn)


def test_vit_forward_check_restores_the_model_methods():
    """After a check (even a failing one) nothing of the forbidding stays behind on the class."""
    import vit_edu
    with pytest.raises(CheckError):
        checks.check_vit_forward(lambda model, images: model(images))
    model = vit_edu.create_model("vit_nano_patch4_32")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


# -------------------------------------------------------------------------------------- 9 rollout mutants
def _rollout(fuse=lambda a: a.mean(1), identity=True, renorm=True, first_left=False):
    def f(attentions):
        result = None
        for attn in attentions:
            a = fuse(attn)
            if identity:
                a = a + torch.eye(a.shape[-1])
            if renorm:
                a = a / a.sum(dim=-1, keepdim=True)
            result = a if result is None else (result @ a if first_left else a @ result)
        return result
    return f


@pytest.mark.parametrize("fn, message", [
    (_rollout(identity=False), "the identity is missing"),
    (_rollout(renorm=False), "the rows are not renormalised"),
    (_rollout(first_left=True), "the layers are multiplied in the wrong order"),
    (_rollout(fuse=lambda a: a.amax(1)), "the heads are not averaged: the max over heads"),
    (_rollout(fuse=lambda a: a), "the heads axis is still there"),
    (lambda att: _rollout()(att[-1:]), "only the last layer is used"),
])
def test_rollout_mutants(fn, message):
    with pytest.raises(CheckError, match=message):
        checks.check_rollout(fn)


# ------------------------------------------------------------------------------ probe / judge (the grader's split)
def test_observations_round_trip_through_torch_save(tmp_path):
    """probe() records plain data only: torch.load(weights_only=True) reads it back and judge() decides the same."""
    for name, impl in [("patchify", patchify), ("multi_head_attention", MultiHeadAttention),
                       ("vit_forward", vit_forward), ("attention", attention)]:
        obs = checks.probe(name, impl, seed=3)
        torch.save(obs, tmp_path / "obs.pt")
        loaded = torch.load(tmp_path / "obs.pt", weights_only=True)
        verdict = checks.judge(name, loaded, seed=3)
        assert verdict.passed and verdict.cases > 0 and verdict.message.startswith(f"✓ check_{name} passed")


def test_judge_never_trusts_the_observations():
    """Untrusted input: wrong types, another seed, forged parameters or outputs fail with a message, never crash."""
    good = checks.probe("multi_head_attention", MultiHeadAttention, seed=5)
    assert checks.judge("multi_head_attention", good, seed=5).passed
    assert not checks.judge("multi_head_attention", good, seed=6).passed  # answers made for another seed
    for forged in ([], "passed", {"exercise": "multi_head_attention"}, {**good, "cases": good["cases"][:2]}):
        v = checks.judge("multi_head_attention", forged, seed=5)
        assert not v.passed and "malformed" in v.message
    import copy
    zeroed = copy.deepcopy(good)  # all-zero weights would make the reference trivial to fake
    for case in zeroed["cases"]:
        for p in case.get("module", {}).get("params", {}).values():
            p.zero_()
    assert not checks.judge("multi_head_attention", zeroed, seed=5).passed
    wrong_type = copy.deepcopy(good)
    wrong_type["cases"][0]["output"] = {"kind": "tensor", "value": "a string"}
    assert not checks.judge("multi_head_attention", wrong_type, seed=5).passed


def test_a_hard_coded_answer_for_seed_0_fails_with_another_seed():
    outputs = {}

    def remember(images, patch_size):
        return outputs.setdefault(tuple(images.shape), patchify(images, patch_size))

    assert checks.judge("patchify", checks.probe("patchify", patchify, seed=0), seed=0).passed
    checks.probe("patchify", remember, seed=0)  # learns the answers of seed 0
    assert not checks.judge("patchify", checks.probe("patchify", remember, seed=1), seed=1).passed


def test_check_error_shows_only_the_diagnosis_in_jupyter():
    with pytest.raises(CheckError) as info:
        checks.check_patchify(lambda images, p: None)
    lines = info.value._render_traceback_()
    assert lines[0].startswith("CheckError: check_patchify: ") and all("File " not in line for line in lines)
    assert "\n".join(lines) == f"CheckError: {info.value}"


# ------------------------------------------------------------------------------------ what every check sees
class MHANoGrad(MultiHeadAttention):
    def forward(self, x):
        with torch.no_grad():
            return super().forward(x)


class MHADropout(MultiHeadAttention):
    def forward(self, x):
        return F.dropout(super().forward(x), 0.1)


class MHAInPlace(MultiHeadAttention):
    def forward(self, x):
        x.mul_(2)
        return super().forward(x)


class MHANoValueError(MultiHeadAttention):
    def __init__(self, dim, heads):
        nn.Module.__init__(self)
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)


class MHAKQV(MultiHeadAttention):
    def split(self, x):
        q, k, v = super().split(x)
        return k, q, v


class BlockSharedNorm(EncoderBlock):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.norm2 = self.norm1


@pytest.mark.parametrize("check, impl, message", [
    (checks.check_multi_head_attention, MHANoGrad, "cut off from the autograd graph"),
    (checks.check_multi_head_attention, MHADropout, "two calls on the same input give different answers in eval mode"),
    (checks.check_multi_head_attention, MHAInPlace, "changed its input `x` in place"),
    (checks.check_multi_head_attention, MHANoValueError, "should raise ValueError when dim=10 is not divisible by heads=3"),
    (checks.check_multi_head_attention, MHAKQV, "q, k, v are unpacked in the wrong order"),
    (checks.check_encoder_block, BlockSharedNorm, "`self.norm2` and `self.norm1` share their parameters"),
    (checks.check_patchify, lambda x, p: patchify(x, p).double(), "has dtype float64; it should keep the input's dtype"),
    (checks.check_patchify, lambda x, p: patchify(x.detach(), p), "cut off from the autograd graph"),
    (checks.check_vit_forward, lambda model, x: type(model).forward(model, x), r"vit_forward called model\(\.\.\.\)"),
    (checks.check_rollout, _rollout(fuse=lambda a: a.amin(1)), "min over heads"),
])
def test_each_check_covers_gradients_dtype_inputs_and_contract(check, impl, message):
    with pytest.raises(CheckError, match=message):
        check(impl)


def test_a_library_call_the_statement_excludes_is_named():
    """Exercise 4.1 asks for LayerNorm from elementary operations: F.layer_norm, torch.layer_norm or an
    nn.LayerNorm inside fail with the call named, however the function was reached (an alias included)."""
    import torch.nn.functional as F

    from vit_edu.checks import CheckError, check_layer_norm

    ln = F.layer_norm

    def via_alias(x, weight, bias, eps):
        return ln(x, x.shape[-1:], weight, bias, eps)

    def via_torch(x, weight, bias, eps):
        return torch.layer_norm(x, x.shape[-1:], weight, bias, eps)

    def via_module(x, weight, bias, eps):
        norm = torch.nn.LayerNorm(x.shape[-1], eps=eps, dtype=x.dtype)
        with torch.no_grad():
            norm.weight.copy_(weight)
            norm.bias.copy_(bias)
        return norm(x)

    for answer in (via_alias, via_torch, via_module):
        with pytest.raises(CheckError, match=r"calls (F|torch)\.layer_norm, which this exercise asks you to build"):
            check_layer_norm(answer)


def test_the_other_normalisations_count_as_library_calls():
    """GroupNorm with one group, InstanceNorm on the rows, BatchNorm on the transpose and RMSNorm of the centred
    vectors are LayerNorm after a reshape: the statement's "elementary operations" excludes them too."""
    def group(x, weight, bias, eps):
        return F.group_norm(x.reshape(-1, 1, x.shape[-1]), 1, eps=eps).reshape(x.shape) * weight + bias

    def rms_of_centred(x, weight, bias, eps):
        return F.rms_norm(x - x.mean(-1, keepdim=True), x.shape[-1:], weight, eps) + bias

    for answer, called in ((group, "group_norm"), (rms_of_centred, "rms_norm")):
        with pytest.raises(CheckError, match=rf"calls F\.{called}, which this exercise asks you to build"):
            checks.check_layer_norm(answer)


def test_a_library_norm_inside_scripted_code_is_named():
    """torch.jit.script'ed code runs F.layer_norm without a Python-level call; the kernel it reaches
    (aten::native_layer_norm) is named instead, as is a kernel called through torch.ops."""
    import warnings

    def scripted(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        return F.layer_norm(x, [x.shape[-1]], weight, bias, eps)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, and still works
        compiled = torch.jit.script(scripted)

    def through_script(x, weight, bias, eps):
        return compiled(x, weight, bias, float(eps))

    def through_the_kernel(x, weight, bias, eps):
        return torch.ops.aten.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)[0]

    for answer in (through_script, through_the_kernel):
        with pytest.raises(CheckError, match=r"calls torch\.ops\.aten\.native_layer_norm, which this exercise asks"):
            checks.check_layer_norm(answer)
    assert not torch._C._len_torch_dispatch_stack()  # the dispatch watch is gone with the check


def test_a_result_kept_from_an_earlier_call_is_named():
    """Each case is a fresh module or a first call of its shapes: a result stored on self, or cached by the
    shapes, is right there. A further call on other inputs of the same shapes (the batch reversed) shows it."""
    class KeepsItsOutput(MultiHeadAttention):
        def forward(self, x):
            if getattr(self, "kept", None) is None or self.kept.shape != x.shape:
                self.kept = super().forward(x)
            return self.kept

    kept = {}

    def cached_by_shape(tokens, cls_token, pos_embed):
        return kept.setdefault(tokens.shape, add_cls_and_pos(tokens, cls_token, pos_embed))

    message = (r"a second call on other inputs of the same shapes \(each tensor read backwards\) "
               r"gave the very answer of the first call")
    with pytest.raises(CheckError, match=message):
        checks.check_multi_head_attention(KeepsItsOutput)
    with pytest.raises(CheckError, match=message):
        checks.check_cls_and_pos(cached_by_shape)
    checks.check_cls_and_pos(lambda t, c, p: add_cls_and_pos(t.contiguous(), c, p))  # a right answer still passes


def test_a_list_argument_changed_by_the_answer_is_named():
    """attention_rollout gets a list: reversing it in place gives the right rollout on the first call (and the
    wrong one on the second, once reversed back), which is the list edit, not randomness."""
    def reverses_the_list(attentions):
        attentions.reverse()
        result = None
        for attn in attentions:  # last layer first: each earlier one enters on the right
            a = attn.mean(1) + torch.eye(attn.shape[-1], dtype=attn.dtype)
            a = a / a.sum(-1, keepdim=True)
            result = a if result is None else result @ a
        return result

    with pytest.raises(CheckError, match=r"changed the list `attentions` it was given .* list\(attentions\)"):
        checks.check_rollout(reverses_the_list)


def test_a_decay_that_reaches_zero_one_step_early_is_named():
    def early(step, total_steps, warmup_steps, base_lr):
        if step < warmup_steps:
            return base_lr * (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps - 1))
        return 0.5 * base_lr * (1 + math.cos(math.pi * t))

    with pytest.raises(CheckError, match="the decay divides by total_steps - warmup_steps - 1"):
        checks.check_lr_schedule(early)


@pytest.mark.parametrize("warm_div, warm_end, message", [
    (1, 0, r"the warm-up divides by warmup_steps \+ 1"),
    (0, 1, r"step warmup_steps is still taken as warm-up \(step <= warmup_steps\)"),
])
def test_a_warm_up_off_by_one_is_named(warm_div, warm_end, message):
    def off_by_one(step, total_steps, warmup_steps, base_lr):
        if warmup_steps and step < warmup_steps + warm_end:
            return base_lr * (step + 1) / (warmup_steps + warm_div)
        t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return 0.5 * base_lr * (1 + math.cos(math.pi * t))

    with pytest.raises(CheckError, match=message):
        checks.check_lr_schedule(off_by_one)


def test_bottleneck_names_the_weight_standardization_eps_of_timm():
    """timm's StdConv2dSame standardizes with eps 1e-6 by default; this model's (and vit_edu's) is 1e-8."""
    from vit_edu.hybrid import StdConv2dSame

    class TimmEps(nn.Module):
        def __init__(self, in_channels, out_channels, stride=1):
            super().__init__()
            mid, conv = out_channels // 4, lambda i, o, k, s=1: StdConv2dSame(i, o, k, stride=s, eps=1e-6)
            self.conv1, self.norm1 = conv(in_channels, mid, 1), nn.GroupNorm(32, mid)
            self.conv2, self.norm2 = conv(mid, mid, 3, stride), nn.GroupNorm(32, mid)
            self.conv3, self.norm3 = conv(mid, out_channels, 1), nn.GroupNorm(32, out_channels)
            self.downsample = None
            if stride != 1 or in_channels != out_channels:
                self.downsample = nn.ModuleDict({"conv": conv(in_channels, out_channels, 1, stride),
                                                 "norm": nn.GroupNorm(32, out_channels)})

        def forward(self, x):
            shortcut = x if self.downsample is None else self.downsample["norm"](self.downsample["conv"](x))
            h = F.relu(self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x))))))
            return F.relu(self.norm3(self.conv3(h)) + shortcut)

    with pytest.raises(CheckError, match=r"the weight standardization's eps is 1e-6 \(timm's StdConv2dSame default\)"):
        checks.check_bottleneck(TimmEps)


def test_mean_attention_distance_names_a_distance_along_the_sequence():
    def along_the_sequence(attn, grid_size, patch_size):
        i = torch.arange(grid_size[0] * grid_size[1], dtype=attn.dtype)
        a = attn[:, :, 1:, 1:] / attn[:, :, 1:, 1:].sum(-1, keepdim=True)
        return (a * (i[:, None] - i[None, :]).abs() * patch_size).sum(-1).mean(dim=(0, 2))

    with pytest.raises(CheckError, match=r"the distance is \|i - j\| along the token sequence"):
        checks.check_mean_attention_distance(along_the_sequence)


@pytest.mark.parametrize("name", [n for n, ex in checks.CHECKS.items() if ex.kind == "function"])
def test_the_call_on_other_inputs_has_another_answer(name):
    """The probe's call on other inputs (engine.other_inputs) catches an answer kept from the first call only where
    the right answer differs there: reversing the batch alone gave mean_attention_distance, which averages over the
    batch, the same answer, and an lru_cache passed."""
    from vit_edu.classroom.engine import Ctx, build_cases, other_inputs
    from vit_edu.classroom.judge import _same

    ex = checks.CHECKS[name]
    for seed in (0, 1):
        case = build_cases(ex, seed)[0]  # the probe makes these calls on the first case
        other = other_inputs(case.args)
        if other is None:  # nothing to reverse (numbers only): the repeat with other arguments is the next case
            assert not any(isinstance(a, (torch.Tensor, list)) for a in case.args), name
            continue
        first = ex.reference(Ctx(ex, case, 0, seed), *case.args)
        if first is None:  # judged by the exercise's own judge_case (train_step), not by the generic calls
            assert ex.judge_case is not None, name
            continue
        again = ex.reference(Ctx(ex, case, 0, seed), *other)
        pairs = zip(first, again) if isinstance(first, tuple) else [(first, again)]
        assert not all(_same(a, b, ex.rtol, ex.atol) for a, b in pairs), (name, seed)
