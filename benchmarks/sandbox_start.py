"""What one notebook's process costs to start: a fork of the grader's loaded server vs one bubblewrap per notebook.

The grader forks each notebook from a server that has torch and vit_edu.checks loaded; the alternative, a fresh
``bwrap ... python`` per notebook, pays Python's start and torch's import every time. This prints both (median of
``--repeat`` runs) and what each means for a class of 25 students x 11 notebooks with 2 at a time.

    python benchmarks/sandbox_start.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

IMPORTS = "import torch, vit_edu.checks; torch.ones(3).sum()"


def fork_ms(repeat: int) -> float:
    import torch  # noqa: F401 - loaded before forking, as in the server
    import vit_edu.checks  # noqa: F401

    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bwrap_s(bwrap: str, repeat: int) -> float:
    command = [bwrap, "--dev-bind", "/", "/", "--proc", "/proc", "--unshare-all", "--die-with-parent",
               sys.executable, "-c", IMPORTS]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    notebooks, slots = 25 * 11, 2
    print(f"load average {os.getloadavg()[0]:.1f}; {notebooks} notebooks, {slots} at a time")
    ms = fork_ms(args.repeat)
    print(f"fork of the loaded server: {ms:.1f} ms per notebook ({notebooks * ms / 1000 / slots:.1f} s for the class)")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        print("bubblewrap per notebook: not measured (no bwrap here; apt-get install bubblewrap)")
        return 0
    s = bwrap_s(bwrap, args.repeat)
    print(f"bubblewrap + python + import torch per notebook: {s:.2f} s ({notebooks * s / 60 / slots:.1f} min for "
          f"the class, before any student code runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
