"""Run a student's answer cells in a locked-down process; only plain data comes back.

The grader (:mod:`vit_edu.classroom.grading`) decides pass/fail in its own process, from observations: the student's
code runs here, in a child process that records what the student's functions and classes do
(:func:`vit_edu.checks.probe`) and writes it to a file. The grader reads that file with
``torch.load(weights_only=True)`` (data only, never code) and calls :func:`vit_edu.checks.judge`.

Speed: importing torch takes 3-4 s, forking a process that has it takes 30 ms. A small server process
imports torch, vit_edu.checks and the modules the reference's setup cells import, once; every notebook then
runs in a child forked from it. The server runs no torch operation before forking (a thread pool started
before ``fork`` breaks the children); each child sets one thread before anything else. What torch imports
lazily on a first backward pass (sympy, 2 s) is found by a throw-away forked child at start-up and imported
by the server too: each child is spared that import, and a sandboxed child that cannot read the Python
installation (a Python under /root) still finds it loaded. The cells a child runs reach it through a file
in its scratch folder, never through the server, whose memory every later child inherits.

Isolation of one child (:func:`.child._child`; the kernel side in :mod:`.isolation`):

* its own session (process group), so the grader kills it and everything it started in one call;
* when the grader runs as root: a uid/gid of its own (one per running notebook, see :class:`UidPool`; per
  notebook rather than per student, so that cleaning up after one notebook never hits another one running),
  no supplementary groups, no new privileges (``PR_SET_NO_NEW_PRIVS``: no setuid programs), and a private
  network namespace when the kernel allows it. It can then neither signal the grader or the server, nor
  write the repository, the package, ``figures/`` or another student's scratch folder. When the child has
  ended, a helper running as that uid kills whatever the child left running (``kill(-1)``) and removes the
  uid's files from /tmp, /var/tmp and /dev/shm, so the next notebook on that uid starts clean;
* resource limits: memory (``RLIMIT_DATA``/``RLIMIT_AS``, on top of what torch already takes), CPU seconds,
  size of any file written, number of processes (root only: the count is per uid), open files, no core files;
  as root, a memory cgroup and a cpu cgroup per notebook (the same CPU weight for every notebook however many
  processes it starts; a notebook killed at its time limit after waiting long for a CPU says so);
* its working directory is a fresh copy of the student's folder (mode 700, owned by its uid; with namespaces,
  in a tmpfs of its own capped at ``disk_mb`` beyond the copy and ``files`` entries; every other mount
  read-only in its view but its private /tmp, /var/tmp, /dev/shm, /run/lock); HOME, TMPDIR and
  VIT_EDU_FIGURES point there; of the grader's variables the server gets only what Python and torch read;
* what it reports goes to files in a results folder beside the copy (root's, mode 700: the sandbox uid cannot
  open it), through file descriptors opened before the uid change: the record in two slots written in turn
  (a kill in the middle of one write leaves the other, one probe older);
* the watches of :mod:`.watch` note replaced code, files touched outside the folder and calls of the package's
  own implementation of an exercise;
* stdin is /dev/null; stdout and stderr go to one file in the results folder, capped: Python's
  ``sys.stdout``/``sys.stderr`` keep the first ``max_output_bytes`` and drop the rest, and a write past the
  file-size limit at the file-descriptor level kills the child (SIGXFSZ: "output too large").

Not root: the same, without the uid change (the child runs as the grader's user, so it could signal the
grader or write its files); :func:`privileged` says which mode is on and the grader warns.

Why not ``multiprocessing``'s forkserver: in Python 3.11 it listens on an abstract unix socket that any
local process can connect to, and it unpickles what it receives; a student's code could ask a root
forkserver for a child running any code. This server talks to the grader over two anonymous pipes, which
every child closes before running anything else, in JSON lines.
"""

from __future__ import annotations

import io
import json
import math
import os
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import isolation as _kernel
from .child import (JOB, OBSERVATIONS, OUTPUT, RUN_FAILED, SETUP_FAILED, _child, _kill_job, _try_uid, _warm_up_modules,
                    one_line, server_environment)
from .isolation import (SandboxError, UidPool, _bubblewrap, _cpu_cgroup_root, _libc, _memory_cgroup_root, bwrap_command,
                        cgroup_path, cgroup_paths, chown_tree, copy_tree, needed_paths, remove_cgroup, remove_tree)

RESERVED_PREFIX = ".vit_edu_"  # the scratch copy's names the grader uses; a submission's own are not copied
# Preloaded in the server besides torch, vit_edu.checks and the reference's setup imports: after the uid
# change a module whose files the sandbox user cannot read (a Python installed under /root) cannot be imported.
COMMON_MODULES = (
    "math", "random", "itertools", "functools", "collections", "collections.abc", "typing", "dataclasses",
    "copy", "time", "re", "json", "string", "statistics", "operator", "contextlib", "abc", "enum",
    "textwrap", "warnings", "numbers", "fractions", "decimal", "heapq", "bisect", "pprint", "inspect",
    "traceback", "csv", "pathlib", "datetime", "array", "struct", "hashlib", "types", "weakref", "cmath",
    "timeit", "logging", "threading", "queue", "unicodedata", "glob", "pdb",  # a pdb.set_trace() left in
    "numpy", "einops", "torch", "torch.nn", "torch.nn.functional", "vit_edu", "vit_edu.checks",
    "torch.fx.experimental.symbolic_shapes",  # imported by the first backward with explicit gradients
    "IPython.display", "tqdm", "tqdm.auto", "tqdm.notebook",  # a cell's display(...) and progress bars, if installed
)


@dataclass
class Limits:
    """What one notebook may use. ``cell_timeout_s`` is a soft limit per cell and per check (an exception in
    the student's code); ``timeout_s`` is the hard wall-clock limit of the whole notebook (the process is
    killed)."""

    timeout_s: float = 60.0
    cell_timeout_s: Optional[float] = None
    memory_mb: int = 2048  # on top of what the server process (torch and the preloaded modules) already holds
    max_output_bytes: int = 256 * 1024  # printed output kept
    max_file_bytes: int = 64 * 1024 * 1024  # any one file the child writes (the observations included)
    processes: int = 32  # processes + threads of the sandbox uid (root only)
    open_files: int = 256
    disk_mb: int = 256  # what the notebook may write into its folder, beyond the copy (own namespaces only)
    files: int = 20_000  # files and folders it may make there (own namespaces only)

    def cpu_seconds(self) -> int:
        return int(math.ceil(self.timeout_s)) + 2


@dataclass
class Outcome:
    """How a child ended. ``reason`` is None when it ended by itself (exit code 0), else why it did not."""

    key: str
    exit_code: Optional[int]  # negative: killed by that signal
    reason: Optional[str]
    wall_s: float
    maxrss_kb: int = 0


def privileged() -> bool:
    """True when the grader can give each child a uid of its own (it runs as root)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


# =============================================================================================== grader side
def copy_folder(src: Path, dst: Path, max_bytes: int = 200 * 1024 * 1024, max_entries: int = 20_000) -> List[str]:
    """Copy the regular files and folders of ``src`` into the new folder ``dst``; returns notes on what was left
    out (:func:`.isolation.copy_tree`: links, special files, the grader's own names, past ``max_bytes``, past
    ``max_entries`` files and folders, folders nested too deep)."""
    return copy_tree(src, dst, max_bytes, max_entries, reserved=RESERVED_PREFIX)[0]


def read_untrusted(path: Path, max_bytes: int) -> Tuple[Optional[bytes], str]:
    """(content, "") of a file the student's code could have replaced, or (None, why not): no link, no FIFO,
    nothing bigger than ``max_bytes``. A device is never opened (a tar extracted as root can hold one named
    ``x.ipynb``, and opening some acts: a watchdog reboots the machine)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None, "not a regular file"
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return None, "missing"
    except OSError as err:
        return None, f"unreadable ({err.strerror})"
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if st.st_size > max_bytes:
            return None, f"{st.st_size} bytes, over the limit of {max_bytes}"
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        return None, f"over the limit of {max_bytes} bytes"
    return data, ""


def load_observations(data: bytes, max_numel: int = 16_000_000) -> Any:
    """The child's observations, loaded as data only: ``torch.load(weights_only=True)`` on a zip whose entries
    are stored uncompressed (no zip bomb) and whose tensors hold no more than ``max_numel`` numbers in all
    (a stride-0 tensor can claim any size over a one-number storage). ValueError when it is not so."""
    import torch

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
    except zipfile.BadZipFile as err:
        raise ValueError(f"not a torch.save file ({err})") from None
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos) or sum(i.file_size for i in infos) > len(data):
        raise ValueError("a compressed archive (torch.save never compresses)")
    try:
        obs = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - anything the child wrote: a clear reason, never a crash
        raise ValueError(f"unreadable ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})") from None
    count = [0]

    def visit(x: Any, depth: int) -> None:
        count[0] += 1
        if depth > 40 or count[0] > 1_000_000:
            raise ValueError("nested too deep or too many items")
        if isinstance(x, torch.Tensor):
            if x.layout != torch.strided or x.device.type != "cpu":
                raise ValueError(f"a {x.layout} tensor on {x.device}")
            max_numel_left = max_numel - count[0]
            if x.numel() > max_numel_left:
                raise ValueError(f"a tensor of {x.numel()} numbers")
            count[0] += x.numel()
        elif isinstance(x, dict):
            for k, v in x.items():
                if not isinstance(k, (str, int)):
                    raise ValueError(f"a dict key of type {type(k).__name__}")
                visit(v, depth + 1)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v, depth + 1)
        elif not (x is None or isinstance(x, (str, int, float, bool, torch.dtype, torch.Size))):
            raise ValueError(f"an object of type {type(x).__name__}")

    visit(obs, 0)
    return obs


def read_records(results: Path, max_bytes: int) -> Tuple[Any, Any, str]:
    """(the child's latest complete record or None, the other slot's record or None, why no record): it writes
    two slots in turn, so a kill in the middle of one write leaves the other, one step older. The older one is
    kept for the grader's consistency checks (:func:`.tripwires.record_inconsistencies`)."""
    best, other, problem = None, None, "no record written"
    for slot in (0, 1):
        data, why = read_untrusted(results / f"{OBSERVATIONS}.{slot}", max_bytes)
        if not data:
            problem = why if best is None and why else problem
            continue
        try:
            record = load_observations(data)
        except ValueError as err:
            problem = str(err) if best is None else problem
            continue
        seq = record.get("seq", -1) if isinstance(record, dict) else -1
        if best is None or (isinstance(seq, int) and isinstance(best, dict) and seq > best.get("seq", -1)):
            best, other = record, best
        else:
            other = record
    return best, other, ("" if best is not None else problem)


def output_tail(path: Path, lines: int = 3, max_bytes: int = 4096, skip: str = "") -> str:
    """The last lines the child printed (for the reason of a crash), one line, untrusted text; lines that start
    with ``skip`` (when given) left out."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return ""
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - max_bytes))
        text = f.read(max_bytes).decode("utf-8", "replace")
    kept = [l.strip() for l in text.splitlines() if l.strip() and not (skip and l.startswith(skip))][-lines:]
    return " | ".join(kept)


class ServerDied(RuntimeError):
    """The sandbox server ended (a student's code killed it, or it crashed)."""


class Server:
    """The grader's end of the fork server: start it, ask for runs and kills, read what happened."""

    def __init__(self, preload: Sequence[str], limits: Limits, log_path: Path, test_uid: Optional[int] = None,
                 start_timeout_s: float = 300.0, bwrap: Optional[str] = None):
        env = dict(server_environment(), MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        package_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.log_path = log_path
        self._log = open(log_path, "ab")
        command = [sys.executable, "-c", "from vit_edu.classroom.sandbox import serve; serve()"]
        self.bwrap = bwrap
        if bwrap:  # the server and every notebook in PID and IPC namespaces of their own (see bwrap_command)
            command = bwrap_command(bwrap) + command
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, close_fds=True,
            start_new_session=True, env=env, cwd="/")
        self._buf = b""
        self._events: List[dict] = []
        self.send({"op": "init", "preload": list(preload), "test_uid": test_uid})
        deadline = time.monotonic() + start_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise SandboxError(f"the sandbox server did not start within {start_timeout_s:g} s "
                                   f"(log: {log_path})")
            try:
                events = self.events(min(left, 1.0))
            except ServerDied:
                raise SandboxError(f"the sandbox server failed to start: {self.log_tail()}") from None
            ready = [e for e in events if e.get("event") == "ready"]
            if ready:
                self.info = ready[0]
                if self.info.get("uid_problem"):
                    self.close()
                    raise SandboxError(f"running as root, but a child cannot switch to uid {test_uid} here "
                                       f"({self.info['uid_problem']}); a container with a user namespace may map "
                                       f"too few uids")
                self._events += [e for e in events if e.get("event") != "ready"]
                return

    def log_tail(self) -> str:
        """The server's last lines, for a notebook whose sandbox could not be set up (not its preload notes)."""
        return output_tail(self.log_path, lines=3, skip="sandbox server: could not preload") or f"see {self.log_path}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, message: dict) -> None:
        try:
            os.write(self.proc.stdin.fileno(), (json.dumps(message) + "\n").encode())
        except (BrokenPipeError, OSError):
            raise ServerDied("the sandbox server is gone") from None

    def events(self, timeout: float) -> List[dict]:
        """What happened since the last call, waiting up to ``timeout`` s for something; ServerDied at EOF."""
        out, self._events = self._events, []
        if out:
            timeout = 0
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                if out:
                    self._events = []
                    return out
                raise ServerDied("the sandbox server is gone")
            self._buf += chunk
            *lines, self._buf = self._buf.split(b"\n")
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    out.append(event)
        return out

    def close(self) -> None:
        """Stop the server; it kills the children still running (their process groups) on the way out."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self._log.close()


@dataclass
class Result:
    """What came back from one notebook: how the child ended, and its record (None when unreadable)."""

    key: str
    outcome: Outcome
    record: Any  # the child's observations file, loaded as data (see :func:`load_observations`)
    record_problem: str  # why ``record`` is None ("missing", "unreadable (...)", ...)
    copy_notes: List[str]
    server_died: bool = False
    previous: Any = None  # the other record slot (one step older), or None


@dataclass
class _Running:
    key: str
    scratch: Path
    results: Path  # the child's output and records, outside the scratch copy (root's, mode 700, as root)
    uid: Optional[int]
    started: float
    deadline: float
    copy_notes: List[str]
    pid: Optional[int] = None
    timed_out: bool = False
    waited_s: float = 0.0  # at the kill, how long its main thread had waited for a CPU (ready to run)


BUSY_SHARE = 0.25  # a notebook killed at its time limit that waited this share of it for a CPU: said in its reason


def _waited_s(pid: int) -> Optional[float]:
    """Seconds the process ``pid``'s main thread spent ready to run but waiting for a CPU (the scheduler's
    run-queue wait, /proc/PID/schedstat), or None where the kernel does not say."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


SIGNAL_REASONS = {"SIGXCPU": "CPU time limit", "SIGXFSZ": "output too large", "SIGSEGV": "crashed (SIGSEGV)",
                  "SIGBUS": "crashed (SIGBUS)", "SIGABRT": "aborted (SIGABRT)"}


class Sandbox:
    """Runs notebooks in sandboxed children, ``slots`` at a time: :meth:`start` one, :meth:`wait` for results.

    Each run gets a fresh copy of the student's folder under ``workdir`` (a private temporary folder by
    default), and, as root, a uid of its own. A sandbox server killed by a student's code is restarted; the
    notebooks that were running come back with ``server_died=True``.
    """

    def __init__(self, limits: Limits, slots: int, preload: Sequence[str] = (), workdir: Optional[Path] = None,
                 hide: Sequence[Path] = ()):
        self.limits, self.slots = limits, slots
        self.hide = sorted({os.path.realpath(h) for h in hide})
        self.expose = needed_paths()
        self.preload = list(dict.fromkeys(list(COMMON_MODULES) + list(preload)))
        self.root = privileged()
        self.uids = UidPool(slots) if self.root else None
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="vit_edu_grading_")) if workdir is None else Path(workdir)
        os.chmod(self.workdir, 0o711)  # sandboxes can reach their own folder, not list the others
        self.log_path = self.workdir / "sandbox_server.log"
        self.test_uid = self.uids.free[0] if self.uids is not None else None
        self.bwrap, self.engine_note = _bubblewrap() if self.root else (None, "")
        try:
            self.server = Server(self.preload, limits, self.log_path, self.test_uid, bwrap=self.bwrap)
            if self.bwrap and self.server.info.get("isolation_problem"):  # bwrap ran, the namespaces inside did not
                raise SandboxError(self.server.info["isolation_problem"])
        except SandboxError as err:
            if not self.bwrap:
                raise
            if getattr(self, "server", None) is not None:
                self.server.close()
            self.engine_note = f"bubblewrap failed here ({one_line(err, 160)}), so without it"
            self.bwrap = None
            self.server = Server(self.preload, limits, self.log_path, self.test_uid)
        problem = self.server.info.get("isolation_problem", "")
        self.isolate = self.root and not problem  # the children try the namespaces only where the test child could
        self.memory_cgroup = self.root and _memory_cgroup_root() is not None
        self.cpu_cgroup = self.root and _cpu_cgroup_root() is not None
        self.isolation = ("uid of its own, its own mount and IPC namespaces (private /tmp, /dev/shm; the "
                          "submissions, the reference and the grades out of its sight; every other file system "
                          "read-only)"
                          + (" and a memory cgroup for all its processes" if self.memory_cgroup else "")
                          + (" and a cpu cgroup (the same CPU share for every notebook, however many processes it "
                             "starts)" if self.cpu_cgroup else "")
                          + ("; under bubblewrap: a PID namespace (it sees no process but the notebooks') and no "
                             "network" if self.bwrap else f"; {self.engine_note}" if self.engine_note else "")
                          if self.root and not problem
                          else "uid of its own only (namespaces refused: " + problem + ")" if self.root
                          else "none: not root (student code runs with your rights)")
        self.restarts = 0
        self.running: Dict[str, _Running] = {}
        self._count = 0

    def free(self) -> int:
        return self.slots - len(self.running)

    def start(self, key: str, student_dir: Path, steps: List[dict], seed: int) -> None:
        """Run ``steps`` (see :func:`_run`) on a fresh copy of ``student_dir``."""
        if not self.free():
            raise RuntimeError("no free sandbox slot")
        self._count += 1
        scratch = self.workdir / f"run{self._count}"
        results = self.workdir / f"run{self._count}.out"
        results.mkdir(mode=0o700)
        notes, copied_bytes, copied_files = copy_tree(student_dir, scratch, max_entries=self.limits.files,
                                                      reserved=RESERVED_PREFIX)
        lim = self.limits
        # The cells go through a file, not through the server: whatever passes through the server's memory
        # would be inherited by the next children, and a student's code could look for other students' answers.
        with open(scratch / JOB, "w", encoding="utf-8") as f:
            json.dump({"steps": steps, "seed": int(seed), "cell_timeout_s": lim.cell_timeout_s}, f)
        uid = self.uids.take() if self.uids is not None else None
        if uid is not None:
            chown_tree(scratch, uid, uid)
        job = {"isolate": self.isolate, "memory_cgroup": self.memory_cgroup, "cpu_cgroup": self.cpu_cgroup,
               "scratch": str(scratch), "uid": uid, "gid": uid, "hide": self.hide,
               "expose": self.expose,
               "tmp_bytes": lim.max_file_bytes, "memory_mb": lim.memory_mb,
               "max_file_bytes": lim.max_file_bytes, "max_output_bytes": lim.max_output_bytes,
               "open_files": lim.open_files, "processes": lim.processes, "cpu_seconds": lim.cpu_seconds(),
               "results": str(results), "disk_bytes": lim.disk_mb * 2**20 + copied_bytes + (1 << 20),
               "inodes": lim.files + copied_files + 16}
        now = time.monotonic()
        self.running[key] = _Running(key, scratch, results, uid, now, now + lim.timeout_s, notes)
        try:
            self.server.send({"op": "run", "key": key, "job": job})
        except ServerDied:
            pass  # noticed by wait()

    def wait(self, timeout: float = 0.05) -> List[Result]:
        """Results of the notebooks that ended (waiting up to ``timeout`` s); kills the ones past their time."""
        results: List[Result] = []
        try:
            events = self.server.events(timeout)
        except ServerDied:
            return self._server_died()
        for event in events:
            run = self.running.get(str(event.get("key")))
            if run is None:
                continue
            if event.get("event") == "started":
                run.pid = int(event["pid"])
            elif event.get("event") == "exited":
                del self.running[run.key]
                waited = event.get("waited_s")
                run.waited_s = float(waited) if isinstance(waited, (int, float)) and math.isfinite(waited) else 0.0
                results.append(self._finish(run, event.get("code"), int(event.get("maxrss_kb") or 0)))
        now = time.monotonic()
        for run in self.running.values():
            if not run.timed_out and now > run.deadline:
                run.timed_out = True
                try:
                    self.server.send({"op": "kill", "key": run.key})
                except ServerDied:
                    break
        return results

    def _finish(self, run: _Running, code: Any, maxrss_kb: int, reason: Optional[str] = None) -> Result:
        lim = self.limits
        code = int(code) if isinstance(code, int) else None
        if reason is None:
            if run.timed_out:
                reason = f"time limit {lim.timeout_s:g} s"
                if run.waited_s >= BUSY_SHARE * lim.timeout_s:  # not all of the time was the notebook's own
                    reason += (f"; it was ready to run but waited {run.waited_s:.1f} s of it for a free CPU: the "
                               f"machine was busy (with this notebook's own processes or other work), so grading it "
                               f"again with --jobs 1 may let it finish")
            elif code == SETUP_FAILED:
                reason = (f"the sandbox could not be set up "
                          f"({output_tail(run.results / OUTPUT, 1) or self.server.log_tail()})")
            elif code == RUN_FAILED:  # no output when the answers closed the grader's files (its output too)
                tail = output_tail(run.results / OUTPUT, 1) or "its answer cells closed or broke the files it writes"
                reason = f"the notebook's process failed ({tail})"
            elif code is not None and code < 0:
                try:
                    name = signal.Signals(-code).name
                except ValueError:
                    name = f"signal {-code}"
                reason = SIGNAL_REASONS.get(name, f"killed ({name})")
                if name == "SIGXFSZ":
                    reason += f" (a file over {lim.max_file_bytes // 2**20} MB)"
                if name == "SIGKILL" and maxrss_kb * 1024 > 0.9 * lim.memory_mb * 2**20:
                    reason += f", near the memory limit of {lim.memory_mb} MB"
            elif code:
                reason = f"the process exited with code {code}"
        record, previous, problem = read_records(run.results, lim.max_file_bytes)
        remove_tree(run.scratch)  # never raises: what a student's code left there costs nobody else
        remove_tree(run.results)
        if run.uid is not None and self.uids is not None:
            self.uids.give(run.uid)
        outcome = Outcome(run.key, code, reason, time.monotonic() - run.started, maxrss_kb)
        return Result(run.key, outcome, record, problem, run.copy_notes, previous=previous)

    def _server_died(self) -> List[Result]:
        """Kill what the dead server's children left running, restart the server, report those runs."""
        results = []
        for run in list(self.running.values()):
            if run.pid is not None and not self.server.bwrap:  # under bwrap the pid is the namespace's, and
                try:  # the notebooks died with their init
                    os.killpg(run.pid, signal.SIGKILL)
                except OSError:
                    pass
            del self.running[run.key]
            uid, run.uid = run.uid, None  # handed back below, once the new server has cleared it
            result = self._finish(run, None, 0, reason="the sandbox server was killed while this notebook ran")  # removes both
            result.server_died = True
            results.append((result, uid))
        self.server.close()
        self.restarts += 1
        self.server = Server(self.preload, self.limits, self.log_path, self.test_uid, bwrap=self.bwrap)
        for _, uid in results:
            if uid is not None and self.uids is not None:
                self.server.send({"op": "reap", "uid": uid})  # before any run that could get this uid
                self.uids.give(uid)
        return [result for result, _ in results]

    def close(self) -> None:
        """Stop the server (it kills the children still running) and remove the scratch copies."""
        try:
            self.server.close()
        finally:
            for run in list(self.running.values()):
                remove_tree(run.scratch)
                remove_tree(run.results)
            self.running.clear()
            if self._own_workdir:
                remove_tree(self.workdir)
            if self.uids is not None:
                self.uids.close()  # after the server: its children were killed with it


# =============================================================================================== server side
def _vm_kb() -> Tuple[int, int]:
    """(VmData, VmSize) of this process in kB."""
    data = size = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                data = int(line.split()[1])
            elif line.startswith("VmSize:"):
                size = int(line.split()[1])
    return data, size


def _not_a_module(name: str, err: Exception) -> bool:
    """True when ``name`` is no module but a name inside one that imported (``from a.b import f`` is preloaded as
    a.b and, in case f is a submodule, a.b.f): a wrong guess, nothing to report."""
    return isinstance(err, ModuleNotFoundError) and err.name == name and name.rpartition(".")[0] in sys.modules


def serve() -> None:
    """The fork server's main loop (run as ``python -c "from vit_edu.classroom.sandbox import serve; serve()"``).

    Requests (JSON lines on stdin): ``{"op": "init", "preload": [...]}`` once, then ``{"op": "run", "key": k,
    "job": {...}}`` and ``{"op": "kill", "key": k}``. Events (JSON lines on the original stdout): ``ready``,
    ``started`` (key, pid), ``exited`` (key, code, maxrss_kb). EOF on stdin: kill every child and exit.
    """
    _kernel._SERVER_TOKEN = os.urandom(6).hex()  # names the cgroups (cgroup_path); under bubblewrap every server is pid 2
    reply_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # a stray print never mixes into the replies
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the grader decides when to stop
    try:
        _libc().prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of the children are reaped here
    except Exception:  # noqa: BLE001 - not Linux: orphans go to init as usual
        pass

    def reply(message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(reply_fd, data):]

    buf = b""
    children: Dict[int, Tuple[str, Optional[int], Optional[int]]] = {}  # pid -> (key, uid, gid)
    waited: Dict[int, float] = {}  # pid -> its run-queue wait when it was killed at its time limit
    by_key: Dict[str, int] = {}
    base_data_kb = base_vm_kb = 0
    open_stdin = True
    while open_stdin or children:
        ready, _, _ = select.select([0] if open_stdin else [], [], [], 0.02)
        if ready:
            chunk = os.read(0, 1 << 20)
            if not chunk:
                open_stdin = False
                for pid, (_, uid, gid) in list(children.items()):
                    _kill_job(pid, uid, gid)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if msg["op"] == "init":
                    for name in msg["preload"]:
                        try:
                            __import__(name)
                        except Exception as err:  # noqa: BLE001 - the child will report the import itself
                            if _not_a_module(name, err):
                                continue
                            print(f"sandbox server: could not preload {name}: {type(err).__name__}: {err}",
                                  file=sys.stderr, flush=True)
                    for name in _warm_up_modules():  # what torch imports lazily (sympy on a backward, ...)
                        try:
                            __import__(name)
                        except Exception:  # noqa: BLE001 - a module that only imports in some contexts
                            pass
                    base_data_kb, base_vm_kb = _vm_kb()
                    uid_problem, isolation = (_try_uid(msg["test_uid"]) if msg.get("test_uid") is not None
                                              else ("", "not root"))
                    reply({"event": "ready", "pid": os.getpid(), "data_kb": base_data_kb, "vm_kb": base_vm_kb,
                           "uid_problem": uid_problem, "isolation_problem": isolation})
                elif msg["op"] == "run":
                    job = msg["job"]
                    job["base_data_kb"], job["base_vm_kb"] = base_data_kb, base_vm_kb
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:  # the child: never returns
                        _child(job, close=[0, reply_fd])
                    children[pid] = (msg["key"], job.get("uid"), job.get("gid"))
                    by_key[msg["key"]] = pid
                    reply({"event": "started", "key": msg["key"], "pid": pid})
                elif msg["op"] == "kill":
                    pid = by_key.get(msg["key"])
                    if pid in children:
                        wait = _waited_s(pid)  # before the kill: how much of its time went to waiting for a CPU
                        if wait is not None:
                            waited[pid] = wait
                        _kill_job(pid, children[pid][1], children[pid][2])
                elif msg["op"] == "reap":  # the uid of a run whose server died: kill what is left of it
                    _kill_job(None, int(msg["uid"]), int(msg["uid"]))
        while children:
            try:  # WNOWAIT: the ended child stays a zombie, so its pid (= its group) cannot be reused yet
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            if info is None or info.si_pid == 0:
                break
            pid = info.si_pid
            ended = children.pop(pid, None)  # None: an orphan of a child, reaped here (subreaper)
            if ended is not None:
                by_key.pop(ended[0], None)
                _kill_job(pid, ended[1], ended[2])  # whatever the child left running, before its uid is reused
            _, status, usage = os.wait4(pid, 0)
            if ended is not None:
                for path in cgroup_paths(pid):
                    remove_cgroup(path)
            if ended is not None:
                reply({"event": "exited", "key": ended[0], "code": os.waitstatus_to_exitcode(status),
                       "maxrss_kb": int(usage.ru_maxrss), "waited_s": waited.pop(pid, None)})


