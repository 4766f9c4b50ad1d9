"""ViTConfig: every hyper-parameter of a Vision Transformer in one dataclass.

The names follow the paper (Dosovitskiy et al. 2020, Table 1): ``dim`` is the hidden size D,
``depth`` the number of encoder layers L, ``heads`` the attention heads, ``mlp_dim`` the MLP size.
Validation happens here, once, so every module can trust its numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch

POOLS = ("cls", "mean")
POS_EMBEDDINGS = ("learned", "sincos2d", "none")
PATCH_EMBEDS = ("conv", "linear")
WEIGHT_INITS = ("timm", "jax")


def to_2tuple(x: Union[int, Tuple[int, int], list], name: str = "value") -> Tuple[int, int]:
    """Turn ``224`` or ``(224, 224)`` into ``(224, 224)`` and reject anything else, sizes below 1 included."""
    if isinstance(x, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got bool {x!r}")
    if isinstance(x, int):
        pair = (x, x)
    elif isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in x):
        pair = (int(x[0]), int(x[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (height, width), got {x!r}")
    if min(pair) < 1:  # a size: a patch, image or grid of 0 or fewer pixels has no meaning
        raise ValueError(f"{name} must be positive, got {tuple(pair)}")
    return pair


def check_sizes(**sizes: object) -> None:
    """Each size (a width, a channel count) a positive int, or a ValueError naming it: a module used alone."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")


def patch_grid(image_size: Tuple[int, int], patch_size: Tuple[int, int]) -> Tuple[int, int]:
    """Patches along height and width, (H / P, W / P): the one place the token grid is computed."""
    return (int(image_size[0]) // patch_size[0], int(image_size[1]) // patch_size[1])


def check_resnet_layers(layers, name: str = "layers", none_ok: bool = False) -> Tuple[int, ...]:
    """Blocks per stage of the hybrid's ResNet as a tuple, or a ValueError: a non-empty sequence of positive ints."""
    if (not isinstance(layers, (tuple, list)) or not layers
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in layers)):
        raise ValueError(f"{name} must be {'None or ' if none_ok else ''}a non-empty sequence of positive ints "
                         f"(blocks per ResNet stage, the paper's R50: (3, 4, 9)), got {layers!r}")
    return tuple(int(v) for v in layers)


def resnet_stride(layers: Sequence[int]) -> int:
    """Down-sampling of the hybrid's ResNet: stem /4, then /2 at the start of every stage after the first."""
    return 4 * 2 ** (len(check_resnet_layers(layers)) - 1)


MAX_PARAMETERS = 10**10  # 40 GB of fp32 weights: 16x ViT-H/14; anything larger is a typo here

_BOOLS = ("class_token", "qkv_bias", "fused_attn", "dynamic_img_size", "head_zero_init")
_RATES = ("dropout", "attn_dropout", "drop_path")
_CHOICES = {"pool": POOLS, "pos_embedding": POS_EMBEDDINGS, "patch_embed": PATCH_EMBEDS, "weight_init": WEIGHT_INITS}


def _check_field_types(config: "ViTConfig") -> None:
    """Each field has the type it promises, checked by name: 'False' (a string) is not False."""
    for name in _BOOLS + (("fc_norm",) if config.fc_norm is not None else ()):
        value = getattr(config, name)
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    for name in _RATES:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number in [0, 1), got {type(value).__name__} {value!r}")
    for name, choices in _CHOICES.items():
        value = getattr(config, name)
        if not isinstance(value, str):
            raise TypeError(f"{name} must be one of {choices}, got {type(value).__name__} {value!r}")
    rep = config.representation_size
    if rep is not None and (isinstance(rep, bool) or not isinstance(rep, int)):
        raise TypeError(f"representation_size must be None or a positive int, got {type(rep).__name__} {rep!r}")
    if not isinstance(config.extra, dict):
        raise TypeError(f"extra must be a dict, got {type(config.extra).__name__} {config.extra!r}")
    where = _not_plain(config.extra, "extra")
    if where:  # torch.save would write it, and torch.load(weights_only=True) then refuse the checkpoint
        raise TypeError(f"extra must hold plain values (str, int, float, bool, None, and lists and dicts of them) so "
                        f"a checkpoint reads back with weights_only=True and as JSON; got {where}")


def _not_plain(value, where: str, tensors: bool = False) -> str:
    """'' if ``value`` is JSON-like (exact built-in types: a NumPy float is not one), else where and what it is.
    ``tensors``: what torch.load(weights_only=True) reads back instead (tensors too, and int keys)."""
    if type(value) in (str, int, float, bool, type(None)) or (tensors and isinstance(value, torch.Tensor)):
        return ""
    if type(value) in (list, tuple):
        return next((w for i, v in enumerate(value) if (w := _not_plain(v, f"{where}[{i}]", tensors))), "")
    if type(value) is dict:
        bad_key = next((k for k in value if type(k) not in ((str, int) if tensors else (str,))), None)
        if bad_key is not None:
            return f"the key {bad_key!r} ({type(bad_key).__name__}, not str) in {where}"
        return next((w for k, v in value.items() if (w := _not_plain(v, f"{where}[{k!r}]", tensors))), "")
    return f"{type(value).__name__} {value!r:.60} at {where}"


@dataclass
class ViTConfig:
    """Hyper-parameters of :class:`vit_edu.VisionTransformer`.

    Defaults are ViT-B/16 at 224x224 with 1000 classes (the paper's ImageNet fine-tuning setting).
    """

    image_size: Union[int, Tuple[int, int]] = 224
    patch_size: Union[int, Tuple[int, int]] = 16
    in_channels: int = 3
    num_classes: int = 1000
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    class_token: bool = True
    pool: str = "cls"  # "cls": read out the class token (paper eq. 4); "mean": average the patch tokens
    pos_embedding: str = "learned"  # "learned" 1-D table, fixed "sincos2d", or "none"
    representation_size: Optional[int] = None  # pre-logits Linear+Tanh used for ImageNet-21k pre-training
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0  # stochastic depth rate of the last block; rises linearly from 0 at the first
    qkv_bias: bool = True
    norm_eps: float = 1e-6  # as timm and torchvision (PyTorch's LayerNorm default is 1e-5)
    fc_norm: Optional[bool] = None  # LayerNorm after pooling instead of before (timm's avg pool); None: pool == "mean"
    fused_attn: bool = True  # F.scaled_dot_product_attention; False: the explicit softmax(QK^T/sqrt(d))V
    patch_embed: str = "conv"  # "conv": Conv2d(k=P, s=P); "linear": rearrange into patches + Linear
    dynamic_img_size: bool = False  # accept other image sizes by resizing the position embedding on the fly
    hybrid_layers: Optional[Tuple[int, ...]] = None  # ResNet stages for the hybrid (paper: (3, 4, 9)); None: pure ViT
    head_zero_init: bool = False  # zero the classifier, as the paper does when fine-tuning
    # "timm": every Linear ~ N(0, 0.02^2) (timm's default); "jax": Xavier-uniform Linears, tiny MLP biases and a
    # zero head, as the paper's JAX code (timm's weight_init="jax"). At width 64 Xavier is ~5x larger than 0.02.
    weight_init: str = "timm"
    extra: dict = field(default_factory=dict)  # free-form notes (preset name, source); not used by the model

    def __post_init__(self) -> None:
        _check_field_types(self)
        self.image_size = to_2tuple(self.image_size, "image_size")
        self.patch_size = to_2tuple(self.patch_size, "patch_size")
        for name in ("image_size", "patch_size"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {tuple(getattr(self, name))}")
        if self.hybrid_layers is not None:
            self.hybrid_layers = check_resnet_layers(self.hybrid_layers, "hybrid_layers", none_ok=True)
        for name in ("in_channels", "num_classes", "dim", "depth", "heads", "mlp_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
            if value < (0 if name == "num_classes" else 1):
                raise ValueError(f"{name} must be positive, got {value}")
        if self.dim % self.heads != 0:
            raise ValueError(
                f"dim must be divisible by heads so each head gets dim/heads features: "
                f"dim={self.dim}, heads={self.heads} (dim % heads = {self.dim % self.heads})"
            )
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.pos_embedding not in POS_EMBEDDINGS:
            raise ValueError(f"pos_embedding must be one of {POS_EMBEDDINGS}, got {self.pos_embedding!r}")
        if self.weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {self.weight_init!r}")
        if self.patch_embed not in PATCH_EMBEDS:
            raise ValueError(f"patch_embed must be one of {PATCH_EMBEDS}, got {self.patch_embed!r}")
        if self.hybrid_layers is not None and self.patch_embed != "conv":  # build_patch_embed would ignore it
            raise ValueError(f"patch_embed={self.patch_embed!r} does not apply to a hybrid (hybrid_layers="
                             f"{self.hybrid_layers}): its tokens come from the CNN feature map through a Conv2d; "
                             "leave patch_embed='conv'")
        if self.pool == "cls" and not self.class_token:
            raise ValueError("pool='cls' needs class_token=True; use pool='mean' for a model without a class token")
        for name in ("dropout", "attn_dropout", "drop_path"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        eps = self.norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            # eps <= 0 or NaN: LayerNorm divides by sqrt(var + eps), which gives NaN or inf outputs
            raise ValueError(f"norm_eps must be a finite number > 0 (e.g. 1e-6), got {eps!r}")
        if eps > 0.01:  # of the order of the variance (about 1) or more, it flattens every token towards 0
            raise ValueError(f"norm_eps must be at most 0.01 (e.g. 1e-6; models use 1e-12 to 1e-5): LayerNorm adds it "
                             f"to the variance of the features, about 1, before the square root, got {eps!r}")
        if self.representation_size is not None and self.representation_size < 1:
            raise ValueError(f"representation_size must be None or a positive int, got {self.representation_size}")
        stride = self.input_patch_size
        hybrid = f" (backbone stride x patch size) of hybrid_layers={self.hybrid_layers}" if self.hybrid_layers else ""
        if self.image_size[0] % stride[0] or self.image_size[1] % stride[1]:
            raise ValueError(
                f"image_size {tuple(self.image_size)} must be divisible by the patch size "
                f"{tuple(stride)}{hybrid}"
            )
        if self.pos_embedding == "sincos2d" and self.dim % 4 != 0:
            raise ValueError(f"pos_embedding='sincos2d' needs dim divisible by 4, got dim={self.dim}")
        # before anything is allocated: a typo such as dim=2**20 would otherwise ask for terabytes
        tokens = self.grid_size[0] * self.grid_size[1] + 1
        parts = {  # parameters of each part, roughly, and the fields that set its size
            "dim, depth, mlp_dim": self.depth * (4 * self.dim * self.dim + 2 * self.dim * self.mlp_dim),
            "in_channels, patch_size": self.dim * self.in_channels * stride[0] * stride[1],
            "image_size (tokens)": self.dim * tokens,
            "num_classes, representation_size": self.dim * max(self.num_classes, self.representation_size or 0),
            "hybrid_layers": sum(n * 17 * (64 * 2**i) ** 2 for i, n in enumerate(self.hybrid_layers or ())),
        }
        estimate = sum(parts.values())
        if estimate > MAX_PARAMETERS:
            largest = max(parts, key=parts.get)
            raise ValueError(f"this configuration has about {estimate:.2e} parameters ({4 * estimate / 2**30:,.0f} GiB "
                             f"in fp32), more than vit_edu builds ({MAX_PARAMETERS:.0e}; ViT-H/14 has 6.3e+08), most "
                             f"of them from {largest}: check dim={self.dim}, depth={self.depth}, "
                             f"mlp_dim={self.mlp_dim}, "
                             f"image_size={tuple(self.image_size)}, in_channels={self.in_channels}, "
                             f"num_classes={self.num_classes}, representation_size={self.representation_size}"
                             f"{f', hybrid_layers={self.hybrid_layers}' if self.hybrid_layers else ''}")

    @property
    def backbone_stride(self) -> int:
        """Down-sampling of the hybrid's CNN before the patch embedding; 1 for a pure ViT."""
        return 1 if self.hybrid_layers is None else resnet_stride(self.hybrid_layers)

    @property
    def input_patch_size(self) -> Tuple[int, int]:
        """One token's patch in input pixels: patch_size, times the backbone stride for the hybrid."""
        s = self.backbone_stride
        return (s * self.patch_size[0], s * self.patch_size[1])

    @property
    def grid_size(self) -> Tuple[int, int]:
        """Patches along height and width: (H / P, W / P)."""
        return patch_grid(self.image_size, self.input_patch_size)

    @property
    def num_patches(self) -> int:
        """N = HW / P^2 in the paper."""
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_tokens(self) -> int:
        """Sequence length the encoder sees: N patches plus one class token if used."""
        return self.num_patches + (1 if self.class_token else 0)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def use_fc_norm(self) -> bool:
        return self.pool == "mean" if self.fc_norm is None else bool(self.fc_norm)

    def to_dict(self) -> dict:
        """Plain types only, so a checkpoint can store it and load it with ``weights_only=True``."""
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["patch_size"] = list(self.patch_size)
        if self.hybrid_layers is not None:
            d["hybrid_layers"] = list(self.hybrid_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        if not isinstance(d, Mapping):
            raise TypeError(f"ViTConfig.from_dict expects a dict of fields, got {type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig fields {unknown}; expected a subset of {sorted(known)}")
        d = dict(d)
        for k in ("image_size", "patch_size"):
            if k in d and isinstance(d[k], list):
                d[k] = tuple(d[k])
        return cls(**d)
