"""The command line's manners: Ctrl-C while it starts is one line (status 130), a bad flag is one line.

``python -m vit_edu`` imports the package (torch and all) before ``vit_edu.__main__.main`` can catch
anything, and that takes seconds. When the package is imported to run the command line, an uncaught
KeyboardInterrupt is reported as one line instead of a traceback; ``main`` handles every later one itself.
Imported as a library (a notebook, a test), nothing changes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

INTERRUPTED = 130  # 128 + SIGINT


def started_as_command_line() -> bool:
    """True while ``python -m vit_edu`` locates the package (Python sets argv[0] to "-m" meanwhile) or when
    the ``vit-edu`` script runs."""
    first = sys.argv[0] if sys.argv else ""
    return first == "-m" or os.path.basename(first) in ("vit-edu", "vit-edu.exe", "vit-edu-script.py")


def _one_line_on_interrupt(kind, value, traceback, _previous=sys.excepthook) -> None:
    if issubclass(kind, KeyboardInterrupt):
        try:
            sys.stdout.flush()
        except Exception:  # a closed pipe: nothing to flush into
            pass
        sys.stderr.write("vit_edu: interrupted\n")
        sys.stderr.flush()
        os._exit(INTERRUPTED)  # the interpreter would otherwise kill itself with SIGINT after printing
    _previous(kind, value, traceback)


def _interrupted_while_starting(signum, frame) -> None:
    """Ctrl-C before ``main`` runs: nothing has been done yet, so end here, at once."""
    _one_line_on_interrupt(KeyboardInterrupt, KeyboardInterrupt(), None)


def install() -> None:
    """When the command line starts: Ctrl-C until ``main`` runs (see :func:`started`) ends the process with one
    line. Not as a KeyboardInterrupt: raised inside NumPy's initialisation (torch imports it), one was swallowed,
    so the command ran on as if never interrupted, or left NumPy half-loaded (an ImportError traceback)."""
    if started_as_command_line():
        sys.excepthook = _one_line_on_interrupt
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored (nohup)
            signal.signal(signal.SIGINT, _interrupted_while_starting)


def started() -> None:
    """The modules are loaded and ``main`` runs: Ctrl-C raises KeyboardInterrupt again, which ``main`` reports as
    one line after the run's clean-up (a training run keeps its last saved state)."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (the flag, what came, where to look), not the whole usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = " ".join(message.split())
        self.exit(2, f"{self.prog.replace('python -m ', '')}: error: {message} (see: {self.prog} --help)\n")
