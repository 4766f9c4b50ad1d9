"""Adversarial set for check_layer_norm (notebook 04): other correct styles and usual mistakes."""

import warnings

import torch
import torch.nn.functional as F
from einops import reduce

CHECK = "layer_norm"


# ------------------------------------------------------------------------------------------------- correct
def correct_var_mean(x, weight, bias, eps):
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + eps) * weight + bias


def correct_einops(x, weight, bias, eps):
    mu = reduce(x, "... d -> ... 1", "mean")
    centred = x - mu
    var = reduce(centred * centred, "... d -> ... 1", "mean")
    return centred / (var + eps).sqrt() * weight + bias


def correct_moments(x, weight, bias, eps):
    # E[x^2] - E[x]^2: mathematically the same biased variance
    d = x.shape[-1]
    s1 = x.sum(-1, keepdim=True) / d
    s2 = (x * x).sum(-1, keepdim=True) / d
    return torch.addcmul(bias, (x - s1) / torch.sqrt(s2 - s1 * s1 + eps), weight)


def correct_unbiased_rescaled(x, weight, bias, eps):
    # torch.std with the unbiased estimate, corrected back to the biased one
    d = x.shape[-1]
    std_biased = x.std(dim=-1, unbiased=True, keepdim=True) * ((d - 1) / d) ** 0.5
    return (x - x.mean(-1, keepdim=True)) / (std_biased ** 2 + eps) ** 0.5 * weight + bias


def correct_movedim(x, weight, bias, eps):
    # features first, normalise over dim 0, move back
    t = x.movedim(-1, 0)
    mu = t.mean(0)
    var = ((t - mu) ** 2).mean(0)
    y = (t - mu) / torch.sqrt(var + eps)
    return (y.movedim(0, -1) * weight).add(bias)


def correct_float64_inside(x, weight, bias, eps):
    # computes in float64 and returns the input's dtype
    x64 = x.double()
    y = (x64 - x64.mean(-1, keepdim=True)) / (x64.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    return (y * weight.double() + bias.double()).to(x.dtype)


def correct_std_biased(x, weight, bias, eps):
    mu = x.mean(-1).unsqueeze(-1)
    sigma2 = x.std(-1, correction=0).unsqueeze(-1) ** 2
    return weight * ((x - mu) / torch.sqrt(sigma2 + eps)) + bias


CORRECT = [correct_var_mean, correct_einops, correct_moments, correct_unbiased_rescaled, correct_movedim,
           correct_float64_inside, correct_std_biased]


# ------------------------------------------------------------------------------------------------ mistakes
def _norm(x, weight, bias, eps, *, unbiased=False, eps_out=False, dim=-1, affine=True, center=True, sqrt=True):
    mu = x.mean(dim=dim, keepdim=True) if center else torch.zeros_like(x[..., :1])
    var = x.var(dim=dim, keepdim=True, unbiased=unbiased) if center else (x * x).mean(dim=dim, keepdim=True)
    if eps_out:
        den = var.sqrt() + eps
    else:
        den = (var + eps).sqrt() if sqrt else var + eps
    y = (x - mu) / den
    return y * weight + bias if affine else y


def unbiased_variance(x, weight, bias, eps):
    return _norm(x, weight, bias, eps, unbiased=True)


def torch_std_default(x, weight, bias, eps):
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.std(-1, keepdim=True) ** 2 + eps) * weight + bias


def eps_outside_sqrt(x, weight, bias, eps):
    return _norm(x, weight, bias, eps, eps_out=True)


def wrong_axis_tokens(x, weight, bias, eps):
    return _norm(x, weight, bias, eps, dim=-2)


def no_affine(x, weight, bias, eps):
    return _norm(x, weight, bias, eps, affine=False)


def weight_bias_swapped(x, weight, bias, eps):
    return _norm(x, bias, weight, eps)


def no_sqrt(x, weight, bias, eps):
    return _norm(x, weight, bias, eps, sqrt=False)


def rms_norm(x, weight, bias, eps):
    return _norm(x, weight, bias, eps, center=False)


def eps_ignored(x, weight, bias, eps):
    return _norm(x, weight, bias, 0.0)


def in_place(x, weight, bias, eps):
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    x = x.detach()
    x.sub_(mu.detach()).div_(torch.sqrt(var.detach() + eps))
    return x * weight + bias


def under_no_grad(x, weight, bias, eps):
    with torch.no_grad():
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def detached_stats(x, weight, bias, eps):
    # the statistics as constants: the forward values are right, the gradient of x is not
    mu = x.mean(-1, keepdim=True).detach()
    var = x.var(-1, keepdim=True, unbiased=False).detach()
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def float64_result(x, weight, bias, eps):
    x64 = x.double()
    mu = x64.mean(-1, keepdim=True)
    var = ((x64 - mu) ** 2).mean(-1, keepdim=True)
    return (x64 - mu) / torch.sqrt(var + eps) * weight.double() + bias.double()


def all_non_batch_axes(x, weight, bias, eps):
    dims = tuple(range(1, x.dim()))
    mu = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def default_eps(x, weight, bias, eps):
    return F.layer_norm(x, x.shape[-1:], weight, bias, 1e-5)


def fresh_nn_layernorm(x, weight, bias, eps):
    return torch.nn.LayerNorm(x.shape[-1], eps=eps)(x)  # a new module: its own weight 1 and bias 0


# the library's other normalisations compute LayerNorm after a reshape: the statement asks for elementary operations
def group_norm_one_group(x, weight, bias, eps):
    return F.group_norm(x.reshape(-1, 1, x.shape[-1]), 1, eps=eps).reshape(x.shape) * weight + bias


def instance_norm_rows(x, weight, bias, eps):
    return F.instance_norm(x.reshape(1, -1, x.shape[-1]), eps=eps).reshape(x.shape) * weight + bias


def batch_norm_transposed(x, weight, bias, eps):
    rows = x.reshape(-1, x.shape[-1]).T  # [D, M]: each of the M vectors is a "channel" over D samples
    return F.batch_norm(rows, None, None, training=True, eps=eps).T.reshape(x.shape) * weight + bias


def rms_norm_of_centred(x, weight, bias, eps):
    return F.rms_norm(x - x.mean(-1, keepdim=True), x.shape[-1:], weight, eps) + bias


# the library's LayerNorm reached without a Python-level call: scripted code, the kernel through torch.ops
def _scripted_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, [x.shape[-1]], weight, bias, eps)


def scripted_layer_norm(x, weight, bias, eps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, and still works
        scripted = torch.jit.script(_scripted_layer_norm)
    return scripted(x, weight, bias, float(eps))


def scripted_batch_norm_module(x, weight, bias, eps):
    rows = x.reshape(-1, x.shape[-1]).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        norm = torch.jit.script(torch.nn.BatchNorm1d(rows.shape[0], eps=eps, affine=False, dtype=x.dtype))
    return norm(rows).T.reshape(x.shape) * weight + bias


def aten_native_layer_norm(x, weight, bias, eps):
    return torch.ops.aten.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)[0]


def aten_batch_norm_legit(x, weight, bias, eps):
    rows = x.reshape(-1, x.shape[-1]).T.contiguous()
    out = torch.ops.aten._native_batch_norm_legit(rows, None, None, True, 0.1, eps)[0]
    return out.T.reshape(x.shape) * weight + bias


MISTAKES = [
    (scripted_layer_norm, "native_layer_norm"),
    (scripted_batch_norm_module, "batch_norm"),
    (aten_native_layer_norm, "native_layer_norm"),
    (aten_batch_norm_legit, "batch_norm"),
    (group_norm_one_group, "group_norm"),
    (instance_norm_rows, "instance_norm"),
    (batch_norm_transposed, "batch_norm"),
    (rms_norm_of_centred, "rms_norm"),
    (fresh_nn_layernorm, "weight"),
    (unbiased_variance, "unbiased"),
    (torch_std_default, "unbiased"),
    (eps_outside_sqrt, "sqrt"),
    (wrong_axis_tokens, "axis"),
    (no_affine, "weight"),
    (weight_bias_swapped, "swapped"),
    (no_sqrt, "sqrt"),
    (rms_norm, "mean"),
    (eps_ignored, "eps"),
    (in_place, "in place"),
    (under_no_grad, "grad"),
    (detached_stats, "gradient"),
    (float64_result, "dtype"),
    (all_non_batch_axes, "axis"),
    (default_eps, "eps"),
]


def correct_out_buffer_in_place(x, weight, bias, eps):
    # in-place operations on a fresh tensor of the answer's own
    centred = x - x.mean(-1, keepdim=True)
    var = centred.pow(2).mean(-1, keepdim=True)
    out = torch.empty_like(x)
    out.copy_(centred)
    out.mul_(torch.rsqrt(var + eps))
    return out * weight + bias


def correct_non_contiguous_view(x, weight, bias, eps):
    t = x.transpose(0, -1)  # features first, a non-contiguous view
    mu = t.mean(0, keepdim=True)
    var = t.var(0, keepdim=True, correction=0)
    return ((t - mu) / (var + eps).sqrt()).transpose(0, -1) * weight + bias


_STATS = {}


def statistics_kept_by_shape(x, weight, bias, eps):
    if x.shape not in _STATS:  # the first input's statistics, reused for every later input of its shape
        _STATS[x.shape] = (x.mean(-1, keepdim=True).detach(), x.var(-1, keepdim=True, unbiased=False).detach())
    mu, var = _STATS[x.shape]
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


CORRECT += [correct_out_buffer_in_place, correct_non_contiguous_view]
MISTAKES.append((statistics_kept_by_shape, "earlier call"))



# ------------------------------------------------------------------------------ found by an outside test
def ln_float32_inside_cast_back(x, weight, bias, eps):
    # FALSE ACCEPT (low): the contract says float32 OR float64 inputs; this computes float64 inputs in float32
    # and casts back. The float64 case (values O(1), rtol 1e-4) cannot tell.
    x32, w, b = x.float(), weight.float(), bias.float()
    mu = x32.mean(-1, keepdim=True)
    var = ((x32 - mu) ** 2).mean(-1, keepdim=True)
    return ((x32 - mu) / torch.sqrt(var + eps) * w + b).to(x.dtype)


def ln_vmap(x, weight, bias, eps):
    # right, other style (torch.func.vmap over the flattened tokens); passes today
    def one(v):
        mu = v.mean()
        return (v - mu) / torch.sqrt(((v - mu) ** 2).mean() + eps) * weight + bias
    return torch.func.vmap(one)(x.reshape(-1, x.shape[-1])).reshape(x.shape)


@torch.jit.script
def _ln(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) * torch.rsqrt(var + eps) * weight + bias


def ln_scripted_elementary(x, weight, bias, eps):
    # right: TorchScript of elementary ops (the forbidden-call watch must not flag it); passes today
    return _ln(x, weight, bias, float(eps))


CORRECT += [ln_vmap, ln_scripted_elementary]


MISTAKES += [(ln_float32_inside_cast_back, "float32")]


# ------------------------------------------- torch's own layer norm, written in Python: no forbidden call underneath
def torch_refs_native_layer_norm(x, weight, bias, eps):
    # FALSE ACCEPT (was): torch's Python reference of the kernel (also decomposition_table[aten.native_layer_norm])
    # computes the layer norm from var_mean, rsqrt, ...: neither a forbidden call nor a forbidden kernel ever ran
    return torch._refs.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)[0]


def torch_refs_group_norm_per_vector(x, weight, bias, eps):  # the same through the group norm's reference
    rows = x.reshape(-1, 1, x.shape[-1])
    y = torch._refs.native_group_norm(rows, None, None, rows.shape[0], 1, x.shape[-1], 1, eps)[0]
    return y.reshape(x.shape) * weight + bias


MISTAKES += [(torch_refs_native_layer_norm, "native_layer_norm"), (torch_refs_group_norm_per_vector, "group_norm")]
