"""Named presets, with timm's names, and ``create_model``.

The paper's Table 1: Base (D=768, L=12, 12 heads, MLP 3072), Large (1024, 24, 16, 4096),
Huge (1280, 32, 16, 5120). Ti and S come from DeiT (Touvron et al. 2021). The ``vit_course_*``
presets are the small 32x32 models this course trains on a laptop CPU.

Imports run one way: convert -> models -> vit. Pretrained weights need no conversion here: a preset's
name is timm's, and so are our parameter names.
"""

from __future__ import annotations

import difflib
import itertools
import os
import socket
from contextlib import contextmanager
from typing import Dict, Iterator, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from .config import ViTConfig
from .vit import VisionTransformer

_B = dict(dim=768, depth=12, heads=12, mlp_dim=3072)
_L = dict(dim=1024, depth=24, heads=16, mlp_dim=4096)
_H = dict(dim=1280, depth=32, heads=16, mlp_dim=5120)

PRESETS: Dict[str, dict] = {
    "vit_tiny_patch16_224": dict(patch_size=16, dim=192, depth=12, heads=3, mlp_dim=768),
    "vit_small_patch16_224": dict(patch_size=16, dim=384, depth=12, heads=6, mlp_dim=1536),
    "vit_base_patch16_224": dict(patch_size=16, **_B),
    "vit_base_patch32_224": dict(patch_size=32, **_B),
    "vit_large_patch16_224": dict(patch_size=16, **_L),
    "vit_large_patch32_224": dict(patch_size=32, **_L),
    "vit_huge_patch14_224": dict(patch_size=14, **_H),
    "vit_base_r50_s16_224": dict(patch_size=1, hybrid_layers=(3, 4, 9), **_B),
    # 32x32 course models: 4x4 patches -> 8x8 = 64 tokens (+1 class token)
    "vit_nano_patch4_32": dict(image_size=32, patch_size=4, num_classes=10, dim=64, depth=2, heads=4, mlp_dim=128),
    # the shipped checkpoint's model: 6 layers like a small ViT, but only 64 wide so it trains on 2 CPU cores
    "vit_course_patch4_32": dict(image_size=32, patch_size=4, num_classes=10, dim=64, depth=6, heads=4, mlp_dim=128),
    # the course model with 8x8 patches: 4x4 = 16 tokens + the class token, about 4x cheaper per image than patch 4;
    # still the paper's plain ViT (learned 1-D positions, class token), for runs that must fit a few minutes
    "vit_course_patch8_32": dict(image_size=32, patch_size=8, num_classes=10, dim=64, depth=6, heads=4, mlp_dim=128),
    # 8x8 patches -> 4x4 = 16 tokens, about 4x cheaper per image
    # than patch 4; fixed 2-D sin-cos positions and mean pooling (no class token), the "simple ViT" recipe
    # (Beyer et al. 2022), which learns faster from few images than learned positions + class token
    "vit_fast_patch8_32": dict(image_size=32, patch_size=8, num_classes=10, dim=64, depth=6, heads=4, mlp_dim=128,
                               class_token=False, pool="mean", pos_embedding="sincos2d"),
    # the paper's hybrid idea (section 3.1) at toy scale (`--model vit_hybrid_s4_32`; the default run trains the
    # plain vit_course_patch8_32). A ResNet stem + one bottleneck stage (stride 4) gives an 8x8 feature map,
    # embedded by a 1x1 "patch"; the convolutions supply the locality a plain ViT must learn from data
    # (notebook 06 compares the two at equal compute)
    "vit_hybrid_s4_32": dict(image_size=32, patch_size=1, hybrid_layers=(1,), num_classes=10, dim=64, depth=6, heads=4,
                             mlp_dim=128, class_token=False, pool="mean", pos_embedding="sincos2d"),
}


def list_models() -> list:
    return sorted(PRESETS)


def get_config(name: str, **overrides) -> ViTConfig:
    """The ViTConfig of a preset, with fields replaced by ``overrides``."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str such as 'vit_base_patch16_224', got {type(name).__name__} {name!r}")
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), list_models(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model name {name!r}; known models: {', '.join(list_models())}{hint}")
    unknown = sorted(set(overrides) - set(ViTConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown ViTConfig field(s) {unknown} for create_model({name!r}); "
                        f"expected some of {sorted(ViTConfig.__dataclass_fields__)}")
    kwargs = {**PRESETS[name], **overrides}
    if isinstance(kwargs.get("extra", {}), dict):  # else ViTConfig says what extra must be
        kwargs["extra"] = {**kwargs.get("extra", {}), "preset": name}
    return ViTConfig(**kwargs)


def parameter_breakdown(config: ViTConfig) -> Dict[str, int]:
    """The paper's ViT counted on paper: trainable parameters per part, from the config alone.

    A check on the model, not a copy of it: notebook 00 derives the formula, 05 regroups it, and the tests
    hold it equal to ``model.num_parameters()`` (and timm's count) for every plain preset.
    """
    c = config
    if c.hybrid_layers is not None:
        raise ValueError("parameter_breakdown counts the plain ViT; a hybrid's ResNet is not in the formula")
    P, C, D, M, L, K, R = c.patch_size[0] * c.patch_size[1], c.in_channels, c.dim, c.mlp_dim, c.depth, \
        c.num_classes, c.representation_size
    head_in = R or D
    return {
        "patch_embed": P * C * D + D,                                    # E and its bias (a conv or a Linear)
        "cls_token": D if c.class_token else 0,                          # x_class
        "pos_embed": c.num_tokens * D if c.pos_embedding == "learned" else 0,  # E_pos, N (+1) rows
        "attention": L * (D * 3 * D + (3 * D if c.qkv_bias else 0) + D * D + D),  # W_qkv (+ bias), W_o + bias
        "mlp": L * (D * M + M + M * D + D),                              # two Linears
        "block_norms": L * 2 * (2 * D),                                  # LN before MSA and before the MLP
        "final_norm": 2 * D,                                             # LN of eq. 4 (or fc_norm when mean-pooling)
        "pre_logits": D * R + R if R else 0,                             # the 21k models' Linear + tanh
        "head": head_in * K + K if K > 0 else 0,
    }


def create_model(name: str, pretrained: bool = False, **overrides) -> VisionTransformer:
    """Build a preset by timm's name, e.g. ``create_model('vit_base_patch16_224', num_classes=10)``.

    ``pretrained=True`` loads timm's weights for it (needs internet). They load as they are: vit_edu uses
    timm's parameter names (``vit_edu.timm_pretrained`` instead reads the architecture from timm's model).
    With ``head_zero_init=True`` the classifier is zeroed after loading (the paper's fine-tuning start).
    """
    if not isinstance(pretrained, bool):  # "False" is a truthy str: it would download ImageNet weights
        raise TypeError(f"create_model: pretrained must be True or False, got {pretrained!r} "
                        f"({type(pretrained).__name__})")
    model = VisionTransformer(get_config(name, **overrides))
    if pretrained:
        c = model.config  # timm makes the same head and position table (resized to img_size) as the config
        _check_takes_pretrained(name, model, overrides)  # before the download, not after it
        timm_model = download_timm_model(name, num_classes=c.num_classes, img_size=c.image_size)
        model.load_state_dict(timm_model.state_dict())  # strict: every name and shape must match
        zero_head_if_asked(model)
    return model


def _check_takes_pretrained(name: str, model: VisionTransformer, overrides: dict) -> None:
    """Refuse, before anything is downloaded, overrides that build another architecture than the preset's (pool,
    qkv_bias, pos_embedding, patch_embed, in_channels, ...): timm's weights for ``name`` would not load into it.
    The preset with the model's num_classes and image_size is built on the "meta" device (no memory) and its
    tensors' names and shapes compared with the model's."""
    c = model.config
    with torch.device("meta"):
        plain = VisionTransformer(get_config(name, num_classes=c.num_classes, image_size=c.image_size)).state_dict()
    have = model.state_dict()
    differ = sorted(k for k in set(plain) | set(have)
                    if k not in plain or k not in have or tuple(plain[k].shape) != tuple(have[k].shape))
    if differ:
        given = ", ".join(f"{k}={v!r}" for k, v in overrides.items() if k not in ("num_classes", "image_size"))
        shown = ", ".join(differ[:4]) + (f" ... and {len(differ) - 4} more" if len(differ) > 4 else "")
        raise ValueError(f"create_model({name!r}, pretrained=True): timm's weights for {name} do not fit the model "
                         f"that {given} build (tensors that differ from the preset's: {shown}); nothing was "
                         f"downloaded. Expected only overrides that keep the architecture (num_classes, image_size, "
                         f"dropout, drop_path, ...): leave the others out")


@torch.no_grad()
def zero_head_if_asked(model: VisionTransformer) -> VisionTransformer:
    """Zero the classifier of a model built with ``head_zero_init=True`` after pretrained weights were loaded into
    it: loading them replaced the zeroed head of ``init_weights`` with timm's (a new random head for another
    num_classes), so the paper's fine-tuning start was asked for and silently not given."""
    if model.config.head_zero_init and isinstance(model.head, nn.Linear):
        nn.init.zeros_(model.head.weight)
        nn.init.zeros_(model.head.bias)
    return model


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def unresolvable_hub() -> Optional[str]:
    """The Hugging Face Hub's host name when it cannot even be resolved (no network) and no proxy would resolve it
    for us, else None. Then every download would fail, after a minute of retries."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname
    if not host or any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None
    try:
        socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except OSError:
        return host
    return None


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Hugging Face's offline mode (HF_HUB_OFFLINE) for a while: downloads come from its local cache only."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def download_timm_model(name: str, **timm_kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=True, **timm_kwargs)``, or one error that says what to do offline.
    Without network the weights come from the local download cache or the error comes at once (not after
    Hugging Face's minute of retries)."""
    try:
        import timm  # only for pretrained weights: importing vit_edu does not need it
    except ImportError as e:  # pragma: no cover - timm is in requirements.txt
        raise ImportError("pretrained weights come through timm: pip install timm") from e
    host = unresolvable_hub()
    try:
        with _hub_offline(host is not None):
            return timm.create_model(name, pretrained=True, **timm_kwargs)
    except Exception as e:
        if not timm.is_model(name):  # no download can help: say so, not "save it on a machine with internet"
            raise ValueError(f"timm has no model {name!r}, so there are no pretrained weights to load; vit_edu's "
                             f"course presets are trained here, e.g. python -m vit_edu train --model {name}") from None
        why = (f"there is no network ({host} cannot be resolved) and they are not in the local cache of earlier "
               f"downloads" if host is not None else f"{type(e).__name__}: {e}")
        raise RuntimeError(
            f"could not download timm's pretrained weights for {name!r} ({why}). "
            "Without internet: on a machine with internet save "
            f"timm.create_model({name!r}, pretrained=True).state_dict() with torch.save, copy the file here "
            f"and use vit_edu.load_state_dict_file(path, {name!r})"
        ) from e


def check_has_values(model: nn.Module, what: str) -> None:
    """Refuse, before work that reads its weights, a model built on the meta device (shapes only: a raw "cannot be
    called on meta tensors" came from deep inside) or one whose weights hold NaN or inf (a diverged run: argmax
    over NaN logits still picks a class, attention maps turn NaN)."""
    meta = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if meta:
        raise ValueError(f"{what}: the model's tensors are on the meta device (shapes, no values): {len(meta)} of "
                         f"them, e.g. {meta[0]}. Expected a model with weights: build it outside "
                         f"`with torch.device('meta')`, or load weights into it first "
                         f"(model.load_state_dict(state, assign=True))")
    broken = [n for n, p in model.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if broken:
        raise ValueError(f"{what}: the model's weights hold NaN or infinite values in {len(broken)} tensors "
                         f"({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}): a diverged training run? "
                         f"Expected finite weights; use a model from an earlier checkpoint")
