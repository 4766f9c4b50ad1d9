"""Plotting helpers for the notebooks: every picture they draw is also saved under figures/."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import matplotlib.pyplot as plt


def figures_dir() -> Path:
    """figures/ at the repository root (or $VIT_EDU_FIGURES), created on demand."""
    env = os.environ.get("VIT_EDU_FIGURES")
    d = Path(env) if env else Path(__file__).resolve().parent.parent / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig: Optional[plt.Figure], name: str, dpi: int = 100) -> Path:
    """Save ``fig`` (default: the current figure) as figures/<name>.png with a stable name; returns the path."""
    fig = fig if fig is not None else plt.gcf()
    if not name.endswith(".png"):
        name += ".png"
    path = figures_dir() / name
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path
