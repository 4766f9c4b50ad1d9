"""The exercises of notebooks 00, 02, 04 and 06: count, tabulate, normalise, schedule, train.

Each exercise is a table like those of :mod:`.exercises_build`: cases built from the seed (shapes and sizes
chosen so that every usual mistake changes the answer: non-square grids, a large eps, a step after the end
of training), the reference (the package's own code wherever it has one), and the usual mistakes with the
message that explains each. :mod:`.engine` does the rest.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from .engine import (Case, Ctx, Exercise, Malformed, Mutant, build_cases, error_record, mix_seed, parse_record,
                     record_value)


def _randint(low: int, high: int) -> int:
    """An int in [low, high] from torch's (seeded) random stream."""
    return int(torch.randint(low, high + 1, ()).item())


def _is_none(got: Any) -> bool:
    return getattr(got, "type", None) == "NoneType"


def _is_number(got: Any) -> bool:
    return isinstance(got, (int, float)) and not isinstance(got, bool)


# ======================================================================================= 00 param_count
def _count_parts(image_size: int, patch_size: int, in_channels: int, dim: int, depth: int, mlp_dim: int,
                 num_classes: int) -> Dict[str, int]:
    """Every group of parameters of the paper's ViT, by name (the mistakes leave some out)."""
    n = (image_size // patch_size) ** 2
    D, L, M, K = dim, depth, mlp_dim, num_classes
    return dict(E=patch_size * patch_size * in_channels * D, E_bias=D, cls=D, pos=(n + 1) * D,
                norms=L * 2 * 2 * D, qkv=L * 3 * D * D, qkv_bias=L * 3 * D, proj=L * D * D, proj_bias=L * D,
                mlp=L * 2 * D * M, mlp_bias=L * (M + D), final_norm=2 * D, head=D * K, head_bias=K)


def _param_count_reference(ctx: Ctx, image_size: int, patch_size: int, in_channels: int, dim: int, depth: int,
                           mlp_dim: int, num_classes: int) -> int:
    """The model's own count: vit_edu builds it on the meta device (shapes only, no memory, no time)."""
    from ..config import ViTConfig
    from ..vit import VisionTransformer

    class Shapes(VisionTransformer):
        def init_weights(self) -> None:  # only the shapes count (and meta-device init imports torch._refs: slow)
            pass

    config = ViTConfig(image_size=image_size, patch_size=patch_size, in_channels=in_channels, dim=dim, depth=depth,
                       heads=1, mlp_dim=mlp_dim, num_classes=num_classes)
    with torch.device("meta"):
        return sum(p.numel() for p in Shapes(config).parameters())


def _param_count_mutants(args: Tuple[int, ...]) -> List[Tuple[str, int]]:
    image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes = args
    parts = _count_parts(*args)
    total = sum(parts.values())

    def without(*names: str) -> int:
        return total - sum(parts[n] for n in names)

    def other(**changes: int) -> int:
        kw = dict(image_size=image_size, patch_size=patch_size, in_channels=in_channels, dim=dim, depth=depth,
                  mlp_dim=mlp_dim, num_classes=num_classes)
        kw.update(changes)
        return sum(_count_parts(**kw).values())

    grid = image_size // patch_size
    return [
        (f"your count is exactly dim = {dim} too small: the class token x_class (one D-vector) is missing, or "
         f"E_pos has N rows instead of N + 1 (the class token has a position too), or E has no bias",
         without("cls")),
        (f"your count is exactly 2 x dim = {2 * dim} too small: the final LayerNorm (eq. 4: a scale and a shift, "
         f"2D) is missing, or both the class token and its row of E_pos (N + 1 rows)", without("final_norm")),
        ("the position embedding E_pos ((N + 1) x D) is missing", without("pos")),
        ("the biases are missing: E, W_qkv, the output projection, both MLP layers and the head each have one",
         without("E_bias", "qkv_bias", "proj_bias", "mlp_bias", "head_bias")),
        ("the biases inside the blocks (W_qkv, output projection, MLP) are missing",
         without("qkv_bias", "proj_bias", "mlp_bias")),
        ("the bias of W_qkv (3D per block) is missing", without("qkv_bias")),
        ("the bias of the attention's output projection (D per block) is missing", without("proj_bias")),
        ("the biases of the MLP (M + D per block) are missing", without("mlp_bias")),
        ("the head's bias (K = num_classes values) is missing", without("head_bias")),
        ("the LayerNorms are missing: two per block and the final one, each with a scale and a shift of D values",
         without("norms", "final_norm")),
        ("the LayerNorms inside the blocks are missing (two per block, 2D parameters each)", without("norms")),
        ("each LayerNorm has a scale AND a shift: 2D parameters, not D", total - parts["norms"] // 2 - dim),
        ("each block has two LayerNorms (one before attention, one before the MLP), 2D parameters each",
         total - depth * 2 * dim),
        ("the head (Linear D -> K with a bias: DK + K parameters) is missing", without("head", "head_bias")),
        ("the head and the final LayerNorm are missing", without("head", "head_bias", "final_norm")),
        ("the attention's output projection (Linear D -> D with a bias, in every block) is missing",
         without("proj", "proj_bias")),
        ("W_qkv is counted as one D x D matrix; it maps D to 3D (queries, keys and values): 3D^2 + 3D per block",
         total - depth * (2 * dim * dim + 2 * dim)),
        ("the MLP is missing from the blocks", without("mlp", "mlp_bias")),
        ("the MLP size is the mlp_dim argument, not 4 * dim", other(mlp_dim=4 * dim)),
        ("the patch embedding reads P x P x C numbers per patch: in_channels is missing from E", other(in_channels=1)),
        (f"N is the number of patches of the whole image, (image_size / patch_size)^2 = {grid ** 2}, not "
         f"image_size / patch_size = {grid}", total - (grid * grid - grid) * dim),
        ("the encoder has depth = L blocks: multiply the count of one block by depth", other(depth=1)),
        ("the blocks are counted depth + 1 times", other(depth=depth + 1)),
    ]


def _param_count_diagnose(ctx: Ctx, got: Any, *args: int) -> Optional[str]:
    if _is_none(got):
        return "vit_param_count returned None: did you forget to `return` the count?"
    if isinstance(got, float):
        exact = " (the right value, but a float)" if got == _param_count_reference(ctx, *args) else ""
        return (f"return a Python int, got the float {got!r}{exact}: count with integers, e.g. // for the number "
                f"of patches (/ always gives a float)")
    if isinstance(got, torch.Tensor):
        return "return a Python int (e.g. int(...) or .item()), not a tensor"
    if not _is_number(got):
        return f"return a Python int, got {getattr(got, 'type', type(got).__name__)}"
    want = _param_count_reference(ctx, *args)
    if got == want:
        return None
    for message, value in _param_count_mutants(args):
        if got == value:
            return f"wrong count {got:,} (the model has {want:,}): {message}"
    dim = args[3]
    diff = got - want
    per = f" = {diff / dim:+g} x dim" if diff % dim == 0 else ""
    return (f"wrong count: {got:,}, the model has {want:,} ({diff:+,}{per}); none of the usual mistakes matches. "
            f"Count group by group: E and its bias, x_class, E_pos (N + 1 rows), per block 2 LayerNorms + W_qkv + "
            f"projection + MLP (all with biases), the final LayerNorm, the head")


def _param_count_cases() -> List[Case]:
    cases = [Case((224, 16, 3, 768, 12, 3072, 1000), label="ViT-B/16: image_size=224, patch_size=16, in_channels=3, "
                  "dim=768, depth=12, mlp_dim=3072, num_classes=1000")]
    for _ in range(4):
        P = [2, 4, 8][_randint(0, 2)]
        dim = 8 * _randint(2, 12)
        mlp = dim * _randint(1, 3) + 8 * _randint(1, 4)  # never 4 * dim: the mlp_dim argument matters
        cases.append(Case((P * _randint(2, 7), P, _randint(2, 4), dim, _randint(2, 6), mlp, _randint(2, 20))))
    cases.append(Case((30, 4, 3, 32, 2, 72, 10), raises="ValueError",
                      why="patch_size=4 does not divide image_size=30 (the exercise asks for it)"))
    return cases


PARAM_COUNT_EX = Exercise(
    name="param_count", kind="function",
    call="vit_param_count(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes)",
    cases=_param_count_cases, reference=_param_count_reference, diagnose=_param_count_diagnose,
    doc="""Check ``vit_param_count(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes) -> int``.

    The number of parameters of the ViT vit_edu builds (the same as timm's): E with its bias, the class
    token, E_pos with N + 1 rows, per block two LayerNorms (scale and shift), W_qkv (D -> 3D) and the output
    projection with biases, the MLP with biases; the final LayerNorm and the head with its bias. A ValueError
    when patch_size does not divide image_size. Compared with the model's own count on the meta device,
    including the paper's ViT-B/16 (86,567,656).
    """,
)


# ========================================================================================= 02 sincos_2d
def _sincos_table(grid_h: int, grid_w: int, dim: int, *, order: str = "ij", divide: Optional[int] = None,
                  sign: float = -1.0, start: int = 0, blocks: str = "cCrR", base: float = 10000.0,
                  scaled: bool = False, interleave: bool = False) -> torch.Tensor:
    """The 2-D sin-cos table with switchable mistakes; the defaults give the contract's table."""
    k = dim // 4
    omega = base ** (sign * torch.arange(k, dtype=torch.float64) / (k if divide is None else divide))
    if order == "ij":
        r, c = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    else:  # column-major numbering of the positions
        c, r = torch.meshgrid(torch.arange(grid_w), torch.arange(grid_h), indexing="ij")
    r, c = r.reshape(-1).double() + start, c.reshape(-1).double() + start
    if scaled:
        r, c = r / grid_h, c / grid_w
    r, c = r[:, None] * omega, c[:, None] * omega  # [N, K]
    parts = {"c": c.sin(), "C": c.cos(), "r": r.sin(), "R": r.cos()}
    if interleave:  # sin w0, cos w0, sin w1, cos w1, ... per axis
        col = rearrange(torch.stack([parts[blocks[0]], parts[blocks[1]]], -1), "n k two -> n (k two)")
        row = rearrange(torch.stack([parts[blocks[2]], parts[blocks[3]]], -1), "n k two -> n (k two)")
        return torch.cat([col, row], dim=1).float()
    return torch.cat([parts[b] for b in blocks], dim=1).float()


def _sincos_reference(ctx: Ctx, grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    from ..pos_embed import sincos_2d_pos_embed

    return sincos_2d_pos_embed(dim, (grid_h, grid_w))


def _sincos_mutants(ctx: Ctx, grid_h: int, grid_w: int, dim: int) -> List[Mutant]:
    def t(**kw: Any) -> Callable[[], torch.Tensor]:
        return lambda: _sincos_table(grid_h, grid_w, dim, **kw)

    k = dim // 4
    return [
        ("the row's features come before the column's; the contract is [sin(c w), cos(c w), sin(r w), cos(r w)]: "
         "the column c first, then the row r", t(blocks="rRcC")),
        ("the positions are numbered column by column (index c * grid_h + r); the contract is row-major like the "
         "patches: row r * grid_w + c (meshgrid(rows, cols, indexing='ij'), then flatten)", t(order="ji")),
        ("the positions are numbered column by column and the row's features come first; the contract is "
         "row-major (index r * grid_w + c) with [sin(c w), cos(c w), sin(r w), cos(r w)]",
         t(order="ji", blocks="rRcC")),
        ("the blocks are in timm's order [sin r, sin c, cos r, cos c]; the contract's order is "
         "[sin c, cos c, sin r, cos r]", t(blocks="rcRC")),
        ("the blocks are in the order [sin c, sin r, cos c, cos r]; the contract's order is "
         "[sin c, cos c, sin r, cos r]", t(blocks="crCR")),
        ("cos comes before sin; the contract's order is [sin c, cos c, sin r, cos r]", t(blocks="CcRr")),
        ("sin and cos are interleaved (sin w0, cos w0, sin w1, ...); the contract puts the K sines first, then the "
         "K cosines, for the column and then for the row", t(interleave=True)),
        (f"the frequencies are 10000^(-k/(K - 1)) (big_vision's code); the contract divides by K = dim/4 = {k}: "
         f"w_k = 10000^(-k/K)", t(divide=k - 1)),
        ("the frequencies grow (10000^(+k/K)); they must shrink: w_k = 10000^(-k/K) = 1 / 10000^(k/K)", t(sign=1.0)),
        (f"the exponent divides by dim = {dim}; it divides by K = dim/4: w_k = 10000^(-k/K)", t(divide=dim)),
        (f"the exponent divides by dim/2 = {dim // 2}; it divides by K = dim/4: w_k = 10000^(-k/K)",
         t(divide=dim // 2)),
        ("the positions must start at 0 (the first patch is row 0, column 0); yours start at 1", t(start=1)),
        ("the positions are scaled (r / grid_h, c / grid_w); use the integer row and column indices r and c",
         t(scaled=True)),
        ("the base of the frequencies is not 10000: w_k = 10000^(-k/K)", t(base=1000.0)),
        ("the base of the frequencies is not 10000: w_k = 10000^(-k/K)", t(base=100.0)),
        ("the table has an extra batch axis: return [grid_h * grid_w, dim], not [1, grid_h * grid_w, dim]",
         lambda: _sincos_table(grid_h, grid_w, dim)[None]),
        ("the grid is not flattened: return [grid_h * grid_w, dim], one row per patch in row-major order",
         lambda: _sincos_table(grid_h, grid_w, dim).reshape(grid_h, grid_w, dim)),
    ]


def _sincos_diagnose(ctx: Ctx, got: Any, grid_h: int, grid_w: int, dim: int) -> Optional[str]:
    if isinstance(got, torch.Tensor) and got.dtype != torch.float32:
        return (f"the table should be float32 (torch's default dtype, what a model's weights use), got "
                f"{str(got.dtype).replace('torch.', '')}: compute in float32, or end with .float()")
    if type(got).__module__ == "numpy" or getattr(got, "type", "") == "ndarray":
        return "return a torch.Tensor (torch.from_numpy(...).float()), not a numpy array"
    return None


def _sincos_hint(ctx: Ctx, slot: int, shape: Tuple[int, ...], grid_h: int, grid_w: int, dim: int) -> str:
    return f"one row per patch: [grid_h * grid_w, dim] = [{grid_h * grid_w}, {dim}]"


def _sincos_cases() -> List[Case]:
    cases = []
    for _ in range(3):  # non-square first: a square grid cannot tell rows from columns
        h = _randint(2, 6)
        w = h + _randint(1, 3)
        cases.append(Case((h, w, 4 * _randint(2, 8)) if len(cases) != 1 else (w, h, 4 * _randint(2, 8))))
    cases.append(Case((1, _randint(3, 6), 12)))  # one row of patches
    side = _randint(5, 9)
    cases.append(Case((side, side, 64)))  # a square grid, larger positions
    cases.append(Case((3, 4, 10), raises="ValueError", why="dim=10 is not divisible by 4 (the exercise asks for it)"))
    return cases


SINCOS_2D_EX = Exercise(
    name="sincos_2d", kind="function", call="sincos_2d(grid_h, grid_w, dim)",
    cases=_sincos_cases, reference=_sincos_reference, mutants=_sincos_mutants, diagnose=_sincos_diagnose,
    shape_hint=_sincos_hint,
    doc="""Check ``sincos_2d(grid_h, grid_w, dim) -> [grid_h * grid_w, dim]`` (float32).

    Row r * grid_w + c (row-major, from 0) is [sin(c w_k), cos(c w_k), sin(r w_k), cos(r w_k)] for the
    K = dim/4 frequencies w_k = 10000^(-k/K), each block of K features; a ValueError when dim % 4 != 0.
    Compared with ``vit_edu.sincos_2d_pos_embed(dim, (grid_h, grid_w))`` on non-square grids.
    """,
)


# ======================================================================================== 04 layer_norm
def _ln(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, *, unbiased: bool = False,
        eps_out: bool = False, dim: Any = -1, affine: bool = True, center: bool = True, root: bool = True
        ) -> torch.Tensor:
    """LayerNorm with switchable mistakes; the defaults give F.layer_norm."""
    mu = x.mean(dim=dim, keepdim=True) if center else torch.zeros((), dtype=x.dtype)
    var = ((x - mu) ** 2).sum(dim=dim, keepdim=True) / (_count(x, dim) - (1 if unbiased else 0))
    if eps_out:
        den = var.sqrt() + eps
    else:
        den = (var + eps).sqrt() if root else var + eps
    y = (x - mu) / den
    return y * weight + bias if affine else y


def _count(x: torch.Tensor, dim: Any) -> int:
    dims = dim if isinstance(dim, tuple) else (dim,)
    return math.prod(x.shape[d] for d in dims)


def _layer_norm_reference(ctx: Ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
                          ) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def _layer_norm_mutants(ctx: Ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
                        ) -> List[Mutant]:
    def m(**kw: Any) -> Callable[[], torch.Tensor]:
        return lambda: _ln(x, weight, bias, eps, **kw)

    rest = tuple(range(1, x.dim()))
    return [
        ("the variance is the unbiased one (divided by D - 1, torch.var's and torch.std's default); LayerNorm divides "
         "by D: x.var(dim=-1, unbiased=False) or ((x - mean) ** 2).mean(-1)", m(unbiased=True)),
        ("eps is added outside the square root: sqrt(var) + eps; the formula is sqrt(var + eps)", m(eps_out=True)),
        ("the input is divided by the variance, not by its square root (the standard deviation): "
         "(x - mean) / sqrt(var + eps)", m(root=False)),
        ("the mean is not subtracted (that is RMSNorm); LayerNorm centres each vector: (x - mean) / sqrt(var + eps)",
         m(center=False)),
        ("the weight and bias are not applied: scale by weight (gamma) and shift by bias (beta) after normalising",
         m(affine=False)),
        ("weight and bias are swapped: y * weight + bias", lambda: _ln(x, bias, weight, eps)),
        ("the weight is added and the bias multiplied: y * weight + bias",
         lambda: _ln(x, 1.0, 0.0, eps) * bias + weight),
        ("the statistics are over the wrong axis (the tokens, axis -2); LayerNorm normalises each vector over its "
         "features, the last axis", m(dim=-2)),
        ("the statistics are over the wrong axis (axis 0, the batch, as BatchNorm); LayerNorm normalises over "
         "the last axis", m(dim=0)),
        ("the statistics are over all axes but the batch (like nn.LayerNorm((N, D))); LayerNorm normalises each "
         "vector on its own, over the last axis only", m(dim=rest)),
        ("the statistics are over the whole tensor; LayerNorm normalises each vector on its own, over the last axis",
         m(dim=tuple(range(x.dim())))),
        ("eps is ignored or replaced by a constant; use the eps argument, inside the square root: sqrt(var + eps)",
         lambda: _ln(x, weight, bias, 0.0)),
        ("eps is ignored or replaced by a constant; use the eps argument, inside the square root: sqrt(var + eps)",
         lambda: _ln(x, weight, bias, 1e-5)),
        ("eps is ignored or replaced by a constant; use the eps argument, inside the square root: sqrt(var + eps)",
         lambda: _ln(x, weight, bias, 1e-6)),
    ]


def _layer_norm_cases() -> List[Case]:
    def tokens(*shape: int, spread: Tuple[float, float] = (0.5, 3.0), dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
        """Vectors of different scales and offsets along the last axis (what LayerNorm is for)."""
        lead = shape[:-1] + (1,)
        scale = spread[0] + (spread[1] - spread[0]) * torch.rand(lead, dtype=torch.float64)
        offset = 4 * torch.rand(lead, dtype=torch.float64) - 2
        return (torch.randn(shape, dtype=torch.float64) * scale + offset).to(dtype)

    def affine(D: int, dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
        weight = 1 + 0.5 * torch.randn(D, dtype=torch.float64)
        return weight.to(dtype), (0.5 * torch.randn(D, dtype=torch.float64)).to(dtype)

    cases = []
    for shape, eps in [((2, 5, 8), 1e-6), ((1, 3, 16), 1e-5), ((4, 7), 1e-6), ((2, 3, 4, 6), 1e-6)]:
        cases.append(Case((tokens(*shape), *affine(shape[-1]), eps)))
    # a small spread and a large eps: where eps sits (inside the square root) changes the answer
    cases.append(Case((tokens(3, 6, 12, spread=(0.3, 0.6)), *affine(12), 0.25)))
    cases.append(Case((tokens(2, 4, 8, dtype=torch.float64), *affine(8, torch.float64), 1e-6)))
    cases.append(Case((tokens(2, 3, 8), *affine(8), 0.1), grad=True))
    return cases


LAYER_NORM_EX = Exercise(
    name="layer_norm", kind="function", call="layer_norm(x, weight, bias, eps)",
    forbidden=("layer_norm", "native_layer_norm"),  # the statement: "from elementary tensor operations"
    cases=_layer_norm_cases, reference=_layer_norm_reference, mutants=_layer_norm_mutants,
    doc="""Check ``layer_norm(x [..., D], weight [D], bias [D], eps) -> [..., D]``.

    (x - mean) / sqrt(var + eps) * weight + bias over the last axis, with the biased variance (divide by D);
    the dtype of x; gradients for x, weight and bias; x unchanged. Compared with ``F.layer_norm``, on
    2-, 3- and 4-axis inputs, float64, and a large eps.
    """,
)


# ====================================================================================== 06 lr_schedule
def _lr(step: int, total: int, warmup: int, base: float, *, from_zero: bool = False, no_warmup: bool = False,
        span: str = "decay", clamp: bool = True, shape: str = "cosine", floor: float = 0.0) -> float:
    """The learning rate of one step, with switchable mistakes; the defaults give the contract's schedule."""
    if step < warmup and not no_warmup:
        return base * (step if from_zero else step + 1) / warmup
    if span == "decay":
        t = (step - warmup) / (total - warmup)
    else:  # over all steps, warm-up included
        t = step / total
    if clamp:
        t = min(1.0, t)
    if shape == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * t))
    elif shape == "cos":
        f = math.cos(math.pi * t)
    elif shape == "no_pi":
        f = 0.5 * (1.0 + math.cos(t))
    elif shape == "no_half":
        f = 1.0 + math.cos(math.pi * t)
    elif shape == "sin":
        f = 0.5 * (1.0 + math.sin(math.pi * t))
    elif shape == "degrees":
        f = 0.5 * (1.0 + math.cos(180.0 * t))
    elif shape == "constant":
        f = 1.0
    else:
        f = 1.0 - t
    return base * (floor + (1.0 - floor) * f)


def _lr_reference(ctx: Ctx, step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    from ..training import warmup_cosine

    return base_lr * warmup_cosine(step, warmup_steps, total_steps)


def _lr_mutants(ctx: Ctx, step: int, total: int, warmup: int, base: float) -> List[Mutant]:
    def m(**kw: Any) -> Callable[[], float]:
        return lambda: _lr(step, total, warmup, base, **kw)

    return [
        ("the warm-up starts at 0: step t gets base_lr * (t + 1) / warmup_steps (use step + 1), so the first step "
         "already learns and step warmup_steps - 1 reaches base_lr", m(from_zero=True)),
        ("the result is the schedule's factor (between 0 and 1); multiply it by base_lr",
         lambda: _lr(step, total, warmup, 1.0)),
        ("total_steps and warmup_steps are swapped; the argument order is warmup_cosine_lr(step, total_steps, "
         "warmup_steps, base_lr) (vit_edu.training.warmup_cosine takes them in the other order)",
         lambda: _lr_swapped(step, total, warmup, base)),
        ("the cosine runs over all total_steps steps; it starts after the warm-up: "
         "t = (step - warmup_steps) / (total_steps - warmup_steps)", m(span="all")),
        ("the cosine runs over all total_steps steps and is not held at 0 after the end; it starts after the "
         "warm-up: t = (step - warmup_steps) / (total_steps - warmup_steps), at most 1", m(span="all", clamp=False)),
        ("there is no warm-up: during the first warmup_steps steps the rate rises linearly, "
         "base_lr * (step + 1) / warmup_steps", m(no_warmup=True)),
        ("there is no warm-up: during the first warmup_steps steps the rate rises linearly, "
         "base_lr * (step + 1) / warmup_steps", m(no_warmup=True, span="all")),
        ("the decay is base_lr * cos(pi t); it is base_lr * (1 + cos(pi t)) / 2, from base_lr down to 0",
         m(shape="cos")),
        ("cos(t) instead of cos(pi t): half a cosine period must span the decay, (1 + cos(pi t)) / 2",
         m(shape="no_pi")),
        ("the decay is linear; the contract is half a cosine: base_lr * (1 + cos(pi t)) / 2", m(shape="linear")),
        ("the factor 1/2 is missing: (1 + cos(pi t)) runs from 2 down to 0, so the rate starts the decay at twice "
         "base_lr; use base_lr * (1 + cos(pi t)) / 2", m(shape="no_half")),
        ("sin instead of cos: (1 + sin(pi t)) / 2 starts at half of base_lr and rises first; the decay is "
         "(1 + cos(pi t)) / 2, from base_lr down to 0", m(shape="sin")),
        ("the angle is in degrees (cos(180 t)); math.cos takes radians: cos(math.pi * t)", m(shape="degrees")),
        ("there is no decay after the warm-up: the rate stays at base_lr; it should follow half a cosine down to 0, "
         "base_lr * (1 + cos(pi t)) / 2", m(shape="constant")),
        ("after total_steps the rate must stay at 0; yours climbs back up the cosine (hold t at 1: min(1, t))",
         m(clamp=False)),
        ("the decay is one step ahead: step counts from 0, so the first decay step (step = warmup_steps) has "
         "t = 0 and the full base_lr", lambda: _lr(step + 1, total, warmup, base) if step >= warmup else
         _lr(step, total, warmup, base)),
        ("the rate should decay to 0 at the end of training, not to a floor", m(floor=0.1)),
        ("the rate should decay to 0 at the end of training, not to a floor", m(floor=0.01)),
    ]


def _lr_swapped(step: int, total: int, warmup: int, base: float) -> float:
    """The contract's schedule called with total and warm-up the other way round."""
    total, warmup = warmup, total
    if step < warmup:
        return base * (step + 1) / warmup
    if step >= total:
        return 0.0
    return base * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _lr_diagnose(ctx: Ctx, got: Any, step: int, total_steps: int, warmup_steps: int, base_lr: float
                 ) -> Optional[str]:
    if _is_none(got):
        return "warmup_cosine_lr returned None: did you forget to `return` the learning rate?"
    if isinstance(got, torch.Tensor):
        return ("return a Python float (math.cos, or .item() at the end), not a tensor: an optimizer's param_group "
                "holds a plain number")
    if not _is_number(got):
        return f"return a Python float, got {getattr(got, 'type', type(got).__name__)}"
    return None


def _lr_cases() -> List[Case]:
    cases = []
    warm = _randint(5, 15)
    total = warm + _randint(40, 120)
    base = round([0.5, 1.0, 0.1][_randint(0, 2)] * (1 + float(torch.rand(()))), 4)
    mid = warm + _randint(2, total - warm - 2)
    for step in [0, 1, warm // 2, warm - 1, warm, warm + 1, mid, (mid + total) // 2, total - 1, total, total + 1,
                 total + 17]:
        cases.append(Case((step, total, warm, base)))
    total = _randint(20, 60)
    base = round(3e-4 * (1 + float(torch.rand(()))), 7)
    for step in [0, 1, total // 3, total - 1, total, total + 5]:
        cases.append(Case((step, total, 0, base),
                          label=f"step={step}, total_steps={total}, warmup_steps=0 (no warm-up), base_lr={base}"))
    warm = _randint(50, 150)
    total = warm + _randint(300, 900)
    for _ in range(6):
        cases.append(Case((_randint(0, total + 50), total, warm, 2e-3)))
    return cases


LR_SCHEDULE_EX = Exercise(
    name="lr_schedule", kind="function", call="warmup_cosine_lr(step, total_steps, warmup_steps, base_lr)",
    cases=_lr_cases, reference=_lr_reference, mutants=_lr_mutants, diagnose=_lr_diagnose, rtol=1e-6, atol=1e-12,
    doc="""Check ``warmup_cosine_lr(step, total_steps, warmup_steps, base_lr) -> float``.

    base_lr * (step + 1) / warmup_steps while step < warmup_steps, then
    base_lr * (1 + cos(pi * t)) / 2 with t = min(1, (step - warmup_steps) / (total_steps - warmup_steps)):
    0 at and after total_steps. Compared with ``vit_edu.training.warmup_cosine`` (times base_lr) on three
    schedules, one without warm-up, including steps past the end.
    """,
)



# ======================================================================================== 06 train_step
# The student's train_step changes a model and an optimizer, so it cannot go through the generic call: the
# probe runs two steps itself (the model arrives in eval mode, dropout on when trained, the same random
# stream for the dropout masks as the judge's), and records the returned values, the parameters and the
# gradients after each step; the judge replays the same two steps with the reference and with the usual
# mistakes and compares.
_STEPS = 2


def _train_cases() -> List[Case]:
    from ..config import ViTConfig
    from ..vit import VisionTransformer

    vit = VisionTransformer(ViTConfig(image_size=16, patch_size=4, in_channels=3, num_classes=5, dim=32, depth=1,
                                      heads=2, mlp_dim=64, dropout=0.2))
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 24), torch.nn.GELU(),
                              torch.nn.Dropout(0.3), torch.nn.Linear(24, 3))
    return [
        Case((vit, torch.randn(6, 3, 16, 16), torch.randint(0, 5, (6,)),
              torch.optim.SGD(vit.parameters(), lr=0.1, momentum=0.9)),
             label="a small ViT with dropout 0.2 (in eval mode), images [6, 3, 16, 16], labels [6] of 5 classes, "
                   "SGD(lr=0.1, momentum=0.9), two calls"),
        Case((mlp, torch.randn(4, 2, 6, 6), torch.randint(0, 3, (4,)),
              torch.optim.SGD(mlp.parameters(), lr=0.2, weight_decay=0.01)),
             label="an MLP with dropout 0.3 (in eval mode), images [4, 2, 6, 6], labels [4] of 3 classes, "
                   "SGD(lr=0.2, weight_decay=0.01), two calls"),
    ]


def _step_seed(seed: int, index: int, step: int) -> int:
    return mix_seed("train_step", seed, index, step)


def _train_probe(obj: Any, case: Case, index: int, seed: int) -> Dict[str, Any]:
    """Runs in the student's process: two calls of the student's train_step; records, decides nothing."""
    model, images, labels, optimizer = case.args
    before = (images.clone(), labels.clone())
    steps: List[Dict[str, Any]] = []
    events: List[str] = []  # what the student's step did, in order (for the message only: the verdict is replayed)

    def on_forward(module: Any, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            events.append("forward")
            output.register_hook(lambda grad: events.append("backward"))
        else:
            events.append("forward without a graph")

    def watched(name: str, method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if name == "step":
                has = any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
                events.append("step" if has else "step without gradients")
            else:
                events.append(name)
            return method(*args, **kwargs)
        return call

    class Calls(torch.overrides.TorchFunctionMode):  # sees loss.backward() and torch.autograd.backward alike
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            if getattr(func, "__name__", "") == "backward":
                events.append("loss.backward()")
            return func(*args, **(kwargs or {}))

    hook = model.register_forward_hook(on_forward)
    optimizer.step, optimizer.zero_grad = watched("step", optimizer.step), watched("zero_grad", optimizer.zero_grad)
    try:
        for step in range(_STEPS):
            model.eval()  # the contract: the model may arrive in evaluation mode
            rec: Dict[str, Any] = {"error": None}
            torch.manual_seed(_step_seed(seed, index, step))
            events.clear()
            try:
                with torch.enable_grad(), Calls():
                    out = obj(model, images, labels, optimizer)
            except Exception as e:  # noqa: BLE001 - the student's error is an observation
                rec["error"] = error_record(e)
                steps.append(rec)
                break
            rec["events"] = list(events[:20])
            _record_step(rec, out, model)
            steps.append(rec)
    finally:
        hook.remove()
        del optimizer.step, optimizer.zero_grad  # the class's methods again
    return {"steps": steps, "images_changed": not torch.equal(images, before[0]),
            "labels_changed": not torch.equal(labels, before[1])}


def _record_step(rec: Dict[str, Any], out: Any, model: Any) -> None:
    rec["output"] = record_value(out)
    rec["training"] = bool(model.training)
    rec["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec["grads"] = {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}


def _unchanged_message(events: Any) -> str:
    """Why the parameters did not move, from the order of the student's calls (recorded in its process)."""
    seen = [e for e in events if isinstance(e, str)] if isinstance(events, list) else []
    if "forward without a graph" in seen and "forward" not in seen:
        return ("the parameters did not change and received no gradient: the logits were computed under "
                "torch.no_grad() (or the model's output was detached), so loss.backward() cannot reach the weights")
    if "loss.backward()" in seen and "forward" in seen and "backward" not in seen:
        return ("the parameters did not change and received no gradient: loss.backward() ran, but the logits were "
                "detached from the model (.detach(), .data) before the loss, so no gradient reaches the weights")
    if seen and "backward" not in seen:
        return ("the parameters did not change: loss.backward() is missing, so no gradient reaches the weights and "
                "optimizer.step() has nothing to use; call loss.backward() between the loss and optimizer.step()")
    if "backward" in seen and "step" not in seen and "step without gradients" not in seen:
        return "the parameters did not change: optimizer.step() is missing; call it once, after loss.backward()"
    if "backward" in seen and "step without gradients" in seen:
        last_backward = len(seen) - 1 - seen[::-1].index("backward")
        if "zero_grad" in seen[last_backward:]:
            return ("optimizer.zero_grad() comes between loss.backward() and optimizer.step(): it clears the gradients "
                    "the step needs; call it at the start of the step, before the forward pass")
        return ("optimizer.step() comes before loss.backward(): it then has no gradient to use; the order is "
                "zero_grad(), forward, loss, backward(), step()")
    return ("the parameters did not change: optimizer.step() is missing, or comes before loss.backward() (it "
            "then has no gradient to use); call it once, after loss.backward()")


def _replay(case: Case, seed: int, index: int, *, zero_grad: bool = True, step: bool = True, train: bool = True,
            loss: str = "ce", clip: Optional[float] = None, after: bool = False) -> Dict[str, Any]:
    """The two steps on the judge's own copy of the case, with switchable mistakes; the defaults are right."""
    model, images, labels, optimizer = case.args
    losses, params = [], []
    for k in range(_STEPS):
        model.train(train)
        torch.manual_seed(_step_seed(seed, index, k))
        with torch.enable_grad():
            if zero_grad:
                optimizer.zero_grad()
            logits = model(images)
            if loss == "ce":
                value = F.cross_entropy(logits, labels)
            elif loss == "sum":
                value = F.cross_entropy(logits, labels, reduction="sum")
            elif loss == "smooth":
                value = F.cross_entropy(logits, labels, label_smoothing=0.1)
            elif loss == "nll_logits":
                value = F.nll_loss(logits, labels)
            else:  # "mse": squared error between the probabilities and the one-hot labels
                value = F.mse_loss(logits.softmax(-1), F.one_hot(labels, logits.shape[-1]).to(logits.dtype))
            value.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if step:
                optimizer.step()
            reported = F.cross_entropy(model(images), labels) if after else value
        losses.append(float(reported.item()))
        params.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return {"losses": losses, "params": params}


_TRAIN_MUTANTS: List[Tuple[str, Dict[str, Any]]] = [
    ("gradients accumulate over the calls: clear them at the start of each step with optimizer.zero_grad() "
     "(PyTorch adds new gradients to the old ones)", dict(zero_grad=False)),
    ("the forward pass ran in evaluation mode (dropout off): call model.train() first; the model may arrive in "
     "eval mode", dict(train=False)),
    ("the loss is summed over the batch; the contract is the mean cross-entropy (F.cross_entropy's default)",
     dict(loss="sum")),
    ("the loss uses label smoothing; the contract is the plain mean cross-entropy, F.cross_entropy(logits, labels)",
     dict(loss="smooth")),
    ("F.nll_loss on raw logits: nll_loss expects log-probabilities; use F.cross_entropy(logits, labels) "
     "(or F.nll_loss(F.log_softmax(logits, -1), labels))", dict(loss="nll_logits")),
    ("the loss is not the cross-entropy (a squared error on the probabilities?): use F.cross_entropy(logits, labels)",
     dict(loss="mse")),
    ("the returned loss was computed after the update; return the loss of this batch from before "
     "optimizer.step()", dict(after=True)),
] + [(f"the gradients are clipped (to norm {c:g}); the contract asks for no clipping here (fit does it "
      f"separately)", dict(clip=c)) for c in (1.0, 0.5, 0.1)]


def _params_close(a: Any, b: Dict[str, torch.Tensor]) -> bool:
    return (isinstance(a, dict) and set(a) == set(b) and all(
        isinstance(a[n], torch.Tensor) and a[n].shape == b[n].shape
        and bool(torch.allclose(a[n].double(), b[n].double(), rtol=1e-4, atol=1e-6)) for n in b))


def _train_judge(ctx: Ctx, custom: Any, model: Any, images: torch.Tensor, labels: torch.Tensor, optimizer: Any
                 ) -> Optional[str]:
    """Runs in the judge's process on its own copy of the case; never calls student code."""
    if not isinstance(custom, dict) or not isinstance(custom.get("steps"), list) or not custom["steps"]:
        raise Malformed("train_step record")
    recs = custom["steps"]
    if custom.get("images_changed") or custom.get("labels_changed"):
        which = "images" if custom.get("images_changed") else "labels"
        return f"your code changed its input `{which}` in place; compute new tensors instead"
    for k, rec in enumerate(recs):
        if not isinstance(rec, dict):
            raise Malformed("train_step step record")
        err = rec.get("error")
        if isinstance(err, dict):
            msg, kind = str(err.get("message", "")), str(err.get("type", "an error"))
            if "NotImplementedError" in (err.get("types") or [kind]):
                return ("not implemented yet: train_step raised NotImplementedError. Replace "
                        "`raise NotImplementedError()` with your code.")
            if "does not require grad" in msg:
                return (f"loss.backward() failed ({msg}): the loss has no graph back to the weights; the logits were "
                        f"computed under torch.no_grad() or detached")
            if "has no attribute 'backward'" in msg:
                return (f"{kind}: {msg}: loss.item() gives a plain float, which has no graph; call .item() only for "
                        f"the returned value, after loss.backward()")
            return f"train_step raised {kind}: {msg} (call {k + 1})"
    if len(recs) != _STEPS:
        raise Malformed("train_step steps")
    got = [parse_record(rec["output"] if isinstance(rec.get("output"), dict) else {"kind": "other"}) for rec in recs]
    first = got[0]
    if _is_none(first):
        return "train_step returned None: return the loss of the batch, loss.item()"
    if isinstance(first, torch.Tensor) or hasattr(first, "shape"):
        return ("return loss.item() (a Python float), not the loss tensor: a tensor keeps the whole graph of the step "
                "alive, and summing them over an epoch keeps every graph")
    if not all(_is_number(g) for g in got):
        return f"train_step should return a Python float, got {getattr(first, 'type', type(first).__name__)}"
    params = [rec.get("params") for rec in recs]
    losses = [float(g) for g in got]

    def same(run: Dict[str, Any]) -> bool:
        return (all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(losses, run["losses"]))
                and all(_params_close(p, q) for p, q in zip(params, run["params"])))

    seed, index = ctx.seed, ctx.index
    want = _replay(_rebuild(ctx), seed, index)
    if same(want):
        if not all(rec.get("training") is True for rec in recs):
            return "leave the model in training mode after the step (model.train()), as fit expects"
        return None
    start = {n: p.detach() for n, p in _rebuild(ctx).args[0].named_parameters()}
    if all(_params_close(p, start) for p in params):
        return _unchanged_message(recs[0].get("events"))
    for message, kw in _TRAIN_MUTANTS:
        if same(_replay(_rebuild(ctx), seed, index, **kw)):
            return message
    if all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(losses, want["losses"])):
        return ("the returned losses are right but the parameters after the step are not: is the optimizer the one "
                "passed in, stepped exactly once, after one backward pass?")
    return (f"wrong result: losses {[round(v, 4) for v in losses]}, expected {[round(v, 4) for v in want['losses']]}; "
            f"none of the usual mistakes matches (the order is: model.train(), optimizer.zero_grad(), logits, "
            f"F.cross_entropy, loss.backward(), optimizer.step(), return loss.item())")


def _rebuild(ctx: Ctx) -> Case:
    """A fresh copy of the case (the judge's replays change the model)."""
    return build_cases(ctx.exercise, ctx.seed)[ctx.index]


TRAIN_STEP_EX = Exercise(
    name="train_step", kind="function", call="train_step(model, images, labels, optimizer)",
    cases=_train_cases, reference=lambda ctx, *args: None, probe_case=_train_probe, judge_case=_train_judge,
    doc="""Check ``train_step(model, images, labels, optimizer) -> float``.

    model.train(); clear the gradients; logits = model(images); mean F.cross_entropy(logits, labels);
    backward; one optimizer step; return the loss (before the step) as a Python float; images and labels
    unchanged. Two calls each on a small ViT and an MLP, both with dropout and arriving in eval mode,
    compared (losses and parameters after each call) with the same steps done by the reference.
    """,
)


EXERCISES: Dict[str, Exercise] = {ex.name: ex for ex in [PARAM_COUNT_EX, SINCOS_2D_EX, LAYER_NORM_EX, LR_SCHEDULE_EX,
                                                            TRAIN_STEP_EX]}
