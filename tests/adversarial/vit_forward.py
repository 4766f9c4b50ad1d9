"""Adversarial set for check_vit_forward (notebook 05): other correct styles, usual mistakes and ways around
the rule "build it from the pieces, do not call the model's own forward"."""

import functools

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from vit_edu import VisionTransformer

CHECK = "vit_forward"


# ------------------------------------------------------------------------------------------------- correct
def standard(model, images):
    x = model.patch_embed(images)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed
    for blk in model.blocks:
        x = blk(x)
    return model.head(model.norm(x)[:, 0])


def einops_reduce_blocks(model, images):
    tokens = model.patch_embed(images)
    cls = repeat(model.cls_token, "1 1 d -> b 1 d", b=tokens.shape[0])
    z = torch.cat((cls, tokens), dim=1) + model.pos_embed
    z = functools.reduce(lambda h, blk: blk(h), model.blocks, z)
    return model.head(model.norm(z)[:, 0])


def sequential_then_norm_cls_only(model, images):
    x = model.patch_embed(images)
    cls = model.cls_token + model.pos_embed[:, :1]
    x = torch.cat([cls.repeat(len(x), 1, 1), x + model.pos_embed[:, 1:]], 1)
    x = nn.Sequential(*model.blocks)(x)
    y = model.norm(x[:, 0])  # LayerNorm works per token: normalising the class token alone is the same
    return F.linear(y, model.head.weight, model.head.bias)


def indexed_blocks(model, images):
    x = model.patch_embed(images)
    B, N, D = x.shape
    z = x.new_empty(B, N + 1, D)
    z[:, 0] = model.cls_token[0, 0]
    z[:, 1:] = x
    z = z + model.pos_embed
    for i in range(len(model.blocks)):
        z = model.blocks[i](z)
    return model.head(model.norm(z))[:, 0]


CORRECT = [standard, einops_reduce_blocks, sequential_then_norm_cls_only, indexed_blocks]


# ------------------------------------------------------------------------------------------------ mistakes
def calls_model(model, images):
    return model(images)


def calls_class_forward(model, images):
    return type(model).forward(model, images)


def calls_base_forward(model, images):
    return VisionTransformer.forward(model, images)


def calls_module_call(model, images):
    return nn.Module.__call__(model, images)


_saved_forward = VisionTransformer.forward  # kept before the check runs


def calls_saved_forward(model, images):
    return _saved_forward(model, images)


def forward_features(model, images):
    return model.head(model.forward_features(images)[:, 0])


def tries_model_first(model, images):
    try:
        return model(images)
    except Exception:
        return standard(model, images)


def uses_embed(model, images):
    x = model.embed(images)
    for blk in model.blocks:
        x = blk(x)
    return model.head(model.norm(x)[:, 0])


def _variant(cls=True, pos=True, norm=True, pool="cls", blocks="all", pos_slice=False):
    def f(model, images):
        x = model.patch_embed(images)
        N = x.shape[1]
        if cls:
            x = torch.cat([model.cls_token.expand(len(x), -1, -1), x], 1)
        if pos:
            x = x + (model.pos_embed[:, :N] if pos_slice else model.pos_embed if cls else model.pos_embed[:, 1:])
        chosen = {"all": list(model.blocks), "first": list(model.blocks)[:1], "reversed": list(model.blocks)[::-1],
                  "none": []}[blocks]
        for blk in chosen:
            x = blk(x)
        if norm:
            x = model.norm(x)
        return model.head(x[:, 0] if pool == "cls" else x.mean(1))
    return f


no_cls = _variant(cls=False)
no_pos = _variant(pos=False)
no_norm = _variant(norm=False)
mean_pool = _variant(pool="mean")
first_block_only = _variant(blocks="first")
reversed_blocks = _variant(blocks="reversed")
no_cls_pos_slice = _variant(cls=False, pos_slice=True)


def pos_first_n_before_cls(model, images):
    x = model.patch_embed(images)
    x = x + model.pos_embed[:, : x.shape[1]]
    x = torch.cat([model.cls_token.expand(len(x), -1, -1), x], 1)
    for blk in model.blocks:
        x = blk(x)
    return model.head(model.norm(x)[:, 0])


def cls_at_end(model, images):
    x = model.patch_embed(images)
    x = torch.cat([x, model.cls_token.expand(len(x), -1, -1)], 1) + model.pos_embed
    for blk in model.blocks:
        x = blk(x)
    return model.head(model.norm(x)[:, -1])


def detached_tokens(model, images):
    x = model.patch_embed(images).detach()
    x = torch.cat([model.cls_token.expand(len(x), -1, -1), x], 1) + model.pos_embed
    for blk in model.blocks:
        x = blk(x)
    return model.head(model.norm(x)[:, 0])


def edits_pos_embed(model, images):
    x = model.patch_embed(images)
    pe = model.pos_embed.data
    pe[:, 0] += model.cls_token.data[:, 0]  # cls + its position, written into the model
    x = torch.cat([model.pos_embed[:, :1].expand(len(x), -1, -1), x + model.pos_embed[:, 1:]], 1)
    for blk in model.blocks:
        x = blk(x)
    return model.head(model.norm(x)[:, 0])


no_cls.__name__, no_pos.__name__, no_norm.__name__, mean_pool.__name__ = "no_cls", "no_pos", "no_norm", "mean_pool"
first_block_only.__name__, reversed_blocks.__name__ = "first_block_only", "reversed_blocks"
no_cls_pos_slice.__name__ = "no_cls_pos_slice"

def pos_after_blocks(model, images):
    x = model.patch_embed(images)
    x = torch.cat([model.cls_token.expand(len(x), -1, -1), x], 1)
    for blk in model.blocks:
        x = blk(x)
    return model.head(model.norm(x + model.pos_embed)[:, 0])


def norm_after_each_block(model, images):
    x = model.patch_embed(images)
    x = torch.cat([model.cls_token.expand(len(x), -1, -1), x], 1) + model.pos_embed
    for blk in model.blocks:
        x = model.norm(blk(x))
    return model.head(x[:, 0])


def cls_not_expanded(model, images):
    x = torch.cat([model.cls_token, model.patch_embed(images)], dim=1) + model.pos_embed  # [1, 1, D] for a batch
    for block in model.blocks:
        x = block(x)
    return model.head(model.norm(x)[:, 0])


MISTAKES = [
    (cls_not_expanded, "not expanded to the batch"),
    (pos_after_blocks, "after the blocks"),
    (norm_after_each_block, "after every block"),
    (calls_model, "called model(...)"),
    (calls_class_forward, "called model(...)"),
    (calls_base_forward, "called model(...)"),
    (calls_module_call, "called model(...)"),
    (calls_saved_forward, "called model(...)"),
    (forward_features, "called model.forward_features"),
    (tries_model_first, "called model(...)"),
    (uses_embed, "called model.embed"),
    (no_cls, "class token is missing"),
    (no_pos, "position embedding is missing"),
    (no_norm, "final LayerNorm"),
    (mean_pool, "mean of all tokens"),
    (first_block_only, "only the first block"),
    (reversed_blocks, "reverse order"),
    (no_cls_pos_slice, "pos_embed[:, :N]"),
    (pos_first_n_before_cls, "pos_embed[:, :N]"),
    (cls_at_end, "at the end"),
    (detached_tokens, "gradient"),
    (edits_pos_embed, "in place"),
]


def one_image_at_a_time(model, images):
    logits = []
    for image in images:  # a batch of one per image, concatenated
        z = torch.cat([model.cls_token, model.patch_embed(image[None])], dim=1) + model.pos_embed
        for blk in model.blocks:
            z = blk(z)
        logits.append(model.head(model.norm(z)[:, 0]))
    return torch.cat(logits)


def first_patch_token(model, images):
    x = model.patch_embed(images)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed
    for blk in model.blocks:
        x = blk(x)
    return model.head(model.norm(x)[:, 1])  # off by one: the class token is index 0


def norm_before_the_blocks_too(model, images):
    x = model.patch_embed(images)
    x = model.norm(torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed)
    for blk in model.blocks:
        x = blk(x)
    return model.head(model.norm(x)[:, 0])


def switches_to_training(model, images):
    model.train()  # the model arrived in eval mode: its dropout is now on
    return standard(model, images)


CORRECT.append(one_image_at_a_time)
MISTAKES += [(first_patch_token, "x[:, 1]"), (norm_before_the_blocks_too, "before the blocks"),
             (switches_to_training, "dropout")]


def final_norm_with_default_eps(model, images):  # F.layer_norm's eps is 1e-5; model.norm's is 1e-6
    x = model.patch_embed(images)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], 1) + model.pos_embed
    for blk in model.blocks:
        x = blk(x)
    return model.head(F.layer_norm(x[:, 0], x.shape[-1:], model.norm.weight, model.norm.bias))


def final_norm_with_its_own_eps(model, images):  # right: the norm written out with model.norm.eps
    x = model.patch_embed(images)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], 1) + model.pos_embed
    for blk in model.blocks:
        x = blk(x)
    c = x[:, 0]
    c = (c - c.mean(-1, keepdim=True)) / torch.sqrt(c.var(-1, unbiased=False, keepdim=True) + model.norm.eps)
    return model.head(c * model.norm.weight + model.norm.bias)


CORRECT.append(final_norm_with_its_own_eps)
MISTAKES.append((final_norm_with_default_eps, "eps=1e-5"))
