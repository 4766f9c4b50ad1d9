"""Self-checks for the course exercises: call ``check_xxx(your_code)`` right after writing it.

Each check runs your function or class on several random inputs (different seeds, batch sizes, image
shapes, head counts), and compares it with the package's reference implementation. A hard-coded answer
cannot pass, because every case uses fresh random numbers and fresh weights.

When your answer is wrong, the check does not only say "mismatch": it also computes the outputs of the
usual mistakes (forgotten 1/sqrt(d), softmax over the wrong axis, heads split as (d h), post-norm, ...)
and, if your output equals one of them, names the mistake. On success each check prints one line
``✓ check_xxx passed (N cases)`` and returns None; on failure it raises :class:`CheckError`.

The checks never touch your global random state: they run inside ``torch.random.fork_rng``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import nn

from .attention import Attention, scaled_dot_product_attention
from .block import Block, Mlp
from .config import ViTConfig
from .patch_embed import LinearPatchEmbed, PatchEmbed
from .patch_embed import patchify as _ref_patchify
from .vit import VisionTransformer

__all__ = [
    "CheckError", "check_patchify", "check_patch_embedding", "check_cls_and_pos", "check_attention",
    "check_multi_head_attention", "check_mlp", "check_encoder_block", "check_vit_forward", "check_rollout",
    "CHECKS",
]

RTOL, ATOL = 1e-4, 1e-5  # float32 round-off of a different but correct order of operations stays far below this

Mutant = Tuple[str, Callable[[], torch.Tensor]]  # (what the mistake is, how to compute its output)


class CheckError(AssertionError):
    """A self-check failed; the message says what is wrong and on which input."""


# ------------------------------------------------------------------------------------------- helpers
@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for one case without disturbing the notebook's own random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            yield


def _shape(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return str(list(x.shape))
    if isinstance(x, (tuple, list)):
        return f"{type(x).__name__} of {len(x)}"
    return type(x).__name__


def _call(check: str, what: str, fn: Callable, args: Sequence[Any], inputs: str) -> Any:
    """Call student code; turn any exception into a CheckError that names the inputs used."""
    try:
        return fn(*args)
    except CheckError:
        raise
    except NotImplementedError:
        raise CheckError(
            f"{check}: not implemented yet: {what} raised NotImplementedError. Replace "
            f"`raise NotImplementedError()` with your code.\n  inputs: {inputs}"
        ) from None
    except Exception as e:  # noqa: BLE001 - any student error becomes a readable check failure
        raise CheckError(f"{check}: {what} raised {type(e).__name__}: {e}\n  inputs: {inputs}") from e


def _callable(check: str, fn: Any, what: str) -> None:
    if isinstance(fn, type) or not callable(fn):
        raise CheckError(f"{check}: pass your function itself, e.g. {check}({what.split('(')[0]}); "
                         f"got {type(fn).__name__}")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=RTOL, atol=ATOL))


def _as_tensor(check: str, got: Any, what: str, inputs: str) -> torch.Tensor:
    if isinstance(got, (tuple, list)) and len(got) > 0 and isinstance(got[0], torch.Tensor):
        raise CheckError(f"{check}: {what} should be a single torch.Tensor, got a {type(got).__name__} of "
                         f"{len(got)} items (shapes {[_shape(g) for g in got]})\n  inputs: {inputs}")
    if not isinstance(got, torch.Tensor):
        raise CheckError(f"{check}: {what} should be a torch.Tensor, got {type(got).__name__}"
                         f"{' (did you forget to return it?)' if got is None else ''}\n  inputs: {inputs}")
    return got.detach().float()


def _matching_mutant(got: torch.Tensor, mutants: Sequence[Mutant]) -> Optional[str]:
    for name, make in mutants:
        try:
            out = make()
        except Exception:  # noqa: BLE001 - a mutant that cannot be built for this shape simply does not match
            continue
        if _close(got, out.float()):
            return name
    return None


def _compare(check: str, got: Any, expected: torch.Tensor, mutants: Sequence[Mutant], inputs: str,
             what: str = "output", shape_hint: Optional[Callable[[Tuple[int, ...]], str]] = None) -> None:
    """Raise a CheckError naming the mistake when ``got`` differs from ``expected``."""
    got = _as_tensor(check, got, what, inputs)
    expected = expected.detach().float()
    if got.shape != expected.shape:
        name = _matching_mutant(got, mutants)
        hint = f"\n  likely cause: {name}" if name else ""
        if not hint and shape_hint is not None:
            extra = shape_hint(tuple(got.shape))
            hint = f"\n  hint: {extra}" if extra else ""
        raise CheckError(f"{check}: wrong {what} shape: expected {list(expected.shape)}, got {list(got.shape)}"
                         f"{hint}\n  inputs: {inputs}")
    if _close(got, expected):
        return
    if not torch.isfinite(got).all():
        raise CheckError(f"{check}: {what} contains NaN or inf values\n  inputs: {inputs}")
    name = _matching_mutant(got, mutants)
    if name is not None:
        raise CheckError(f"{check}: wrong {what}: {name}\n  inputs: {inputs}")
    diff = (got - expected).abs()
    bad = diff > ATOL + RTOL * expected.abs()
    idx = tuple(int(i) for i in bad.nonzero()[0])
    raise CheckError(
        f"{check}: wrong {what} values (none of the usual mistakes matches): max abs diff "
        f"{diff.max().item():.4g}; first wrong entry at index {idx}: expected {expected[idx].item():.4f}, "
        f"got {got[idx].item():.4f}\n  inputs: {inputs}"
    )


def _check_unchanged(check: str, before: Sequence[torch.Tensor], after: Sequence[torch.Tensor],
                     names: Sequence[str], inputs: str) -> None:
    for b, a, n in zip(before, after, names):
        if not torch.equal(b, a):
            raise CheckError(f"{check}: your code changed its input `{n}` in place (e.g. `+=` or an `_` method); "
                             f"compute a new tensor instead\n  inputs: {inputs}")


def _get(check: str, obj: Any, path: str, expected: str) -> Any:
    cur = obj
    for part in path.split("."):
        if not hasattr(cur, part):
            raise CheckError(f"{check}: {type(obj).__name__} has no attribute `{path}`; the exercise asks for "
                             f"`self.{path}` = {expected}")
        cur = getattr(cur, part)
    return cur


def _linear(check: str, module: nn.Module, path: str, n_in: int, n_out: int, hint: str = "") -> nn.Linear:
    layer = _get(check, module, path, f"nn.Linear({n_in}, {n_out}){hint}")
    if not isinstance(layer, nn.Linear):
        raise CheckError(f"{check}: `self.{path}` should be an nn.Linear({n_in}, {n_out}){hint}, got "
                         f"{type(layer).__name__}")
    if (layer.in_features, layer.out_features) != (n_in, n_out):
        raise CheckError(f"{check}: `self.{path}` should be nn.Linear({n_in}, {n_out}){hint}, got "
                         f"nn.Linear({layer.in_features}, {layer.out_features})")
    return layer


def _copy_linear(src: nn.Linear, dst: nn.Linear) -> None:
    dst.weight.copy_(src.weight)
    if src.bias is None:
        dst.bias.zero_()
    else:
        dst.bias.copy_(src.bias)


def _construct(check: str, cls: Any, args: Tuple[Any, ...], signature: str) -> nn.Module:
    name = getattr(cls, "__name__", type(cls).__name__)
    if not isinstance(cls, type):
        raise CheckError(f"{check}: pass the class itself, e.g. {check}({type(cls).__name__}), not an instance "
                         f"or other object (got {type(cls).__name__})")
    module = _call(check, f"{name}{args}", cls, args, f"{name}.__init__{signature} with {args}")
    if not isinstance(module, nn.Module):
        raise CheckError(f"{check}: {name} should subclass nn.Module, got {type(module).__name__}")
    return module.eval()


def _passed(check: str, n: int) -> None:
    print(f"✓ {check} passed ({n} cases)")


# ---------------------------------------------------------------------------------------- 1 patchify
_PATCHIFY_MUTANTS = [
    ("b (h w) (c p1 p2)", "the pixels of each patch are flattened in (c p1 p2) order (channels first); the "
     "contract is (p1 p2 c), channels last: rearrange(images, 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)', p1=P, p2=P)"),
    ("b (w h) (p1 p2 c)", "the patches are numbered column by column ((w h) order); number them row by row, "
     "like reading text: 'b (h w) ...'"),
    ("b (w h) (c p1 p2)", "the patches are numbered column by column ((w h) order) AND the pixels are flattened "
     "in (c p1 p2) order; the contract is 'b (h w) (p1 p2 c)'"),
    ("b (h w) (p2 p1 c)", "rows and columns inside each patch are swapped ((p2 p1 c) order); use (p1 p2 c): "
     "first the row inside the patch, then the column, then the channel"),
]


def _patchify_mutants(images: torch.Tensor, P: int) -> List[Mutant]:
    B, C, H, W = images.shape
    N = (H // P) * (W // P)
    out: List[Mutant] = [
        (msg, lambda pat=pat: rearrange(images, f"b c (h p1) (w p2) -> {pat}", p1=P, p2=P))
        for pat, msg in _PATCHIFY_MUTANTS
    ]
    out += [
        ("you reshaped the image tensor directly; a reshape keeps the memory order (c, h, w), so each 'patch' "
         "is a run of consecutive pixels of one channel, not a P x P square. Split H and W into (h p1) and "
         "(w p2) and move the axes before flattening (rearrange, or reshape + permute)",
         lambda: images.reshape(B, N, -1)),
        ("you moved the channels last and reshaped; that cuts image rows into pieces instead of P x P squares. "
         "Split H and W into (h p1) and (w p2) first: rearrange(images, 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)')",
         lambda: images.permute(0, 2, 3, 1).reshape(B, N, -1)),
    ]
    return out


def check_patchify(patchify: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """Check ``patchify(images [B, C, H, W], patch_size: int) -> [B, N, P*P*C]``.

    N = (H/P) * (W/P) patches in row-major order (left to right, then top to bottom); the P*P*C numbers of
    each patch in (p1 p2 c) order, as ``rearrange(images, 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)')``.
    """
    check = "check_patchify"
    _callable(check, patchify, "patchify(images, patch_size)")
    cases = [(2, 3, 8, 8, 4), (1, 3, 8, 12, 4), (3, 2, 6, 9, 3), (1, 1, 4, 6, 2), (2, 3, 16, 16, 8)]
    for seed, (B, C, H, W, P) in enumerate(cases):
        with _seeded(seed):
            images = torch.randn(B, C, H, W)
            before = images.clone()
            inputs = f"images {list(images.shape)}, patch_size={P}"
            got = _call(check, "patchify(images, patch_size)", patchify, (images, P), inputs)
            _check_unchanged(check, [before], [images], ["images"], inputs)
            expected = _ref_patchify(before, P)
            N = (H // P) * (W // P)

            def shape_hint(s: Tuple[int, ...], B: int = B, N: int = N, P: int = P, C: int = C) -> str:
                if len(s) != 3:
                    return (f"flatten to 3 axes [B, N, P*P*C] = [{B}, {N}, {P * P * C}]: one row per patch, "
                            "all its pixels and channels in one vector")
                return f"N = (H/P)*(W/P) = {N} patches, each with P*P*C = {P * P * C} numbers"

            _compare(check, got, expected, _patchify_mutants(before, P), inputs, shape_hint=shape_hint)
    _passed(check, len(cases))


# ---------------------------------------------------------------------------------- 2 patch embedding
def check_patch_embedding(PatchEmbedding: type) -> None:
    """Check ``class PatchEmbedding(nn.Module)``: ``__init__(self, image_size, patch_size, in_channels, dim)``.

    ``self.proj`` is ``nn.Conv2d(C, D, kernel_size=P, stride=P)`` or ``nn.Linear(P*P*C, D)`` (both are
    right); ``forward(images [B, C, H, W]) -> [B, N, D]`` with patches in row-major order and, for the
    Linear version, pixels flattened in (p1 p2 c) order. The check copies your weights into
    ``vit_edu.PatchEmbed`` / ``vit_edu.LinearPatchEmbed`` and compares the tokens.
    """
    check = "check_patch_embedding"
    cases = [(8, 4, 3, 16, 2), (12, 4, 3, 8, 1), (16, 8, 2, 12, 3), (6, 2, 3, 5, 2)]  # image, P, C, D, B
    for seed, (S, P, C, D, B) in enumerate(cases):
        with _seeded(seed):
            module = _construct(check, PatchEmbedding, (S, P, C, D), "(image_size, patch_size, in_channels, dim)")
            want = f"nn.Conv2d({C}, {D}, kernel_size={P}, stride={P}) or nn.Linear({P * P * C}, {D})"
            proj = _get(check, module, "proj", want)
            if isinstance(proj, nn.Conv2d):
                if (proj.in_channels, proj.out_channels) != (C, D) or tuple(proj.kernel_size) != (P, P) \
                        or tuple(proj.stride) != (P, P) or tuple(proj.padding) != (0, 0):
                    raise CheckError(
                        f"{check}: `self.proj` should be {want}: kernel and stride both P so the windows do "
                        f"not overlap; got {proj!r} for PatchEmbedding{(S, P, C, D)}")
                ref: nn.Module = PatchEmbed(S, P, C, D)
                ref.proj.weight.copy_(proj.weight)
                w_lin = rearrange(proj.weight, "d c p1 p2 -> d (p1 p2 c)")  # the same map as a Linear
            elif isinstance(proj, nn.Linear):
                if (proj.in_features, proj.out_features) != (P * P * C, D):
                    raise CheckError(f"{check}: `self.proj` should be {want}, got nn.Linear({proj.in_features}, "
                                     f"{proj.out_features}) for PatchEmbedding{(S, P, C, D)}")
                ref = LinearPatchEmbed(S, P, C, D)
                ref.proj.weight.copy_(proj.weight)
                w_lin = proj.weight
            else:
                raise CheckError(f"{check}: `self.proj` should be {want}, got {type(proj).__name__}")
            bias = proj.bias if proj.bias is not None else torch.zeros(D)
            ref.proj.bias.copy_(bias)

            images = torch.randn(B, C, S, S)
            inputs = f"PatchEmbedding{(S, P, C, D)}, images {list(images.shape)}"
            got = _call(check, "PatchEmbedding.forward(images)", module, (images,), inputs)
            expected = ref(images)
            mutants = [(msg, lambda m=make: F.linear(m(), w_lin, bias)) for msg, make in _patchify_mutants(images, P)]
            if isinstance(proj, nn.Conv2d):
                conv_out = lambda: F.conv2d(images, proj.weight, bias, stride=P)  # noqa: E731 [B, D, h, w]
                mutants = [
                    ("the tokens are in column-major order: rearrange the Conv2d output with "
                     "'b d h w -> b (h w) d', not '(w h)'", lambda: rearrange(conv_out(), "b d h w -> b (w h) d")),
                    ("you reshaped the Conv2d output [B, D, h, w] straight to [B, N, D], which mixes features "
                     "and positions; move D last: rearrange(x, 'b d h w -> b (h w) d') or x.flatten(2).transpose(1, 2)",
                     lambda: conv_out().reshape(B, -1, D)),
                ] + mutants
            N = (S // P) ** 2

            def shape_hint(s: Tuple[int, ...], B: int = B, N: int = N, D: int = D) -> str:
                if s == (B, D, N):
                    return "got [B, D, N]: after flatten(2) also transpose(1, 2) so each token is a row"
                if len(s) == 4:
                    return "the Conv2d output [B, D, h, w] still has to become [B, h*w, D]"
                return f"one D={D}-dim token per patch: [B, N, D] = [{B}, {N}, {D}]"

            _compare(check, got, expected, mutants, inputs, shape_hint=shape_hint)
    _passed(check, len(cases))


# ------------------------------------------------------------------------------ 3 class token + positions
def check_cls_and_pos(add_cls_and_pos: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Check ``add_cls_and_pos(tokens [B, N, D], cls_token [1, 1, D], pos_embed [1, N+1, D]) -> [B, N+1, D]``.

    The class token goes in front (index 0) of every sequence in the batch, then the position embedding
    is added to all N+1 tokens (paper eq. 1: z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos).
    """
    check = "check_cls_and_pos"
    _callable(check, add_cls_and_pos, "add_cls_and_pos(tokens, cls_token, pos_embed)")
    cases = [(2, 4, 8), (1, 9, 16), (3, 1, 4), (2, 16, 32)]  # B, N, D
    for seed, (B, N, D) in enumerate(cases):
        with _seeded(seed):
            tokens, cls, pos = torch.randn(B, N, D), torch.randn(1, 1, D), torch.randn(1, N + 1, D)
            before = [tokens.clone(), cls.clone(), pos.clone()]
            inputs = f"tokens {list(tokens.shape)}, cls_token {list(cls.shape)}, pos_embed {list(pos.shape)}"
            got = _call(check, "add_cls_and_pos(tokens, cls_token, pos_embed)", add_cls_and_pos, (tokens, cls, pos),
                        inputs)
            _check_unchanged(check, before, [tokens, cls, pos], ["tokens", "cls_token", "pos_embed"], inputs)
            t, c, p = before
            c_b = c.expand(B, -1, -1)
            expected = torch.cat([c_b, t], dim=1) + p
            mutants: List[Mutant] = [
                ("the position embedding is missing: add pos_embed to all N+1 tokens after prepending the class "
                 "token", lambda: torch.cat([c_b, t], dim=1)),
                ("the class token is at the end; it goes in FRONT (index 0): torch.cat([cls, tokens], dim=1)",
                 lambda: torch.cat([t, c_b], dim=1) + p),
                ("the class token is at the end and has no position embedding; put it in front, then add pos_embed",
                 lambda: torch.cat([t, c_b], dim=1)),
                ("the position embedding was added to the patch tokens before prepending the class token, so the "
                 "class token misses pos_embed[:, 0]; concatenate first, then add pos_embed",
                 lambda: torch.cat([c_b, t + p[:, 1:]], dim=1)),
                ("the position embedding was added before prepending the class token, and shifted by one "
                 "(pos_embed[:, :N]); concatenate first, then add the whole pos_embed",
                 lambda: torch.cat([c_b, t + p[:, :N]], dim=1)),
                ("the class token is missing: prepend cls_token (expanded to the batch: cls_token.expand(B, -1, -1)) "
                 "before adding pos_embed", lambda: t + p[:, 1:]),
                ("the class token is missing: prepend cls_token (expanded to the batch: cls_token.expand(B, -1, -1)) "
                 "before adding pos_embed", lambda: t + p[:, :N]),
            ]

            def shape_hint(s: Tuple[int, ...], B: int = B, N: int = N, D: int = D) -> str:
                if s == (1, N + 1, D) and B > 1:
                    return "the batch axis is 1: expand the class token to the batch, cls_token.expand(B, -1, -1)"
                if s == (B, N, D):
                    return "one token short: prepend the class token"
                return f"expected one class token plus N={N} patch tokens per image: [B, N+1, D] = [{B}, {N + 1}, {D}]"

            _compare(check, got, expected, mutants, inputs, shape_hint=shape_hint)
    _passed(check, len(cases))


# ------------------------------------------------------------------------------------------ 4 attention
def _weight_mutants(q: torch.Tensor, k: torch.Tensor) -> List[Mutant]:
    """Attention weights [B, h, N, N] of the usual mistakes."""
    B, H, N, d = q.shape
    logits = q @ k.transpose(-2, -1)  # [B, h, N, N]
    s = logits / math.sqrt(d)
    return [
        ("the 1/sqrt(d) scale is missing: softmax(q @ k^T / sqrt(d)) with d = q.shape[-1], the head dim",
         lambda: logits.softmax(-1)),
        ("the logits are scaled by 1/d instead of 1/sqrt(d)", lambda: (logits / d).softmax(-1)),
        ("the logits are multiplied by sqrt(d) instead of divided by it", lambda: (logits * math.sqrt(d)).softmax(-1)),
        ("the softmax is over the wrong axis (dim=-2, the queries); each row (one query) must sum to 1 over the "
         "keys: softmax(dim=-1)", lambda: s.softmax(-2)),
        ("the softmax is over the heads axis (dim=1); it must run over the keys: softmax(dim=-1)",
         lambda: s.softmax(1)),
        ("the softmax is over the batch axis (dim=0); it must run over the keys: softmax(dim=-1)",
         lambda: s.softmax(0)),
        ("the softmax is missing: the weights must be softmax(q @ k^T / sqrt(d), dim=-1)", lambda: s),
        ("the weights are transposed (k @ q^T instead of q @ k^T)", lambda: (k @ q.transpose(-2, -1) / math.sqrt(d)).softmax(-1)),
        ("the scale uses the number of tokens N (q.shape[-2]); use the head dim d = q.shape[-1]",
         lambda: (logits / math.sqrt(N)).softmax(-1)),
        ("the scale uses the number of heads (q.shape[1]); use the head dim d = q.shape[-1]",
         lambda: (logits / math.sqrt(H)).softmax(-1)),
    ]


def check_attention(attention: Callable[..., Tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Check ``attention(q, k, v) -> (out, weights)`` for q, k, v of shape [B, heads, N, d].

    weights = softmax(q k^T / sqrt(d), dim=-1) [B, heads, N, N] (each row sums to 1) and
    out = weights @ v [B, heads, N, d]. Using F.scaled_dot_product_attention for ``out`` is fine as long as
    the weights are returned too.
    """
    check = "check_attention"
    _callable(check, attention, "attention(q, k, v)")
    cases = [(2, 4, 6, 8), (1, 1, 5, 16), (3, 2, 7, 4), (1, 3, 4, 32)]  # B, heads, N, d
    for seed, (B, H, N, d) in enumerate(cases):
        with _seeded(seed):
            q, k, v = torch.randn(B, H, N, d), torch.randn(B, H, N, d), torch.randn(B, H, N, d)
            before = [q.clone(), k.clone(), v.clone()]
            inputs = f"q, k, v each {list(q.shape)} ([B, heads, N, d])"
            got = _call(check, "attention(q, k, v)", attention, (q, k, v), inputs)
            _check_unchanged(check, before, [q, k, v], ["q", "k", "v"], inputs)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise CheckError(f"{check}: attention must return a tuple (out, weights), got {_shape(got)}"
                                 f"{' of shape ' + _shape(got) if isinstance(got, torch.Tensor) else ''}\n  inputs: {inputs}")
            out, weights = got
            if isinstance(out, torch.Tensor) and isinstance(weights, torch.Tensor) \
                    and tuple(out.shape) == (B, H, N, N) and tuple(weights.shape) == (B, H, N, d):
                raise CheckError(f"{check}: the outputs are swapped: return (out, weights), with out [B, heads, N, d] "
                                 f"and weights [B, heads, N, N]\n  inputs: {inputs}")
            exp_out, exp_w = scaled_dot_product_attention(*before)
            w_mutants = _weight_mutants(before[0], before[1])
            _compare(check, weights, exp_w, w_mutants, inputs, what="weights",
                     shape_hint=lambda s: "weights must be [B, heads, N, N]: one row of N key weights per query")
            out_mutants = [(msg, lambda m=make: m() @ before[2]) for msg, make in w_mutants]
            out_mutants.append(("out uses the transposed weights: out = weights @ v", lambda: exp_w.transpose(-2, -1) @ before[2]))
            _compare(check, out, exp_out, out_mutants, inputs, what="out",
                     shape_hint=lambda s: "out must be weights @ v: [B, heads, N, d]")
    _passed(check, len(cases))


# ------------------------------------------------------------------------------- 5 multi-head attention
def _mha(x: torch.Tensor, qkv: nn.Linear, proj: nn.Linear, heads: int, *, split: str = "(three h d)",
         merge: str = "(h d)", scale: Optional[float] = None, softmax_dim: int = -1, use_proj: bool = True,
         reshape_split: bool = False, reshape_merge: bool = False) -> torch.Tensor:
    """Multi-head attention with switchable mistakes; the defaults give the right answer."""
    B, N, D = x.shape
    d = D // heads
    y = F.linear(x, qkv.weight, qkv.bias)  # [B, N, 3D]
    if reshape_split:  # q [B, N, D] viewed as [B, h, N, d] without moving axes
        q, k, v = (t.reshape(B, heads, N, d) for t in y.chunk(3, dim=-1))
    else:
        q, k, v = rearrange(y, f"b n {split} -> three b h n d", three=3, h=heads)  # 3 x [B, h, N, d]
    logits = q @ k.transpose(-2, -1) * (d ** -0.5 if scale is None else scale)
    out = logits.softmax(softmax_dim) @ v  # [B, h, N, d]
    out = out.reshape(B, N, D) if reshape_merge else rearrange(out, f"b h n d -> b n {merge}")
    return F.linear(out, proj.weight, proj.bias) if use_proj else out


def _mha_mutants(x: torch.Tensor, qkv: nn.Linear, proj: nn.Linear, heads: int) -> List[Mutant]:
    D = x.shape[-1]
    d = D // heads

    def m(**kw: Any) -> Callable[[], torch.Tensor]:
        return lambda: _mha(x, qkv, proj, heads, **kw)

    return [
        ("the qkv features are split as (h three d); the contract (paper code, timm) stacks them as (three h d): "
         "rearrange(self.qkv(x), 'b n (three h d) -> three b h n d', three=3, h=heads)", m(split="(h three d)")),
        ("the heads are split as (d h) instead of (h d): each head must own a contiguous block of d = D/heads "
         "features: 'b n (three h d) -> three b h n d' and merge with 'b h n d -> b n (h d)'",
         m(split="(three d h)", merge="(d h)")),
        ("q, k, v are split into heads as (d h) instead of (h d): use 'b n (three h d) -> three b h n d'",
         m(split="(three d h)")),
        ("the heads are merged as (d h) instead of (h d): use rearrange(out, 'b h n d -> b n (h d)')", m(merge="(d h)")),
        ("the heads are merged with a plain reshape of [B, h, N, d] to [B, N, D]; move the head axis next to d "
         "first: rearrange(out, 'b h n d -> b n (h d)') or out.transpose(1, 2).reshape(B, N, D)", m(reshape_merge=True)),
        ("q, k, v are split into heads with a plain reshape [B, N, D] -> [B, h, N, d]; split the feature axis and "
         "then move heads forward: rearrange(q, 'b n (h d) -> b h n d', h=heads)", m(reshape_split=True)),
        ("the heads are split AND merged with plain reshapes (no transpose); use rearrange 'b n (h d) -> b h n d' "
         "and 'b h n d -> b n (h d)'", m(reshape_split=True, reshape_merge=True)),
        ("the 1/sqrt(d) scale is missing (d = D/heads, the head dim)", m(scale=1.0)),
        ("the logits are scaled by 1/d instead of 1/sqrt(d)", m(scale=1.0 / d)),
        ("the scale uses the model dim D; use the head dim d = D/heads: 1/sqrt(d)", m(scale=D ** -0.5)),
        ("the softmax is over the wrong axis (dim=-2); each query's row must sum to 1 over the keys: softmax(dim=-1)",
         m(softmax_dim=-2)),
        ("the output projection is missing: finish with self.proj(out)", m(use_proj=False)),
        ("attention is computed as a single head over all D features; split q, k, v into `heads` heads of "
         "d = D/heads features", lambda: _mha(x, qkv, proj, 1)),
    ]


def _attention_module(check: str, module: nn.Module, dim: int, path: str = "") -> Tuple[nn.Linear, nn.Linear]:
    qkv = _linear(check, module, f"{path}qkv", dim, 3 * dim, " with output features in (three h d) order")
    proj = _linear(check, module, f"{path}proj", dim, dim)
    return qkv, proj


def check_multi_head_attention(MultiHeadAttention: type) -> None:
    """Check ``class MultiHeadAttention(nn.Module)``: ``__init__(self, dim, heads)``, forward [B, N, D] -> [B, N, D].

    Attributes: ``self.qkv = nn.Linear(dim, 3 * dim)`` whose output features are ordered (three h d)
    (q of head 0, q of head 1, ..., then k, then v), and ``self.proj = nn.Linear(dim, dim)``. The check copies
    your weights into ``vit_edu.Attention`` and compares the outputs.
    """
    check = "check_multi_head_attention"
    cases = [(32, 4, 2, 5), (24, 2, 1, 7), (16, 1, 3, 4), (48, 6, 2, 3)]  # dim, heads, B, N
    for seed, (D, H, B, N) in enumerate(cases):
        with _seeded(seed):
            module = _construct(check, MultiHeadAttention, (D, H), "(dim, heads)")
            qkv, proj = _attention_module(check, module, D)
            ref = Attention(D, H, fused_attn=False).eval()
            _copy_linear(qkv, ref.qkv)
            _copy_linear(proj, ref.proj)
            x = torch.randn(B, N, D)
            inputs = f"MultiHeadAttention(dim={D}, heads={H}), x {list(x.shape)}"
            got = _call(check, "MultiHeadAttention.forward(x)", module, (x,), inputs)
            _compare(check, got, ref(x), _mha_mutants(x, ref.qkv, ref.proj, H), inputs,
                     shape_hint=lambda s: "the output has the input's shape [B, N, D]")
    _passed(check, len(cases))


# ----------------------------------------------------------------------------------------------- 6 MLP
def _mlp_mutants(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear) -> List[Mutant]:
    h = lambda: F.linear(x, fc1.weight, fc1.bias)  # noqa: E731  [B, N, hidden]
    f2 = lambda t: F.linear(t, fc2.weight, fc2.bias)  # noqa: E731
    return [
        ("ReLU is used instead of GELU: nn.GELU()", lambda: f2(F.relu(h()))),
        ("the activation is missing: fc1 -> GELU -> fc2 (without it the two Linears collapse into one)",
         lambda: f2(h())),
        ("SiLU/Swish is used instead of GELU: nn.GELU()", lambda: f2(F.silu(h()))),
        ("GELU is applied after fc2 as well; the MLP is fc1 -> GELU -> fc2", lambda: F.gelu(f2(F.gelu(h())))),
        ("the MLP adds its input (a residual); the residual belongs to the encoder block, not the MLP",
         lambda: x + f2(F.gelu(h()))),
    ]


def check_mlp(MLP: type) -> None:
    """Check ``class MLP(nn.Module)``: ``__init__(self, dim, hidden_dim)``, forward [B, N, D] -> [B, N, D].

    ``self.fc1 = nn.Linear(dim, hidden_dim)``, GELU, ``self.fc2 = nn.Linear(hidden_dim, dim)`` (paper eq. 3).
    The check copies your weights into ``vit_edu.Mlp``. Both GELUs pass: the exact (erf) one of timm,
    torchvision and ``nn.GELU()``, and the tanh approximation (``nn.GELU(approximate="tanh")``), which is
    what the paper's JAX code uses (flax's ``nn.gelu`` approximates by default).
    """
    check = "check_mlp"
    cases = [(16, 64, 2, 5), (8, 32, 1, 3), (32, 48, 3, 1)]  # dim, hidden, B, N
    for seed, (D, Hd, B, N) in enumerate(cases):
        with _seeded(seed):
            module = _construct(check, MLP, (D, Hd), "(dim, hidden_dim)")
            fc1 = _linear(check, module, "fc1", D, Hd)
            fc2 = _linear(check, module, "fc2", Hd, D)
            ref = Mlp(D, Hd).eval()
            _copy_linear(fc1, ref.fc1)
            _copy_linear(fc2, ref.fc2)
            x = 3.0 * torch.randn(B, N, D)  # large enough that GELU, its tanh approximation and ReLU all differ
            inputs = f"MLP(dim={D}, hidden_dim={Hd}), x {list(x.shape)}"
            got = _call(check, "MLP.forward(x)", module, (x,), inputs)
            with torch.no_grad():  # the paper's own code uses the tanh approximation of GELU: also correct
                tanh_ref = ref.fc2(F.gelu(ref.fc1(x), approximate="tanh"))
            if isinstance(got, torch.Tensor) and got.shape == tanh_ref.shape and _close(got.detach().float(), tanh_ref):
                continue
            _compare(check, got, ref(x), _mlp_mutants(x, ref.fc1, ref.fc2), inputs,
                     shape_hint=lambda s: "the output has the input's shape [B, N, D]")
    _passed(check, len(cases))


# ------------------------------------------------------------------------------------- 7 encoder block
def _block_mutants(x: torch.Tensor, ref: Block) -> List[Mutant]:
    attn = lambda t: ref.attn(t)  # noqa: E731
    mlp = lambda t: ref.mlp(t)  # noqa: E731
    n1, n2 = ref.norm1, ref.norm2

    def pre(norm_a: Callable = n1, norm_b: Callable = n2, res_a: bool = True, res_b: bool = True,
            act: Optional[Callable] = None) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            h = attn(norm_a(x)) + (x if res_a else 0)
            m = ref.mlp if act is None else (lambda t: ref.mlp.fc2(act(ref.mlp.fc1(t))))
            return m(norm_b(h)) + (h if res_b else 0)
        return run

    def post() -> torch.Tensor:
        h = n1(x + attn(x))
        return n2(h + mlp(h))

    def post_inner() -> torch.Tensor:  # x + LN(attn(x)): norm on the branch output
        h = x + n1(attn(x))
        return h + n2(mlp(h))

    def normed_residual() -> torch.Tensor:
        y = n1(x)
        h = y + attn(y)
        z = n2(h)
        return z + mlp(z)

    def parallel() -> torch.Tensor:
        h = x + attn(n1(x))
        return h + mlp(n2(x))

    def no_norm() -> torch.Tensor:
        h = x + attn(x)
        return h + mlp(h)

    return [
        ("the attention residual is missing: x = x + self.attn(self.norm1(x))", pre(res_a=False)),
        ("the MLP residual is missing: x = x + self.mlp(self.norm2(x))", pre(res_b=False)),
        ("both residual connections are missing: x = x + attn(norm1(x)); x = x + mlp(norm2(x))",
         pre(res_a=False, res_b=False)),
        ("this is post-norm (x = norm(x + sublayer(x)), the original Transformer); ViT is pre-norm: "
         "x = x + self.attn(self.norm1(x)); x = x + self.mlp(self.norm2(x))", post),
        ("the LayerNorm is applied to the sublayer output (x + norm(attn(x))); ViT normalises the sublayer INPUT: "
         "x = x + self.attn(self.norm1(x))", post_inner),
        ("the residual adds the normalised input; add the block input itself: x = x + self.attn(self.norm1(x)), "
         "not norm1(x) + attn(norm1(x))", normed_residual),
        ("norm1 and norm2 are swapped: norm1 goes before attention, norm2 before the MLP", pre(norm_a=n2, norm_b=n1)),
        ("norm1 is used for both sublayers; the MLP branch needs its own self.norm2", pre(norm_b=n1)),
        ("norm2 is used for both sublayers; the attention branch needs self.norm1", pre(norm_a=n2)),
        ("the LayerNorms are missing: x = x + self.attn(self.norm1(x)); x = x + self.mlp(self.norm2(x))", no_norm),
        ("the MLP reads the block input x instead of the attention output: h = x + attn(norm1(x)); "
         "out = h + mlp(norm2(h))", parallel),
        ("ReLU is used instead of GELU in the MLP", pre(act=F.relu)),
        ("the MLP has no activation: fc1 -> GELU -> fc2", pre(act=lambda t: t)),
    ]


def _check_norm(check: str, module: nn.Module, name: str) -> nn.Module:
    norm = _get(check, module, name, "nn.LayerNorm(dim, eps=1e-6)")
    eps = getattr(norm, "eps", None)
    if isinstance(eps, float) and not math.isclose(eps, 1e-6):
        raise CheckError(f"{check}: `self.{name}` has eps={eps:g}; ViT (paper code, timm, torchvision) uses "
                         f"nn.LayerNorm(dim, eps=1e-6)")
    return norm


def check_encoder_block(EncoderBlock: type) -> None:
    """Check ``class EncoderBlock(nn.Module)``: ``__init__(self, dim, heads, mlp_dim)``, forward [B, N, D] -> [B, N, D].

    Pre-norm, as in the paper (eqs. 2-3): ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``. Attributes:
    ``norm1``, ``norm2`` (nn.LayerNorm(dim, eps=1e-6)), ``attn`` with ``.qkv`` / ``.proj`` (as in
    MultiHeadAttention), ``mlp`` with ``.fc1`` / ``.fc2``. The check randomises the LayerNorm affine
    parameters, copies all weights into ``vit_edu.Block`` and compares.
    """
    check = "check_encoder_block"
    cases = [(32, 4, 64, 2, 5), (16, 2, 32, 1, 3), (24, 3, 48, 2, 6)]  # dim, heads, mlp_dim, B, N
    for seed, (D, H, M, B, N) in enumerate(cases):
        with _seeded(seed):
            module = _construct(check, EncoderBlock, (D, H, M), "(dim, heads, mlp_dim)")
            norms = [_check_norm(check, module, n) for n in ("norm1", "norm2")]
            qkv, proj = _attention_module(check, module, D, "attn.")
            fc1 = _linear(check, module, "mlp.fc1", D, M)
            fc2 = _linear(check, module, "mlp.fc2", M, D)
            ref = Block(D, H, M, fused_attn=False).eval()
            for norm, ref_norm in zip(norms, (ref.norm1, ref.norm2)):
                w, b = getattr(norm, "weight", None), getattr(norm, "bias", None)
                if isinstance(w, torch.Tensor) and w.shape == (D,):
                    w.copy_(1.0 + 0.5 * torch.randn(D))  # so that swapped or shared norms show up
                    ref_norm.weight.copy_(w)
                if isinstance(b, torch.Tensor) and b.shape == (D,):
                    b.copy_(0.5 * torch.randn(D))
                    ref_norm.bias.copy_(b)
            for src, dst in ((qkv, ref.attn.qkv), (proj, ref.attn.proj), (fc1, ref.mlp.fc1), (fc2, ref.mlp.fc2)):
                _copy_linear(src, dst)
            x = torch.randn(B, N, D)
            inputs = f"EncoderBlock(dim={D}, heads={H}, mlp_dim={M}), x {list(x.shape)}"
            y = ref.norm1(x)
            # the sub-modules first, so a mistake inside attn or mlp is named precisely
            for name, sub, ref_sub, mut in (
                ("attn", module.attn, ref.attn, lambda: _mha_mutants(y, ref.attn.qkv, ref.attn.proj, H)),
                ("mlp", module.mlp, ref.mlp, lambda: _mlp_mutants(y, ref.mlp.fc1, ref.mlp.fc2)),
            ):
                try:
                    sub_out = sub(y)
                except Exception:  # noqa: BLE001 - a sub-module with another calling convention: judge the block only
                    continue
                if isinstance(sub_out, torch.Tensor) and sub_out.shape == y.shape:
                    _compare(check, sub_out, ref_sub(y), mut(), inputs, what=f"self.{name}(x)")
            got = _call(check, "EncoderBlock.forward(x)", module, (x,), inputs)
            _compare(check, got, ref(x), _block_mutants(x, ref), inputs,
                     shape_hint=lambda s: "the output has the input's shape [B, N, D]")
    _passed(check, len(cases))


# ----------------------------------------------------------------------------------------- 8 ViT forward
def _vit_mutants(model: VisionTransformer, images: torch.Tensor) -> List[Mutant]:
    B = images.shape[0]

    def run(cls: str = "front", pos: str = "all", norm: bool = True, pool: str = "cls",
            blocks: Optional[Sequence[int]] = None) -> Callable[[], torch.Tensor]:
        def f() -> torch.Tensor:
            t = model.patch_embed(images)  # [B, N, D]
            N = t.shape[1]
            c = repeat(model.cls_token, "1 1 d -> b 1 d", b=B)
            p = model.pos_embed
            if cls == "front":
                x = torch.cat([c, t], 1) + (p if pos == "all" else 0)
                if pos == "before_cls":
                    x = torch.cat([c, t + p[:, 1:]], 1)
            elif cls == "end":
                x = torch.cat([t, c], 1) + (p if pos == "all" else 0)
            else:  # no class token
                x = t + (p[:, 1:] if pos == "all" else p[:, :N] if pos == "first" else 0)
            for i in (range(len(model.blocks)) if blocks is None else blocks):
                x = model.blocks[i](x)
            if norm:
                x = model.norm(x)
            pooled = {"cls": x[:, 0], "last": x[:, -1], "mean": x.mean(1), "mean_patches": x[:, 1:].mean(1)}[pool]
            return model.head(pooled)
        return f

    L = len(model.blocks)
    return [
        ("the class token is missing: prepend model.cls_token (expanded to the batch) before adding "
         "model.pos_embed, and classify from it", run(cls="none")),
        ("the class token is missing (and pos_embed was cut to N rows): prepend model.cls_token before adding "
         "model.pos_embed", run(cls="none", pos="first")),
        ("the position embedding is missing: x = torch.cat([cls, tokens], dim=1) + model.pos_embed", run(pos="none")),
        ("the class token is appended at the end; it goes in front (index 0)", run(cls="end")),
        ("the class token is appended at the end; it goes in front (index 0), and the head reads x[:, 0]",
         run(cls="end", pool="last")),
        ("the position embedding was added before prepending the class token (the class token misses "
         "pos_embed[:, 0]); concatenate first, then add model.pos_embed", run(pos="before_cls")),
        ("the final LayerNorm model.norm is missing (paper eq. 4: y = LN(z_L^0))", run(norm=False)),
        ("the logits come from the mean of all tokens; ViT classifies from the class token: model.head(x[:, 0])",
         run(pool="mean")),
        ("the logits come from the mean of the patch tokens; this model classifies from the class token: "
         "model.head(x[:, 0])", run(pool="mean_patches")),
        ("the logits come from the last token x[:, -1]; the class token is x[:, 0]", run(pool="last")),
        ("the final LayerNorm is missing and the logits come from the mean of the tokens; use model.head(model.norm(x)[:, 0])",
         run(norm=False, pool="mean")),
        ("only the first block is applied; run them all: for blk in model.blocks: x = blk(x)", run(blocks=[0])),
        ("only the last block is applied; run them all: for blk in model.blocks: x = blk(x)", run(blocks=[L - 1])),
        ("the blocks are skipped: for blk in model.blocks: x = blk(x)", run(blocks=[])),
        ("the blocks run in reverse order", run(blocks=list(reversed(range(L))))),
    ]


def _forbidden(what: str) -> Callable[..., Any]:
    def f(*args: Any, **kwargs: Any) -> Any:
        raise CheckError(f"check_vit_forward: vit_forward called {what}; the exercise is to build the forward pass "
                         "yourself from model.patch_embed, model.cls_token, model.pos_embed, model.blocks, "
                         "model.norm and model.head")
    return f


def check_vit_forward(vit_forward: Callable[[VisionTransformer, torch.Tensor], torch.Tensor]) -> None:
    """Check ``vit_forward(model: vit_edu.VisionTransformer, images [B, C, H, W]) -> logits [B, num_classes]``.

    Built from the model's pieces (paper eqs. 1-4): tokens = model.patch_embed(images); prepend
    model.cls_token; add model.pos_embed; run every block of model.blocks; model.norm; model.head on the
    class token. Calling ``model(...)`` or ``model.forward_features`` is not allowed (they are disabled
    during the check). All parameters are randomised so that every piece matters.
    """
    check = "check_vit_forward"
    _callable(check, vit_forward, "vit_forward(model, images)")
    configs = [
        (dict(image_size=16, patch_size=4, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=64), 2),
        (dict(image_size=(8, 16), patch_size=4, num_classes=3, dim=24, depth=3, heads=2, mlp_dim=32,
              patch_embed="linear"), 1),
        (dict(image_size=8, patch_size=2, in_channels=1, num_classes=4, dim=16, depth=1, heads=1, mlp_dim=16,
              fused_attn=False), 3),
    ]
    for seed, (cfg, B) in enumerate(configs):
        with _seeded(seed):
            model = VisionTransformer(ViTConfig(**cfg)).eval()
            for name, p in model.named_parameters():  # every piece must matter, so nothing stays near 0 or 1
                if name in ("cls_token", "pos_embed"):
                    p.copy_(torch.randn_like(p))
                elif "norm" in name and name.endswith("weight"):
                    p.copy_(1.0 + 0.5 * torch.randn_like(p))
                elif p.ndim == 1:
                    p.copy_(0.5 * torch.randn_like(p))
                else:
                    p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)  # variance 1/fan_in
            c = model.config
            H, W = c.image_size if isinstance(c.image_size, tuple) else (c.image_size, c.image_size)
            images = torch.randn(B, c.in_channels, H, W)
            expected = model(images)
            inputs = (f"ViT(image_size={c.image_size}, patch_size={c.patch_size}, dim={c.dim}, depth={c.depth}, "
                      f"heads={c.heads}, num_classes={c.num_classes}), images {list(images.shape)}")
            model.forward = _forbidden("model(...)")  # type: ignore[method-assign]
            model.forward_features = _forbidden("model.forward_features(...)")  # type: ignore[method-assign]
            try:
                got = _call(check, "vit_forward(model, images)", vit_forward, (model, images), inputs)
            finally:
                del model.forward, model.forward_features
            _compare(check, got, expected, _vit_mutants(model, images), inputs, what="logits",
                     shape_hint=lambda s: "one row of num_classes logits per image: model.head(x[:, 0])")
    _passed(check, len(configs))


# -------------------------------------------------------------------------------------- 9 attention rollout
def _rollout_reference(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema (2020): mean over heads, + I, rows renormalised, R = Â_L ... Â_1. [B, T, T]."""
    result: Optional[torch.Tensor] = None
    for attn in attentions:  # first layer to last
        a = reduce(attn, "b h t s -> b t s", "mean")
        a = a + torch.eye(a.shape[-1])  # the residual connection carries the token itself
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    assert result is not None
    return result


def _rollout_variant(attentions: Sequence[torch.Tensor], fuse: str = "mean", identity: bool = True,
                     renorm: str = "rows", order: str = "last_left") -> torch.Tensor:
    result: Optional[torch.Tensor] = None
    for attn in attentions:
        a = {"mean": lambda: attn.mean(1), "max": lambda: attn.amax(1), "sum": lambda: attn.sum(1),
             "keep": lambda: attn}[fuse]()
        if identity:
            a = a + torch.eye(a.shape[-1])
        if renorm == "rows":
            a = a / a.sum(dim=-1, keepdim=True)
        elif renorm == "cols":
            a = a / a.sum(dim=-2, keepdim=True)
        if result is None:
            result = a
        elif order == "last_left":
            result = a @ result
        elif order == "first_left":
            result = result @ a
        elif order == "sum":
            result = result + a
        else:  # elementwise
            result = result * a
    assert result is not None
    return result


def _rollout_mutants(att: Sequence[torch.Tensor]) -> List[Mutant]:
    v = lambda **kw: (lambda: _rollout_variant(att, **kw))  # noqa: E731
    return [
        ("the identity is missing: add torch.eye(T) to each head-averaged attention matrix (the residual "
         "connection), then renormalise the rows", v(identity=False)),
        ("the rows are not renormalised after adding the identity: divide each row by its sum so it sums to 1",
         v(renorm="none")),
        ("the columns are normalised instead of the rows: a / a.sum(dim=-1, keepdim=True)", v(renorm="cols")),
        ("the layers are multiplied in the wrong order (Â_1 Â_2 ... Â_L); the rollout is R = Â_L ... Â_2 Â_1: "
         "result = a @ result", v(order="first_left")),
        ("the heads are not averaged: the max over heads was taken; use attn.mean(dim=1)", v(fuse="max")),
        ("the heads are summed, not averaged: use attn.mean(dim=1)", v(fuse="sum")),
        ("the heads are summed, not averaged, and the rows not renormalised: use attn.mean(dim=1), + I, renormalise",
         v(fuse="sum", renorm="none")),
        ("each head is rolled out separately and averaged at the end; average the heads in every layer first",
         lambda: _rollout_variant(att, fuse="keep").mean(1)),
        ("only the last layer is used; multiply all layers: R = Â_L ... Â_1",
         lambda: _rollout_variant(att[-1:])),
        ("the layers are added instead of multiplied: R = Â_L ... Â_1", v(order="sum")),
        ("the layers are multiplied elementwise (*) instead of as matrices (@)", v(order="elementwise")),
    ]


def _rollout_ref_impl() -> Callable[[Sequence[torch.Tensor]], torch.Tensor]:
    try:  # the package's own rollout, once vit_edu.analysis exists
        from .analysis import attention_rollout  # type: ignore[attr-defined]
        return attention_rollout
    except ImportError:
        return _rollout_reference


def check_rollout(attention_rollout: Callable[[List[torch.Tensor]], torch.Tensor]) -> None:
    """Check ``attention_rollout(attentions: list of L tensors [B, heads, T, T]) -> [B, T, T]``.

    Abnar & Zuidema (2020): per layer Â_l = rownorm(mean_heads(A_l) + I); rollout R = Â_L ... Â_2 Â_1.
    Row i of R says how much each input token flows into output token i (row 0: the class token).
    """
    check = "check_rollout"
    _callable(check, attention_rollout, "attention_rollout(attentions)")
    cases = [(3, 2, 4, 5), (2, 1, 2, 6), (1, 1, 3, 4), (4, 3, 1, 10)]  # layers, B, heads, T
    reference = _rollout_ref_impl()
    for seed, (L, B, H, T) in enumerate(cases):
        with _seeded(seed):
            att = [(2.0 * torch.randn(B, H, T, T)).softmax(-1) for _ in range(L)]
            before = [a.clone() for a in att]
            inputs = f"{L} attention maps of shape {list(att[0].shape)} ([B, heads, T, T])"
            got = _call(check, "attention_rollout(attentions)", attention_rollout, (att,), inputs)
            _check_unchanged(check, before, att, [f"attentions[{i}]" for i in range(L)], inputs)

            def shape_hint(s: Tuple[int, ...], B: int = B, H: int = H, T: int = T) -> str:
                if s == (B, H, T, T):
                    return "the heads axis is still there: average over heads (attn.mean(dim=1)) in every layer"
                return "the rollout is one T x T matrix per image: [B, T, T]"

            _compare(check, got, reference(before), _rollout_mutants(before), inputs, what="rollout",
                     shape_hint=shape_hint)
    _passed(check, len(cases))


CHECKS = {
    "patchify": check_patchify, "patch_embedding": check_patch_embedding, "cls_and_pos": check_cls_and_pos,
    "attention": check_attention, "multi_head_attention": check_multi_head_attention, "mlp": check_mlp,
    "encoder_block": check_encoder_block, "vit_forward": check_vit_forward, "rollout": check_rollout,
}
