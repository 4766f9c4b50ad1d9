"""A class larger than one machine: ``grade --shard i/n`` on each of n machines, then ``grade --merge``.

Each student belongs to one shard, decided by a hash of the folder's name alone (not by the order or the
number of folders), so a shard rerun on another machine, or after a student was added, grades the same
students; a Slurm array (``--shard $SLURM_ARRAY_TASK_ID/n``) or a Kubernetes indexed job
(``--shard $((JOB_COMPLETION_INDEX + 1))/n``) runs the parts, and the merge refuses parts that do not fit
together (another reference, a missing or repeated shard, a student in two parts:
:func:`vit_edu.classroom.grading.merge_shards`). Recipe: docs/classroom.md.
"""

from __future__ import annotations

import hashlib
import re
from typing import Tuple

MAX_SHARDS = 100_000


def shard_of(student: str, n: int) -> int:
    """The shard (1..n) of a student folder's name: stable across machines, runs and class sizes."""
    digest = hashlib.sha256(student.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def check_shard(shard: Tuple[int, int]) -> None:
    i, n = shard
    if not (isinstance(i, int) and isinstance(n, int) and 1 <= n <= MAX_SHARDS and 1 <= i <= n):
        raise ValueError(f"shard must be i/n with 1 <= i <= n <= {MAX_SHARDS}, got {i}/{n}")


def parse_shard(text: str) -> Tuple[int, int]:
    """'3/8' -> (3, 8); a one-line ValueError naming the flag otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise ValueError(f"--shard must be i/n (e.g. 3/8: the third of 8 parts), got {text!r}")
    shard = (int(match.group(1)), int(match.group(2)))
    try:
        check_shard(shard)
    except ValueError as err:
        raise ValueError(f"--shard: {err}") from None
    return shard
