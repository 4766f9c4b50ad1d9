"""Adversarial sets for the self-checks: right answers in other styles and plausible mistakes.

One file per exercise, ``tests/adversarial/<exercise>.py``::

    CHECK = "patchify"                   # key in vit_edu.checks.CHECKS
    CORRECT = [impl, ...]                # must pass
    MISTAKES = [(impl, "keyword"), ...]  # must be rejected; the message should contain "keyword" (any case)

The less an implementation resembles the reference code, the more it finds. :func:`evaluate` runs one set
the way the grader does (probe, then judge on the observations); tests/test_adversarial.py and
benchmarks/adversarial_report.py use it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Sequence, Tuple

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1)  # every right answer must pass with both; every mistake must fail with both


def set_files() -> List[Path]:
    return sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_"))


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"adversarial_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def name_of(impl: Any) -> str:
    return getattr(impl, "__name__", type(impl).__name__)


@dataclass
class Result:
    file: str
    check: str
    correct: int = 0
    mistakes: int = 0
    rejected: List[Tuple[str, str]] = field(default_factory=list)  # right answers that failed: (name, message)
    accepted: List[str] = field(default_factory=list)  # mistakes that passed
    named: int = 0
    unnamed: List[Tuple[str, str, str]] = field(default_factory=list)  # (name, keyword, message)


def _verdict(check: str, impl: Any, seed: int) -> Any:
    from vit_edu import checks
    return checks.judge(check, checks.probe(check, impl, seed=seed), seed=seed)


def evaluate(path: Path, seeds: Sequence[int] = SEEDS) -> Result:
    from vit_edu.checks import CHECKS
    module = load(path)
    if module.CHECK not in CHECKS:
        raise KeyError(f"CHECK = {module.CHECK!r} is not an exercise of vit_edu.checks.CHECKS")
    res = Result(path.name, module.CHECK)
    for impl in module.CORRECT:
        res.correct += 1
        for seed in seeds:
            v = _verdict(module.CHECK, impl, seed)
            if not v.passed:
                res.rejected.append((name_of(impl), v.message))
                break
    for impl, keyword in module.MISTAKES:
        res.mistakes += 1
        verdicts = [_verdict(module.CHECK, impl, seed) for seed in seeds]
        if any(v.passed for v in verdicts):
            res.accepted.append(name_of(impl))
            continue
        if keyword.lower() in verdicts[0].message.lower():
            res.named += 1
        else:
            res.unnamed.append((name_of(impl), keyword, verdicts[0].message))
    return res


def table(results: Sequence[Result]) -> str:
    rows = [f"{'exercise':<26}{'correct':>8}{'rejected':>10}{'mistakes':>10}{'accepted':>10}{'named':>8}"]
    for r in results:
        named = f"{100 * r.named / r.mistakes:.0f} %" if r.mistakes else "-"
        rows.append(f"{r.check:<26}{r.correct:>8}{len(r.rejected):>10}{r.mistakes:>10}{len(r.accepted):>10}{named:>8}")
    c = sum(r.correct for r in results)
    m = sum(r.mistakes for r in results)
    n = sum(r.named for r in results)
    rows.append(f"{'total':<26}{c:>8}{sum(len(r.rejected) for r in results):>10}{m:>10}"
                f"{sum(len(r.accepted) for r in results):>10}{(f'{100 * n / m:.0f} %' if m else '-'):>8}")
    return "\n".join(rows)


def details(results: Sequence[Result]) -> str:
    lines: List[str] = []
    for r in results:
        lines += [f"{r.check}: right answer rejected: {n}: {m.splitlines()[0]}" for n, m in r.rejected]
        lines += [f"{r.check}: mistake accepted: {n}" for n in r.accepted]
        lines += [f"{r.check}: {n}: message lacks {k!r}: {m.splitlines()[0]}" for n, k, m in r.unnamed]
    return "\n".join(lines)


def run_all(seeds: Sequence[int] = SEEDS) -> Dict[str, Result]:
    return {p.name: evaluate(p, seeds) for p in set_files()}
