"""How long one update of the attention explorer takes on this CPU (a script, not a test).

    python benchmarks/explorer_latency.py                 # the shipped course model, 1 thread, 30 updates
    python benchmarks/explorer_latency.py --threads 2 --repeats 100

An update is what a click or a slider move costs in JupyterLab: the selection -> arrays
(``ExplorerData.view``: slicing the cached attention), the arrays into the figure's artists and a redraw of
what changed over the saved background (``ExplorerFigure.draw`` with ``blit``), and the PNG the widget sends
(the whole picture without ipympl; with it, ipympl's PNG of the pixels that changed).
A new image costs one forward pass more, once. The full redraw of the static figure is printed for comparison.
Selections rotate over images already seen, patches, layers and heads; the median and the 90th percentile are
reported, in milliseconds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable, List

import torch

from vit_edu.explain.explorer import ExplorerData, ExplorerFigure, Selection
from vit_edu.training import pretrained_course_model
from vit_edu.training.data import ShapesDataset


def timed(fn: Callable[[int], object], repeats: int) -> List[float]:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(1000 * (time.perf_counter() - start))
    return times


def report(name: str, times: List[float]) -> None:
    p90 = sorted(times)[int(0.9 * (len(times) - 1))]
    print(f"{name:64s} median {statistics.median(times):7.2f} ms   p90 {p90:7.2f} ms   (n={len(times)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the notebooks use 1)")
    p.add_argument("--images", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, info = pretrained_course_model()
    data_set = ShapesDataset(n=args.images, seed=2027, palette=info["palette"])
    x = torch.stack([data_set[i][0] for i in range(len(data_set))])
    data = ExplorerData(model, x)
    c = model.config
    print(f"course model {c.depth} layers x {c.heads} heads, {c.num_tokens} tokens; torch {torch.__version__}, "
          f"{args.threads} thread(s), {platform.processor() or platform.machine()}")

    def selection(i: int) -> Selection:
        return Selection(image=i % args.images, row=i % 8, col=(3 * i) % 8, layer=i % c.depth, head=i % c.heads)

    report("new image: forward pass + rollout + distances (once each)",
           timed(lambda i: data.cached(i), args.images))  # fills the cache
    report("selection -> arrays (ExplorerData.view)", timed(lambda i: data.view(selection(i)), args.repeats))
    live = ExplorerFigure(data, blit=True)
    live.draw(data.view(selection(0)))
    live.png()  # the first full draw, which keeps the background

    def update(i: int) -> None:
        live.draw(data.view(selection(i)))
        live.png()

    report("one update, sliders only: arrays + redraw + PNG", timed(update, args.repeats))
    try:  # with ipympl (clicking a patch): its canvas, and the PNG of the changed pixels it sends
        from ipympl.backend_nbagg import Canvas, FigureManager
    except ImportError:
        print("(ipympl is not installed: no timing of its canvas)")
    else:
        for ratio in (1, 2):  # 2: a high-resolution screen, where ipympl draws four times the pixels
            clickable = ExplorerFigure(data, canvas_class=Canvas, blit=True)
            FigureManager(clickable.canvas, 0)
            clickable.canvas._set_device_pixel_ratio(ratio)  # what the browser asks for
            clickable.canvas.syncing_data_url = False  # as with a live frontend (else a second PNG for nbconvert)
            clickable.canvas.draw()  # the first full draw, which keeps the background

            def update_ipympl(i: int) -> None:  # the blit makes ipympl encode and send the changed pixels
                clickable.draw(data.view(selection(i)))

            report(f"one update, clicking (ipympl, {ratio}x pixels): arrays + redraw + PNG",
                   timed(update_ipympl, args.repeats))
    static = ExplorerFigure(data)

    def full(i: int) -> None:
        static.draw(data.view(selection(i)))
        static.png()

    report("full redraw of the static figure (for comparison)", timed(full, max(5, args.repeats // 3)))


if __name__ == "__main__":
    main()
