"""The attention explorer without a browser: its maps against attention computed by hand, its cache, its
static fallback and its errors. (The widgets in a real browser: tests/test_explorer_browser.py.)"""

from __future__ import annotations

import html
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vit_edu.explain import explore
from vit_edu.explain.explorer import ExplorerData, ExplorerFigure, Selection, live_frontend
from vit_edu.training import pretrained_course_model
from vit_edu.training.data import SHAPE_CLASSES, ShapesDataset

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def course():
    model, info = pretrained_course_model()
    data = ShapesDataset(n=5, seed=11, palette=info["palette"])
    x = torch.stack([data[i][0] for i in range(len(data))])  # [5, 3, 32, 32] normalized
    return model, x, data.labels


def manual_attention(model, image: torch.Tensor, layer: int) -> torch.Tensor:
    """softmax(QK^T / sqrt(d)) of one layer, from the model's own weights, step by step: [heads, T, T]."""
    with torch.no_grad():
        z = model.embed(image[None])
        for block in model.blocks[:layer]:
            z = block(z)
        block = model.blocks[layer]
        qkv = block.attn.qkv(block.norm1(z))[0]  # [T, 3 D], features ordered (three, heads, d)
        T, heads = qkv.shape[0], block.attn.heads
        q, k, _ = qkv.reshape(T, 3, heads, -1).permute(1, 2, 0, 3)  # [heads, T, d] each
        return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)


@pytest.mark.parametrize("image,row,col,layer,head", [(0, 4, 4, 0, 2), (3, 0, 7, 5, 1), (1, 7, 0, 2, 3)])
def test_maps_are_the_patch_attention_computed_by_hand(course, image, row, col, layer, head) -> None:
    model, x, labels = course
    view = ExplorerData(model, x).view(Selection(image, row, col, layer, head))
    A = manual_attention(model, x[image], layer)  # [heads, 65, 65]
    query = 1 + row * 8 + col  # token 0 is the class token, then the 8x8 patches row by row
    expected = A[:, query, 1:].reshape(4, 8, 8).numpy()
    np.testing.assert_allclose(view.head_maps, expected, atol=1e-5)
    np.testing.assert_allclose(view.patch_map, expected[head], atol=1e-5)
    assert view.cls_share == pytest.approx(float(A[head, query, 0]), abs=1e-5)
    np.testing.assert_allclose(view.patch_map.sum() + view.cls_share, 1.0, atol=1e-5)  # the whole softmax row


def test_rollout_similarity_and_distance_match_their_definitions(course) -> None:
    model, x, _ = course
    view = ExplorerData(model, x).view(Selection(2, 1, 6, 0, 0))
    with torch.no_grad():
        _, attentions = model(x[2:3], return_attention=True)
    rollout = torch.eye(65, dtype=torch.float64)
    for a in attentions:  # R = (A_L/2 + I/2) ... (A_1/2 + I/2): the mean of softmax rows plus I sums to 2
        rollout = (a[0].double().mean(dim=0) + torch.eye(65, dtype=torch.float64)) / 2 @ rollout
    cls_row = rollout[0, 1:] / rollout[0, 1:].sum()
    np.testing.assert_allclose(view.rollout, cls_row.reshape(8, 8).numpy(), atol=1e-5)
    pos = model.pos_embed.detach()[0, 1:]  # [64, D]
    cosine = F.cosine_similarity(pos[1 * 8 + 6][None], pos, dim=-1).reshape(8, 8)
    np.testing.assert_allclose(view.pos_similarity, cosine.numpy(), atol=1e-5)
    centres = torch.tensor([[(r + 0.5) * 4, (c + 0.5) * 4] for r in range(8) for c in range(8)], dtype=torch.float64)
    dist = torch.cdist(centres, centres)
    for layer in (0, 5):
        a = attentions[layer][0, :, 1:, 1:].double()
        a = a / a.sum(dim=-1, keepdim=True)
        np.testing.assert_allclose(view.distances[layer], (a * dist).sum(-1).mean(-1).numpy(), rtol=1e-5)


def test_a_model_without_class_token_or_position_embedding() -> None:
    import vit_edu

    model = vit_edu.VisionTransformer(image_size=(12, 16), patch_size=4, dim=16, depth=2, heads=2, mlp_dim=32,
                                      num_classes=3, class_token=False, pool="mean", pos_embedding="none")
    x = torch.randn(2, 3, 12, 16)
    explorer = explore(model, x, patch=(2, 3), layer=1, head=1, interactive=False)
    view = explorer.view
    assert view.patch_map.shape == (3, 4) and view.pos_similarity is None and view.cls_share == 0.0
    expected = manual_attention(model, x[0], 1)[1, 2 * 4 + 3].reshape(3, 4).numpy()  # no prefix token
    np.testing.assert_allclose(view.patch_map, expected, atol=1e-5)
    assert explorer.figure.ax_pos.get_title() == "no position embedding"
    assert explorer.figure.png()[:4] == b"\x89PNG"


def test_a_new_selection_changes_the_maps(course) -> None:
    model, x, _ = course
    data = ExplorerData(model, x)
    base = data.view(Selection(0, 4, 4, 0, 2))
    for change, field in [(dict(row=1), "patch_map"), (dict(head=0), "patch_map"), (dict(layer=3), "head_maps"),
                          (dict(image=1), "rollout"), (dict(col=0), "pos_similarity")]:
        other = data.view(Selection(**{**base.selection.__dict__, **change}))
        assert not np.allclose(getattr(other, field), getattr(base, field)), change
    assert np.array_equal(data.view(base.selection).patch_map, base.patch_map)  # and back again


def test_the_chosen_head_is_highlighted(course) -> None:
    model, x, _ = course
    data = ExplorerData(model, x)
    figure = ExplorerFigure(data)
    for layer, head in [(0, 2), (4, 1)]:
        view = data.view(Selection(0, 2, 2, layer, head))
        figure.draw(view)
        assert view.highlight == (layer, head, pytest.approx(float(view.distances[layer, head])))
        xs, ys = figure.ring.get_data()
        assert (list(xs), list(ys)) == ([layer + 1], [pytest.approx(float(view.distances[layer, head]))])
        chosen = [ax.get_title() for ax in figure.bottom if ax.get_title().endswith("(chosen)")]
        assert chosen == [f"layer {layer + 1}, head {head + 1} (chosen)"]


def test_attention_is_computed_once_per_image(course) -> None:
    model, x, _ = course
    calls = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        data = ExplorerData(model, x)
        for row in range(8):
            for head in range(4):
                data.view(Selection(0, row, 7 - row, row % 6, head))
        assert len(calls) == 1 and data.forward_calls == 1
        data.view(Selection(image=1))
        data.view(Selection(image=0, layer=5))
        assert len(calls) == 2
    finally:
        hook.remove()


def test_static_fallback_is_one_figure_with_every_panel(course, monkeypatch) -> None:
    model, x, labels = course
    monkeypatch.setenv("VIT_EDU_STATIC", "1")
    assert live_frontend() == (False, "VIT_EDU_STATIC=1")
    explorer = explore(model, x, labels=labels, class_names=SHAPE_CLASSES, patch=(3, 5), layer=1, head=3)
    assert not explorer.interactive and explorer.widget is None
    fig = explorer.figure.fig
    assert len(fig.axes) == 4 + 4 + 1  # image, patch, rollout, E_pos; the 4 heads; the distance plot
    assert explorer.figure.ax_patch.get_title().startswith("patch (3, 5), layer 2, head 4")
    assert explorer.figure.ax_image.get_title().startswith(f"image 0: {SHAPE_CLASSES[int(labels[0])]}")
    assert explorer.figure.png()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tuple(fig.get_size_inches() * fig.dpi) == (1240, 540)  # the stored notebooks' figure


def test_no_kernel_or_no_ipywidgets_means_static(monkeypatch) -> None:
    monkeypatch.delenv("VIT_EDU_STATIC", raising=False)
    assert live_frontend()[0] is False and "not in a Jupyter kernel" in live_frontend()[1]  # pytest has none
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets -> ImportError
    assert live_frontend() == (False, "ipywidgets is not installed (pip install ipywidgets)")


def test_blitted_updates_draw_what_a_full_draw_draws(course) -> None:
    model, x, _ = course
    data = ExplorerData(model, x)
    live = ExplorerFigure(data, blit=True)
    live.draw(data.view(Selection(0, 0, 0, 0, 0)))
    live.png()  # the first full draw keeps the background
    for selection in [Selection(1, 3, 3, 2, 1), Selection(4, 6, 2, 5, 3)]:
        live.draw(data.view(selection))
        fresh = ExplorerFigure(data)
        fresh.fig.suptitle(live.fig.get_suptitle(), fontsize=11)  # the static figure says it is static
        fresh.draw(data.view(selection))
        a = np.asarray(live.canvas.buffer_rgba(), dtype=np.int16)
        fresh.canvas.draw()
        b = np.asarray(fresh.canvas.buffer_rgba(), dtype=np.int16)
        assert a.shape == b.shape
        assert (np.abs(a - b).max(axis=-1) > 8).mean() < 1e-3  # antialiasing at a few edges at most


def test_clicks_and_sliders_drive_the_widgets(course) -> None:
    pytest.importorskip("ipywidgets")
    pytest.importorskip("ipympl")
    from matplotlib.backend_bases import MouseEvent

    model, x, _ = course
    explorer = explore(model, x, interactive=True)
    explorer.sliders["layer"].value = 4  # the sliders show layer and head from 1
    assert explorer.selection.layer == 3
    ax = explorer.figure.ax_image
    px, py = ax.transData.transform((2 * 4 + 1.5, 6 * 4 + 2.5))  # a pixel in patch (row 6, col 2)
    MouseEvent("button_press_event", explorer.canvas, px, py, button=1)._process()
    assert (explorer.selection.row, explorer.selection.col) == (6, 2)
    assert (explorer.sliders["row"].value, explorer.sliders["col"].value) == (6, 2)
    state = json.loads(html.unescape(explorer.readout.value.split('data-state="')[1].split('"')[0]))
    shown = {k: state[k] for k in ("image", "row", "col", "layer", "head")}
    assert shown == dict(image=0, row=6, col=2, layer=3, head=0)
    expected = manual_attention(model, x[0], 3)[0, 1 + 6 * 8 + 2, 1:].reshape(8, 8).numpy()
    np.testing.assert_allclose(np.array(state["patch_map"]), expected, atol=1e-5)


def test_without_ipympl_the_sliders_redraw_an_image(course) -> None:
    pytest.importorskip("ipywidgets")
    model, x, _ = course
    explorer = explore(model, x, interactive=True, clickable=False)
    assert explorer.canvas is None
    before = explorer.image_widget.value
    explorer.sliders["head"].value = 2
    assert explorer.selection.head == 1 and explorer.image_widget.value != before
    assert explorer.image_widget.value[:8] == b"\x89PNG\r\n\x1a\n"


def test_own_image_file_is_resized_and_explored(course, tmp_path) -> None:
    from PIL import Image

    model, x, _ = course
    data = ExplorerData(model, x)
    path = tmp_path / "mine.png"
    Image.fromarray(np.full((50, 70, 3), 200, dtype=np.uint8)).save(path)
    index = data.add_image(path)
    assert index == len(x) and data.inputs.shape == (len(x) + 1, 3, 32, 32)
    np.testing.assert_allclose(data.display[index], 200 / 255, atol=1e-6)
    view = data.view(Selection(image=index))
    assert view.caption.startswith(f"image {index} (yours), predicted")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt"):
        data.add_image(tmp_path / "notes.txt")


def test_default_normalization_is_the_course_data_s() -> None:
    from vit_edu.explain.explorer import COURSE_MEAN, COURSE_STD
    from vit_edu.training.data import MEAN, STD

    assert (COURSE_MEAN, COURSE_STD) == (tuple(MEAN), tuple(STD))


def test_a_click_maps_to_its_patch(course) -> None:
    data = ExplorerData(course[0], course[1])
    assert data.patch_at(0.0, 0.0) == (0, 0)
    assert data.patch_at(13.9, 31.9) == (3, 7)
    assert data.patch_at(32.0, 5.0) is None and data.patch_at(-0.5, 5.0) is None


@pytest.mark.parametrize("change,message", [
    (dict(row=8), "patch row must be in 0..7 (the grid is 8x8 patches; counted from 0), got 8"),
    (dict(col=-1), "patch col must be in 0..7 (the grid is 8x8 patches; counted from 0), got -1"),
    (dict(layer=6), "layer must be in 0..5 (the model has 6 layers; counted from 0), got 6"),
    (dict(head=4), "head must be in 0..3 (each layer has 4 heads; counted from 0), got 4"),
    (dict(image=5), "image must be in 0..4 (5 images; counted from 0), got 5"),
])
def test_a_selection_out_of_range_names_the_range(course, change, message) -> None:
    data = ExplorerData(course[0], course[1])
    with pytest.raises(ValueError) as err:
        data.view(Selection(**change))
    assert str(err.value) == message


def test_bad_input_says_what_was_expected_and_what_came(course) -> None:
    model, x, _ = course
    with pytest.raises(ValueError, match=r"images must have shape \[B, 3, 32, 32\] .*got \(2, 3, 64, 64\)"):
        explore(model, torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"images must have shape .*got \(3, 32\)"):
        explore(model, torch.zeros(3, 32))
    with pytest.raises(TypeError, match="floating point.*torch.uint8"):
        explore(model, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"display must have shape \[5, 3, 32, 32\] .*got \(4, 3, 32, 32\)"):
        explore(model, x, display=torch.zeros(4, 3, 32, 32))
    with pytest.raises(ValueError, match="labels must have one entry per image \\(5\\), got 2"):
        explore(model, x, labels=[0, 1])
    with pytest.raises(ValueError, match=r"patch must be a pair \(row, col\) on the 8x8 grid, got 3"):
        explore(model, x, patch=3)
    with pytest.raises(ValueError, match="head must be in 0..3"):
        explore(model, x, head=4)
    with pytest.raises(TypeError, match="model must be a vit_edu VisionTransformer"):
        explore(torch.nn.Linear(2, 2), x)


def tiny_model(**overrides):
    import vit_edu

    torch.manual_seed(0)
    kw = dict(image_size=(8, 12), patch_size=4, dim=16, depth=2, heads=2, mlp_dim=32, num_classes=3)
    return vit_edu.VisionTransformer(**{**kw, **overrides})


def test_a_grey_model_is_explored_with_its_image_drawn_grey(tmp_path) -> None:
    from PIL import Image

    model = tiny_model(in_channels=1)
    x = torch.rand(2, 1, 8, 12) * 2 - 1  # normalized with the course's 0.5 / 0.5, one channel
    explorer = explore(model, x, interactive=False)  # was: "display must have shape [2, 1, 8, 12]"
    view = explorer.view
    assert view.image.shape == (8, 12, 3)
    grey = (x[0, 0] * 0.5 + 0.5).clamp(0, 1)  # [8, 12]
    np.testing.assert_allclose(view.image, grey[..., None].expand(8, 12, 3).numpy(), atol=1e-6)
    assert explorer.figure.png()[:4] == b"\x89PNG"
    Image.fromarray(np.full((5, 7, 3), 102, dtype=np.uint8)).save(tmp_path / "mine.png")  # an RGB file
    index = explorer.data.add_image(tmp_path / "mine.png")
    assert explorer.data.inputs[index].shape == (1, 8, 12)
    np.testing.assert_allclose(explorer.data.display[index], 0.4, atol=1e-6)


def test_a_bfloat16_model_is_explored() -> None:
    model = tiny_model().to(torch.bfloat16)
    view = explore(model, torch.randn(1, 3, 8, 12), interactive=False).view  # was: unsupported ScalarType BFloat16
    assert view.patch_map.dtype == np.float32 and view.rollout.sum() == pytest.approx(1.0, abs=1e-5)
    assert view.patch_map.sum() + view.cls_share == pytest.approx(1.0, abs=2e-2)  # a bfloat16 softmax row


def test_pictures_and_normalization_are_checked_before_they_are_drawn() -> None:
    model, x = tiny_model(), torch.randn(2, 3, 8, 12)
    with pytest.raises(ValueError, match="images has non-finite values"):
        explore(model, torch.full((1, 3, 8, 12), float("nan")))
    with pytest.raises(ValueError, match=r"display must be in \[0, 1\].*got values in \[200, 200\]"):
        explore(model, x, display=torch.full((2, 3, 8, 12), 200.0))  # was drawn all white
    with pytest.raises(ValueError, match=r"mean must have one value per input channel \(3\), got \(0.4, 0.5\)"):
        explore(model, x, mean=(0.4, 0.5))
    with pytest.raises(ValueError, match="std must be positive"):
        explore(model, x, std=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="cache_size must be an int >= 0"):
        ExplorerData(model, x, cache_size=-1)
    data = ExplorerData(model, x)
    with pytest.raises(ValueError, match=r"image must be in \[0, 1\]"):
        data.add_image(torch.randn(3, 8, 12) * 3)  # a normalized image: was clamped and explored silently
    with pytest.raises(ValueError, match=r"image must have shape \[1, 3, 8, 12\].*got \(2, 3, 8, 12\)"):
        data.add_image(torch.rand(2, 3, 8, 12))  # was: the first kept, the second dropped
    assert len(data) == 2


def test_a_model_without_class_token_names_no_class_token() -> None:
    explorer = explore(tiny_model(class_token=False, pool="mean"), torch.randn(1, 3, 8, 12), interactive=False)
    titles = [explorer.figure.ax_rollout.get_title(), explorer.figure.ax_patch.get_title()]
    summary = explorer.data.summary(explorer.view)
    assert "class token" not in titles[0] + titles[1] + summary  # was "rollout of the class token", "class token 0.00"
    assert titles[0].startswith("rollout of the mean query")
    with_cls = explore(tiny_model(), torch.randn(1, 3, 8, 12), interactive=False)
    assert with_cls.figure.ax_rollout.get_title() == "rollout of the class token"
    assert "to the class token" in with_cls.data.summary(with_cls.view)


def test_a_mean_pool_model_with_a_class_token_shows_the_rollout_its_head_reads() -> None:
    """Its head averages the patch tokens: the rollout shown is theirs (before: the class token's, titled so)."""
    from vit_edu.explain import analysis

    model, x = tiny_model(pool="mean"), torch.randn(1, 3, 8, 12)
    explorer = explore(model, x, interactive=False)
    with torch.no_grad():
        _, attentions = model(x, return_attention=True)
    expected = analysis.rollout_cls_map(attentions, (2, 3), 1, pool="mean")[0].numpy()
    np.testing.assert_allclose(explorer.view.rollout, expected, atol=1e-6)
    assert not np.allclose(expected, analysis.rollout_cls_map(attentions, (2, 3), 1)[0].numpy(), atol=1e-6)
    assert explorer.figure.ax_rollout.get_title().startswith("rollout of the mean query")
    assert "to the class token" in explorer.data.summary(explorer.view)  # the patch's own row still has one


def test_a_model_with_nan_weights_is_refused_before_it_is_explored() -> None:
    """A diverged model was explored as any other, its caption naming a "prediction" read off non-finite logits
    (NaN logits have argmax 0)."""
    model = tiny_model()
    with torch.no_grad():
        model.head.weight[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"weights hold NaN or infinite values in 1 tensors \(head\.weight\)"):
        explore(model, torch.randn(1, 3, 8, 12), interactive=False)
