"""Execute notebooks top to bottom in place (the way nbval will re-run them), one fresh kernel each.

    python tools/execute_notebooks.py notebooks/01_patch_embedding.ipynb [...]

The kernel starts in the notebook's folder with PYTHONHASHSEED=0 and the Agg-free inline backend,
exactly as ``pytest --nbval --nbval-current-env`` runs it. Prints the wall time of each notebook.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path, timeout: int = 600) -> float:
    nb = nbformat.read(path, as_version=4)
    os.environ["PYTHONHASHSEED"] = "0"
    os.environ.pop("MPLBACKEND", None)  # let the kernel use the inline backend, as under nbval
    os.environ["VIT_EDU_STATIC"] = "1"  # the explorer stores its static figure, never a widget view
    # the one route that rewrites the committed figures (a notebook run elsewhere writes to build/figures)
    os.environ.setdefault("VIT_EDU_FIGURES", str(Path(__file__).resolve().parents[1] / "figures"))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for name in argv:
        path = Path(name)
        if not path.exists() or path.suffix != ".ipynb":
            print(f"not a notebook: {name}", file=sys.stderr)
            return 2
        print(f"{path}: {execute(path):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
