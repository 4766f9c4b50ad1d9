"""The sandbox's forked children (:mod:`.sandbox`): what runs in them, never in the grader.

* :func:`_child`: one notebook. It locks itself down (:mod:`.isolation`), reads the job from its scratch
  copy, sets up the watches of :mod:`.watch`, then :func:`_run` runs the reference's setup cells, the
  student's answer cells and at each check cell the probe, writing the record after every probe into two
  slots in turn (:data:`RECORD_FDS`);
* :func:`_try_uid`: a throw-away child that tells the server at start-up whether the uid change and the
  namespaces work here;
* :func:`_warm_up_modules`: a throw-away child that does typical probe work, so that the server imports what
  torch imports lazily (see :mod:`.sandbox`).
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import signal
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .isolation import _drop_privileges, _libc, _set_limits, needed_paths, remove_tree
from .isolation import _kill_job as _kernel_kill_job

JOB = ".vit_edu_job.json"  # the cells to run, written by the grader into the scratch copy, read by the child
OBSERVATIONS = ".vit_edu_observations.pt"  # + ".0", ".1": the child's record, in the run's results folder
OUTPUT = ".vit_edu_output.txt"  # the child's stdout + stderr, in the run's results folder
SETUP_FAILED = 71  # the child's exit code when the sandbox itself could not be set up (no student code ran)
RUN_FAILED = 72  # ... when recording failed after the student's code ran (e.g. it made its folder read-only)


RECORD_FDS = (3, 4)  # the child's two record slots (files in the results folder, opened before the uid change)


# What the fork server is started with of the grader's environment. A child is a fork of the server: its memory
# holds the server's environment block as the kernel wrote it at exec (os.environ.clear() in the child forgets the
# names, not those bytes), so a student's code reading its own stack would find a teacher's API tokens there.
SERVER_ENVIRONMENT = {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "PYTHONHOME",
                      "PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONUSERBASE", "VIRTUAL_ENV", "CONDA_PREFIX",
                      "MPLCONFIGDIR"}
SERVER_ENVIRONMENT_PREFIXES = ("LC_", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "CUDA_", "NVIDIA_", "TORCH_", "PYTORCH_")


def server_environment(environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The grader's variables the server may have (:data:`SERVER_ENVIRONMENT`, what Python, torch and the
    numerical libraries read): an allow-list, so a token, a password or a cloud key never reaches a notebook."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k in SERVER_ENVIRONMENT or k.startswith(SERVER_ENVIRONMENT_PREFIXES)}


KEYCTL = {"x86_64": 250, "aarch64": 219, "ppc64le": 271, "s390x": 280, "riscv64": 219}  # keyctl's syscall number


def _leave_keyrings() -> None:
    """After the uid change. The kernel's keyrings are kept apart by neither uid change nor namespace: the session
    keyring the server inherited from the teacher's login (pam_keyinit's, holding Kerberos tickets, ...) is
    possessed by every fork, and a key in the sandbox uid's own keyrings outlives the notebook, for the uid's next
    notebook (another student's) to read. So: those emptied, and a fresh session keyring that dies with the
    notebook; OSError where the old one stays reachable (where keyctl is refused, as under Docker's seccomp
    profile, none is)."""
    import ctypes

    number, libc = KEYCTL.get(os.uname().machine), _libc()
    if number is None:
        return
    keyctl = lambda *args: libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))  # noqa: E731
    libc.syscall.restype = ctypes.c_long
    for ring in (-4, -5):  # KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING; 7: KEYCTL_CLEAR
        keyctl(7, ring)
    if keyctl(1, 0) < 0 and keyctl(0, -3, 0) >= 0:  # KEYCTL_JOIN_SESSION_KEYRING (unnamed); KEYCTL_GET_KEYRING_ID
        raise OSError("could not leave the grader's session keyring")


# per machine: (the kernel's AUDIT_ARCH, fallocate's syscall number); io_uring_setup is 425 on all of them
SECCOMP_ARCH = {"x86_64": (0xC000003E, 285), "aarch64": (0xC00000B7, 47), "riscv64": (0xC00000F3, 47),
                "ppc64le": (0xC0000015, 309), "s390x": (0x80000016, 314)}


def _refuse_fallocate() -> str:
    """After no_new_privs: a seccomp filter, inherited by every process the notebook starts, that refuses
    ``fallocate`` (EOPNOTSUPP: glibc's posix_fallocate then writes, within the limits) and ``io_uring_setup``
    (ENOSYS, which can fallocate too), and the syscalls of another ABI (i386, x32). RLIMIT_FSIZE does not cover
    ``fallocate(FALLOC_FL_KEEP_SIZE)``: through its output or record file, which lie on the grader's disk, a
    notebook reserved any amount of it without growing the file (tried: the disk filled, and the classmates
    graded beside and after it lost every point to "No space left on device"). "" or why not."""
    import ctypes

    if os.uname().machine not in SECCOMP_ARCH:
        return f"no seccomp filter for {os.uname().machine}"
    arch, fallocate = SECCOMP_ARCH[os.uname().machine]
    allow, errno_ = 0x7FFF0000, lambda e: 0x00050000 | e  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO
    code = [(0x20, 0, 0, 4), (0x15, 1, 0, arch), (0x06, 0, 0, errno_(38)),  # another ABI: ENOSYS
            (0x20, 0, 0, 0), (0x35, 3, 0, 0x40000000), (0x15, 3, 0, fallocate), (0x15, 1, 0, 425),  # x32, ...
            (0x06, 0, 0, allow), (0x06, 0, 0, errno_(38)), (0x06, 0, 0, errno_(95))]  # 95: EOPNOTSUPP

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    program = Program(len(code), (Filter * len(code))(*(Filter(*c) for c in code)))
    libc = _libc()
    if libc.prctl(22, 2, ctypes.byref(program), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        return f"seccomp: {os.strerror(ctypes.get_errno())}"
    return ""


def _kill_job(pid: Optional[int], uid: Optional[int], gid: Optional[int]) -> None:
    """:func:`.isolation._kill_job` (the processes a notebook left, its uid's temporary files), then its uid's SysV
    shared memory, message queues and semaphores (:func:`remove_ipc_of`)."""
    _kernel_kill_job(pid, uid, gid)
    if uid is not None:
        remove_ipc_of(uid)


def remove_ipc_of(uid: int) -> None:
    """Remove the SysV shared memory segments, message queues and semaphore sets that ``uid`` made or owns. Where a
    notebook has no IPC namespace of its own (the weaker mode; under bubblewrap, the server's for the whole run)
    they outlive it: memory that nothing frees after the grader ends (a segment written and detached, never
    removed), and the uid's next notebook (another student's) could read it."""
    libc = _libc()
    remove = {"shm": lambda i: libc.shmctl(i, 0, None), "msg": lambda i: libc.msgctl(i, 0, None),  # 0: IPC_RMID
              "sem": lambda i: libc.semctl(i, 0, 0)}
    for kind, rm in remove.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                head, *rows = [line.split() for line in f]
        except (OSError, ValueError):
            continue
        for row in rows:  # the creator counts too: IPC_SET may give the object to another uid
            if len(row) == len(head) and str(uid) in (row[head.index("uid")], row[head.index("cuid")]):
                rm(int(row[1]))


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
    remove_tree(scratch)
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
    """Typical probe work on tiny tensors, and a figure where the setup cells import pyplot (see
    :func:`_warm_up_modules`)."""
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
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:  # the setup cells import it: what a first figure imports lazily (html, ...) too
        fig, ax = plt.subplots()
        ax.plot([0, 1], label="x")
        ax.imshow(x.detach()[0, 0].numpy())
        ax.set_title("x")
        ax.legend()
        fig.savefig(io.BytesIO(), format="png")
        plt.show()
        plt.close(fig)


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


# IPython's own syntax where a statement starts: a magic or shell escape (``%timeit f()``, ``%%time``, ``!pip list``),
# its result assigned (``t = %timeit -o f()``, ``files = !ls``), or help (``patchify?``, ``??torch.cat``)
_IPYTHON_LINE = re.compile(r"[%!]|[\w.]+(?:\s*,\s*[\w.]+)*\s*=\s*[%!]|\?{1,2}[\w.]+\s*$|[\w.]+\?{1,2}\s*$")


class _NoInput(io.TextIOBase):
    """sys.stdin of the child: ``input()`` left in an answer cell fails that cell at once, saying why (in Jupyter
    it waits for the student to type; here nobody can)."""

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return 0  # /dev/null, as for a process started from the cell

    def read(self, size: Optional[int] = -1) -> str:
        raise EOFError("input() waits for someone to type, and nobody can while the notebook is graded: remove "
                       "the call from the answer cell")

    readline = read


def _without_magics(source: str) -> str:
    """IPython magics, shell escapes and help lines (:data:`_IPYTHON_LINE`) are skipped: no IPython runs here.
    Only a line that starts a statement is one (as in IPython): a cell that parses as Python runs unchanged, so
    a continuation line such as ``!= 0`` or ``% patch_size`` inside brackets stays code."""
    try:
        ast.parse(source)
        return source
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        pass
    lines = source.split("\n")
    for i, first in _magic_lines(lines):
        stripped = lines[i].lstrip()
        lines[i] = lines[i][: len(lines[i]) - len(stripped)] + ("pass  # " if first else "# ") + stripped
    return "\n".join(lines)


def _magic_lines(lines: List[str]) -> List[Tuple[int, bool]]:
    """(index, True) of each line that is a magic, shell escape or help (:data:`_IPYTHON_LINE`) where a
    statement starts (outside brackets, strings and backslash continuations); (index, False) of the lines a
    magic continues onto with a trailing backslash."""
    found: List[Tuple[int, bool]] = []
    depth, quote, continued, in_magic = 0, "", False, False
    for i, raw in enumerate(lines):
        line = raw.rstrip("\r")
        if in_magic or (not depth and not quote and not continued and _IPYTHON_LINE.match(line.lstrip())):
            found.append((i, not in_magic))
            in_magic = line.endswith("\\")
            continue
        j, comment = 0, False
        while j < len(line):
            if quote:
                if line[j] == "\\":
                    j += 2
                elif line.startswith(quote, j):
                    j, quote = j + len(quote), ""
                else:
                    j += 1
                continue
            char = line[j]
            if char == "#":
                comment = True
                break
            if char in "([{":
                depth += 1
            elif char in ")]}":
                depth = max(depth - 1, 0)
            elif char in "'\"":
                quote = line[j: j + 3] if line[j: j + 3] in ('"""', "'''") else char
                j += len(quote)
                continue
            j += 1
        ends_with_backslash = line.endswith("\\") and not comment
        if len(quote) == 1 and not ends_with_backslash:
            quote = ""  # an unclosed one-line string: a SyntaxError anyway, go on from the next line
        continued = ends_with_backslash and not quote
    return found


def _child(job: dict, close: Sequence[int]) -> None:
    """Forked by the server: lock down, run the cells and the probes, write the observations, exit."""
    out: Optional[int] = None
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
        job["seccomp"] = _refuse_fallocate()  # best effort, as the network namespace
        if job.get("uid") is not None:
            _leave_keyrings()
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
                           "LANG": "C.UTF-8", **NOTEBOOK_ENVIRONMENT})
        tempfile.tempdir = scratch
        budget = [int(job["max_output_bytes"])]
        sys.stdout = sys.__stdout__ = _CappedText(1, budget)  # type: ignore[misc]
        sys.stderr = sys.__stderr__ = _CappedText(2, budget)  # type: ignore[misc]
        sys.stdin = sys.__stdin__ = _NoInput()  # type: ignore[misc]

        import torch

        torch.set_num_threads(1)
        inductor = sys.modules.get("torch._inductor.config")  # read the environment when the server loaded it
        if inductor is not None:
            inductor.cpp_cache_precompile_headers = False
        from vit_edu import checks

        probe, save = checks.probe, torch.save  # taken before any student code can replace them
        from . import watch

        outside: List[str] = []
        watches = {"integrity": watch.Integrity(), "outside": outside,
                   "package": {n: watch.implementation_codes(ex.package) for n, ex in checks.CHECKS.items()},
                   "grader": watch.grader_functions()}
        watch.watch_files([scratch, *allowed], outside)
    except BaseException as err:  # noqa: BLE001 - the sandbox could not be set up: say why, run nothing
        try:  # into the notebook's output once it is open (the grader reads the reason there), else the server's log
            os.write(2 if out is None else out, f"sandbox setup failed: {_error_text(err)}\n".encode())
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


# What a notebook finds in its environment besides its folders. The sandbox uid has no passwd entry on purpose, so
# getpass.getuser() (torch.compile's cache folder, a student's own print) reads the name from here, as it does first;
# torch.compile's precompiled header of torch (hundreds of MB, written once to speed up later compiles) would
# exceed the limit on one file, so inductor compiles its kernels without one.
NOTEBOOK_ENVIRONMENT = {"USER": "student", "LOGNAME": "student", "TORCHINDUCTOR_CPP_CACHE_PRECOMPILE_HEADERS": "0"}


def _main_module(builtins: Any) -> Dict[str, Any]:
    """The answer cells' namespace: the dict of a module installed as ``sys.modules["__main__"]``, as IPython's
    kernel does, so that pickle finds a function or class an answer cell defines by its name (a
    ``multiprocessing.Pool`` or ``ProcessPoolExecutor`` given a function of the notebook, ``torch.save`` of a whole
    model whose class the notebook defines)."""
    import types

    main = types.ModuleType("__main__", "the notebook's answer cells")
    main.__dict__.update({"__builtins__": builtins, "display": print})
    sys.modules["__main__"] = main
    return main.__dict__


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

    namespace = _main_module(builtins)
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
                source = _without_magics(step["source"])
                code = compile(source, _register_source(source, step["label"], len(record["cells"])), "exec")
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
                with package_calls(watches["package"].get(step["check"], {}), watches["grader"]) as calls:
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


def _register_source(source: str, label: str, index: int) -> str:
    """A file name of its own for one executed cell (``<answer cell patchify_answer #3>``), with the cell's source
    put in :mod:`linecache` under it, as IPython does: ``inspect.getsource``, ``@torch.jit.script``, a scripted
    ``nn.Module`` and tracebacks read a cell's code from there (without it they fail only in the grader)."""
    import linecache

    name = f"<{label} #{index}>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)  # mtime None: checkcache keeps it
    return name


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
