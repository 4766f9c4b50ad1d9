"""Old import paths of modules that moved into the tooling subpackages (kept for one release).

``vit_edu/train.py`` is now ``vit_edu/training/``, ``vit_edu/analysis.py`` is ``vit_edu/explain/analysis.py``,
and so on (the README's "Architecture" section has the map). Each old module is a two-line file that calls
:func:`alias_module`: importing it warns once and hands back the new module itself, so ``vit_edu.train.fit``
and ``vit_edu.training.fit`` are the same object (monkeypatching either patches both).
"""

from __future__ import annotations

import importlib
import sys
import warnings


def alias_module(old: str, new: str) -> None:
    """Make ``import old`` return the module ``new``, with a DeprecationWarning that names the new path."""
    warnings.warn(f"{old} moved to {new}; the old path works for one release (import {new} instead)",
                  DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
