"""Adversarial set for check_attention (notebook 03): other correct styles and usual mistakes."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import einsum

CHECK = "attention"


# ------------------------------------------------------------------------------------------------- correct
def plain(q, k, v):
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v, w


def einsum_strings(q, k, v):
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * q.size(-1) ** -0.5
    w = scores.softmax(-1)
    return torch.einsum("bhij,bhjd->bhid", w, v), w


def einops_einsum_scaled_q(q, k, v):
    q = q / q.shape[-1] ** 0.5
    w = einsum(q, k, "b h n d, b h m d -> b h n m").softmax(dim=-1)
    return einsum(w, v, "b h n m, b h m d -> b h n d"), w


def manual_stable_softmax(q, k, v):
    s = q @ k.mT / math.sqrt(q.shape[-1])
    s = s - s.amax(dim=-1, keepdim=True)
    e = s.exp()
    w = e / e.sum(dim=-1, keepdim=True)
    return torch.matmul(w, v), w


def fused_out(q, k, v):
    w = F.softmax(torch.matmul(q, k.transpose(2, 3)) / np.sqrt(q.shape[3]), dim=3)
    return F.scaled_dot_product_attention(q, k, v), w


def baddbmm_flat(q, k, v):
    B, H, N, d = q.shape
    qf, kf, vf = (t.reshape(B * H, N, d) for t in (q, k, v))
    s = torch.baddbmm(q.new_zeros(B * H, N, N), qf, kf.transpose(1, 2), beta=0.0, alpha=d ** -0.5)
    w = s.softmax(-1)
    return torch.bmm(w, vf).view(B, H, N, d), w.view(B, H, N, N)


def log_softmax_exp(q, k, v):
    w = F.log_softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1).exp()
    return w @ v, w


def float32_scalar_scale(q, k, v):
    # torch.sqrt of a float32 0-d tensor: the scale is rounded to float32, the rest stays in q's dtype
    w = (q @ k.transpose(-2, -1) / torch.sqrt(torch.tensor(q.shape[-1]))).softmax(-1)
    return w @ v, w


def weights_detached_for_display(q, k, v):
    # the weights are returned to be looked at; out keeps its graph: right
    w = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    return w @ v, w.detach()

CORRECT = [float32_scalar_scale, plain, einsum_strings, einops_einsum_scaled_q, manual_stable_softmax, fused_out, baddbmm_flat,
           log_softmax_exp, weights_detached_for_display]


# ------------------------------------------------------------------------------------------------ mistakes
def _att(scale=lambda d: d ** -0.5, dim=-1):
    def f(q, k, v):
        w = (q @ k.transpose(-2, -1) * scale(q.shape[-1])).softmax(dim)
        return w @ v, w
    return f


no_scale = _att(scale=lambda d: 1.0)
no_scale.__name__ = "no_scale"
scale_1_over_d = _att(scale=lambda d: 1.0 / d)
scale_1_over_d.__name__ = "scale_1_over_d"
softmax_queries = _att(dim=-2)
softmax_queries.__name__ = "softmax_queries"
softmax_heads = _att(dim=1)
softmax_heads.__name__ = "softmax_heads"


def no_softmax(q, k, v):
    w = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return w @ v, w


def swapped_outputs(q, k, v):
    out, w = plain(q, k, v)
    return w, out


def only_out(q, k, v):
    return plain(q, k, v)[0]


def out_transposed(q, k, v):
    out, w = plain(q, k, v)
    return w.transpose(-2, -1) @ v, w


def dropout_left_on(q, k, v):
    out, w = plain(q, k, v)
    w = F.dropout(w, p=0.1)
    return w @ v, w


def detached_weights(q, k, v):
    w = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1).detach()
    return w @ v, w


def numpy_softmax(q, k, v):
    s = (q @ k.transpose(-2, -1)).detach().numpy() / np.sqrt(q.shape[-1])
    e = np.exp(s - s.max(-1, keepdims=True))
    w = torch.from_numpy(e / e.sum(-1, keepdims=True))
    return w @ v, w


def scale_by_tokens(q, k, v):
    w = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-2])).softmax(-1)
    return w @ v, w


def keys_times_queries(q, k, v):
    w = (k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    return w @ v, w


def float32_scale_tensor(q, k, v):
    scale = torch.tensor(q.shape[-1], dtype=torch.float32).rsqrt()
    w = (q @ k.transpose(-2, -1) * scale).softmax(-1).float()
    return w @ v.float(), w


def in_place_scaling(q, k, v):
    q /= math.sqrt(q.shape[-1])
    w = (q @ k.transpose(-2, -1)).softmax(-1)
    return w @ v, w


def returns_logits(q, k, v):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return s.softmax(-1) @ v, s


def scale_after_softmax(q, k, v):
    w = (q @ k.transpose(-2, -1)).softmax(-1) / math.sqrt(q.shape[-1])
    return w @ v, w


def weights_keys_as_rows(q, k, v):
    w = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    return w @ v, w.mT  # "key j's column": out is right, the weights are returned the other way round


MISTAKES = [
    (weights_keys_as_rows, "returned transposed"),
    (no_scale, "1/sqrt(d) scale is missing"),
    (scale_1_over_d, "1/d instead of 1/sqrt(d)"),
    (softmax_queries, "wrong axis"),
    (softmax_heads, "heads axis"),
    (no_softmax, "softmax is missing"),
    (swapped_outputs, "swapped"),
    (only_out, "must return a tuple"),
    (out_transposed, "transposed weights"),
    (dropout_left_on, "dropout"),
    (detached_weights, "no gradient reaches"),
    (numpy_softmax, "dtype"),
    (scale_by_tokens, "number of tokens"),
    (keys_times_queries, "k @ q^T"),
    (float32_scale_tensor, "dtype"),
    (in_place_scaling, "in place"),
    (returns_logits, "before the softmax"),
    (scale_after_softmax, "after the softmax"),
]


def flattened_with_view(q, k, v):
    # .view needs contiguous memory: q, k, v split into heads by a multi-head attention are transposed views
    B, H, N, d = q.shape
    qf, kf, vf = (t.view(B * H, N, d) for t in (q, k, v))
    w = torch.bmm(qf, kf.transpose(1, 2)).mul(d ** -0.5).softmax(-1)
    return torch.bmm(w, vf).view(B, H, N, d), w.view(B, H, N, N)


def contiguous_then_view(q, k, v):
    B, H, N, d = q.shape
    qf, kf, vf = (t.contiguous().view(B * H, N, d) for t in (q, k, v))
    w = torch.bmm(qf, kf.transpose(1, 2)).mul(d ** -0.5).softmax(-1)
    return torch.bmm(w, vf).view(B, H, N, d), w.view(B, H, N, N)


CORRECT.append(contiguous_then_view)
MISTAKES.append((flattened_with_view, "not contiguous"))


_CALLS = []


def temperature_from_a_counter(q, k, v):
    # the scale depends on how often it was called (a counter left from debugging): no two calls agree
    _CALLS.append(1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) / len(_CALLS) ** 0.01
    return scores.softmax(dim=-1) @ v


MISTAKES.append((temperature_from_a_counter, "kept from one call to the next"))


def softmax_without_the_max(q, k, v):  # exp() of scores in the hundreds is inf in float32: inf / inf = NaN
    e = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).exp()
    w = e / e.sum(dim=-1, keepdim=True)
    return w @ v, w


MISTAKES.append((softmax_without_the_max, "maximum first"))


# ------------------------------------------------------ the input's device (the contract): tensors made on the CPU
def baddbmm_onto_cpu_zeros(q, k, v):
    # torch.zeros without device=: on a GPU, baddbmm refuses a CPU input beside CUDA batches (only a 0-d tensor may
    # stay on the CPU); the meta stand-in even hands back a CPU result
    B, H, N, d = q.shape
    qf, kf, vf = (t.reshape(B * H, N, d) for t in (q, k, v))
    s = torch.baddbmm(torch.zeros(B * H, N, N, dtype=q.dtype), qf, kf.transpose(1, 2), beta=0.0, alpha=d ** -0.5)
    w = s.softmax(-1)
    return torch.bmm(w, vf).view(B, H, N, d), w.view(B, H, N, N)


def heads_into_cpu_buffer(q, k, v):  # one head at a time into torch.empty without device=: the weights on the CPU
    B, H, N, d = q.shape
    w = torch.empty(B, H, N, N, dtype=q.dtype)
    for h in range(H):
        w[:, h] = (q[:, h] @ k[:, h].transpose(-2, -1) / math.sqrt(d)).softmax(-1)
    return w.to(v.device) @ v, w


MISTAKES += [(baddbmm_onto_cpu_zeros, "device"), (heads_into_cpu_buffer, "device")]
