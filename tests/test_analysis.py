"""Tests for vit_edu.explain.analysis (the numbers behind the pictures) and vit_edu.explain.viz (the pictures).

Every analysis function is checked against an independent reference: numbers worked out by hand,
plain Python loops (itertools, math.dist, F.cosine_similarity) or scipy.
"""

from __future__ import annotations

import itertools
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from einops import rearrange  # noqa: E402
from scipy import stats  # noqa: E402

import vit_edu  # noqa: E402
from vit_edu.explain import analysis, viz  # noqa: E402
from vit_edu.patch_embed import LinearPatchEmbed, PatchEmbed, conv_to_linear_  # noqa: E402


def random_attention(layers: int, batch: int, heads: int, tokens: int) -> list:
    """Row-stochastic random attention, like a softmax output."""
    return [torch.randn(batch, heads, tokens, tokens).softmax(dim=-1) for _ in range(layers)]


# ------------------------------------------------------------------------------------------------ rollout
# Hand case: T = 3, 2 heads, 2 layers, batch 1.
HEADS_1 = torch.tensor([
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
    [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
])[None]  # [1, 2, 3, 3]; mean over heads = [[.5, .5, 0], [0, 1, 0], [.5, 0, .5]]
PERM = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
HEADS_2 = torch.stack([PERM, PERM])[None]  # [1, 2, 3, 3]; both heads the same permutation

# Â1 = 0.5 * mean + 0.5 * I = [[.75, .25, 0], [0, 1, 0], [.25, 0, .75]]
# Â2 = 0.5 * PERM + 0.5 * I = [[.5, 0, .5], [.5, .5, 0], [0, .5, .5]]
# R = Â2 @ Â1, worked out by hand:
ROLLOUT_HAND = torch.tensor([[0.5, 0.125, 0.375], [0.375, 0.625, 0.0], [0.125, 0.5, 0.375]])
ROLLOUT_WRONG_ORDER = torch.tensor([[0.5, 0.125, 0.375], [0.5, 0.5, 0.0], [0.125, 0.375, 0.5]])  # Â1 @ Â2


def test_rollout_hand_case():
    r = analysis.attention_rollout([HEADS_1, HEADS_2])
    assert r.shape == (1, 3, 3)
    torch.testing.assert_close(r[0], ROLLOUT_HAND)
    assert not torch.allclose(r[0], ROLLOUT_WRONG_ORDER)  # the order of multiplication matters


def test_rollout_head_fusion_max_min_by_hand():
    # max over heads of layer 1: [[1, 1, 0], [0, 1, 0], [1, 0, 1]]; + I, rows / [3, 2, 3]
    a1_max = torch.tensor([[2 / 3, 1 / 3, 0.0], [0.0, 1.0, 0.0], [1 / 3, 0.0, 2 / 3]])
    a2 = torch.tensor([[0.5, 0.0, 0.5], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    r_max = analysis.attention_rollout([HEADS_1, HEADS_2], head_fusion="max")
    torch.testing.assert_close(r_max[0], a2 @ a1_max)
    torch.testing.assert_close(r_max[0, 0], torch.tensor([0.5, 1 / 6, 1 / 3]))
    # min over heads of layer 1: [[0, 0, 0], [0, 1, 0], [0, 0, 0]]; + I and normalised = I, so R = Â2
    r_min = analysis.attention_rollout([HEADS_1, HEADS_2], head_fusion="min")
    torch.testing.assert_close(r_min[0], a2)


def test_rollout_is_row_stochastic_and_batched():
    att = random_attention(layers=4, batch=3, heads=2, tokens=10)
    for fusion in ("mean", "max", "min"):
        for discard in (0.0, 0.5):
            r = analysis.attention_rollout(att, head_fusion=fusion, discard_ratio=discard)
            assert r.shape == (3, 10, 10)
            assert (r >= 0).all()
            torch.testing.assert_close(r.sum(dim=-1), torch.ones(3, 10))
    # batched = one image at a time
    r = analysis.attention_rollout(att)
    r1 = analysis.attention_rollout([a[1:2] for a in att])
    torch.testing.assert_close(r[1:2], r1)


def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    r = analysis.attention_rollout([eye, eye, eye])
    torch.testing.assert_close(r, torch.eye(5).expand(2, 5, 5))


def test_rollout_without_identity_is_plain_product():
    att = random_attention(layers=3, batch=1, heads=2, tokens=4)
    r = analysis.attention_rollout(att, add_identity=False)
    means = [a.mean(dim=1)[0] for a in att]
    torch.testing.assert_close(r[0], means[2] @ means[1] @ means[0])


def test_rollout_discard_ratio_by_hand():
    # one layer, one head: discard_ratio 0.4 of 3 keys drops the smallest entry of each row
    a = torch.tensor([[[[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]]]])
    r = analysis.attention_rollout([a], discard_ratio=0.4)
    kept = torch.tensor([[0.6, 0.3, 0.0], [0.0, 0.2, 0.6], [0.5, 0.4, 0.0]])  # ties: either 0.2 may go
    expected = (kept + torch.eye(3)) / (kept + torch.eye(3)).sum(dim=1, keepdim=True)
    torch.testing.assert_close(r[0, 0], expected[0])
    torch.testing.assert_close(r[0, 2], expected[2])
    torch.testing.assert_close(r[0].sum(dim=-1), torch.ones(3))


def test_rollout_rejects_bad_input():
    att = random_attention(2, 1, 2, 5)
    with pytest.raises(TypeError, match="list"):
        analysis.attention_rollout(att[0])
    with pytest.raises(ValueError, match=r"\[B, heads, T, T\]"):
        analysis.attention_rollout([torch.rand(1, 2, 5, 4)])
    with pytest.raises(ValueError, match="same attention shape"):
        analysis.attention_rollout([att[0], torch.rand(1, 2, 6, 6)])
    with pytest.raises(ValueError, match="head_fusion"):
        analysis.attention_rollout(att, head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        analysis.attention_rollout(att, discard_ratio=1.0)


# -------------------------------------------------------------------------------------------- cls maps
def test_cls_attention_maps_match_a_loop():
    gh, gw = 2, 3
    att = random_attention(layers=2, batch=2, heads=3, tokens=1 + gh * gw)
    maps = analysis.cls_attention_maps(att, (gh, gw))
    assert maps.shape == (2, 2, 3, gh, gw)
    for b, l, h, i, j in itertools.product(range(2), range(2), range(3), range(gh), range(gw)):
        assert maps[b, l, h, i, j] == att[l][b, h, 0, 1 + i * gw + j]


def test_cls_attention_maps_without_class_token_use_mean_row():
    att = random_attention(layers=1, batch=1, heads=2, tokens=4)
    maps = analysis.cls_attention_maps(att, 2, num_prefix_tokens=0)
    torch.testing.assert_close(maps[0, 0], att[0][0].mean(dim=1).reshape(2, 2, 2))


def test_token_count_must_match_grid():
    att = random_attention(1, 1, 2, 17)
    with pytest.raises(ValueError, match=r"T=17 tokens but num_prefix_tokens=1 \+ grid 4x5 = 21"):
        analysis.cls_attention_maps(att, (4, 5))
    with pytest.raises(ValueError, match=r"num_prefix_tokens=0 \+ grid 4x4 = 16"):
        analysis.rollout_cls_map(att, 4, num_prefix_tokens=0)
    analysis.cls_attention_maps(att, (4, 4))  # 1 + 16 = 17 is fine


def test_rollout_cls_map():
    gh, gw = 3, 2
    att = random_attention(layers=3, batch=2, heads=2, tokens=1 + gh * gw)
    m = analysis.rollout_cls_map(att, (gh, gw))
    assert m.shape == (2, gh, gw)
    torch.testing.assert_close(m.sum(dim=(1, 2)), torch.ones(2))
    row = analysis.attention_rollout(att)[:, 0, 1:]
    torch.testing.assert_close(m.flatten(1), row / row.sum(dim=1, keepdim=True))
    # mean pool, no class token: mean over the query rows
    att0 = random_attention(layers=2, batch=1, heads=2, tokens=gh * gw)
    m0 = analysis.rollout_cls_map(att0, (gh, gw), num_prefix_tokens=0)
    mean_row = analysis.attention_rollout(att0)[0].mean(dim=0)
    torch.testing.assert_close(m0[0].flatten(), mean_row / mean_row.sum())


def test_upsample_map():
    m = torch.arange(6.0).reshape(1, 2, 3)
    near = analysis.upsample_map(m, (8, 12), mode="nearest")
    torch.testing.assert_close(near, m.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2))
    flat = analysis.upsample_map(torch.full((2, 3, 3), 0.25), 12)
    torch.testing.assert_close(flat, torch.full((2, 12, 12), 0.25))
    assert analysis.upsample_map(torch.rand(4, 4), 16).shape == (16, 16)
    with pytest.raises(ValueError, match="mode"):
        analysis.upsample_map(m, 8, mode="cubic")
    with pytest.raises(ValueError, match=r"\[B, gh, gw\]"):
        analysis.upsample_map(torch.rand(1, 1, 2, 2), 8)


# ------------------------------------------------------------------------------------ attention distance
def mean_pairwise_distance(gh: int, gw: int, ph: int, pw: int) -> float:
    """Mean distance over all ordered pairs of patch centres (self-pairs included), plain Python."""
    centres = [((i + 0.5) * ph, (j + 0.5) * pw) for i in range(gh) for j in range(gw)]
    dists = [math.dist(a, b) for a, b in itertools.product(centres, centres)]
    return sum(dists) / len(dists)


def test_mean_attention_distance_uniform_attention():
    gh, gw, patch = 3, 4, (2, 3)  # non-square grid and patch catch row/column mix-ups
    T = 1 + gh * gw
    uniform = [torch.full((2, 3, T, T), 1.0 / T)] * 2  # also attends to the class token: renormalised away
    d = analysis.mean_attention_distance(uniform, (gh, gw), patch)
    assert d.shape == (2, 3)
    expected = mean_pairwise_distance(gh, gw, *patch)
    torch.testing.assert_close(d, torch.full((2, 3), expected))
    wrong = mean_pairwise_distance(gh, gw, patch[1], patch[0])
    assert abs(expected - wrong) > 0.1


def test_mean_attention_distance_self_attention_is_zero():
    eye = torch.eye(1 + 9).expand(2, 4, 10, 10)
    d = analysis.mean_attention_distance([eye], 3, 16)
    torch.testing.assert_close(d, torch.zeros(1, 4))


def test_mean_attention_distance_hand_case():
    # grid 1x2, patch 4: centres (2, 2) and (2, 6), 4 pixels apart.
    a = torch.tensor([[
        [0.5, 0.25, 0.25],   # class token row: not a patch query, ignored
        [0.2, 0.6, 0.2],     # patch 0: keys renormalised to [0.75, 0.25] -> 0.25 * 4 = 1
        [0.0, 0.5, 0.5],     # patch 1: 0.5 * 4 = 2
    ]])[None]  # [1, 1, 3, 3]
    b = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])[None]  # patch 0 -> 4, patch 1 -> 0
    d = analysis.mean_attention_distance([torch.cat([a, b])], (1, 2), 4)  # batch of two images
    torch.testing.assert_close(d, torch.tensor([[((1 + 2) / 2 + (4 + 0) / 2) / 2]]))



def test_mean_attention_distance_query_mask_averages_over_the_chosen_queries():
    # the hand case above: image a has per-query distances (1, 2), image b (4, 0)
    a = torch.tensor([[[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.0, 0.5, 0.5]]])[None]
    b = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])[None]
    att = [torch.cat([a, b])]
    first = torch.tensor([[True, False], [True, False]])  # patch 0 of both images: (1 + 4) / 2
    torch.testing.assert_close(analysis.mean_attention_distance(att, (1, 2), 4, query_mask=first), torch.tensor([[2.5]]))
    mixed = torch.tensor([[False, True], [True, True]])  # (2 + 4 + 0) / 3, a [B, gh, gw] mask works too
    torch.testing.assert_close(analysis.mean_attention_distance(att, (1, 2), 4, query_mask=mixed.view(2, 1, 2)),
                               torch.tensor([[2.0]]))
    everyone = analysis.mean_attention_distance(att, (1, 2), 4, query_mask=torch.ones(2, 2))
    torch.testing.assert_close(everyone, analysis.mean_attention_distance(att, (1, 2), 4))
    with pytest.raises(ValueError, match=r"query_mask must have shape \[2, 2\]"):
        analysis.mean_attention_distance(att, (1, 2), 4, query_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="at least one query"):
        analysis.mean_attention_distance(att, (1, 2), 4, query_mask=torch.zeros(2, 2, dtype=torch.bool))


def test_object_patches_half_covered_rule_and_fallback():
    masks = torch.zeros(2, 4, 4)  # patch 2 -> grid 2x2
    masks[0, 0:2, 0:1] = 1  # half of patch (0, 0)
    masks[0, 2:4, 2:3] = 1  # half of patch (1, 1)
    masks[1, 3, 0] = 1  # a quarter of patch (1, 0) only: no patch qualifies, any overlap counts
    out = analysis.object_patches(masks, 2)
    assert out.dtype == torch.bool
    assert out.tolist() == [[[True, False], [False, True]], [[False, False], [True, False]]]
    with pytest.raises(ValueError, match="multiples of the patch size"):
        analysis.object_patches(torch.zeros(1, 5, 4), 2)


# ------------------------------------------------------------------------------------- position embedding
def test_pos_embed_similarity_matches_pairwise_cosine():
    gh, gw = 2, 3
    pe = torch.randn(1, 1 + gh * gw, 5)
    sim = analysis.pos_embed_similarity(pe, (gh, gw))
    assert sim.shape == (gh, gw, gh, gw)
    patches = pe[0, 1:]
    for (i, j), (k, l) in itertools.product(itertools.product(range(gh), range(gw)), repeat=2):
        ref = F.cosine_similarity(patches[i * gw + j], patches[k * gw + l], dim=0)
        torch.testing.assert_close(sim[i, j, k, l], ref)
    # a plain [N, D] table (no prefix row) gives the same
    torch.testing.assert_close(analysis.pos_embed_similarity(patches, (gh, gw)), sim)
    with pytest.raises(ValueError, match="expected 6"):
        analysis.pos_embed_similarity(torch.randn(1, 9, 5), (gh, gw))
    zeroed = pe.clone()
    zeroed[0, 3] = 0  # the prefix row is dropped: patch 2 is the first zero row
    with pytest.raises(ValueError, match=r"1 all-zero row\(s\) of 6 \(first: patch 2\)"):
        analysis.pos_embed_similarity(zeroed, (gh, gw))  # was a silent row of 0 cosines


def test_rankdata_matches_scipy_with_ties():
    x = torch.tensor([3.0, 1.0, 2.0, 3.0, 3.0, 0.5, 2.0])
    np.testing.assert_allclose(analysis.rankdata(x).numpy(), stats.rankdata(x.numpy()))


def off_diagonal_pairs(sim: torch.Tensor):
    """Similarity and grid distance for all ordered pairs i != j, written with plain loops."""
    gh, gw = sim.shape[:2]
    cells = list(itertools.product(range(gh), range(gw)))
    s, d = [], []
    for a, b in itertools.product(cells, cells):
        if a != b:
            s.append(float(sim[a[0], a[1], b[0], b[1]]))
            d.append(math.dist(a, b))
    return np.array(s), np.array(d)


@pytest.mark.parametrize("kind", ["sincos", "random"])
def test_similarity_distance_correlation_matches_scipy(kind):
    g = (5, 4)
    pe = vit_edu.sincos_2d_pos_embed(32, g) if kind == "sincos" else torch.randn(20, 32)
    sim = analysis.pos_embed_similarity(pe, g, num_prefix_tokens=0)
    out = analysis.similarity_distance_correlation(sim)
    s, d = off_diagonal_pairs(sim)
    assert out["num_pairs"] == 20 * 19
    assert out["spearman"] == pytest.approx(stats.spearmanr(s, d).statistic, abs=1e-6)
    assert out["pearson"] == pytest.approx(stats.pearsonr(s, d).statistic, abs=1e-6)


def test_similarity_distance_correlation_sincos_vs_random():
    sincos = analysis.pos_embed_similarity(vit_edu.sincos_2d_pos_embed(64, (8, 8)), 8)
    assert analysis.similarity_distance_correlation(sincos)["spearman"] < -0.5
    torch.manual_seed(0)
    rand = analysis.pos_embed_similarity(torch.randn(1, 65, 64), 8)
    assert abs(analysis.similarity_distance_correlation(rand)["spearman"]) < 0.1
    with pytest.raises(ValueError, match=r"\[gh, gw, gh, gw\]"):
        analysis.similarity_distance_correlation(torch.rand(4, 4))


# -------------------------------------------------------------------------------- patch-embedding filters
def low_rank_filters(D: int, F_: int, scales=(5.0, 3.0, 1.0)):
    """D filters = mean + coefficients @ basis^T with orthonormal basis [F, k] and uncorrelated coefficients."""
    k = len(scales)
    basis, _ = torch.linalg.qr(torch.randn(F_, k, dtype=torch.float64))  # [F, k] orthonormal columns
    c = torch.randn(D, k, dtype=torch.float64)
    c, _ = torch.linalg.qr(c - c.mean(dim=0))  # zero-mean, orthonormal columns: exactly uncorrelated
    coeffs = c * torch.tensor(scales, dtype=torch.float64)
    mean = torch.randn(1, F_, dtype=torch.float64)
    return (mean + coeffs @ basis.T).float(), basis.T.float()  # [D, F], [k, F]


def test_patch_embedding_components_recover_low_rank_mixture_conv_layout():
    C, P, D = 3, 4, 40
    flat, basis = low_rank_filters(D, C * P * P)
    conv_w = rearrange(flat, "d (c p1 p2) -> d c p1 p2", c=C, p1=P, p2=P)
    comps, ratio = analysis.patch_embedding_components(conv_w, num_components=3)
    assert comps.shape == (3, C, P, P) and ratio.shape == (3,)
    expected = rearrange(basis, "k (c p1 p2) -> k c p1 p2", c=C, p1=P, p2=P)
    for i in range(3):
        assert abs(float((comps[i] * expected[i]).sum())) == pytest.approx(1.0, abs=1e-4)  # same up to sign
    torch.testing.assert_close(ratio, torch.tensor([25.0, 9.0, 1.0]) / 35.0)


def test_patch_embedding_components_linear_layout_is_p1_p2_c():
    C, P, D = 3, 4, 40
    flat, basis = low_rank_filters(D, C * P * P)  # features in (p1 p2 c) order, as patchify
    comps, _ = analysis.patch_embedding_components(flat, num_components=3)  # patch size inferred: 4
    expected = rearrange(basis, "k (p1 p2 c) -> k c p1 p2", c=C, p1=P, p2=P)
    for i in range(3):
        assert abs(float((comps[i] * expected[i]).sum())) == pytest.approx(1.0, abs=1e-4)


def test_patch_embedding_components_same_for_conv_and_linear_embeddings():
    conv = PatchEmbed(32, 4, 3, 64)
    linear = conv_to_linear_(conv, LinearPatchEmbed(32, 4, 3, 64))
    c_conv, r_conv = analysis.patch_embedding_components(conv.proj, num_components=10)
    c_lin, r_lin = analysis.patch_embedding_components(linear.proj, num_components=10)
    torch.testing.assert_close(c_conv, c_lin, atol=1e-5, rtol=0)
    torch.testing.assert_close(r_conv, r_lin)
    with pytest.raises(ValueError, match="num_components"):
        analysis.patch_embedding_components(conv.proj, num_components=49)  # P*P*C = 48
    with pytest.raises(ValueError, match="patch_size"):
        analysis.patch_embedding_components(torch.randn(8, 50))


# ------------------------------------------------------------------------------------------- localisation
def test_localization_map_on_object_and_uniform():
    masks = torch.zeros(2, 8, 8)
    masks[0, :4, :4] = 1  # 4 of 16 patches (patch 2)
    masks[1, 2:8, 0:2] = 1  # 3 of 16 patches
    obj = F.avg_pool2d(masks[:, None], 2)[:, 0] >= 0.5
    on_object = obj.float() / obj.float().sum(dim=(1, 2), keepdim=True)
    out = analysis.attention_localization(on_object, masks, 2)
    torch.testing.assert_close(out["ratio"], torch.tensor([16 / 4, 16 / 3]))
    torch.testing.assert_close(out["object_share"], torch.tensor([4 / 16, 3 / 16]))
    assert out["mean"] == pytest.approx((4 + 16 / 3) / 2)
    uniform = analysis.attention_localization(torch.full((2, 4, 4), 0.3), masks, 2)
    torch.testing.assert_close(uniform["ratio"], torch.ones(2))
    assert uniform["median"] == pytest.approx(1.0)


def test_localization_half_covered_rule_fallback_and_empty_mask():
    masks = torch.zeros(3, 4, 4)  # patch 2 -> grid 2x2
    masks[0, 0:2, 0:1] = 1  # half of patch (0, 0): counts as object, ratio = 4 for a map on that patch
    masks[1, 0, 0] = 1      # a quarter only: no patch qualifies -> any overlap counts
    # masks[2] stays empty -> nan, left out of mean and median
    m = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).expand(3, 2, 2)
    out = analysis.attention_localization(m, masks, 2)
    assert out["ratio"][:2].tolist() == [4.0, 4.0]
    assert math.isnan(out["ratio"][2])
    assert out["mean"] == pytest.approx(4.0) and out["median"] == pytest.approx(4.0)
    masks[0, 0:1, 0:1] = 0  # now only 1 of 4 pixels of patch (0, 0) and none elsewhere: fallback again
    masks[0, 2:4, 2:4] = 1  # a full patch at (1, 1): the only object patch now
    assert analysis.attention_localization(m, masks, 2)["ratio"][0] == 0.0


def test_localization_median_and_errors():
    masks = torch.zeros(3, 4, 4)
    masks[:, :2, :2] = 1
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]])
    out = analysis.attention_localization(maps, masks, 2)  # ratios 4, 1, 2
    torch.testing.assert_close(out["ratio"], torch.tensor([4.0, 1.0, 2.0]))
    assert out["median"] == pytest.approx(2.0) and out["mean"] == pytest.approx(7 / 3)
    with pytest.raises(ValueError, match=r"masks must have shape \(3, 4, 4\)"):
        analysis.attention_localization(maps, torch.zeros(3, 6, 6), 2)
    with pytest.raises(ValueError, match="non-negative"):
        analysis.attention_localization(-maps, masks, 2)
    with pytest.raises(ValueError, match=r"numbers in \[0, 1\] \(1 = object\), got values in \[-1, 1\]"):
        analysis.attention_localization(maps, 2 * masks - 1, 2)  # a -1/1 mask: -1 would read as background
    with pytest.raises(ValueError, match=r"got values in \[0, 255\] \(a 0\.\.255 mask\? pass mask > 127\)"):
        analysis.attention_localization(maps, (255 * masks).to(torch.uint8), 2)
    assert analysis.attention_localization(maps, masks.bool(), 2)["ratio"].tolist() == out["ratio"].tolist()


# -------------------------------------------------------------------------------- real model integration
@pytest.fixture(scope="module")
def nano_attention():
    torch.manual_seed(0)
    model = vit_edu.create_model("vit_nano_patch4_32").eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        _, att = model(images, return_attention=True)
    return model, images, att


def test_analysis_on_nano_model(nano_attention):
    model, _, att = nano_attention
    grid = model.config.grid_size  # (8, 8)
    assert len(att) == 2 and att[0].shape == (2, 4, 65, 65)
    r = analysis.attention_rollout(att)
    assert r.shape == (2, 65, 65) and torch.isfinite(r).all()
    assert analysis.cls_attention_maps(att, grid).shape == (2, 2, 4, 8, 8)
    cls_map = analysis.rollout_cls_map(att, grid)
    assert cls_map.shape == (2, 8, 8) and torch.isfinite(cls_map).all()
    d = analysis.mean_attention_distance(att, grid, 4)
    assert d.shape == (2, 4) and torch.isfinite(d).all()
    assert ((d > 0) & (d < 32 * math.sqrt(2))).all()
    sim = analysis.pos_embed_similarity(model.pos_embed, grid)
    assert sim.shape == (8, 8, 8, 8)
    torch.testing.assert_close(torch.diagonal(sim.reshape(64, 64)), torch.ones(64))
    comps, ratio = analysis.patch_embedding_components(model.patch_embed.proj)
    assert comps.shape == (28, 3, 4, 4) and float(ratio.sum()) <= 1.0 + 1e-6


# ------------------------------------------------------------------------------------------------ viz
@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_show_images_and_save_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path))
    images = torch.rand(5, 3, 16, 16)
    masks = torch.zeros(5, 16, 16)
    masks[:, 4:12, 4:12] = 1
    fig = viz.show_images(images, labels=torch.tensor([0, 1, 2, 1, 0]), class_names=["a", "b", "c"], ncols=3, masks=masks)
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:5]] == ["a", "b", "c", "b", "a"]
    path = viz.save_figure(fig, "test_images")
    assert path == tmp_path / "test_images.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # numpy HWC batch works too
    assert len(viz.show_images(np.random.rand(2, 16, 16, 3)).axes) == 2
    with pytest.raises(ValueError, match="labels"):
        viz.show_images(images, labels=[0, 1])


def test_show_patch_grid():
    fig = viz.show_patch_grid(torch.rand(3, 32, 32), 8)
    assert len(fig.axes) == 2
    assert "16 patches" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="divisible"):
        viz.show_patch_grid(np.random.rand(30, 30, 3), 8)


def test_attention_plots(nano_attention):
    _, images, att = nano_attention
    fig = viz.plot_attention_heads(images[0], att, (8, 8), layer=-1)
    assert len(fig.axes) == 1 + 4 + 1  # image, 4 heads, colourbar
    fig = viz.plot_attention_layers(images[1], att, (8, 8), index=1)
    assert len(fig.axes) == 2 * 4 + 1
    masks = torch.zeros(2, 32, 32)
    masks[:, 8:24, 8:24] = 1
    fig = viz.plot_rollout(images, analysis.rollout_cls_map(att, 8), masks=masks)
    assert len(fig.axes) == 2 * 2 + 1
    assert fig.axes[2].get_xlabel().startswith("ratio")  # row 2, column 1
    with pytest.raises(ValueError, match="rollout_maps"):
        viz.plot_rollout(images, torch.rand(3, 8, 8))


def test_distance_similarity_component_plots(nano_attention, tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path))
    _, _, att = nano_attention
    fig = viz.plot_mean_attention_distance(analysis.mean_attention_distance(att, 8, 4), patch_size=4, image_size=32)
    assert len(fig.axes) == 1 and len(fig.axes[0].collections) == 4  # one scatter per head
    sim = analysis.pos_embed_similarity(vit_edu.sincos_2d_pos_embed(64, (8, 8)), 8)
    fig = viz.plot_pos_embed_similarity(sim, title="sincos", vmin=-1, vmax=1)
    assert len(fig.axes) == 2  # mosaic + colourbar
    assert fig.axes[0].get_xlabel() == "Input patch column" and fig.axes[0].get_ylabel() == "Input patch row"
    assert viz.save_figure(fig, "sim").exists()
    comps, ratio = analysis.patch_embedding_components(torch.randn(64, 3, 4, 4), num_components=10)
    fig = viz.plot_patch_components(comps, ncols=7, variance_ratio=ratio)
    assert len(fig.axes) == 14  # 2 rows of 7, the last 4 switched off
    assert sum(ax.axison for ax in fig.axes) == 10


def test_plot_history_tolerates_missing_keys():
    full = {"epoch": [1, 2, 3], "train_loss": [2.0, 1.0, 0.5], "test_loss": [2.1, 1.2, 0.9],
            "train_acc": [0.2, 0.5, 0.7], "test_acc": [0.2, 0.4, 0.6], "lr": [0.0, 1e-3, 5e-4]}
    assert len(viz.plot_history(full).axes) == 3
    assert len(viz.plot_history({"step": [10, 20], "train_loss": [1.0, 0.5]}).axes) == 2
    assert len(viz.plot_history({}).axes) == 2
    with pytest.raises(TypeError, match="dict"):
        viz.plot_history([1, 2])


# ------------------------------------------------------------------------- Fig. 7 summaries (filters, distance)
def test_filter_smoothness_separates_smooth_random_and_alternating_filters():
    torch.manual_seed(0)
    random_filters = torch.randn(64, 3, 4, 4)
    assert abs(analysis.filter_smoothness(random_filters)) < 0.15
    ramp = torch.linspace(-1, 1, 4)
    smooth = torch.stack([ramp[None, :] + 0 * ramp[:, None], ramp[:, None] + 0 * ramp[None, :],
                          ramp[None, :] * ramp[:, None]])[:, None].expand(3, 3, 4, 4)  # ramps and a saddle
    assert analysis.filter_smoothness(smooth) > 0.3
    checker = ((torch.arange(4)[None, :] + torch.arange(4)[:, None]) % 2 * 2.0 - 1)[None, None]
    assert analysis.filter_smoothness(checker) == pytest.approx(-1.0)
    # independent reference: numpy's corrcoef over the same neighbour pairs of one centred filter
    f = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    c = (f - f.mean()).numpy()[0, 0]
    a = np.concatenate([c[:, :-1].ravel(), c[:-1, :].ravel()])
    b = np.concatenate([c[:, 1:].ravel(), c[1:, :].ravel()])
    expected = (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())
    assert analysis.filter_smoothness(f) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"\[k, C, P, P\]"):
        analysis.filter_smoothness(torch.randn(3, 4, 4))


def test_attention_distance_summary_and_uniform_yardstick():
    grid, patch = (8, 8), (4, 4)
    n = 64
    uniform = [torch.full((1, 2, n + 1, n + 1), 1.0 / (n + 1))]
    yardstick = analysis.uniform_attention_distance(grid, patch)
    assert float(analysis.mean_attention_distance(uniform, grid, patch)[0, 0]) == pytest.approx(yardstick, rel=1e-6)
    # brute force: mean Euclidean distance between all pairs of patch centres, itertools-free
    centres = [((i + 0.5) * 4, (j + 0.5) * 4) for i in range(8) for j in range(8)]
    brute = np.mean([math.dist(p, q) for p in centres for q in centres])
    assert yardstick == pytest.approx(brute)
    table = torch.tensor([[3.0, 16.0], [10.0, 14.0], [15.0, 17.0]])
    summary = analysis.attention_distance_summary(table, yardstick)
    assert summary["first_layer_min"] == pytest.approx(3.0 / yardstick)
    assert summary["rising"] and summary["layer_mean"].shape == (3,)
    assert not analysis.attention_distance_summary(table.flip(0), yardstick)["rising"]
    with pytest.raises(ValueError, match="layers, heads"):
        analysis.attention_distance_summary(torch.ones(3), yardstick)


def test_plot_figure7_draws_the_three_panels(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path))
    torch.manual_seed(0)
    comps, ratio = analysis.patch_embedding_components(torch.randn(64, 3, 4, 4), num_components=10)
    sim = analysis.pos_embed_similarity(vit_edu.sincos_2d_pos_embed(64, (8, 8)), 8)
    distances = torch.tensor([[5.0, 16.0, 17.0, 12.0], [10.0, 14.0, 16.5, 15.0], [15.0, 16.0, 17.0, 16.0]])
    uniform = analysis.uniform_attention_distance(8, 4)
    fig = viz.plot_figure7(comps, sim, distances, uniform, title="synthetic", num_components=10, ncols=4,
                           variance_ratio=ratio, one_patch=4)
    assert len(fig.axes) == 4  # filters, similarity, distance, and the similarity's colour bar
    left, centre, right, _ = fig.axes
    assert left.get_title().startswith("Embedding filters: first 10 principal components")
    assert f"{100 * float(ratio.sum()):.0f} % of the variance" in left.get_title()
    assert left.images[0].get_array().shape == (3 * 5 - 1, 4 * 5 - 1, 3)  # 3 rows x 4 tiles of 4x4, 1-px gaps
    assert centre.get_title() == "Position embedding similarity"
    assert centre.get_xlabel() == "Input patch column"
    assert right.get_title() == "Mean attention distance per head"
    assert right.get_xlabel() == "Network depth (layer)"
    assert len(right.collections) == 4  # one scatter per head
    dashed = [line for line in right.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(uniform)
    assert fig._suptitle.get_text() == "synthetic"
    assert viz.save_figure(fig, "figure7").exists()
    plt.close(fig)
    with pytest.raises(ValueError, match="layers, heads"):
        viz.plot_figure7(comps, sim, distances[0], uniform)
    with pytest.raises(ValueError, match=r"\[gh, gw, gh, gw\]"):
        viz.plot_figure7(comps, sim[0], distances, uniform)


def test_patch_canvas_puts_each_patch_in_its_tile():
    image = torch.rand(3, 12, 8)  # a 3 x 2 grid of 4x4 patches
    canvas = viz.patch_canvas(image, 4, gap=2)
    assert canvas.shape == (3 * 4 + 2 * 2, 2 * 4 + 1 * 2, 3)
    hwc = image.permute(1, 2, 0).numpy()
    for r in range(3):
        for c in range(2):
            np.testing.assert_array_equal(canvas[r * 6:r * 6 + 4, c * 6:c * 6 + 4], hwc[r * 4:r * 4 + 4, c * 4:c * 4 + 4])
    assert (canvas[4:6] == 1.0).all() and (canvas[:, 4:6] == 1.0).all()  # white gaps
    with pytest.raises(ValueError, match="divisible"):
        viz.patch_canvas(image, 5)


# ------------------------------------------------------------------------------- bad input, said clearly
def tiny_model(**overrides):
    torch.manual_seed(0)
    kw = dict(image_size=(8, 16), patch_size=(2, 8), dim=16, depth=2, heads=2, mlp_dim=32, num_classes=3)
    return vit_edu.VisionTransformer(**{**kw, **overrides})


def test_attention_must_be_softmax_probabilities():
    att = random_attention(layers=2, batch=1, heads=2, tokens=5)
    with_nan = [att[0].clone(), att[1]]
    with_nan[0][0, 1, 2, 3] = float("nan")
    scores = [torch.randn(1, 2, 5, 5) for _ in range(2)]  # before the softmax
    unnormalised = [a * 2 for a in att]
    for fn in (analysis.attention_rollout, lambda a: analysis.cls_attention_maps(a, (2, 2)),
               lambda a: analysis.mean_attention_distance(a, (2, 2), 4)):
        with pytest.raises(ValueError, match=r"attentions\[0\] has non-finite values"):
            fn(with_nan)
        for bad in (scores, unnormalised):
            with pytest.raises(ValueError, match=r"attentions\[0\] must hold attention probabilities"):
                fn(bad)
    # a bfloat16 softmax rounds its rows, and is still accepted
    r = analysis.attention_rollout([a.to(torch.bfloat16) for a in random_attention(2, 1, 2, 50)])
    assert r.dtype == torch.bfloat16


def test_mean_attention_distance_refuses_an_empty_batch_and_a_transposed_mask():
    with pytest.raises(ValueError, match="empty batch"):
        analysis.mean_attention_distance(random_attention(1, 0, 2, 7), (2, 3), 4)  # not a silent nan
    att = random_attention(1, 1, 2, 7)
    analysis.mean_attention_distance(att, (2, 3), 4, query_mask=torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match=r"query_mask must have shape \[1, 6\] or \[1, 2, 3\].*got \(1, 3, 2\)"):
        analysis.mean_attention_distance(att, (2, 3), 4, query_mask=torch.ones(1, 3, 2))


def test_localization_refuses_a_map_without_mass_or_with_nan():
    masks = torch.zeros(2, 8, 8)
    masks[:, :4] = 1
    maps = torch.rand(2, 2, 2)
    maps[1] = 0  # no attention at all is not "all attention off the object" (ratio 0)
    with pytest.raises(ValueError, match=r"image\(s\) \[1\] sums to 0"):
        analysis.attention_localization(maps, masks, 4)
    with pytest.raises(ValueError, match="non-finite"):
        analysis.attention_localization(torch.full((2, 2, 2), float("nan")), masks, 4)
    masks[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="masks has non-finite"):
        analysis.attention_localization(torch.rand(2, 2, 2), masks, 4)
    analysis.attention_localization(torch.rand(2, 2, 2), masks > 0.5, 4)  # bool masks are fine


def test_nan_in_similarity_or_ranks_is_never_a_number():
    with pytest.raises(ValueError, match="sim has non-finite"):  # was a Spearman of 0.0
        analysis.similarity_distance_correlation(torch.full((2, 2, 2, 2), float("nan")))
    pos = torch.randn(1, 5, 8)
    pos[0, 2, 0] = float("inf")
    with pytest.raises(ValueError, match="pos_embed has non-finite"):
        analysis.pos_embed_similarity(pos, (2, 2))
    x = torch.tensor([1.0, float("nan"), 0.5, 2.0])
    np.testing.assert_array_equal(analysis.rankdata(x).numpy(), stats.rankdata(x.numpy()))  # all nan, as scipy


def test_patch_embedding_components_only_directions_with_variance():
    w = torch.randn(4, 3, 2, 2)  # 4 filters, centred: at most 3 directions carry variance
    comps, ratio = analysis.patch_embedding_components(w, num_components=3)
    assert comps.shape == (3, 3, 2, 2)
    torch.testing.assert_close(ratio.sum(), torch.tensor(1.0))
    for k in (4, True, 2.0):
        with pytest.raises(ValueError, match=r"num_components must be an int in 1\.\.3"):
            analysis.patch_embedding_components(w, num_components=k)
    with pytest.raises(ValueError, match=r"num_components must be an int in 1\.\.0"):
        analysis.patch_embedding_components(torch.randn(1, 3, 2, 2), num_components=1)  # one filter: no variance


def test_attention_distance_summary_refuses_empty_or_nan():
    with pytest.raises(ValueError, match="non-empty"):
        analysis.attention_distance_summary(torch.zeros(0, 2), 1.0)
    with pytest.raises(ValueError, match="distances has non-finite"):
        analysis.attention_distance_summary(torch.tensor([[1.0, float("nan")]]), 1.0)


def test_what_the_model_learned_reads_a_linear_embedding_with_its_own_patch():
    model = tiny_model(patch_embed="linear")  # patch (2, 8): 48 features, which also read as a 4x4x3 patch
    images, masks = torch.randn(2, 3, 8, 16), torch.rand(2, 8, 16) > 0.5
    out = analysis.what_the_model_learned(model, images, masks, num_components=4)
    w = rearrange(model.patch_embed.proj.weight.detach(), "d (p1 p2 c) -> d c p1 p2", p1=2, p2=8, c=3)
    components, ratio = analysis.patch_embedding_components(w, num_components=4)  # as a conv filter, by hand
    assert out["smoothness"] == pytest.approx(analysis.filter_smoothness(components))
    assert out["variance_top"] == pytest.approx(float(ratio.sum()))


def test_what_the_model_learned_on_a_hybrid_and_other_image_sizes():
    hybrid = tiny_model(hybrid_layers=(1,), patch_size=1, image_size=(8, 16))  # one token = 4x4 input pixels
    images, masks = torch.randn(2, 3, 8, 16), torch.rand(2, 8, 16) > 0.5
    out = analysis.what_the_model_learned(hybrid, images, masks)
    with torch.no_grad():
        _, att = hybrid.eval()(images, return_attention=True)
    expected = analysis.mean_attention_distance(att, (2, 4), 4) / analysis.uniform_attention_distance((2, 4), 4)
    torch.testing.assert_close(out["distance"]["ratio"], expected)  # in input pixels, not feature-map pixels
    assert math.isnan(out["smoothness"]) and math.isnan(out["variance_top"])  # 1x1 filters on CNN features
    dynamic = tiny_model(dynamic_img_size=True)
    out = analysis.what_the_model_learned(dynamic, torch.randn(2, 3, 16, 32), torch.rand(2, 16, 32) > 0.5, 4)
    assert out["distance"]["ratio"].shape == (2, 2) and math.isfinite(out["localization"])
    with pytest.raises(ValueError, match=r"images must be a non-empty batch \[B, C, H, W\], got \(0, 3, 8, 16\)"):
        analysis.what_the_model_learned(dynamic, torch.randn(0, 3, 8, 16), torch.zeros(0, 8, 16))
    with pytest.raises(ValueError, match=r"masks must have shape \(2, 8, 16\)"):
        analysis.what_the_model_learned(dynamic, images, torch.zeros(2, 16, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_attention_on_a_gpu_stays_there():
    att = [a.cuda() for a in random_attention(2, 1, 2, 7)]
    assert analysis.attention_rollout(att).device.type == "cuda"
    assert analysis.mean_attention_distance(att, (2, 3), 4, query_mask=torch.ones(1, 6)).device.type == "cuda"


def test_save_figure_refuses_names_that_leave_the_figures_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path / "figures"))
    fig = plt.figure()
    for name in ["sub/fig", str(tmp_path / "elsewhere"), "../escape", "", ".png"]:
        with pytest.raises(ValueError, match="name must be a plain file name"):
            viz.save_figure(fig, name)
    with pytest.raises(ValueError, match="writes PNG files"):
        viz.save_figure(fig, "fig.pdf")  # was fig.pdf.png
    with pytest.raises(TypeError, match="pass ax.figure"):
        viz.save_figure(fig.gca(), "fig")
    assert viz.save_figure(fig, "Fig.PNG").is_file()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["Fig.PNG"]


def test_eight_bit_images_are_scaled_not_clipped_white():
    grey = np.full((4, 4, 3), 51, dtype=np.uint8)  # as np.asarray(PIL image) gives it
    np.testing.assert_allclose(viz.to_numpy_image(grey), 0.2)
    np.testing.assert_allclose(viz.to_numpy_image(torch.from_numpy(grey).permute(2, 0, 1)), 0.2)


def test_attention_plots_refuse_a_layer_out_of_range_or_another_image(nano_attention):
    _, images, att = nano_attention  # 2 layers, grid 8x8, images 32x32
    assert "Layer 2 of 2" in viz.plot_attention_heads(images[0], att, 8, layer=-1)._suptitle.get_text()
    for layer in (2, -3):  # was wrapped round silently: layer=2 drew layer 1
        with pytest.raises(ValueError, match=r"layer must be an int in 0\.\.1"):
            viz.plot_attention_heads(images[0], att, 8, layer=layer)
    for plot in (viz.plot_attention_heads, viz.plot_attention_layers):
        with pytest.raises(ValueError, match="the image is 36x36 pixels"):
            plot(torch.rand(3, 36, 36), att, 8)
    maps = analysis.rollout_cls_map(att, 8)
    with pytest.raises(ValueError, match="the image is 36x36 pixels"):
        viz.plot_rollout(torch.rand(2, 3, 36, 36), maps)


def test_plots_refuse_empty_or_short_inputs():
    with pytest.raises(ValueError, match="nothing to draw"):
        viz.show_images(torch.zeros(0, 3, 8, 8))
    with pytest.raises(ValueError, match="nothing to draw"):
        viz.plot_rollout(torch.zeros(0, 3, 8, 8), torch.zeros(0, 2, 2))
    with pytest.raises(ValueError, match="got 2 images but 1 titles"):
        viz.plot_rollout(torch.rand(2, 3, 8, 8), torch.rand(2, 2, 2), titles=["a"])
    with pytest.raises(ValueError, match="non-finite"):
        viz.plot_rollout(torch.rand(1, 3, 8, 8), torch.full((1, 2, 2), float("nan")))
    comps, ratio = torch.randn(4, 3, 2, 2), torch.full((2,), 0.1)
    with pytest.raises(ValueError, match="variance_ratio must have a share for each of the 4 components"):
        viz.plot_patch_components(comps, variance_ratio=ratio)
    sim = analysis.pos_embed_similarity(torch.randn(4, 8), (2, 2), num_prefix_tokens=0)
    with pytest.raises(ValueError, match="variance_ratio must have a share for each of the 4 components"):
        viz.plot_figure7(comps, sim, torch.rand(2, 2), 1.0, variance_ratio=ratio)


def test_num_prefix_tokens_must_be_a_count():
    att = random_attention(1, 1, 2, 5)
    for bad in (1.0, True, -1):  # 1.0 was a TypeError about slice indices; True passed as 1
        with pytest.raises(ValueError, match="num_prefix_tokens must be an int >= 0"):
            analysis.cls_attention_maps(att, (2, 2), bad)


def test_mean_attention_distance_of_half_precision_attention_keeps_float32_precision():
    att = [a.to(torch.bfloat16) for a in random_attention(2, 2, 3, 13)]
    d = analysis.mean_attention_distance(att, (3, 4), 4)  # was rounded to bfloat16: heads tied at one value
    torch.testing.assert_close(d, analysis.mean_attention_distance([a.float() for a in att], (3, 4), 4))


def test_save_figure_keeps_the_previous_picture_when_drawing_fails(tmp_path, monkeypatch):
    """A run stopped while a PNG is written leaves the old picture whole and no temporary file; the bytes are the
    ones matplotlib writes to a path."""
    import matplotlib.pyplot as plt

    from vit_edu.explain import viz

    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path))
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    path = viz.save_figure(fig, "line")
    fig.savefig(tmp_path / "direct.png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    assert path.read_bytes() == (tmp_path / "direct.png").read_bytes()
    before = path.read_bytes()

    def half_then_stop(f, **kwargs):
        f.write(before[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(fig, "savefig", half_then_stop)
    with pytest.raises(KeyboardInterrupt):
        viz.save_figure(fig, "line")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["direct.png", "line.png"]
    plt.close(fig)


def test_maps_of_a_mean_pool_model_with_a_class_token_are_of_the_patch_tokens_the_head_averages():
    """pool="mean" with a class token (timm's global_pool="avg"): the head averages the patch tokens and never
    reads the class token, so a map of what it reads is the mean of the patch tokens' rows (before:
    what_the_model_learned measured the class token's rollout, a row no logit depends on)."""
    gh, gw = 2, 3
    att = random_attention(layers=2, batch=2, heads=2, tokens=1 + gh * gw)
    maps = analysis.cls_attention_maps(att, (gh, gw), 1, pool="mean")
    for b, l, h, i, j in itertools.product(range(2), range(2), range(2), range(gh), range(gw)):
        column = [float(att[l][b, h, 1 + q, 1 + i * gw + j]) for q in range(gh * gw)]  # every patch query
        assert float(maps[b, l, h, i, j]) == pytest.approx(sum(column) / len(column))
    rollout = analysis.attention_rollout(att)
    row = rollout[:, 1:, 1:].mean(dim=1)
    mean_map = analysis.rollout_cls_map(att, (gh, gw), 1, pool="mean")
    torch.testing.assert_close(mean_map.flatten(1), row / row.sum(dim=1, keepdim=True))
    assert not torch.allclose(mean_map, analysis.rollout_cls_map(att, (gh, gw), 1))  # not the class token's row
    with pytest.raises(ValueError, match=r"pool='cls' reads the class token's row, but num_prefix_tokens=0"):
        analysis.rollout_cls_map(random_attention(1, 1, 2, gh * gw), (gh, gw), 0, pool="cls")
    with pytest.raises(ValueError, match=r"pool must be one of \('cls', 'mean'\).*got 'avg'"):
        analysis.cls_attention_maps(att, (gh, gw), pool="avg")
    model = tiny_model(pool="mean")  # the class token is kept; the head reads the patches' mean
    images, masks = torch.randn(2, 3, 8, 16), torch.rand(2, 8, 16) > 0.5
    with torch.no_grad():
        _, attentions = model.eval()(images, return_attention=True)
    out = analysis.what_the_model_learned(model, images, masks)
    of = {pool: analysis.attention_localization(analysis.rollout_cls_map(attentions, (4, 2), 1, pool=pool), masks,
                                                (2, 8))["mean"] for pool in ("cls", "mean")}
    assert out["localization"] == pytest.approx(of["mean"]) and of["mean"] != pytest.approx(of["cls"])


def test_what_the_model_learned_names_a_nan_image_and_a_model_that_is_not_a_vit():
    """A NaN pixel was reported as "attentions[0] has non-finite values ... must be softmax probabilities" (the
    attention blamed for the input), a model without a config as an AttributeError, and a model with NaN
    weights after its last attention was measured without a word."""
    images, masks = torch.randn(2, 3, 8, 16), torch.rand(2, 8, 16) > 0.5
    images[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"^images has non-finite values \(nan or inf\)$"):
        analysis.what_the_model_learned(tiny_model(), images, masks)
    with pytest.raises(TypeError, match=r"model must be a vit_edu VisionTransformer .* got Linear"):
        analysis.what_the_model_learned(torch.nn.Linear(2, 2), images, masks)
    diverged = tiny_model()
    with torch.no_grad():  # after the last attention: the maps were measured as if nothing were wrong
        diverged.blocks[-1].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"the model's weights hold NaN or infinite values in 1 tensors "
                                         r"\(blocks\.1\.mlp\.fc1\.weight\): a diverged training run\?"):
        analysis.what_the_model_learned(diverged, images.nan_to_num(), masks)


def test_attention_plots_of_a_mean_pool_model_draw_and_name_the_patch_tokens_mean(nano_attention):
    """With pool="mean" the plots draw the patch tokens' mean row and say so (the same attention with a class
    token was drawn as the class token's and titled so)."""
    _, images, att = nano_attention
    fig = viz.plot_attention_layers(images[0], att, (8, 8), pool="mean")
    assert fig._suptitle.get_text() == "Mean-query attention per layer and head"
    fig = viz.plot_attention_heads(images[0], att, (8, 8), layer=0, pool="mean")
    assert fig._suptitle.get_text() == "Layer 1 of 2: attention of the mean query to each patch"
    drawn = fig.axes[1].images[-1].get_array()  # head 1's overlay, upsampled and min-max scaled
    expected = analysis.upsample_map(att[0][0, 0, 1:, 1:].mean(dim=0).reshape(8, 8), (32, 32)).numpy()
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(np.asarray(drawn), expected, atol=1e-5)
    assert viz.plot_attention_layers(images[0], att, (8, 8))._suptitle.get_text() == \
        "Class-token attention per layer and head"


def test_what_the_model_learned_measures_a_training_model_in_eval_mode_and_leaves_it_training():
    """Dropout would change the maps from call to call: the measurements are of the eval-mode model (a guard;
    this held before too)."""
    model = tiny_model(dropout=0.5, attn_dropout=0.5, drop_path=0.5).train()
    images, masks = torch.randn(2, 3, 8, 16), torch.rand(2, 8, 16) > 0.5
    first = analysis.what_the_model_learned(model, images, masks)
    assert model.training
    again = analysis.what_the_model_learned(model.eval(), images, masks)
    assert first["localization"] == again["localization"]
    torch.testing.assert_close(first["distance"]["ratio"], again["distance"]["ratio"], rtol=0, atol=0)


def test_pos_embed_similarity_of_a_float64_table_stays_float64():
    """float64 in, float64 out (as the exercise's contract asks of students); other dtypes give float32."""
    pe = torch.randn(1, 1 + 6, 5, dtype=torch.float64)
    sim = analysis.pos_embed_similarity(pe, (2, 3))
    assert sim.dtype == torch.float64
    x = torch.nn.functional.normalize(pe[0, 1:], dim=-1)
    torch.testing.assert_close(sim.reshape(6, 6), x @ x.T, rtol=0, atol=1e-12)
    assert analysis.pos_embed_similarity(pe.half(), (2, 3)).dtype == torch.float32


def test_pictures_refuse_images_outside_0_1_instead_of_clipping_them(tmp_path, monkeypatch):
    """to_numpy_image (behind every plot_* and show_*) clipped to [0, 1]: a normalized image came out mostly black,
    0..255 floats and uint16 all white. Refused, naming the range and the fix; a tiny interpolation overshoot and
    uint8 images are still drawn."""
    from vit_edu.training import data

    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path))
    image = data.get_dataset("shapes", n=2)[0][0]  # normalized, as the model is fed
    with pytest.raises(ValueError, match=r"image values must lie in \[0, 1\] .* got values in \[-0\.\d+, 0\.\d+\]: a "
                                         r"normalized image\? undo the normalization: "
                                         r"vit_edu\.training\.data\.denormalize\(x\)"):
        viz.show_patch_grid(image, 4)
    with pytest.raises(ValueError, match=r"got values in \[\d+, \d+\]: values on the 0\.\.255 scale\? pass x / 255"):
        viz.show_images(data.denormalize(image)[None] * 255)
    with pytest.raises(TypeError, match=r"got dtype uint16: its scale cannot be told; .* / 65535"):
        viz.to_numpy_image((data.denormalize(image).permute(1, 2, 0).numpy() * 65535).astype(np.uint16))
    with pytest.raises(TypeError, match=r"got dtype int64"):
        viz.to_numpy_image(torch.ones(3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        viz.to_numpy_image(torch.full((3, 4, 4), float("nan")))
    overshoot = data.denormalize(image) * (1 + viz.RANGE_TOLERANCE / 2) - viz.RANGE_TOLERANCE / 4
    drawn = viz.to_numpy_image(overshoot)
    assert drawn.min() >= 0 and drawn.max() <= 1
    np.testing.assert_allclose(viz.to_numpy_image((data.denormalize(image) * 255).round().to(torch.uint8)),
                               viz.to_numpy_image(data.denormalize(image)), atol=0.5 / 255 + 1e-6)


def test_rollout_and_distance_summary_refuse_strings_with_a_type_error(nano_attention):
    _, _, att = nano_attention
    with pytest.raises(TypeError, match=r"discard_ratio must be a number in \[0, 1\), got str '0\.5'"):
        analysis.attention_rollout(att, discard_ratio="0.5")
    assert analysis.attention_rollout(att, discard_ratio=np.float32(0.5)).shape == (2, 65, 65)
    with pytest.raises(TypeError, match=r"uniform_distance must be a number > 0 .* got str '3'"):
        analysis.attention_distance_summary(torch.ones(2, 2), "3")
