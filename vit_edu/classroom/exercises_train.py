"""The exercises of notebooks 00, 02 and 04: count, tabulate, normalise (notebook 06's: :mod:`.exercises_loop`).

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

from .engine import Case, Ctx, Exercise, Mutant


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
    name="param_count",
    # building the model and summing p.numel() (the judge's own reference) is the package's count as well
    package=("vit_edu.models.parameter_breakdown", "vit_edu.vit.VisionTransformer.num_parameters",
             "vit_edu.vit.VisionTransformer.__init__"),
    kind="function",
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
        ("the positions are numbered column by column (index c * grid_h + r), or, the same table, the flat index i "
         "was split with grid_h and the row's features come first; the contract is row-major like the patches: "
         "row r * grid_w + c, so r = i // grid_w and c = i % grid_w (meshgrid(rows, cols, indexing='ij'), then "
         "flatten)", t(order="ji")),
        ("the flat index i was split with grid_h (r = i // grid_h, c = i % grid_h), or, the same table, the "
         "positions are numbered column by column and the row's features come first; a row holds grid_w patches: "
         "r = i // grid_w, c = i % grid_w (row-major), with [sin(c w), cos(c w), sin(r w), cos(r w)]",
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
    # the first grid again with the one-row case's dim: a table kept by the grid alone, or by dim alone, shows
    h, w, d = cases[0].args
    dim = 12 if d != 12 else 16
    cases.append(Case((h, w, dim), label=f"grid_h={h}, grid_w={w}, dim={dim}; the grid of an earlier case with "
                      f"another dim: is something kept from one call to the next?"))
    cases.append(Case((3, 4, 10), raises="ValueError", why="dim=10 is not divisible by 4 (the exercise asks for it)"))
    cases.append(Case((3, 4, 9), raises="ValueError", why="dim=9 is not divisible by 4 (the exercise asks for it)"))
    return cases


SINCOS_2D_EX = Exercise(
    name="sincos_2d", package=("vit_edu.pos_embed.sincos_2d_pos_embed",),
    kind="function", call="sincos_2d(grid_h, grid_w, dim)",
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
    # float64 far beyond float32's range (LayerNorm does not depend on the scale): a float32 step inside shows
    cases.append(Case((1e50 * tokens(2, 4, 8, dtype=torch.float64), *affine(8, torch.float64), 1e-6),
                      label="x [2, 4, 8] float64 with values around 1e50 (beyond float32's range), weight [8] "
                            "float64, bias [8] float64, eps=1e-06"))
    cases.append(Case((tokens(2, 3, 8), *affine(8), 0.1), grad=True))
    return cases


LAYER_NORM_EX = Exercise(
    name="layer_norm", kind="function", call="layer_norm(x, weight, bias, eps)",
    # the statement: "from elementary tensor operations"; the other normalisations compute it after a reshape
    # (the kernels' names too: scripted or compiled code reaches them without a Python call)
    forbidden=("layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "instance_norm", "batch_norm",
               "native_batch_norm", "_native_batch_norm_legit", "_batch_norm_impl_index", "_batch_norm_with_update",
               "rms_norm", "_fused_rms_norm"),
    cases=_layer_norm_cases, reference=_layer_norm_reference, mutants=_layer_norm_mutants,
    doc="""Check ``layer_norm(x [..., D], weight [D], bias [D], eps) -> [..., D]``.

    (x - mean) / sqrt(var + eps) * weight + bias over the last axis, with the biased variance (divide by D);
    the dtype of x; gradients for x, weight and bias; x unchanged. Compared with ``F.layer_norm``, on
    2-, 3- and 4-axis inputs, float64, and a large eps.
    """,
)


EXERCISES: Dict[str, Exercise] = {ex.name: ex for ex in [PARAM_COUNT_EX, SINCOS_2D_EX, LAYER_NORM_EX]}
