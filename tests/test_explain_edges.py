"""Edge cases of the explain package that gave silently wrong pictures or numbers (shapes that look alike)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from vit_edu.explain import analysis, viz  # noqa: E402


@pytest.mark.parametrize("shape", [(3, 3, 3), (3, 1, 1), (3, 8, 3), (3, 2, 3), (1, 3, 3), (1, 1, 1), (3, 4, 4)])
def test_component_tile_is_channels_last_whatever_the_patch_size(shape):
    """A component [C, P, P] of 3x3, 1x1 or (P, 3) patches was taken for [H, W, C] and drawn transposed."""
    torch.manual_seed(0)
    c = torch.randn(*shape, dtype=torch.float64)
    expected = (0.5 + 0.5 * c / c.abs().max()).permute(1, 2, 0).numpy()
    expected = expected[..., 0] if shape[0] == 1 else expected
    tile = viz._component_tile(c)
    assert tile.shape == expected.shape
    np.testing.assert_allclose(tile, expected)


def test_patch_components_plot_of_3x3_patches_shows_each_component_as_computed():
    torch.manual_seed(0)
    comps, ratio = analysis.patch_embedding_components(torch.randn(32, 3, 3, 3), num_components=4)
    fig = viz.plot_patch_components(comps, ncols=4, variance_ratio=ratio)
    for i in range(4):
        shown = fig.axes[i].images[0].get_array()
        assert shown.shape == (3, 3, 3)
        np.testing.assert_allclose(shown, viz._component_tile(comps[i]))
        red = comps[i, 0].double()  # the red channel of the component, as rows x columns
        np.testing.assert_allclose(shown[..., 0], (0.5 + 0.5 * red / comps[i].abs().max()).numpy(), atol=1e-6)


def test_component_tile_refuses_other_channel_counts():
    with pytest.raises(ValueError, match=r"\[C, P, P\] with C = 1 or 3"):
        viz._component_tile(torch.randn(4, 5, 5))


def test_plot_rollout_names_the_query_its_maps_are_of():
    """A pool="mean" model's maps (the mean of the patch tokens' rollout) were titled "of the class token"."""
    torch.manual_seed(0)
    att = [torch.softmax(torch.randn(2, 2, 16, 16), dim=-1) for _ in range(2)]  # no class token: 4x4 patches
    maps = analysis.rollout_cls_map(att, 4, num_prefix_tokens=0, pool="mean")
    images = torch.rand(2, 3, 16, 16)
    assert "class token" not in viz.plot_rollout(images, maps, pool="mean")._suptitle.get_text()
    assert "mean of the patch tokens" in viz.plot_rollout(images, maps, pool="mean")._suptitle.get_text()
    assert "class token" in viz.plot_rollout(images, maps)._suptitle.get_text()
    with pytest.raises(ValueError, match="pool must be one of"):
        viz.plot_rollout(images, maps, pool="avg")


def test_explorer_of_a_model_without_classifier_head_predicts_nothing():
    """num_classes=0 (a feature extractor): the caption said "predicted class 26", the argmax of the features."""
    import vit_edu
    from vit_edu.explain.explorer import ExplorerData, Selection

    torch.manual_seed(0)
    model = vit_edu.VisionTransformer(image_size=16, patch_size=8, dim=16, depth=1, heads=2, mlp_dim=32,
                                      num_classes=0)
    data = ExplorerData(model, torch.randn(1, 3, 16, 16))
    view = data.view(Selection())
    assert data.cached(0).predicted is None
    assert "predicted class" not in view.caption and "no classifier head" in view.caption
    assert "predicted class" not in data.summary(view)
    with_head = ExplorerData(vit_edu.VisionTransformer(image_size=16, patch_size=8, dim=16, depth=1, heads=2,
                                                       mlp_dim=32, num_classes=3), torch.randn(1, 3, 16, 16))
    assert with_head.view(Selection()).caption.startswith("image 0, predicted class ")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_maps_of_a_gpu_model_are_plotted_and_scored_against_cpu_masks():
    """Attention on the GPU: the plots called .numpy() on a CUDA tensor, and the localisation multiplied a CUDA
    map by CPU masks (both raised torch's own errors)."""
    torch.manual_seed(0)
    att = [torch.softmax(torch.randn(2, 2, 17, 17), dim=-1).cuda() for _ in range(2)]
    images = torch.rand(2, 3, 16, 16)
    masks = torch.zeros(2, 16, 16)
    masks[:, :8] = 1
    maps = analysis.rollout_cls_map(att, 4)
    cpu = analysis.attention_localization(maps.cpu(), masks, 4)
    assert analysis.attention_localization(maps, masks, 4)["mean"] == pytest.approx(cpu["mean"])
    viz.plot_rollout(images, maps, masks=masks)
    viz.plot_attention_heads(images[0], att, 4)
    viz.plot_attention_layers(images[1], att, 4, index=1)
