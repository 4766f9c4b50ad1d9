"""Adversarial set for check_cls_and_pos (notebook 02): other correct styles and usual mistakes."""

import torch
from einops import repeat

CHECK = "cls_and_pos"


# ------------------------------------------------------------------------------------------------- correct
def cat_expand(tokens, cls_token, pos_embed):
    return torch.cat([cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + pos_embed


def einops_repeat(tokens, cls_token, pos_embed):
    cls = repeat(cls_token, "() n d -> b n d", b=tokens.size(0))
    return torch.cat((cls, tokens), 1).add(pos_embed)


def split_positions(tokens, cls_token, pos_embed):
    B = len(tokens)
    first = (cls_token + pos_embed[:, :1]).repeat(B, 1, 1)
    return torch.cat([first, tokens + pos_embed[:, 1:]], dim=1)


def broadcast_to_then_cat(tokens, cls_token, pos_embed):
    B, N, D = tokens.shape
    z = torch.concat([torch.broadcast_to(cls_token, (B, 1, D)), tokens], dim=-2)
    return z + pos_embed.expand(B, -1, -1)


def fill_new_tensor(tokens, cls_token, pos_embed):
    B, N, D = tokens.shape
    z = tokens.new_zeros(B, N + 1, D)
    z[:, :1] = cls_token
    z[:, 1:] = tokens
    return z + pos_embed


def stack_per_image(tokens, cls_token, pos_embed):
    rows = [torch.cat([cls_token[0], t], dim=0) for t in tokens.unbind(0)]
    return torch.stack(rows) + pos_embed


CORRECT = [cat_expand, einops_repeat, split_positions, broadcast_to_then_cat, fill_new_tensor, stack_per_image]


# ------------------------------------------------------------------------------------------------ mistakes
def no_position(tokens, cls_token, pos_embed):
    return torch.cat([cls_token.expand(len(tokens), -1, -1), tokens], dim=1)


def cls_at_end(tokens, cls_token, pos_embed):
    return torch.cat([tokens, cls_token.expand(len(tokens), -1, -1)], dim=1) + pos_embed


def pos_before_cls(tokens, cls_token, pos_embed):
    return torch.cat([cls_token.expand(len(tokens), -1, -1), tokens + pos_embed[:, 1:]], dim=1)


def pos_first_n_rows(tokens, cls_token, pos_embed):
    N = tokens.shape[1]
    return torch.cat([cls_token.expand(len(tokens), -1, -1), tokens + pos_embed[:, :N]], dim=1)


def no_cls(tokens, cls_token, pos_embed):
    return tokens + pos_embed[:, 1:]


def not_expanded(tokens, cls_token, pos_embed):
    return torch.cat([cls_token, tokens], dim=1) + pos_embed


def in_place_tokens(tokens, cls_token, pos_embed):
    tokens += pos_embed[:, 1:]
    return torch.cat([cls_token.expand(len(tokens), -1, -1) + pos_embed[:, :1], tokens], dim=1)


def float32_buffer(tokens, cls_token, pos_embed):
    B, N, D = tokens.shape
    z = torch.empty(B, N + 1, D)
    z[:, 0] = cls_token[0, 0]
    z[:, 1:] = tokens
    return z + pos_embed


def detached_cls(tokens, cls_token, pos_embed):
    return torch.cat([cls_token.detach().expand(len(tokens), -1, -1), tokens], dim=1) + pos_embed


def cls_added_to_tokens(tokens, cls_token, pos_embed):
    return tokens + cls_token + pos_embed[:, 1:]


def cls_replaces_first(tokens, cls_token, pos_embed):
    z = torch.cat([cls_token.expand(len(tokens), -1, -1), tokens[:, 1:]], dim=1)
    return z + pos_embed[:, :-1]


def first_image_only(tokens, cls_token, pos_embed):
    return torch.cat([cls_token, tokens[:1]], dim=1) + pos_embed


def pos_cls_only(tokens, cls_token, pos_embed):
    return torch.cat([cls_token.expand(len(tokens), -1, -1) + pos_embed[:, :1], tokens], dim=1)


MISTAKES = [
    (no_position, "position embedding is missing"),
    (cls_at_end, "FRONT"),
    (pos_before_cls, "misses pos_embed[:, 0]"),
    (pos_first_n_rows, "pos_embed[:, :N]"),
    (no_cls, "class token is missing"),
    (not_expanded, "expand"),
    (in_place_tokens, "in place"),
    (float32_buffer, "float32"),
    (detached_cls, "cls_token"),
    (cls_added_to_tokens, "prepended"),
    (cls_replaces_first, "replaced the first patch token"),
    (first_image_only, "expand"),
    (pos_cls_only, "patch tokens"),
]


_SEQUENCES = {}


def kept_by_shape(tokens, cls_token, pos_embed):
    # the first call's sequence, cached by the input's shape and returned for every later input of that shape
    if tokens.shape not in _SEQUENCES:
        _SEQUENCES[tokens.shape] = torch.cat([cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + pos_embed
    return _SEQUENCES[tokens.shape]


MISTAKES.append((kept_by_shape, "earlier call"))


def cls_row_never_written(tokens, cls_token, pos_embed):
    # a buffer from torch.empty whose class-token row is never written: what it holds depends on the memory
    z = tokens.new_empty(tokens.shape[0], tokens.shape[1] + 1, tokens.shape[2])
    z[:, 1:] = tokens
    return z + pos_embed


MISTAKES.append((cls_row_never_written, "never written"))
