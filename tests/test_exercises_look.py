"""The references of the notebooks 07-09 exercises agree with the package they teach, and every named mistake
is told apart from the right answer on the check's own cases (a mutant equal to the reference could never
be named, and would hide a case set too weak to see the mistake)."""

import pytest
import torch

from vit_edu.explain import analysis
from vit_edu.classroom import engine
from vit_edu.classroom.exercises_look import EXERCISES, bottleneck, mad, pes
from vit_edu.hybrid import Bottleneck


@pytest.mark.parametrize("B,H,gh,gw,P", [(2, 3, 3, 4, 4), (1, 2, 8, 8, 4), (3, 1, 2, 5, 16)])
def test_mean_attention_distance_reference_is_the_package(B, H, gh, gw, P):
    torch.manual_seed(0)
    attn = (2 * torch.randn(B, H, 1 + gh * gw, 1 + gh * gw)).softmax(-1)
    package = analysis.mean_attention_distance([attn], (gh, gw), P)[0]
    torch.testing.assert_close(mad(attn, (gh, gw), P), package, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prefix,gh,gw,D", [(1, 3, 4, 8), (0, 2, 5, 6), (1, 8, 8, 64)])
def test_pos_embed_similarity_reference_is_the_package(prefix, gh, gw, D):
    torch.manual_seed(1)
    pos = torch.randn(prefix + gh * gw, D)
    torch.testing.assert_close(pes(pos, (gh, gw)), analysis.pos_embed_similarity(pos, (gh, gw)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        pes(torch.randn(gh * gw + 2, D), (gh, gw))


@pytest.mark.parametrize("c_in,c_out,stride,size", [(64, 256, 1, (6, 5)), (256, 256, 1, (5, 6)),
                                                    (128, 256, 2, (8, 6)), (128, 256, 2, (7, 9))])
def test_bottleneck_reference_is_the_package(c_in, c_out, stride, size):
    torch.manual_seed(2)
    block = Bottleneck(c_in, c_out, stride).eval()
    with torch.no_grad():
        for name, p in block.named_parameters():  # every parameter its own values, GroupNorm scales included
            p.copy_(engine.param_value(0, 0, name, p.shape))
        x = torch.randn(2, c_in, *size)
        params = dict(block.named_parameters())
        torch.testing.assert_close(bottleneck(x, params, stride), block(x), rtol=1e-4, atol=1e-4)


def test_package_versions_pass_their_checks():
    """The package's own functions and block are right answers (the package is the answer key)."""
    from vit_edu import checks

    checks.check_bottleneck(Bottleneck)
    checks.check_pos_embed_similarity(lambda pos, grid: pes(pos, grid))
    checks.check_mean_attention_distance(lambda attn, grid, p: mad(attn, grid, p))
    checks.check_resize_pos_embed(lambda pos, new, old: __import__("vit_edu").resize_pos_embed(pos, new, old))


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_every_mutant_differs_from_the_reference_somewhere(name):
    ex = EXERCISES[name]
    cases = engine.build_cases(ex, seed=0)
    seen = {}
    for index, case in enumerate(cases):
        if case.raises is not None:
            continue
        ctx = engine.Ctx(ex, case, index, 0)
        if ex.kind == "module":
            module = Bottleneck(*case.init)
            ctx.params = {n: engine.param_value(0, index, n, p.shape) for n, p in module.named_parameters()}
        with torch.no_grad():
            want = ex.reference(ctx, *case.args)
            for k, (msg, make) in enumerate(ex.mutants(ctx, *case.args)):
                got = make()
                # the check tells them apart, with a margin: three times its own tolerance
                differs = got.shape != want.shape or not torch.allclose(got.double(), want.double(),
                                                                         rtol=3 * ex.rtol, atol=3 * ex.atol)
                seen[k] = seen.get(k, False) or differs
    assert seen and all(seen.values()), [k for k, v in seen.items() if not v]


@pytest.mark.parametrize("old,new", [((3, 4), (5, 7)), ((6, 5), (3, 4)), ((8, 8), (12, 12)), ((2, 3), (2, 3))])
def test_resize_pos_embed_reference_is_the_package(old, new):
    from vit_edu import resize_pos_embed
    from vit_edu.classroom.exercises_look import rpe

    torch.manual_seed(3)
    pos = torch.randn(1, 1 + old[0] * old[1], 6)
    torch.testing.assert_close(rpe(pos, new, old), resize_pos_embed(pos, new, old), rtol=1e-5, atol=1e-5)


def test_mean_attention_distance_names_a_table_kept_from_another_patch_size():
    """A distance table cached by grid_size alone is right on the first call of each grid; a case repeats the
    first case's grid with another patch size, and the message names the patch size the table was made for."""
    from vit_edu.checks import CheckError, check_mean_attention_distance

    first_patch_size = {}

    def table_kept_by_grid(attn, grid_size, patch_size):
        kept = first_patch_size.setdefault(tuple(grid_size), patch_size)  # the table of the grid's first call
        return mad(attn, grid_size, kept)

    with pytest.raises(CheckError, match=r"the distances are those of an earlier call on this grid with "
                                         r"patch_size=4: a distance table kept across calls"):
        check_mean_attention_distance(table_kept_by_grid)


@pytest.mark.parametrize("name", ["mean_attention_distance", "pos_embed_similarity", "resize_pos_embed", "rollout"])
def test_float64_inputs_are_checked_and_kept(name):
    """The contracts of rollout and the analysis exercises keep the input's dtype: each check has a float64 case,
    its reference answers in float64 there, and an answer that computes in float32 is named."""
    from vit_edu import checks
    from vit_edu.checks import CHECKS, CheckError

    ex = CHECKS[name]
    f64 = [c for c in engine.build_cases(ex, seed=0) if c.raises is None and any(
        getattr(t, "dtype", None) == torch.float64 for a in c.args for t in (a if isinstance(a, list) else [a]))]
    assert f64, f"{name}: no float64 case"
    with torch.no_grad():
        assert ex.reference(engine.Ctx(ex, f64[0], 0, 0), *f64[0].args).dtype == torch.float64

    def in_float32(*args):  # the package's answer, computed on float32 copies of the inputs
        args = [[t.float() for t in a] if isinstance(a, list) else a.float() if torch.is_tensor(a) else a
                for a in args]
        return ex.reference(None, *args)

    # (a float64 case beyond float32's range, as pos_embed_similarity's, shows it as inf before the dtype)
    with pytest.raises(CheckError, match=r"has dtype float32; it should keep the input's dtype float64|this case is "
                                         r"float64; .* is float32 and loses the input's precision and range"):
        getattr(checks, f"check_{name}")(in_float32)
