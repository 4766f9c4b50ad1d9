"""An answer that passes its check must not break a later cell of its notebook.

The demonstrations after an exercise use the student's object once its check passed (``passed_or``), so whatever
those cells assume of it beyond the values is part of the check: how the notebook builds it (arguments given by
name) and which of its parts it calls on their own. Each test here is an answer that used to pass its check and
then failed in a later cell; the check now names what the later cell needs.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from einops import rearrange

import vit_edu
import vit_edu.hybrid
from vit_edu.checks import CheckError, check_bottleneck, check_encoder_block, check_mlp, check_multi_head_attention

pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------------- notebook 04, encoder block
class _Attention(nn.Module):
    def __init__(self, dim, heads, with_weights=False):
        super().__init__()
        self.heads, self.with_weights = heads, with_weights
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        weights = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(dim=-1)
        out = self.proj(rearrange(weights @ v, "b h n d -> b n (h d)"))
        return (out, weights) if self.with_weights else out


class _MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    with_weights = False

    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = _Attention(dim, heads, self.with_weights), _MLP(dim, mlp_dim)

    def forward(self, x):
        a = self.attn(self.norm1(x))
        x = x + (a[0] if self.with_weights else a)
        return x + self.mlp(self.norm2(x))


class _BlockAttentionWithWeights(_Block):
    """Right as a whole, but its self.attn returns (output, weights)."""
    with_weights = True


def _post_norm(block_cls):
    class PostNormBlock(block_cls):  # notebook 04's comparison of pre-norm with post-norm, made of the same parts
        def forward(self, x):
            x = self.norm1(x + self.attn(x))
            return self.norm2(x + self.mlp(x))
    return PostNormBlock


def test_block_whose_parts_cannot_be_called_alone_is_named():
    check_encoder_block(_Block)
    _post_norm(_Block)(16, 4, 32)(torch.randn(2, 5, 16))
    with pytest.raises(TypeError):  # what the later cell met
        _post_norm(_BlockAttentionWithWeights)(16, 4, 32)(torch.randn(2, 5, 16))
    with pytest.raises(CheckError, match=r"self\.attn\(x\) returned a tuple"):
        check_encoder_block(_BlockAttentionWithWeights)


# ----------------------------------------------------------------------- notebooks 03 and 09, names of arguments
class _RenamedHeads(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.heads, self.with_weights = num_heads, False
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    forward = _Attention.forward


class _RenamedStride(vit_edu.hybrid.Bottleneck):
    def __init__(self, in_channels, out_channels, s=1):
        super().__init__(in_channels, out_channels, s)


@pytest.mark.parametrize("check, answer, keyword, later", [
    (check_multi_head_attention, _RenamedHeads, "heads", lambda cls: cls(64, heads=4)),  # notebook 03
    (check_bottleneck, _RenamedStride, "stride", lambda cls: cls(256, 512, stride=2)),  # notebook 09
], ids=["multi_head_attention", "bottleneck"])
def test_argument_the_notebook_gives_by_name_is_required(check, answer, keyword, later):
    with pytest.raises(TypeError, match=keyword):  # what the later cell met
        later(answer)
    with pytest.raises(CheckError, match=rf"{keyword} given by name.*unexpected keyword argument '{keyword}'"):
        check(answer)


def test_right_answers_built_by_name_still_pass():
    class Heads(_RenamedHeads):
        def __init__(self, dim, heads):
            super().__init__(dim, heads)

    check_multi_head_attention(Heads)
    check_bottleneck(vit_edu.hybrid.Bottleneck)


# ------------------------------------------------------------------- notebook 04, every right answer, its cells
NOTEBOOK_04 = Path(__file__).resolve().parents[1] / "notebooks" / "04_encoder_block.ipynb"


def _cell_with(text: str) -> str:
    cells = [c.source for c in nbformat.read(NOTEBOOK_04, as_version=4).cells
             if c.cell_type == "code" and text in c.source]
    assert len(cells) == 1, f"{NOTEBOOK_04.name}: {len(cells)} code cells hold {text!r}"
    return cells[0]


@pytest.mark.parametrize("exercise, name, cell", [
    ("layer_norm", "layer_norm", "layer_norm_ = passed_or("),  # rows far from 0 with a small spread
    ("mlp", "MLP", "MLP_ = passed_or("),  # GELU's tanh form, weights loaded before a call
    ("encoder_block", "EncoderBlock", "EncoderBlock_ = passed_or("),  # the same, and torchvision's block
])
def test_every_right_answer_runs_the_cell_after_its_check(exercise, name, cell):
    """Each right answer of the adversarial set passes its check, then runs notebook 04's demonstration cell (three
    seeds): the cell asks no more of it than the check did (its tolerance, GELU's tanh form, sizes known before a
    call). E[x^2] - E[x]^2 (a float32 cancellation on rows far from 0) and GELU's tanh form broke these cells."""
    from adversarial import load
    import vit_edu.checks as checks

    source = _cell_with(cell)
    answers = load(Path(__file__).resolve().parent / "adversarial" / f"{exercise}.py").CORRECT
    for answer in answers:
        getattr(checks, f"check_{exercise}")(answer)
        for seed in range(3):
            torch.manual_seed(seed)
            namespace = {"torch": torch, "nn": nn, "F": F, "vit_edu": vit_edu, "torchvision": torchvision,
                         "passed_or": checks.passed_or, name: answer}
            try:
                exec(compile(source, f"{NOTEBOOK_04.name}: {cell}", "exec"), namespace)
            except Exception as e:  # noqa: BLE001 - named with the answer
                raise AssertionError(f"{getattr(answer, '__name__', answer)} passed check_{exercise}, then the "
                                     f"cell after it failed (seed {seed}): {type(e).__name__}: {e}") from e


# ------------------------------------------------------------------ an earlier exercise's stub, a missing forward
class _StubMLP(nn.Module):  # notebook 04's student copy before exercise 4.2 is done
    def __init__(self, dim, hidden_dim):
        super().__init__()
        # YOUR CODE HERE
        raise NotImplementedError()


class _BlockOverStub(_Block):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.mlp = _StubMLP(dim, mlp_dim)


def test_a_finished_answer_over_an_earlier_stub_names_the_stub():
    """The block is written; the MLP it builds is still the stub: the message names where the stub is instead of
    telling the student to replace a raise their block does not hold."""
    with pytest.raises(CheckError, match=r"not implemented yet: .*raised NotImplementedError in _StubMLP\.__init__, "
                                         r"which your EncoderBlock calls: where that is an earlier exercise"):
        check_encoder_block(_BlockOverStub)
    with pytest.raises(CheckError, match=r"not implemented yet: .*Replace `raise NotImplementedError\(\)`"):
        check_mlp(_StubMLP)  # the stub itself: the usual message


def test_a_class_without_forward_is_told_so():
    class Misspelt(nn.Module):
        def __init__(self, dim, hidden):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

        def foward(self, x):  # nn.Module's placeholder forward raises NotImplementedError
            return self.fc2(F.gelu(self.fc1(x)))
    with pytest.raises(CheckError, match=r"missing the required \"forward\" function: define forward\(self, x\)"):
        check_mlp(Misspelt)


class MLP(nn.Module):  # notebook 04's stub, named as in the student copy (module level, as a notebook's cell)
    def __init__(self, dim, hidden_dim):
        super().__init__()
        # YOUR CODE HERE
        raise NotImplementedError()


class _BlockOverNamedStub(_Block):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.mlp = MLP(dim, mlp_dim)


def attention(q, k, v):  # notebook 03's stub of exercise 3.1
    # YOUR CODE HERE
    raise NotImplementedError()


class _HeadsOverStub(_RenamedHeads):
    def __init__(self, dim, heads):
        super().__init__(dim, heads)

    def forward(self, x):
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        return self.proj(rearrange(attention(q, k, v)[0], "b h n d -> b n (h d)"))


def test_the_stub_message_names_the_package_stand_in():
    """A stub met inside another answer: the message names what to use in its place (vit_edu.Mlp for MLP), as the
    contract of exercise 3.2 does for attention, so a stuck student can go on with the later exercise at once."""
    with pytest.raises(CheckError, match=r"use the package's version \(vit_edu\.Mlp\) in its place"):
        check_encoder_block(_BlockOverNamedStub)
    with pytest.raises(CheckError, match=r"\(vit_edu\.attention_with_weights\) in its place"):
        check_multi_head_attention(_HeadsOverStub)
    with pytest.raises(CheckError, match=r"use the package's version in its place"):  # no exercise of that name
        check_encoder_block(_BlockOverStub)


def test_every_stand_in_a_message_names_is_the_package_s_own_and_an_earlier_answer_s():
    """The stand-ins the stub message names (exercise tables, ``stand_ins``) exist in vit_edu, and each stands for
    an earlier exercise's answer of that name (its title or its class/function name in the student copy)."""
    import vit_edu
    from vit_edu.checks import CHECKS

    named = [(ex, title, dotted) for ex in CHECKS.values() for title, dotted in ex.stand_ins]
    assert len(named) >= 3
    for ex, title, dotted in named:
        assert dotted.startswith("vit_edu.") and hasattr(vit_edu, dotted.split(".", 1)[1]), (ex.name, dotted)
        assert any(other.title == title for other in CHECKS.values() if other is not ex), (ex.name, title)
