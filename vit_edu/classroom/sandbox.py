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

Isolation of one child (:func:`_child`):

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
* its working directory is a fresh copy of the student's folder (mode 700, owned by its uid; with namespaces,
  in a tmpfs of its own capped at ``disk_mb`` beyond the copy and ``files`` entries); HOME, TMPDIR and
  VIT_EDU_FIGURES point there; the environment is emptied of the grader's variables;
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

import ctypes
import io
import json
import math
import os
import pwd
import select
import shutil
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

JOB = ".vit_edu_job.json"  # the cells to run, written by the grader into the scratch copy, read by the child
OBSERVATIONS = ".vit_edu_observations.pt"  # + ".0", ".1": the child's record, in the run's results folder
OUTPUT = ".vit_edu_output.txt"  # the child's stdout + stderr, in the run's results folder
RESERVED_PREFIX = ".vit_edu_"  # the scratch copy's names the grader uses; a submission's own are not copied
SETUP_FAILED = 71  # the child's exit code when the sandbox itself could not be set up (no student code ran)
RUN_FAILED = 72  # ... when recording failed after the student's code ran (e.g. it made its folder read-only)
UID_BASE = 61000  # first uid tried for the sandboxes (uids without a passwd entry and without processes)
# Preloaded in the server besides torch, vit_edu.checks and the reference's setup imports: after the uid
# change a module whose files the sandbox user cannot read (a Python installed under /root) cannot be imported.
COMMON_MODULES = (
    "math", "random", "itertools", "functools", "collections", "collections.abc", "typing", "dataclasses",
    "copy", "time", "re", "json", "string", "statistics", "operator", "contextlib", "abc", "enum",
    "textwrap", "warnings", "numbers", "fractions", "decimal", "heapq", "bisect", "pprint", "inspect",
    "traceback", "csv", "pathlib", "datetime", "array", "struct", "hashlib", "types", "weakref", "cmath",
    "timeit", "logging", "threading", "queue", "unicodedata", "glob",
    "numpy", "einops", "torch", "torch.nn", "torch.nn.functional", "vit_edu", "vit_edu.checks",
    "torch.fx.experimental.symbolic_shapes",  # imported by the first backward with explicit gradients
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
class UidPool:
    """Unused uids for the sandboxes: one per running notebook, handed back when its processes are gone.

    A uid is usable when no passwd entry names it, no process runs with it (so ``kill(-1)`` as that uid can
    only hit processes of the sandbox), and no other grader on this machine holds it: each uid of the pool is
    reserved with a lock file (``flock``, freed by the system however the grader ends), so two graders never
    share a uid and never kill each other's children."""

    def __init__(self, size: int, base: int = UID_BASE):
        busy = _uids_in_use()
        self.free: List[int] = []
        self._locks: Dict[int, int] = {}
        folder = _lock_folder()
        uid = base
        while len(self.free) < size and uid < 65534:
            try:
                pwd.getpwuid(uid)
            except KeyError:
                if uid not in busy and self._reserve(folder, uid):
                    self.free.append(uid)
            uid += 1
        if len(self.free) < size:
            self.close()
            raise SandboxError(f"found only {len(self.free)} unused uids from {base} to 65533 for the sandboxes")

    def _reserve(self, folder: str, uid: int) -> bool:
        import fcntl

        fd = os.open(os.path.join(folder, f"vit_edu_sandbox_uid_{uid}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another grader has it
            os.close(fd)
            return False
        self._locks[uid] = fd
        return True

    def take(self) -> int:
        return self.free.pop(0)

    def give(self, uid: int) -> None:
        self.free.append(uid)

    def close(self) -> None:
        """Free the uids for other graders."""
        for fd in self._locks.values():
            os.close(fd)
        self._locks.clear()


def _lock_folder() -> str:
    """Where the uid reservations live: /run/lock where writable (the system's place for lock files), else /tmp."""
    for folder in ("/run/lock", tempfile.gettempdir()):
        if os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
            return folder
    raise SandboxError("no writable folder for the sandbox uid reservations (/run/lock or the temporary folder)")


def _uids_in_use() -> set:
    uids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                uids.add(os.stat(f"/proc/{entry}").st_uid)
            except OSError:
                continue
    return uids


def copy_folder(src: Path, dst: Path, max_bytes: int = 200 * 1024 * 1024) -> List[str]:
    """Copy the regular files and folders of ``src`` into the new folder ``dst``; returns notes on what was left
    out: links and special files (a FIFO would block the copy; a link could point anywhere), and everything
    past ``max_bytes`` in all."""
    notes: List[str] = []
    total = 0
    dst.mkdir(mode=0o700)
    for root, dirs, files in os.walk(src, followlinks=False):
        rel = Path(root).relative_to(src)
        for d in list(dirs):
            st = os.lstat(Path(root) / d)
            if rel == Path(".") and d.startswith(RESERVED_PREFIX):
                dirs.remove(d)
                notes.append(f"{d}: a name the grader keeps for itself, not copied")
            elif stat.S_ISDIR(st.st_mode) and not d.startswith(".ipynb_checkpoints"):
                try:
                    (dst / rel / d).mkdir(mode=0o700)
                except OSError as err:  # e.g. a path that fits the submission but not the longer scratch path
                    dirs.remove(d)
                    notes.append(f"{rel / d}: not copied ({err.strerror})")
            else:
                dirs.remove(d)
                if not stat.S_ISDIR(st.st_mode):
                    notes.append(f"{rel / d}: a link, not copied")
        for name in files:
            path = Path(root) / name
            if rel == Path(".") and name.startswith(RESERVED_PREFIX):
                notes.append(f"{name}: a name the grader keeps for itself, not copied")
                continue
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                notes.append(f"{rel / name}: not a regular file, not copied")
                continue
            if total + st.st_size > max_bytes:
                notes.append(f"{rel / name}: not copied (the folder is over {max_bytes // 2**20} MB)")
                continue
            total += st.st_size
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                with os.fdopen(fd, "rb") as fin, open(dst / rel / name, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            except OSError as err:
                notes.append(f"{rel / name}: not copied ({err.strerror})")
    return notes


def chown_tree(path: Path, uid: int, gid: int) -> None:
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
    os.chown(path, uid, gid)


def read_untrusted(path: Path, max_bytes: int) -> Tuple[Optional[bytes], str]:
    """(content, "") of a file the student's code could have replaced, or (None, why not): no link, no FIFO,
    nothing bigger than ``max_bytes``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
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


def read_record(results: Path, max_bytes: int) -> Tuple[Any, str]:
    """(the child's latest complete record or None, why not): it writes two slots in turn, so a kill in the
    middle of one write leaves the other, one probe older."""
    best, problem = None, "no record written"
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
        if best is None or (isinstance(seq, int) and seq > best.get("seq", -1)):
            best = record
    return best, ("" if best is not None else problem)


def _tree_size(path: Path) -> Tuple[int, int]:
    """(bytes, entries) of a folder: the scratch copy's share of the notebook's disk and file limits."""
    size = count = 0
    for root, dirs, files in os.walk(path):
        count += len(dirs) + len(files)
        for name in files:
            try:
                size += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return size, count


def output_tail(path: Path, lines: int = 3, max_bytes: int = 4096) -> str:
    """The last lines the child printed (for the reason of a crash), one line, untrusted text."""
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
    kept = [l.strip() for l in text.splitlines() if l.strip()][-lines:]
    return " | ".join(kept)


class SandboxError(RuntimeError):
    """The sandbox cannot work here (the server does not start, no free uids)."""


class ServerDied(RuntimeError):
    """The sandbox server ended (a student's code killed it, or it crashed)."""


def bwrap_command(bwrap: str) -> List[str]:
    """The server under bubblewrap (Flatpak's sandbox): a PID namespace, so that the notebooks see only each other
    in /proc, never the grader or the machine's other processes, and all of them die with the server (bwrap is
    their init); an IPC namespace; and no network. The file system stays the host's (``--dev-bind / /``): each
    notebook still makes its own view of it (:func:`_isolate`), which needs the capabilities root keeps here."""
    return [bwrap, "--dev-bind", "/", "/", "--proc", "/proc", "--unshare-pid", "--unshare-ipc", "--unshare-net",
            "--die-with-parent", "--cap-add", "ALL", "--"]


class Server:
    """The grader's end of the fork server: start it, ask for runs and kills, read what happened."""

    def __init__(self, preload: Sequence[str], limits: Limits, log_path: Path, test_uid: Optional[int] = None,
                 start_timeout_s: float = 300.0, bwrap: Optional[str] = None):
        env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
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
        return output_tail(self.log_path, lines=3) or f"see {self.log_path}"

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
        self.isolation = ("uid of its own, its own mount and IPC namespaces (private /tmp, /dev/shm; the "
                          "submissions, the reference and the grades out of its sight)"
                          + (" and a memory cgroup for all its processes" if self.memory_cgroup else "")
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
        notes = copy_folder(student_dir, scratch)
        copied_bytes, copied_files = _tree_size(scratch)
        lim = self.limits
        # The cells go through a file, not through the server: whatever passes through the server's memory
        # would be inherited by the next children, and a student's code could look for other students' answers.
        with open(scratch / JOB, "w", encoding="utf-8") as f:
            json.dump({"steps": steps, "seed": int(seed), "cell_timeout_s": lim.cell_timeout_s}, f)
        uid = self.uids.take() if self.uids is not None else None
        if uid is not None:
            chown_tree(scratch, uid, uid)
        job = {"isolate": self.isolate, "memory_cgroup": self.memory_cgroup, "scratch": str(scratch), "uid": uid, "gid": uid, "hide": self.hide,
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
            elif code == SETUP_FAILED:
                reason = (f"the sandbox could not be set up "
                          f"({output_tail(run.results / OUTPUT, 1) or self.server.log_tail()})")
            elif code == RUN_FAILED:
                reason = f"the notebook's process failed ({output_tail(run.results / OUTPUT, 1)})"
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
        record, problem = read_record(run.results, lim.max_file_bytes)
        shutil.rmtree(run.scratch, ignore_errors=True)
        shutil.rmtree(run.results, ignore_errors=True)
        if run.uid is not None and self.uids is not None:
            self.uids.give(run.uid)
        outcome = Outcome(run.key, code, reason, time.monotonic() - run.started, maxrss_kb)
        return Result(run.key, outcome, record, problem, run.copy_notes)

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
                shutil.rmtree(run.scratch, ignore_errors=True)
                shutil.rmtree(run.results, ignore_errors=True)
            self.running.clear()
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            if self.uids is not None:
                self.uids.close()  # after the server: its children were killed with it


def _bubblewrap() -> Tuple[Optional[str], str]:
    """(the bwrap executable to run the server under, or None; a note when it is not used)."""
    if os.environ.get("VIT_EDU_NO_BWRAP"):
        return None, "bubblewrap switched off (VIT_EDU_NO_BWRAP)"
    path = shutil.which("bwrap")
    if path is None:
        return None, "no bubblewrap on this machine (apt-get install bubblewrap adds a PID namespace)"
    return path, ""


# =============================================================================================== server side
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


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


def serve() -> None:
    """The fork server's main loop (run as ``python -c "from vit_edu.classroom.sandbox import serve; serve()"``).

    Requests (JSON lines on stdin): ``{"op": "init", "preload": [...]}`` once, then ``{"op": "run", "key": k,
    "job": {...}}`` and ``{"op": "kill", "key": k}``. Events (JSON lines on the original stdout): ``ready``,
    ``started`` (key, pid), ``exited`` (key, code, maxrss_kb). EOF on stdin: kill every child and exit.
    """
    global _SERVER_TOKEN
    _SERVER_TOKEN = os.urandom(6).hex()
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
                remove_cgroup(cgroup_path(pid))
            if ended is not None:
                reply({"event": "exited", "key": ended[0], "code": os.waitstatus_to_exitcode(status),
                       "maxrss_kb": int(usage.ru_maxrss)})


def _try_uid(uid: int) -> Tuple[str, str]:
    """("" or why a forked child cannot lock itself down as ``uid``, "" or why it gets no namespaces of its own)
    (see :func:`_drop_privileges`)."""
    r, w = os.pipe()
    scratch = tempfile.mkdtemp(prefix="vit_edu_try_")
    pid = os.fork()
    if pid == 0:
        report = {"problem": "", "isolation": ""}
        try:
            os.close(r)
            job = {"uid": uid, "gid": uid, "scratch": scratch, "expose": needed_paths()}
            try:
                _drop_privileges(job)
                report["isolation"] = job.get("isolation", "")
            except OSError as err:  # the namespaces half-worked: the notebooks run without them
                report["isolation"] = _error_text(err)[:500]
                pid2 = os.fork()  # and the uid alone is tried in a fresh child
                if pid2 == 0:
                    try:
                        _drop_privileges({"uid": uid, "gid": uid, "isolate": False})
                        os._exit(0)
                    except BaseException:  # noqa: BLE001
                        os._exit(1)
                if os.waitpid(pid2, 0)[1] != 0:
                    report["problem"] = "the uid change failed"
        except BaseException as err:  # noqa: BLE001 - reported to the grader
            report["problem"] = _error_text(err)[:500]
        finally:
            os.write(w, json.dumps(report).encode())
            os._exit(0)
    os.close(w)
    text = os.read(r, 4000).decode("utf-8", "replace")
    os.close(r)
    os.waitpid(pid, 0)
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        report = json.loads(text)
    except ValueError:
        return f"the test child said nothing readable: {text[:200]!r}", ""
    return report.get("problem", ""), report.get("isolation", "")


def _warm_up_modules() -> List[str]:
    """The modules a forked child imports while doing what probes do (forward, backward with gradients,
    optimizer steps, torch.save): the server then imports them itself, so that a sandboxed child (which may
    not be able to read the Python installation) finds them loaded. The torch work runs in the forked
    child only: the server itself never runs a torch operation."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _workout()
            data = json.dumps(sorted(sys.modules)).encode()
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    try:
        names = json.loads(b"".join(chunks))
    except ValueError:
        return []
    return [n for n in names if isinstance(n, str) and n not in sys.modules]


def _workout() -> None:
    """Typical probe work on tiny tensors (see :func:`_warm_up_modules`)."""
    import torch
    import torch.nn.functional as F
    from einops import rearrange, reduce, repeat
    from torch import nn

    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(2, 3, 8, 8, requires_grad=True)
        conv, lin, norm, drop = nn.Conv2d(3, 4, 4, stride=4), nn.Linear(4, 4), nn.LayerNorm(4), nn.Dropout(0.1)
        t = drop(F.gelu(lin(norm(rearrange(conv(x), "b d h w -> b (h w) d")))))
        a = (t @ t.transpose(-2, -1) / 2).softmax(-1) @ t
        a = a + F.scaled_dot_product_attention(t[:, None], t[:, None], t[:, None])[:, 0]
        a = a + repeat(reduce(a, "b n d -> b d", "mean"), "b d -> b n d", n=a.shape[1])
        logits = reduce(a, "b n d -> b d", "mean")
        loss = F.cross_entropy(logits, torch.tensor([0, 1])) + F.mse_loss(logits, torch.zeros_like(logits))
        grads = torch.autograd.grad([loss], [x], [torch.ones_like(loss)], retain_graph=True, allow_unused=True)
        torch.autograd.backward([loss], [torch.ones_like(loss)])
        for opt in (torch.optim.AdamW(conv.parameters(), lr=1e-3), torch.optim.SGD(lin.parameters(), lr=0.1)):
            torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            torch.allclose(t, t)
            torch.testing.assert_close(t.double(), t.double())
            t.float().numpy()
        buf = io.BytesIO()
        torch.save({"t": t.detach(), "g": grads[0]}, buf)
        buf.seek(0)
        torch.load(buf, weights_only=True)


def _live_processes_of(uid: int) -> List[int]:
    """Pids of the processes of ``uid`` that are not zombies (dead, waiting to be reaped), except this one."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            found.append(int(entry))
    return found


TEMP_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm")


def _temp_entries_of(uid: int) -> List[os.DirEntry]:
    """What ``uid`` left at the top of the shared temporary folders."""
    found = []
    for folder in TEMP_FOLDERS:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    found.append(entry)
            except OSError:
                continue
    return found


def _kill_job(pid: Optional[int], uid: Optional[int], gid: Optional[int]) -> None:
    """Kill a child's process group, and (root) every process of its uid and the uid's temporary files."""
    if pid is not None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    if uid is None or not (_live_processes_of(uid) or _temp_entries_of(uid)):
        return  # the usual case: nothing left, no helper process needed
    helper = os.fork()
    if helper == 0:
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            for _ in range(100):  # kill(-1): every process this uid may signal, i.e. the sandbox's
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    break
                if not _live_processes_of(uid):  # (kill(-1) fails only when no other process exists at all)
                    break
                time.sleep(0.002)
            for entry in _temp_entries_of(uid):
                try:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)
                except OSError:
                    continue
        finally:
            os._exit(0)
    os.waitpid(helper, 0)


class CellTimeLimit(BaseException):
    """Raised in the student's code when a cell or a check runs past the soft per-cell limit (a BaseException:
    ``except Exception`` in the student's code does not swallow it)."""


class _CappedText(io.TextIOBase):
    """sys.stdout / sys.stderr of the child: the first ``limit`` bytes reach the output file, the rest is
    dropped (so a long print loop costs nothing but the time it takes)."""

    def __init__(self, fd: int, budget: List[int]):
        self.fd, self.budget = fd, budget

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        data = str(text).encode("utf-8", "replace")
        if self.budget[0] > 0:
            part = data[: self.budget[0]]
            self.budget[0] -= len(part)
            os.write(self.fd, part)
            if self.budget[0] <= 0:
                os.write(self.fd, b"\n[output truncated]\n")
        return len(text)

    def flush(self) -> None:
        pass


def one_line(text: Any, limit: int = 300) -> str:
    """``text`` on one line (its lines joined with " | "), cut to ``limit`` characters."""
    text = " | ".join(l.strip() for l in str(text).splitlines() if l.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_text(e: BaseException) -> str:
    try:
        message = str(e)
    except Exception:  # noqa: BLE001 - a broken __str__
        message = ""
    return one_line(f"{type(e).__name__}: {message}" if message else type(e).__name__)


def _without_magics(source: str) -> str:
    """IPython magics and shell escapes (``%matplotlib``, ``!pip``) are skipped: no IPython runs here."""
    lines = []
    for line in source.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            line = line[: len(line) - len(stripped)] + "pass  # " + stripped
        lines.append(line)
    return "\n".join(lines)


def _set_limits(job: dict) -> None:
    import resource

    extra = int(job["memory_mb"]) * 1024 * 1024
    for name, value in (("RLIMIT_DATA", job["base_data_kb"] * 1024 + extra),
                        ("RLIMIT_AS", job["base_vm_kb"] * 1024 + extra + (512 << 20)),
                        ("RLIMIT_FSIZE", int(job["max_file_bytes"])),
                        ("RLIMIT_CORE", 0),
                        ("RLIMIT_NOFILE", int(job["open_files"]))):
        resource.setrlimit(getattr(resource, name), (value, value))
    cpu = int(job["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    if job.get("uid") is not None:
        n = int(job["processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))


CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWNET = 0x00020000, 0x08000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 1 << 14, 1 << 18
NEVER_HIDDEN = {"/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/proc",
                "/root", "/run", "/sbin", "/srv", "/sys", "/usr", "/var", "/home", "/mnt", "/media", "/snap"}
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # a fresh, empty one per notebook
WORK = "/tmp/vit_edu_work"  # where the scratch copy appears inside the notebook's own view of the files
RECORD_FDS = (3, 4)  # the child's two record slots (files in the results folder, opened before the uid change)


def needed_paths(resolve: bool = True) -> List[str]:
    """The folders a notebook's imports read: the Python installation (stdlib, site-packages) and vit_edu
    (``resolve``: with symbolic links resolved; else as Python names them)."""
    import sysconfig

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(__file__).resolve().parents[1])}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            paths.add(sysconfig.get_paths()[key])
        except KeyError:
            pass
    return sorted((os.path.realpath(p) if resolve else os.path.normpath(p)) for p in paths if p and os.path.isdir(p))


def _mount(libc: Any, source: Optional[str], target: str, fstype: Optional[str], flags: int,
           data: Optional[str]) -> None:
    enc = lambda x: None if x is None else os.fsencode(x)  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or source} on {target}: {os.strerror(err)}")


def _isolate(job: dict) -> str:
    """As root, before dropping to the sandbox uid: a mount and IPC namespace of the notebook's own.

    Inside it ``job["hide"]`` (the submissions, the reference, the grades, the teacher's folder, the package's
    source checkout) are covered by empty read-only folders, /tmp, /var/tmp, /dev/shm and /run/lock are fresh
    private tmpfs, and ``job["expose"]`` (the Python installation, the package) are bound back where a cover
    hid them. The scratch copy is bound at WORK and ``job["scratch"]`` points there. The namespaces, their
    tmpfs, SysV shared memory and message queues die with the notebook's last process. Returns "" or why the
    kernel refused (then the uid alone isolates, as before)."""
    libc = _libc()
    if libc.unshare(CLONE_NEWNS | CLONE_NEWIPC) != 0:
        return f"unshare: {os.strerror(ctypes.get_errno())}"
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE, None)
    keep = {}  # expose path -> fd opened before anything is covered
    for path in job.get("expose", []):
        if os.path.isdir(path):
            keep[os.path.realpath(path)] = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    scratch_fd = os.open(job["scratch"], os.O_RDONLY | os.O_DIRECTORY)
    covers = sorted({os.path.realpath(h) for h in job.get("hide", [])} | set(PRIVATE_TMP), key=len)
    covered: List[str] = []
    for target in covers:
        if target in NEVER_HIDDEN or any(target == k or target.startswith(k + "/") for k in keep):
            continue  # a system folder, or inside the Python installation or the package: needed by imports
        if not os.path.isdir(target) or any(target.startswith(c + "/") for c in covered):
            continue  # missing, or already under a cover
        private = target in PRIVATE_TMP
        _mount(libc, "tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={int(job.get('tmp_bytes', 64 << 20)) if private else 65536},"
               f"nr_inodes={int(job.get('inodes', 20_000)) if private else 64},mode={'1777' if private else '0755'}")
        covered.append(target)
        for path, fd in keep.items():  # what the cover hid but the notebook needs: bound back, read-only
            if path.startswith(target + "/"):
                os.makedirs(path, exist_ok=True)
                _mount(libc, f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
                _mount(libc, None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)
    os.makedirs(WORK, exist_ok=True)  # the folder: a tmpfs of its own (disk and file count capped), holding a copy
    _mount(libc, "tmpfs", WORK, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={int(job.get('disk_bytes', 64 << 20))},nr_inodes={int(job.get('inodes', 20_000))},mode=0700")
    shutil.copytree(f"/proc/self/fd/{scratch_fd}", WORK, symlinks=True, dirs_exist_ok=True)
    if job.get("uid") is not None:
        chown_tree(Path(WORK), int(job["uid"]), int(job["gid"]))
    for fd in [scratch_fd, *keep.values()]:
        os.close(fd)
    for target in covered:  # the covers themselves become read-only (the private tmp folders stay writable)
        if target not in PRIVATE_TMP:
            _mount(libc, None, target, None, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_RDONLY, None)
    job["scratch"] = WORK
    os.chdir(WORK)
    return ""


def _memory_cgroup_root() -> Optional[str]:
    """The folder under which a notebook's memory cgroup can be made (cgroup v2, else v1's memory controller),
    or None where this process may not (not root, or read-only in this container)."""
    for base, probe in (("/sys/fs/cgroup", "cgroup.controllers"), ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")):
        if os.path.isfile(os.path.join(base, probe)) and os.access(base, os.W_OK):
            if base == "/sys/fs/cgroup":
                try:
                    with open(os.path.join(base, probe)) as f:
                        if "memory" not in f.read().split():
                            continue
                except OSError:
                    continue
            return base
    return None


_SERVER_TOKEN = str(os.getpid())  # replaced by a random one in serve(): under bubblewrap every server is pid 2


def cgroup_path(child_pid: int) -> Optional[str]:
    base = _memory_cgroup_root()
    return None if base is None else os.path.join(base, f"vit_edu_{_SERVER_TOKEN}_{child_pid}")


def _join_memory_cgroup(job: dict) -> str:
    """Put this child (and all it will start) in a memory cgroup of its own: the notebook's processes, its
    private /tmp and /dev/shm together get ``memory_mb`` above what the server already holds. "" or why not."""
    path = cgroup_path(os.getpid())
    if path is None:
        return "no writable memory cgroup"
    limit = int(job["memory_mb"]) * 1024 * 1024 + (256 << 20)  # + room for what the child copies on write
    try:
        os.mkdir(path)
        v2 = os.path.isfile(os.path.join(path, "memory.max"))
        with open(os.path.join(path, "memory.max" if v2 else "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
        if not v2:  # swap counted too where the kernel accounts it
            try:
                with open(os.path.join(path, "memory.memsw.limit_in_bytes"), "w") as f:
                    f.write(str(limit))
            except OSError:
                pass
        else:
            try:
                with open(os.path.join(path, "memory.swap.max"), "w") as f:
                    f.write("0")
            except OSError:
                pass
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    except OSError as err:
        return f"memory cgroup: {err.strerror}"
    return ""


def remove_cgroup(path: Optional[str]) -> None:
    """Remove a notebook's cgroup once its processes are gone (a few tries: the kernel empties it lazily)."""
    if path is None or not os.path.isdir(path):
        return
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(0.01)


def _drop_privileges(job: dict) -> None:
    libc = _libc()
    if job.get("uid") is None:
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        return
    job["isolation"] = _isolate(job) if job.get("isolate", True) else "switched off"
    if job.get("memory_cgroup"):
        job["cgroup"] = _join_memory_cgroup(job)
    libc.unshare(CLONE_NEWNET)  # no network (best effort; refused in some containers)
    if libc.prctl(38, 1, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_NO_NEW_PRIVS) failed")
    uid, gid = int(job["uid"]), int(job["gid"])
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid or os.getegid() != gid:
        raise OSError("the uid change did not take")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise OSError("the sandbox could become root again")


def _child(job: dict, close: Sequence[int]) -> None:
    """Forked by the server: lock down, run the cells and the probes, write the observations, exit."""
    try:
        os.setsid()
        for fd in close:
            os.close(fd)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGXFSZ, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        _set_limits(job)
        scratch = job["scratch"]
        os.chdir(scratch)
        fd = os.open(JOB, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, encoding="utf-8") as f:
            job.update(json.load(f))
        os.unlink(JOB)
        allowed = [os.path.realpath(job["scratch"]), *needed_paths(), *needed_paths(resolve=False)]
        import fcntl

        def opened(name: str) -> int:  # in the results folder, which the sandbox uid cannot open: kept as fds
            fd = os.open(os.path.join(job["results"], name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                         0o600)
            return fcntl.fcntl(fd, fcntl.F_DUPFD, 10)  # above fd 2 (fd 0 is free here: dup2-ing over it loses it)

        out, slots = opened(OUTPUT), [opened(f"{OBSERVATIONS}.0"), opened(f"{OBSERVATIONS}.1")]
        _drop_privileges(job)
        scratch = job["scratch"]  # WORK when the notebook has its own view of the files
        os.umask(0o077)
        null = fcntl.fcntl(os.open(os.devnull, os.O_RDONLY), fcntl.F_DUPFD, 10)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.dup2(slots[0], RECORD_FDS[0])
        os.dup2(slots[1], RECORD_FDS[1])
        os.closerange(RECORD_FDS[1] + 1, 1 << 16)
        os.environ.clear()
        os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch,
                           "VIT_EDU_FIGURES": scratch, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
                           "LANG": "C.UTF-8"})
        tempfile.tempdir = scratch
        budget = [int(job["max_output_bytes"])]
        sys.stdout = sys.__stdout__ = _CappedText(1, budget)  # type: ignore[misc]
        sys.stderr = sys.__stderr__ = _CappedText(2, budget)  # type: ignore[misc]
        sys.stdin = sys.__stdin__ = open(os.devnull)  # type: ignore[misc]

        import torch

        torch.set_num_threads(1)
        from vit_edu import checks

        probe, save = checks.probe, torch.save  # taken before any student code can replace them
        from . import watch

        outside: List[str] = []
        watches = {"integrity": watch.Integrity(), "outside": outside,
                   "package": {n: watch.implementation_codes(watch.PACKAGE.get(n, ())) for n in checks.CHECKS}}
        watch.watch_files([scratch, *allowed], outside)
    except BaseException as err:  # noqa: BLE001 - the sandbox could not be set up: say why, run nothing
        try:
            os.write(2, f"sandbox setup failed: {_error_text(err)}\n".encode())
        finally:
            os._exit(SETUP_FAILED)
    try:
        code = _run(job, probe, save, watches)
    except BaseException as err:  # noqa: BLE001 - e.g. the student's code made its folder unwritable
        code = RUN_FAILED
        try:
            os.write(2, f"\nthe grading step failed: {_error_text(err)}\n".encode())
        except OSError:
            pass
    finally:
        os._exit(code)


def _run(job: dict, probe: Any, save: Any, watches: Dict[str, Any]) -> int:
    """Run the steps of the reference in order: setup cells (the reference's), answer cells (the student's),
    and at each check cell the probe of that exercise. The observations are saved after every probe, so a
    notebook killed later keeps what was observed before. ``watches`` (:mod:`.watch`): a probe that would
    run code the answers replaced is not recorded; files outside the folder and calls of the package's own
    implementation are noted for the teacher."""
    import builtins

    from .watch import package_calls

    cell_timeout = job.get("cell_timeout_s")

    def on_alarm(signum: int, frame: Any) -> None:
        raise CellTimeLimit(f"over the time limit of {cell_timeout:g} s per cell")

    signal.signal(signal.SIGALRM, on_alarm)

    def timed(fn: Any, *args: Any) -> Any:
        if cell_timeout:
            signal.setitimer(signal.ITIMER_REAL, float(cell_timeout))
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    namespace: Dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins, "display": print}
    record: Dict[str, Any] = {"format": 1, "cells": [], "exercises": {}, "missing": {}, "stopped": None,
                              "running": None, "outside": watches["outside"], "package": {}, "replaced": [],
                              "unwatched": []}
    integrity = watches["integrity"]

    def replaced(name: str) -> bool:
        changed = integrity.changed()
        if changed:
            record["replaced"] = sorted(set(record["replaced"]) | set(changed))
            record["missing"][name] = (f"not graded: the answer cells replaced {', '.join(changed)}, which the "
                                       f"check itself runs")
        return bool(changed)

    record["seq"] = 0

    def flush() -> None:  # two slots in turn: a kill during one write leaves the other complete
        record["seq"] += 1
        buffer = io.BytesIO()
        save(record, buffer)
        data, fd = buffer.getvalue(), RECORD_FDS[record["seq"] % 2]
        os.ftruncate(fd, 0)
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], done)

    for step in job["steps"]:
        kind = step["kind"]
        record["running"] = step["label"]
        flush()  # a notebook killed in this step says where
        if kind in ("setup", "answer"):
            if record["stopped"]:
                record["cells"].append({"label": step["label"], "error": None, "ran": False})
                continue
            error = None
            try:
                code = compile(_without_magics(step["source"]), f"<{step['label']}>", "exec")
                timed(exec, code, namespace)
            except (SystemExit, KeyboardInterrupt) as e:
                error = _error_text(e)
                record["stopped"] = f"{step['label']} raised {type(e).__name__} (the notebook stops there)"
            except BaseException as e:  # noqa: BLE001 - the student's error, as in a notebook: go on
                error = _error_text(e)
            record["cells"].append({"label": step["label"], "error": error, "ran": True})
        elif kind == "check":
            name = step["name"]
            try:
                obj = timed(eval, compile(step["expr"], f"<check {name}>", "eval"), namespace)
            except BaseException as e:  # noqa: BLE001 - e.g. NameError: the answer never defined it
                record["missing"][name] = _error_text(e)
                continue
            if replaced(name):
                continue
            calls: Dict[str, Any] = {"calls": [], "unwatched": False}
            try:
                with package_calls(watches["package"].get(step["check"], {})) as calls:
                    observations = timed(probe, step["check"], obj, int(job["seed"]))
                if replaced(name):
                    continue
                record["exercises"][name] = _plain(observations)
            except BaseException as e:  # noqa: BLE001 - the student's code broke the probe itself
                record["missing"][name] = f"the check could not run: {_error_text(e)}"
            if calls["calls"]:
                record["package"][name] = list(calls["calls"])
            if calls["unwatched"]:
                record["unwatched"].append(name)
    record["running"] = None
    flush()
    return 0


def _plain(x: Any, depth: int = 0) -> Any:
    """Observations reduced to what ``torch.load(weights_only=True)`` reads back (the probe records plain data
    already; this only guards against a student's object slipping through)."""
    import torch

    if depth > 30:
        return {"kind": "other", "type": "too deep"}
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.layout != torch.strided:
            return {"kind": "other", "type": f"{t.layout} tensor"}
        if type(t) is not torch.Tensor:  # a student's Tensor subclass: keep the numbers only
            t = torch.Tensor.as_subclass(t, torch.Tensor)
        return t.cpu().clone().contiguous()
    if type(x) in (str, int, float, bool) or x is None:
        return x
    if isinstance(x, (torch.dtype, torch.Size)):
        return x
    if type(x) is dict:
        return {k if type(k) in (str, int) else str(k): _plain(v, depth + 1) for k, v in x.items()}
    if type(x) in (list, tuple):
        return type(x)(_plain(v, depth + 1) for v in x)
    return {"kind": "other", "type": type(x).__name__}
