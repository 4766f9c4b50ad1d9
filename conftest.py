"""Repository-wide pytest set-up, for the package tests and the notebooks (nbval) alike.

Tests leave the tree clean: every figure a test or a notebook draws goes to a temporary folder
(``VIT_EDU_FIGURES``, read by ``vit_edu.explain.viz.figures_dir``), never over the committed ``figures/``.
The nbval kernels inherit this environment. ``make notebooks`` is what regenerates ``figures/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_OWN_FIGURES_DIR = None


def pytest_configure(config) -> None:
    global _OWN_FIGURES_DIR
    os.environ.setdefault("VIT_EDU_STATIC", "1")  # the attention explorer draws its static figure, as stored
    if not os.environ.get("VIT_EDU_FIGURES"):
        _OWN_FIGURES_DIR = tempfile.mkdtemp(prefix="vit_edu_figures_")
        os.environ["VIT_EDU_FIGURES"] = _OWN_FIGURES_DIR


def pytest_unconfigure(config) -> None:
    if _OWN_FIGURES_DIR is not None:
        shutil.rmtree(_OWN_FIGURES_DIR, ignore_errors=True)
        os.environ.pop("VIT_EDU_FIGURES", None)
