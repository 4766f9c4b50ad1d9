"""Weights in and out: timm and torchvision ViTs <-> ``vit_edu.VisionTransformer``.

vit_edu uses timm's parameter names, so timm state dicts map almost one to one; torchvision's
``VisionTransformer`` uses ``nn.MultiheadAttention`` whose ``in_proj_weight`` is our ``qkv.weight``
(q, k, v stacked, heads contiguous inside each: the ``(three h d)`` layout).

Loading never unpickles code: ``torch.load(..., weights_only=True)`` or safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
import zipfile
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from .config import ViTConfig
from .fileio import looks_like_safetensors, looks_like_torch_save
from .models import download_timm_model, get_config, zero_head_if_asked
from .vit import VisionTransformer

StateDict = Dict[str, torch.Tensor]

# ------------------------------------------------------------------------------------------ checking


def diff_state_dict(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> Tuple[list, list, list]:
    """(missing keys, unexpected keys, [(key, expected shape, got shape)])."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [(k, tuple(expected[k].shape), tuple(got[k].shape))
              for k in sorted(set(expected) & set(got)) if tuple(expected[k].shape) != tuple(got[k].shape)]
    return missing, unexpected, shapes


def _fmt(keys: list, limit: int = 8) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(map(str, keys[:limit])) + more


# the prefixes wrappers put before a model's own names: DistributedDataParallel and DataParallel "module.",
# torch.compile "_orig_mod."; nested in either order (DDP(torch.compile(m)): "module._orig_mod.", and
# torch.compile(DDP(m)): "_orig_mod.module.")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor], expected: Optional[Mapping] = None,
                           source: str = "state_dict") -> StateDict:
    """The state_dict with every wrapper prefix (``WRAPPER_PREFIXES``, any number, any order) taken off its keys.

    A key already in ``expected`` (a model's own names) keeps its name. Two keys that become one are refused.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        name = key
        while name.startswith(WRAPPER_PREFIXES) and (expected is None or name not in expected):
            name = name.split(".", 1)[1]
        if name in out:
            raise ValueError(f"{source} holds two tensors named {name!r} once the wrapper prefixes "
                             f"{', '.join(WRAPPER_PREFIXES)} are taken off (one of them {key!r}): which one to load?")
        out[name] = value
    return out


def _unknown_prefix(expected: Mapping, got: Mapping) -> str:
    """The shortest prefix (ending in ".") that every key of ``got`` has and that stands before one of
    ``expected``'s names, or ''."""
    first = next(iter(got), "")
    for cut in (i + 1 for i, ch in enumerate(first) if ch == "."):
        if all(k.startswith(first[:cut]) for k in got) and any(k[cut:] in expected for k in got):
            return first[:cut]
    return ""


# the two shape mismatches that mean "the same architecture, used otherwise", and what to do about each
_SHAPE_HINTS = {
    "pos_embed": "  pos_embed: weights for another image size? Build the model for their size, or resize the table: "
                 "vit_edu.pos_embed.resize_pos_embed(sd['pos_embed'], new_grid, old_grid, num_prefix_tokens)",
    "head.weight": "  head: weights for another number of classes? Build the model with their num_classes and load "
                   "them, then give it a new head for yours: model.head = torch.nn.Linear(model.head.in_features, k)",
}
# (prefix of missing keys, prefix of unexpected keys) -> a hint: names that say how the weights' model pooled
_KEY_HINTS = {
    ("norm.", "fc_norm."): "  fc_norm: weights of a model that averages the patch tokens (timm's global_pool='avg': its "
                           "LayerNorm after pooling, not before)? Build the model with pool='mean', e.g. "
                           "load_state_dict_file(path, name, pool='mean')",
    ("fc_norm.", "norm."): "  norm: weights of a model with its LayerNorm before pooling (a class-token model)? Build "
                           "the model with pool='cls', or fc_norm=False",
}


def load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict") -> nn.Module:
    """``model.load_state_dict`` with one clear ValueError that lists every difference."""
    if not isinstance(state_dict, Mapping):
        hint = " (a model? pass its .state_dict())" if isinstance(state_dict, nn.Module) else ""
        raise TypeError(f"{source} must be a dict of tensors, got {type(state_dict).__name__}{hint}")
    odd = [f"{k} ({type(v).__name__})" for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise TypeError(f"{source} must be a dict of torch.Tensors; {len(odd)} values are not: {_fmt(odd)}")
    expected = model.state_dict()
    state_dict = strip_wrapper_prefixes(state_dict, expected, source)
    missing, unexpected, shapes = diff_state_dict(expected, state_dict)
    prefix = _unknown_prefix(expected, state_dict) if missing and unexpected else ""
    if prefix:
        raise ValueError(f"{source}: every key starts with {prefix!r}, a prefix vit_edu does not take off (it takes "
                         f"off the wrappers' {', '.join(map(repr, WRAPPER_PREFIXES))}); if these are the weights of "
                         f"a submodule, take it off yourself: {{k.removeprefix({prefix!r}): v for k, v in sd.items()}}")
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit this {type(model).__name__} (a different architecture?):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): " + _fmt([f"{k}: expected {e}, got {g}" for k, e, g in shapes]))
        lines += [hint for key, hint in _SHAPE_HINTS.items() if any(k == key for k, _, _ in shapes)]
        lines += [hint for (lost, extra), hint in _KEY_HINTS.items()
                  if any(k.startswith(lost) for k in missing) and any(k.startswith(extra) for k in unexpected)]
        raise ValueError("\n".join(lines))
    # load_state_dict would silently cast integer or bool tensors into float weights, and load NaN as readily
    # as numbers: a file of the right shapes can still be the wrong thing
    kinds = [f"{k} ({str(v.dtype).replace('torch.', '')})" for k, v in state_dict.items()
             if expected[k].is_floating_point() and not v.is_floating_point()]  # complex: its imaginary part lost
    if kinds:
        raise ValueError(f"{source} holds non-float tensors where this {type(model).__name__} has float weights "
                         f"({len(kinds)}): {_fmt(kinds)}; expected float16/bfloat16/float32/float64 weights")
    broken = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise ValueError(f"{source} holds NaN or infinite values in {len(broken)} tensors: {_fmt(broken)} "
                         f"(the training run that wrote them diverged; use an earlier checkpoint or a lower --lr)")
    model.load_state_dict(state_dict, strict=True)
    return model


def _is_identity(m) -> bool:
    return m is None or isinstance(m, nn.Identity)


def _is_exact_gelu(act) -> bool:
    """Whether ``act`` computes the exact (erf) GELU, judged by its outputs: timm's own GELU class (act_layer=
    "gelu") is not an nn.GELU, and nn.GELU(approximate="tanh") is one but differs by up to 5e-4."""
    t = torch.linspace(-6, 6, 121)
    try:  # act gets a copy: an in-place activation must not change the reference's input
        return isinstance(act, nn.Module) and torch.allclose(act(t.clone()), nn.functional.gelu(t), rtol=0, atol=1e-6)
    except Exception:  # noqa: BLE001 - an activation that cannot take a 1-D tensor is not GELU
        return False

# ---------------------------------------------------------------------------------------------- timm


def config_from_timm(tm: nn.Module) -> ViTConfig:
    """Read a timm VisionTransformer's hyper-parameters; refuse features vit_edu does not have."""
    name = type(tm).__name__
    module = type(tm).__module__ or ""
    if module.startswith("vit_edu"):
        raise TypeError(f"from_timm expects a timm.models.vision_transformer.VisionTransformer, got vit_edu's own "
                        f"{name} (it needs no conversion; copy.deepcopy(model) copies it)")
    if name != "VisionTransformer" or not module.startswith("timm") or not hasattr(tm, "blocks"):
        raise TypeError(f"from_timm expects a timm.models.vision_transformer.VisionTransformer, got {module}.{name}")
    blocks = sorted({type(b).__name__ for b in tm.blocks} - {"Block"})  # ResPostBlock: same names, post-norm
    if blocks:
        raise ValueError(f"this timm model uses features vit_edu does not implement: {', '.join(blocks)} blocks "
                         f"(vit_edu's are timm's pre-norm Block: x + attn(norm1(x)), then x + mlp(norm2(x)))")
    blk = tm.blocks[0]
    unsupported = {
        f"{type(blk.attn).__name__} attention": type(blk.attn).__name__ != "Attention",
        f"{type(blk.mlp).__name__} MLP": type(blk.mlp).__name__ != "Mlp",
        "average pooling over the class token too (pool_include_prefix=True)":
            getattr(tm, "pool_include_prefix", False) and tm.global_pool == "avg" and tm.cls_token is not None,
        "register tokens": getattr(tm, "num_reg_tokens", 0) > 0,
        "no_embed_class": getattr(tm, "no_embed_class", False),
        "attention pooling": getattr(tm, "attn_pool", None) is not None,
        "pre-norm before the encoder (CLIP)": not _is_identity(getattr(tm, "norm_pre", None)),
        "layer scale": not (_is_identity(getattr(blk, "ls1", None)) and _is_identity(getattr(blk, "ls2", None))),
        "qk-norm": not (_is_identity(getattr(blk.attn, "q_norm", None)) and _is_identity(getattr(blk.attn, "k_norm", None))),
        "attention output norm": not _is_identity(getattr(blk.attn, "norm", None)),
        "patch-embedding norm": not _is_identity(getattr(tm.patch_embed, "norm", None)),
        # timm then zero-pads an image whose size is no multiple of the patch (a grid rounded up); vit_edu refuses
        # it. Without dynamic_img_size timm takes only its own image size, a multiple: the padding never acts
        "dynamic_img_pad=True with dynamic_img_size=True (padding images to a multiple of the patch)":
            getattr(tm.patch_embed, "dynamic_img_pad", False) and not getattr(tm.patch_embed, "strict_img_size", True),
        f"global_pool={tm.global_pool!r}": tm.global_pool not in ("token", "avg"),
        "non-GELU MLP": not _is_exact_gelu(getattr(blk.mlp, "act", None)),
        "no final norm (final_norm=False)": _is_identity(tm.norm) and _is_identity(getattr(tm, "fc_norm", None)),
        "MLP norm": not _is_identity(getattr(blk.mlp, "norm", None)),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"this timm model uses features vit_edu does not implement: {', '.join(bad)}")
    hybrid = hasattr(tm.patch_embed, "backbone")
    if hybrid and _timm_backbone_problem(tm.patch_embed.backbone):
        raise ValueError(f"this timm hybrid's CNN differs from vit_edu's ResNet (timm's ResNetV2 of Bottleneck "
                         f"blocks, StdConv2dSame with eps 1e-8, GroupNorm(32, eps 1e-5)): "
                         f"{_timm_backbone_problem(tm.patch_embed.backbone)}")
    norm = tm.norm if not _is_identity(tm.norm) else tm.fc_norm
    kw = dict(
        image_size=tuple(tm.patch_embed.img_size),
        patch_size=tuple(tm.patch_embed.patch_size),
        in_channels=tm.in_chans if hasattr(tm, "in_chans") else tm.patch_embed.proj.in_channels,
        num_classes=tm.num_classes,
        dim=tm.embed_dim,
        depth=len(tm.blocks),
        heads=blk.attn.num_heads,
        mlp_dim=blk.mlp.fc1.out_features,
        class_token=tm.cls_token is not None,
        pool="cls" if tm.global_pool == "token" else "mean",
        pos_embedding="learned" if tm.pos_embed is not None else "none",
        qkv_bias=blk.attn.qkv.bias is not None,
        norm_eps=float(norm.eps) if hasattr(norm, "eps") else 1e-6,
        fc_norm=not _is_identity(tm.fc_norm),
        dynamic_img_size=bool(getattr(tm, "dynamic_img_size", False)),
        **_timm_rates(tm),
        extra={"source": "timm"},
    )
    if hybrid:
        kw["hybrid_layers"] = tuple(len(s.blocks) for s in tm.patch_embed.backbone.stages)
        kw["patch_size"] = tuple(tm.patch_embed.patch_size)
    return ViTConfig(**kw)


def _rate(m) -> float:
    """The rate of a Dropout, DropPath or PatchDropout; 0 for the Identity timm puts in place of a rate of 0."""
    for name in ("p", "drop_prob", "prob"):
        if isinstance(getattr(m, name, None), (int, float)):
            return float(getattr(m, name))
    return 0.0


def _timm_rates(tm: nn.Module) -> dict:
    """timm's dropout and stochastic-depth rates as ViTConfig fields, so a converted model trains as the original.

    Rates vit_edu has no place for (head and patch dropout, a position dropout other than the blocks') are
    named in a warning: the logits in eval mode are the same, training is not.
    """
    blk = tm.blocks[0]
    rates = dict(dropout=_rate(blk.attn.proj_drop), attn_dropout=_rate(blk.attn.attn_drop),
                 drop_path=_rate(tm.blocks[-1].drop_path1))  # the last block's: the rate rises from 0 to it
    pos = _rate(getattr(tm, "pos_drop", None))
    lost = {"head dropout (drop_rate)": _rate(getattr(tm, "head_drop", None)),
            "patch dropout (patch_drop_rate)": _rate(getattr(tm, "patch_drop", None)),
            "position dropout other than proj_drop_rate (pos_drop_rate)": pos if pos != rates["dropout"] else 0}
    lost = [f"{k} = {v}" for k, v in lost.items() if v]
    if lost:  # stacklevel: the caller of from_timm
        warnings.warn(f"vit_edu has no {'; no '.join(lost)}: the converted model trains without it (its logits "
                      f"in eval mode are the same); its dropout is {rates['dropout']}", UserWarning, stacklevel=4)
    return rates


def _timm_backbone_problem(bb: nn.Module) -> str:
    """What makes a timm hybrid's backbone compute otherwise than vit_edu's ResNetBackbone, or ''."""
    if type(bb).__name__ != "ResNetV2" or not hasattr(bb, "stages"):
        return f"its backbone is a {type(bb).__name__}, not a ResNetV2 with stages"
    convs = [m for m in bb.modules() if isinstance(m, nn.Conv2d)]
    if any(type(m).__name__ != "StdConv2dSame" or getattr(m, "eps", None) != 1e-8 for m in convs) \
            or type(getattr(bb.stem, "pool", None)).__name__ != "MaxPool2dSame":
        return "its convolutions or max-pool do not pad like TensorFlow's 'SAME' with StdConv eps 1e-8 " \
               "(padding_same=False?)"
    if any(type(b).__name__ != "Bottleneck" for s in bb.stages for b in s.blocks):
        return "its blocks are not post-activation Bottlenecks (preact=True?)"
    if any(m.num_groups != 32 or m.eps != 1e-5 for m in bb.modules() if isinstance(m, nn.GroupNorm)):
        return "its GroupNorms are not GroupNorm(32, eps=1e-5)"
    return ""


def _like(model: VisionTransformer, source: nn.Module) -> VisionTransformer:
    """``model`` in the dtype and on the device of ``source``'s weights, and in its train or eval mode: a float64
    or GPU reference is then compared with its own kind, not with a float32 copy on the CPU."""
    weight = next((p for p in source.parameters() if p.is_floating_point()), None)
    if weight is not None:  # before loading: a float64 weight loaded into float32 is rounded for good
        model = model.to(device=weight.device, dtype=weight.dtype)
    return model.train(source.training)


def from_timm(tm: nn.Module) -> VisionTransformer:
    """A ``VisionTransformer`` with the weights of a timm ViT (or the R50 hybrid); same logits in eval mode.

    It comes in the dtype, on the device and in the train/eval mode of ``tm``."""
    model = _like(VisionTransformer(config_from_timm(tm)), tm)
    sd = {k: v for k, v in tm.state_dict().items()}
    return load_checked(model, sd, "timm state_dict")


def to_timm_state_dict(model: VisionTransformer) -> StateDict:
    """vit_edu -> timm names (they are the same names; linear patch embeddings are reshaped to conv form).

    A fixed sin-cos table comes along as ``pos_embed``, for a timm model with ``pos_embed="learn"`` (timm has no
    sin-cos option; with ``pos_embed="none"`` it would load the rest and compute without positions).
    A state_dict holds no hyper-parameters: build the timm model with the config's (``norm_eps`` included:
    ``norm_layer=functools.partial(nn.LayerNorm, eps=...)``; timm's default is 1e-6)."""
    sd = dict(model.state_dict())
    if model.config.pos_embedding == "sincos2d":  # a buffer left out of state_dict: timm holds it as a learned table
        sd["pos_embed"] = model.pos_embed.detach().clone()
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 2:  # LinearPatchEmbed: [D, (p1 p2 c)] -> [D, c, p1, p2]
        p1, p2 = model.patch_embed.patch_size
        sd["patch_embed.proj.weight"] = w.reshape(w.shape[0], p1, p2, -1).permute(0, 3, 1, 2).contiguous()
    return sd

# --------------------------------------------------------------------------------------- torchvision

# torchvision name <-> vit_edu (= timm) name, written once; {i} is the encoder layer. A name that ends in
# "." is a prefix (weight and bias follow), any other a whole name.
TORCHVISION_NAMES = [
    ("class_token", "cls_token"),
    ("conv_proj.", "patch_embed.proj."),
    ("encoder.pos_embedding", "pos_embed"),
    ("encoder.layers.encoder_layer_{i}.ln_1.", "blocks.{i}.norm1."),
    ("encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight", "blocks.{i}.attn.qkv.weight"),
    ("encoder.layers.encoder_layer_{i}.self_attention.in_proj_bias", "blocks.{i}.attn.qkv.bias"),
    ("encoder.layers.encoder_layer_{i}.self_attention.out_proj.", "blocks.{i}.attn.proj."),
    ("encoder.layers.encoder_layer_{i}.ln_2.", "blocks.{i}.norm2."),
    ("encoder.layers.encoder_layer_{i}.mlp.0.", "blocks.{i}.mlp.fc1."),
    ("encoder.layers.encoder_layer_{i}.mlp.3.", "blocks.{i}.mlp.fc2."),
    ("encoder.ln.", "norm."),
    ("heads.pre_logits.", "pre_logits.0."),
    ("heads.head.", "head."),
]
# older torchvision releases named the MLP's layers linear_1 and linear_2: read, never written
TORCHVISION_OLD_NAMES = [
    ("encoder.layers.encoder_layer_{i}.mlp.linear_1.", "blocks.{i}.mlp.fc1."),
    ("encoder.layers.encoder_layer_{i}.mlp.linear_2.", "blocks.{i}.mlp.fc2."),
]


def _rename_rules(names, reverse: bool = False) -> list:
    """(regex, replacement) pairs from (torchvision, vit_edu) name templates; reverse=True: vit_edu -> torchvision."""
    rules = []
    for tv, edu in names:
        src, dst = (edu, tv) if reverse else (tv, edu)
        pattern = r"(\d+)".join(re.escape(part) for part in src.split("{i}"))
        rules.append(("^" + pattern + ("" if src.endswith(".") else "$"), dst.replace("{i}", r"\1")))
    return rules


_TV_TO_EDU = _rename_rules(TORCHVISION_NAMES + TORCHVISION_OLD_NAMES)
_EDU_TO_TV = _rename_rules(TORCHVISION_NAMES, reverse=True)


def _rename(sd: Mapping[str, torch.Tensor], rules) -> StateDict:
    out = {}
    for k, v in sd.items():
        for pat, rep in rules:
            new, n = re.subn(pat, rep, k)
            if n:
                out[new] = v
                break
        else:
            out[k] = v  # left as is: load_checked reports it as unexpected
    return out


def torchvision_to_vit_edu_state_dict(sd: Mapping[str, torch.Tensor]) -> StateDict:
    return _rename(sd, _TV_TO_EDU)


def to_torchvision_state_dict(model: VisionTransformer) -> StateDict:
    c = model.config
    differs = {  # what torchvision's VisionTransformer cannot hold, or holds in another way
        f"class_token={c.class_token}, pool={c.pool!r}": not c.class_token or c.pool != "cls",
        f"hybrid_layers={c.hybrid_layers}": c.hybrid_layers is not None,
        f"pos_embedding={c.pos_embedding!r}": c.pos_embedding != "learned",
        "qkv_bias=False": not c.qkv_bias,
        "fc_norm=True (LayerNorm after pooling)": c.use_fc_norm,
        f"image_size={tuple(c.image_size)}, patch_size={tuple(c.patch_size)} (not square)":
            c.image_size[0] != c.image_size[1] or c.patch_size[0] != c.patch_size[1],
        "num_classes=0 (no head)": c.num_classes == 0,
        f"norm_eps={c.norm_eps} (its LayerNorms use 1e-6; the weights would load and give other logits)":
            c.norm_eps != 1e-6,
    }
    bad = [k for k, v in differs.items() if v]
    if bad:
        raise ValueError("torchvision's VisionTransformer has a class token, cls pooling, a learned position "
                         "embedding, qkv bias, no CNN backbone, a LayerNorm before pooling, square images and "
                         f"patches, a head and LayerNorm eps 1e-6; this model differs: {'; '.join(bad)}")
    return _rename(to_timm_state_dict(model), _EDU_TO_TV)


def config_from_torchvision(tv: nn.Module) -> ViTConfig:
    if type(tv).__name__ != "VisionTransformer" or not hasattr(tv, "conv_proj"):
        raise TypeError(f"from_torchvision expects a torchvision.models.VisionTransformer, got {type(tv).__name__}")
    if not isinstance(tv.conv_proj, nn.Conv2d):
        raise ValueError("torchvision ViTs with a convolutional stem (conv_stem_configs) are not supported")
    layer0 = tv.encoder.layers[0]
    return ViTConfig(
        image_size=tv.image_size, patch_size=tv.patch_size, in_channels=tv.conv_proj.in_channels,
        num_classes=tv.num_classes, dim=tv.hidden_dim, depth=len(tv.encoder.layers),
        heads=layer0.self_attention.num_heads, mlp_dim=tv.mlp_dim, class_token=True, pool="cls",
        representation_size=tv.representation_size, norm_eps=float(tv.encoder.ln.eps),
        dropout=float(getattr(tv, "dropout", 0.0)), attn_dropout=float(getattr(tv, "attention_dropout", 0.0)),
        extra={"source": "torchvision"},
    )


def from_torchvision(tv: nn.Module) -> VisionTransformer:
    """A ``VisionTransformer`` with the weights of a torchvision ``vit_b_16``/``vit_b_32``/... model, in its
    dtype, on its device and in its train/eval mode."""
    model = _like(VisionTransformer(config_from_torchvision(tv)), tv)
    return load_checked(model, torchvision_to_vit_edu_state_dict(tv.state_dict()), "torchvision state_dict")

# ------------------------------------------------------------------------------------- files, hubs


def _first_line(err: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message, at most ``limit`` characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0].split(". ")[0] if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_readable_file(path: str | os.PathLike, expected: str) -> str:
    """One clear error for a path that is missing, a folder or empty; ``expected`` names what should be there."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}; expected {expected}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder; expected {expected}")
    if not os.path.isfile(path):  # reading a pipe would wait for a writer forever
        raise ValueError(f"{path!r} is not a regular file (a pipe or a device); expected {expected}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path!r} is an empty file (0 bytes; an interrupted write?); expected {expected}")
    return path


def torch_load_checked(path: str | os.PathLike, expected: str, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` whose every failure is one ValueError: expected vs. what came.

    weights_only=True never runs pickled code: a file that needs it (a pickled class, a function) is refused.
    """
    path = check_readable_file(path, expected)
    from .fileio import describe_file

    if looks_like_torch_save(path):
        check_zip_crcs(path)
    try:
        with open(path, "rb") as f:  # a file object: torch.load then reads the bytes, whatever the file's name
            return torch.load(f, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, text, pickle of code, ...: all "not readable"
        got = describe_file(path)
        if got.startswith("a .safetensors file"):
            why = " (read it with safetensors: name it .safetensors, or use vit_edu.convert.read_state_dict)"
        elif ("Weights only load failed" in str(err) or "weights_only" in str(err)) and got.startswith(("a zip", "a pickle")):
            # only a zip or a pickle can hold pickled objects: random bytes fail in the unpickler too
            why = " (it holds pickled Python objects, which are never unpickled here: weights_only=True)"
            got = got.replace("; damaged or cut short?", "")  # a whole archive, read to its end
        elif got.startswith("a text file") or "weights_only" in str(err) or "Weights only" in str(err):
            why = ""  # what the unpickler tripped over in text or random bytes says nothing more
        else:
            why = f" ({type(err).__name__}: {_first_line(err)})"
        raise ValueError(f"cannot read {path!r}: expected {expected}, got {got}{why}") from None


def check_zip_crcs(path: str | os.PathLike) -> None:
    """Refuse a torch.save zip archive whose entries do not match the CRC-32 each one carries (a flipped bit on a
    disk, a bad copy): torch.load does not check them, and a weight gone from -0.004 to -1e36 loads without a word.
    A ValueError naming the file and the damaged entry; an archive written without CRCs (torch.save with
    ``compute_crc32`` off: every CRC 0) or one that zipfile cannot open (cut short: torch.load says why) passes."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size > 0:
                    continue  # written without CRCs
                try:
                    with archive.open(info) as entry:
                        while entry.read(1 << 22):
                            pass
                except zipfile.BadZipFile as err:
                    raise ValueError(f"{os.fspath(path)!r} is damaged: its entry {info.filename!r} does not match "
                                     f"the CRC-32 stored with it ({_first_line(err)}); expected an intact "
                                     f"torch.save archive: restore it from a copy") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError):
        return  # not a zip zipfile can read: torch.load gives the error


TENSOR_DIGEST_KEY = "tensors_sha256"


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes (in name order): stored in an export's header at
    save, checked on loading, so a flipped bit in the weights is an error, not a quietly different model."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_tensor_digest(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], stored: str) -> None:
    """Refuse tensors whose :func:`tensor_digest` is not the one stored when the file was written."""
    if tensor_digest(tensors) != stored:
        raise ValueError(f"{os.fspath(path)!r} is damaged: its tensor data ({len(tensors)} tensors) do not match the "
                         f"{TENSOR_DIGEST_KEY} digest stored in its header when it was written (a flipped bit, a bad "
                         f"copy, or tensors changed afterwards); expected an intact file: restore it from a copy")


def load_safetensors_checked(path: str | os.PathLike, expected: str = "a .safetensors file",
                             with_tensors: bool = True) -> Tuple[StateDict, Dict[str, str]]:
    """(tensors, metadata) of a .safetensors file, or one ValueError naming what the file is instead.

    ``with_tensors=False`` reads the header only (the metadata, tensors ``{}``): no weights are loaded.
    """
    path = check_readable_file(path, expected)
    from safetensors import safe_open

    from .fileio import describe_file

    try:
        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
            meta = dict(f.metadata() or {})
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: a damaged or foreign file
        raise ValueError(f"cannot read {path!r}: expected {expected}, got {describe_file(path)} "
                         f"({type(err).__name__}: {_first_line(err)})") from None
    if with_tensors and TENSOR_DIGEST_KEY in meta:
        check_tensor_digest(path, tensors, meta[TENSOR_DIGEST_KEY])
    return tensors, meta


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Read a ``.safetensors`` file or a ``torch.save`` file of tensors (never unpickling code), told apart by
    their bytes, whatever the file's name.

    A missing path, a folder, an empty, text or damaged file each give one clear error
    (FileNotFoundError, IsADirectoryError, ValueError) that names what was expected and what came.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file at {path!r}")
    if looks_like_safetensors(path) or (path.endswith(".safetensors") and not looks_like_torch_save(path)):
        return load_safetensors_checked(path, "a .safetensors file of weights")[0]
    obj = torch_load_checked(path, "a state_dict saved with torch.save (a dict of tensors)")
    for key in ("state_dict", "model", "model_state"):  # common checkpoint wrappers
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path!r} does not hold a state_dict (a dict of tensors); got {type(obj).__name__}")
    return strip_wrapper_prefixes(obj, source=repr(path))  # a DDP or torch.compile'd model's names


def detect_format(sd: Mapping[str, torch.Tensor]) -> str:
    if "conv_proj.weight" in sd or "encoder.pos_embedding" in sd:
        return "torchvision"
    if "blocks.0.attn.qkv.weight" in sd or "patch_embed.proj.weight" in sd:
        return "timm"  # also vit_edu's own
    names = ("conv_proj.weight", "encoder.pos_embedding", "blocks.0.attn.qkv.weight", "patch_embed.proj.weight")
    prefix = _unknown_prefix(dict.fromkeys(names), sd)
    hint = (f"; every key starts with {prefix!r}, a prefix vit_edu does not take off (only the wrappers' "
            f"{', '.join(map(repr, WRAPPER_PREFIXES))}): save {{k.removeprefix({prefix!r}): v for k, v in sd.items()}}"
            if prefix else "")
    raise ValueError("unrecognised state_dict: expected timm/vit_edu keys (e.g. 'blocks.0.attn.qkv.weight') or "
                     f"torchvision keys (e.g. 'conv_proj.weight'); got keys like {_fmt(sorted(sd), 5)}{hint}")


def load_state_dict_file(path: str | os.PathLike, model_name: Optional[str] = None,
                         config: Optional[ViTConfig] = None, **overrides) -> VisionTransformer:
    """Build a model and load a saved timm or torchvision ViT state_dict into it.

    For users with internet: save ``timm.create_model(name, pretrained=True).state_dict()`` (or a
    torchvision ``vit_b_16(weights=...)``'s) and load the file here with the matching timm name, e.g.
    ``load_state_dict_file('vit_b_16.pth', 'vit_base_patch16_224')``. ``num_classes`` (0 for a file without a
    head) and ``representation_size`` are read from the file unless given. Everything else comes from the name
    or the config: names and shapes cannot tell how a model pooled, so weights of a timm model built with
    ``global_pool="avg", fc_norm=False`` load into a class-token preset unless ``pool="mean"`` is given
    (:func:`from_timm` reads such options from the model itself).
    """
    if isinstance(model_name, ViTConfig) and config is None:  # load_state_dict_file(path, config)
        model_name, config = None, model_name
    if (model_name is None) == (config is None):  # both: one would be ignored
        raise ValueError(f"load_state_dict_file needs model_name (e.g. 'vit_base_patch16_224') or config, not "
                         f"{'both' if config is not None else 'neither'}")
    if model_name is not None:
        get_config(model_name, **overrides)  # a typo in the name or a field fails before the file is read
    sd = read_state_dict(path)
    if detect_format(sd) == "torchvision":
        sd = torchvision_to_vit_edu_state_dict(sd)
    if config is None:
        head = sd.get("head.weight")  # a file without one: a feature extractor (timm's num_classes=0)
        overrides.setdefault("num_classes", head.shape[0] if head is not None else 0)
        if "pre_logits.0.weight" in sd:
            overrides.setdefault("representation_size", sd["pre_logits.0.weight"].shape[0])
        config = get_config(model_name, **overrides)
    elif overrides:
        config = ViTConfig.from_dict({**config.to_dict(), **overrides})
    model = load_checked(VisionTransformer(config), sd, f"weights file {os.fspath(path)!r}")
    _warn_if_grid_ambiguous(model, sd)
    return model


def _warn_if_grid_ambiguous(model: VisionTransformer, sd: Mapping[str, torch.Tensor]) -> None:
    """A learned position table holds h*w rows and no grid: loaded into a non-square grid, the weights of the
    transposed grid (trained on images turned on their side) load just as well, every position in the wrong place.
    A state_dict cannot tell the two apart, so say so (once per grid), naming the other image size."""
    gh, gw = model.config.grid_size
    if gh == gw or "pos_embed" not in sd or not isinstance(model.pos_embed, nn.Parameter):
        return
    (ph, pw), (h, w) = model.config.patch_size, model.config.image_size
    warnings.warn(f"loaded a position table into a {gh}x{gw} grid (images {h}x{w}): a state_dict does not say its "
                  f"grid, and one for {gw}x{gh} (images {gw * ph}x{gh * pw}) has the same {gh * gw} positions and "
                  f"loads as well, its positions transposed; make sure the weights were trained on {h}x{w} images "
                  f"(height x width)", UserWarning, stacklevel=3)


def timm_pretrained(name: str, **overrides) -> VisionTransformer:
    """timm's pretrained ``name`` (needs internet), converted with :func:`from_timm`; ``overrides`` as in
    ``create_model`` (``num_classes`` and ``image_size`` go to timm, which resizes the head and positions)."""
    kwargs = {}
    if "num_classes" in overrides:
        kwargs["num_classes"] = overrides.pop("num_classes")
    if "image_size" in overrides:
        kwargs["img_size"] = overrides.pop("image_size")
    model = from_timm(download_timm_model(name, **kwargs))
    if not overrides:
        return model
    # e.g. drop_path=0.1 for fine-tuning: a new model with the overrides, and the pretrained weights loaded into it
    model = load_checked(VisionTransformer(model.config, **overrides), model.state_dict(), f"timm {name!r} weights")
    return zero_head_if_asked(model)
