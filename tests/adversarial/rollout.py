"""Adversarial set for check_rollout (notebook 07): other correct styles and usual mistakes."""

import functools

import torch
import torch.nn.functional as F
from einops import reduce

CHECK = "rollout"


# ------------------------------------------------------------------------------------------------- correct
def loop(attentions):
    result = None
    for attn in attentions:
        a = attn.mean(dim=1) + torch.eye(attn.shape[-1], dtype=attn.dtype, device=attn.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def half_and_half(attentions):
    # the mean of softmax rows sums to 1, so rownorm(A + I) = (A + I) / 2
    mats = [0.5 * reduce(a, "b h t s -> b t s", "mean")
            + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            for a in attentions]
    return functools.reduce(lambda acc, m: m @ acc, mats)


def from_last_layer(attentions):
    mats = []
    for a in attentions:
        m = a.mean(1) + torch.eye(a.size(-1), dtype=a.dtype, device=a.device)
        mats.append(m / m.sum(-1, keepdim=True))
    r = mats[-1]
    for m in reversed(mats[:-1]):
        r = r @ m
    return r


def einsum_with_identity_start(attentions):
    B, H, T, _ = attentions[0].shape
    r = torch.eye(T, dtype=attentions[0].dtype, device=attentions[0].device).expand(B, T, T)
    for a in attentions:
        m = torch.einsum("bhts->bts", a) / H + torch.diag_embed(a.new_ones(B, T))
        m = m / m.sum(-1, keepdim=True)
        r = torch.einsum("bij,bjk->bik", m, r)
    return r


def stacked(attentions):
    A = torch.stack(list(attentions))  # [L, B, H, T, T]
    A = A.mean(2) + torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    A = A / A.sum(-1, keepdim=True)
    r = A[0]
    for layer in range(1, A.shape[0]):
        r = torch.bmm(A[layer], r)
    return r


def l1_normalize(attentions):
    r = None
    for a in attentions:
        m = F.normalize(a.mean(1) + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device), p=1, dim=-1)
        r = m if r is None else m @ r
    return r


def diagonal_add(attentions):
    r = None
    for a in attentions:
        m = a.mean(dim=1)
        m.diagonal(dim1=-2, dim2=-1).add_(1)  # in place on a new tensor: fine
        m = m / m.sum(-1, keepdim=True)
        r = m if r is None else torch.matmul(m, r)
    return r

def reversed_copy(attentions):
    layers = list(attentions)  # a copy: reversing it leaves the caller's list alone
    layers.reverse()
    r = None
    for a in layers:  # last layer first, so each earlier layer enters on the right
        m = a.mean(1) + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        m = m / m.sum(-1, keepdim=True)
        r = m if r is None else r @ m
    return r


CORRECT = [loop, half_and_half, from_last_layer, einsum_with_identity_start, stacked, l1_normalize, diagonal_add,
           reversed_copy]


# ------------------------------------------------------------------------------------------------ mistakes
def _variant(fuse=lambda a: a.mean(1), add=lambda T, a: torch.eye(T, dtype=a.dtype, device=a.device), renorm=True,
             order="left"):
    def f(attentions):
        r = None
        for attn in attentions:
            a = fuse(attn)
            a = a + add(a.shape[-1], a)
            if renorm:
                a = a / a.sum(-1, keepdim=True)
            r = a if r is None else (a @ r if order == "left" else r @ a if order == "right" else r + a)
        return r
    return f


no_identity = _variant(add=lambda T, a: 0)
ones_not_identity = _variant(add=lambda T, a: torch.ones(T, T, dtype=a.dtype, device=a.device))
min_over_heads = _variant(fuse=lambda a: a.amin(1))
max_over_heads = _variant(fuse=lambda a: a.amax(1))
no_renorm = _variant(renorm=False)
wrong_order = _variant(order="right")
added_layers = _variant(order="sum")
first_head = _variant(fuse=lambda a: a[:, 0])


def keeps_heads(attentions):
    r = None
    for attn in attentions:
        a = attn + torch.eye(attn.shape[-1], dtype=attn.dtype, device=attn.device)
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else a @ r
    return r


def last_layer_only(attentions):
    last = attentions[-1]
    a = last.mean(1) + torch.eye(last.shape[-1], dtype=last.dtype, device=last.device)
    return a / a.sum(-1, keepdim=True)


def in_place_identity(attentions):
    r = None
    for attn in attentions:
        T = attn.shape[-1]
        attn.add_(torch.eye(T, dtype=attn.dtype, device=attn.device))  # writes into the caller's attention maps
        a = attn.mean(1)
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else a @ r
    return r


def float32_eye_start(attentions):
    B, H, T, _ = attentions[0].shape
    r = torch.eye(T, device=attentions[0].device).repeat(B, 1, 1)
    for attn in attentions:
        a = attn.mean(1) + torch.eye(T, dtype=attn.dtype, device=attn.device)
        r = (a / a.sum(-1, keepdim=True)) @ r
    return r


def detached(attentions):
    return loop([a.detach() for a in attentions])


def mean_over_batch(attentions):
    r = None
    for attn in attentions:
        a = attn.mean(0) + torch.eye(attn.shape[-1], dtype=attn.dtype, device=attn.device)
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else a @ r
    return r


def reverses_the_list(attentions):
    attentions.reverse()  # the caller's list: a second call sees it in the other order
    return reversed_copy(list(reversed(attentions)))


def pops_the_layers(attentions):
    r = None
    while attentions:  # empties the caller's list
        r = loop([attentions.pop(0)]) if r is None else loop([attentions.pop(0)]) @ r
    return r


def replaces_the_items(attentions):
    for i, a in enumerate(attentions):
        m = a.mean(1) + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        attentions[i] = m / m.sum(-1, keepdim=True)  # the caller's list now holds other tensors
    r = attentions[0]
    for m in attentions[1:]:
        r = m @ r
    return r


MISTAKES = [
    (reverses_the_list, "list"),
    (pops_the_layers, "list"),
    (replaces_the_items, "list"),
    (mean_over_batch, "dim 0 (the batch)"),
    (no_identity, "identity is missing"),
    (ones_not_identity, "ones"),
    (min_over_heads, "min over heads"),
    (max_over_heads, "max over heads"),
    (no_renorm, "not renormalised"),
    (wrong_order, "wrong order"),
    (added_layers, "added instead of multiplied"),
    (first_head, "first head"),
    (keeps_heads, "heads axis"),
    (last_layer_only, "only the last layer"),
    (in_place_identity, "in place"),
    (float32_eye_start, "dtype"),
    (detached, "autograd"),
]
for _name, _f in list(globals().items()):
    if callable(_f) and getattr(_f, "__name__", "") == "f":
        _f.__name__ = _name


# float64: the contract keeps the input's dtype
def float64_inside(attentions):
    r = None
    for attn in attentions:
        a = attn.double().mean(1)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else a @ r
    return r.to(attentions[0].dtype)


def identity_per_head(attentions):
    # mean_heads(A + I) = mean_heads(A) + I; bmm instead of @
    r = None
    for attn in attentions:
        a = (attn + torch.eye(attn.shape[-1], dtype=attn.dtype, device=attn.device)).mean(1)
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else torch.bmm(a, r)
    return r


def float32_inside(attentions):
    return float64_inside([a.float() for a in attentions])  # float64 maps come back as float32


CORRECT += [float64_inside, identity_per_head]
MISTAKES.append((float32_inside, "dtype"))


def in_place_on_fresh_tensors(attentions):
    r = None
    for attn in attentions:
        a = attn.mean(1)  # a new tensor: editing it in place leaves the caller's maps alone
        a.diagonal(dim1=-2, dim2=-1).add_(1.0)
        a.div_(a.sum(-1, keepdim=True))
        r = a if r is None else a @ r
    return r


CORRECT.append(in_place_on_fresh_tensors)



# ------------------------------------------------------------------------------ found by an outside test
def rollout_final_renorm_only(attentions):
    # right on the contract's inputs (rows of every A_l sum to 1, so every mean(A_l) + I has row sums exactly 2):
    # the product of the un-normalised layers renormalised once at the end is R itself. Passes today (kept as
    # regression coverage of an "other style").
    r = None
    for attn in attentions:
        a = attn.mean(1) + torch.eye(attn.shape[-1], dtype=attn.dtype, device=attn.device)
        r = a if r is None else a @ r
    return r / r.sum(-1, keepdim=True)


CORRECT += [rollout_final_renorm_only]


def rollout_cpu_eye(attentions):
    # FALSE ACCEPT: the identity is made on the CPU (no device=), the notebook's hint and contract say "the
    # input's dtype and device"; on CUDA (or meta) inputs this raises "Tensor on device cpu is not on the
    # expected device". Every case of the check is a CPU tensor, so it can never show.
    r = None
    for attn in attentions:
        a = attn.mean(1) + torch.eye(attn.shape[-1], dtype=attn.dtype)
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else a @ r
    return r


MISTAKES += [(rollout_cpu_eye, "device"), ]


# ---------------------------------------------------------------- right on a GPU, refused once on the meta stand-in
def _hat(a):
    m = a.mean(1) + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return m / m.sum(-1, keepdim=True)


def leftover_debug_print(attentions):  # f"{t:.4f}" of a 0-d meta tensor: TypeError
    r = None
    for a in attentions:
        r = _hat(a) if r is None else _hat(a) @ r
    print(f"rollout: rows sum to {r.sum(-1).mean():.4f}")
    return r


def layers_kept_by_a_boolean_mask(attentions):  # A[present]: nonzero underneath, no meta kernel
    A = torch.stack(list(attentions))  # [L, B, H, T, T]
    A = A[A.flatten(1).abs().sum(-1) >= 0]
    r = None
    for a in A.unbind(0):
        r = _hat(a) if r is None else _hat(a) @ r
    return r


CORRECT += [leftover_debug_print, layers_kept_by_a_boolean_mask]


# ------------------------------------------------- a result buffer made on the CPU, filled image by image
def rollout_into_cpu_buffer(attentions):
    # FALSE ACCEPT (was): torch.empty without device=; out[b] = r copies the device's values into it, so on a GPU
    # the rollout comes back on the CPU. On the meta stand-in that copy raised "Cannot copy out of meta tensor",
    # which was taken for code that merely reads values
    B, H, T, _ = attentions[0].shape
    out = torch.empty(B, T, T, dtype=attentions[0].dtype)
    for b in range(B):
        r = None
        for a in attentions:
            m = _hat(a[b:b + 1])[0]
            r = m if r is None else m @ r
        out[b] = r
    return out


def rollout_cpu_buffer_moved_back(attentions):  # right on a GPU: the same buffer, moved to the input's device
    return rollout_into_cpu_buffer(attentions).to(attentions[0].device)


MISTAKES += [(rollout_into_cpu_buffer, "device")]
CORRECT += [rollout_cpu_buffer_moved_back]
