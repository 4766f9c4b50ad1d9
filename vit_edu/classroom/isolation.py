"""The kernel side of the sandbox (:mod:`.sandbox`): what locks one notebook's process down.

* uids: :class:`UidPool` hands each running notebook an unused uid, reserved with a lock file;
  :func:`_kill_job` kills whatever a notebook left running as its uid and removes the uid's temporary files;
* :func:`_drop_privileges`: as root, a mount and IPC namespace of the notebook's own (:func:`_isolate`: covers
  over all but the system's folders, Python and the package, private /tmp and /proc, the scratch copy in a tmpfs
  at :data:`WORK`), memory and cpu cgroups, the rest of the file system read-only in its view
  (:func:`_read_only_elsewhere`), no network, no new privileges, the uid change;
* :func:`_set_limits`: the resource limits (memory, CPU seconds, file size, processes, open files);
* :func:`bwrap_command`: the fork server under bubblewrap (PID and IPC namespaces, no network);
* :func:`copy_tree`, :func:`chown_tree`, :func:`remove_tree`: the scratch copies, with stacks of their own (a
  student's folder may be a chain of thousands of folders, past Python's recursion limit).

Nothing here runs student code; :mod:`.child` calls these in the forked child, :mod:`.sandbox` on the grader's
and the server's side.
"""

from __future__ import annotations

import ctypes
import fcntl
import itertools
import os
import pwd
import re
import resource
import site
import shutil
import signal
import stat
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

UID_BASE = 61000  # first uid tried for the sandboxes (uids without a passwd entry and without processes)


class SandboxError(RuntimeError):
    """The sandbox cannot work here (the server does not start, no free uids)."""


# =============================================================================================== uids
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
        path, fd = os.path.join(folder, f"vit_edu_sandbox_uid_{uid}.lock"), -1
        try:  # the folder is world-writable: a link, a folder or another user's file there (left by a notebook of the
            st = os.lstat(path)  # weaker mode, which sees the machine's /run/lock) is removed, never followed
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                remove_tree(path)
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another grader has it (or a link was put back in between: this uid is left out)
            if fd >= 0:
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


def bwrap_command(bwrap: str) -> List[str]:
    """The server under bubblewrap (Flatpak's sandbox): a PID namespace, so that the notebooks see only each other
    in /proc, never the grader or the machine's other processes, and all of them die with the server (bwrap is
    their init); an IPC namespace; and no network. The file system stays the host's (``--dev-bind / /``): each
    notebook still makes its own view of it (:func:`_isolate`), which needs the capabilities root keeps here."""
    return [bwrap, "--dev-bind", "/", "/", "--proc", "/proc", "--unshare-pid", "--unshare-ipc", "--unshare-net",
            "--die-with-parent", "--cap-add", "ALL", "--"]


def _bubblewrap() -> Tuple[Optional[str], str]:
    """(the bwrap executable to run the server under, or None; a note when it is not used)."""
    if os.environ.get("VIT_EDU_NO_BWRAP"):
        return None, "bubblewrap switched off (VIT_EDU_NO_BWRAP)"
    path = shutil.which("bwrap")
    if path is None:
        return None, "no bubblewrap on this machine (apt-get install bubblewrap adds a PID namespace)"
    return path, ""


# =============================================================================================== folder trees
# A student's folder, or what its code leaves in its scratch copy, may be a chain of thousands of folders: os.walk,
# shutil.copytree and shutil.rmtree recurse once per level and stop at Python's recursion limit (a RecursionError,
# which rmtree's ignore_errors does not catch), so one student would stop the class. These keep stacks of their own.
MAX_DEPTH = 64  # folder levels below a student's folder that are copied for the sandbox (real work has under 20)


def copy_tree(src: "str | os.PathLike", dst: "str | os.PathLike", max_bytes: int = 200 * 1024 * 1024,
              max_entries: int = 20_000, max_depth: int = MAX_DEPTH, reserved: str = "",
              make: bool = True) -> Tuple[List[str], int, int]:
    """Copy the regular files and folders of ``src`` into ``dst`` (made, mode 700, when ``make``); returns (notes on
    what was left out, bytes copied, files and folders copied). Left out, each with a note: links and special files
    (a FIFO would block the copy; a link could point anywhere), names at the top that start with ``reserved`` (the
    grader's own), everything past ``max_bytes`` in all or past ``max_entries`` files and folders (the grader copies
    before each notebook: a folder of a million empty files would stall the class), and folders nested deeper than
    ``max_depth``. Jupyter's .ipynb_checkpoints are left out unsaid."""
    src, dst = Path(src), Path(dst)
    notes: List[str] = []
    total = entries = 0
    if make:
        dst.mkdir(mode=0o700)
    stack: List[Tuple[Path, int]] = [(Path("."), 0)]
    too_deep = False
    while stack:
        rel, depth = stack.pop()
        try:
            with os.scandir(src / rel) as listing:  # at most what the cap lets through: a million names cost nothing
                found = sorted(itertools.islice(listing, max_entries - entries + 1), key=lambda e: e.name)
        except OSError as err:
            notes.append(f"{rel}: not copied ({err.strerror})")
            continue
        if rel == Path(".") and reserved:
            notes += [f"{e.name}: a name the grader keeps for itself, not copied" for e in found
                      if e.name.startswith(reserved)]
            found = [e for e in found if not e.name.startswith(reserved)]
        full = entries + len(found) > max_entries
        if full:  # the first ones up to the cap, nothing after
            notes.append(f"{rel}: partly copied, and nothing after it (over {max_entries} files and folders)")
            found = found[: max_entries - entries]
        entries += len(found)
        folders = []
        for entry in found:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as err:
                notes.append(f"{rel / entry.name}: not copied ({err.strerror})")
                continue
            if stat.S_ISDIR(st.st_mode):
                if entry.name.startswith(".ipynb_checkpoints"):
                    continue
                if depth + 1 > max_depth:
                    if not too_deep:  # once: the path of a chain is a thousand names long
                        notes.append(f"{(rel / entry.name).parts[0]}/...: folders nested deeper than {max_depth} "
                                     f"levels, not copied")
                    too_deep = True
                    continue
                try:
                    (dst / rel / entry.name).mkdir(mode=0o700, exist_ok=not make)
                except OSError as err:  # e.g. a path that fits the submission but not the longer scratch path
                    notes.append(f"{rel / entry.name}: not copied ({err.strerror})")
                    continue
                folders.append((rel / entry.name, depth + 1))
            elif not stat.S_ISREG(st.st_mode):
                notes.append(f"{rel / entry.name}: {'a link' if stat.S_ISLNK(st.st_mode) else 'not a regular file'}, "
                             f"not copied")
            elif total + st.st_size > max_bytes:
                notes.append(f"{rel / entry.name}: not copied (the folder is over {max_bytes // 2**20} MB)")
            else:
                total += st.st_size
                try:
                    fd = os.open(src / rel / entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                    with os.fdopen(fd, "rb") as fin, open(dst / rel / entry.name, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
                except OSError as err:
                    notes.append(f"{rel / entry.name}: not copied ({err.strerror})")
        stack = [] if full else stack + folders[::-1]  # in name order, depth first
    return notes, total, entries


def chown_tree(path: "str | os.PathLike", uid: int, gid: int) -> None:
    """``chown`` everything under ``path`` and ``path`` itself (links themselves, never what they point to)."""
    stack = [os.fspath(path)]
    while stack:
        with os.scandir(stack.pop()) as listing:
            for entry in listing:
                os.chown(entry.path, uid, gid, follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    os.chown(path, uid, gid)


def _open_folder(name: str, parent: Optional[int]) -> int:
    """A folder's fd, never through a link; a folder its owner made unreadable (chmod 000) is made readable."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=parent)
    except PermissionError:  # as root this never happens; as the grader's user, on the student's own files
        os.chmod(name, 0o700, dir_fd=parent)
        return os.open(name, flags, dir_fd=parent)


def _remove_entry(name: str, folder: int, is_folder: bool) -> None:
    remove = (lambda: os.rmdir(name, dir_fd=folder)) if is_folder else (lambda: os.unlink(name, dir_fd=folder))
    try:
        remove()
    except PermissionError:  # a folder its owner made read-only
        os.fchmod(folder, 0o700)
        remove()


def remove_tree(path: "str | os.PathLike", max_open: int = 32) -> bool:
    """Remove ``path`` and all it holds; True when nothing is left. Never raises (cleaning up after one notebook
    must not stop the class) and never recurses: at most ``max_open`` folders are open at once and every name is
    looked up from its open parent (no path grows past PATH_MAX); a folder deeper than that is first moved up to
    the top (a rename, whatever it holds), so a chain of any length goes. Links are removed, never followed."""
    path = os.fspath(path)
    fds: List[int] = []
    try:
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                os.unlink(path)
                return True
        except FileNotFoundError:
            return True
        fds.append(_open_folder(path, None))
        todo: List[List[str]] = [os.listdir(fds[0])]  # per open folder: the names still to remove in it
        opened: List[str] = []  # the name of each open folder but the top, in its parent
        spare = (f".vit_edu_rm_{os.getpid()}_{n}" for n in itertools.count())
        clean = True
        while fds:
            if not todo[-1]:
                os.close(fds.pop())
                todo.pop()
                if opened:
                    try:
                        _remove_entry(opened.pop(), fds[-1], True)
                    except OSError:
                        clean = False
                continue
            name, folder = todo[-1].pop(), fds[-1]
            try:
                os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                continue
            try:
                if not stat.S_ISDIR(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
                    _remove_entry(name, folder, False)
                elif len(fds) < max_open:
                    fds.append(_open_folder(name, folder))
                    opened.append(name)
                    todo.append(os.listdir(fds[-1]))
                else:  # deep down a chain: move it up to the top, to be removed from there
                    up = next(n for n in spare if not os.path.lexists(os.path.join(path, n)))
                    os.rename(name, up, src_dir_fd=folder, dst_dir_fd=fds[0])
                    todo[0].append(up)
            except OSError:
                clean = False
        os.rmdir(path)
        return clean
    except Exception:  # noqa: BLE001 - what is left stays; the next notebooks are graded all the same
        return False
    finally:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


# =============================================================================================== processes, limits, namespaces, cgroups
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


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


TEMP_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # /run/lock: where the uids are reserved


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
                remove_tree(entry.path)  # never raises, also on a chain of thousands of folders
        finally:
            os._exit(0)
    os.waitpid(helper, 0)


def _set_limits(job: dict) -> None:
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
TOP = "/"
SYSTEM = {"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin", "sys", "usr", "var",
          "nix", "gnu"}  # the folders at the top a notebook sees; every other one (home, root, opt, mnt, ...) is covered
NEVER_HIDDEN = {"/", *(f"/{name}" for name in SYSTEM)}
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # a fresh, empty one per notebook
WORK = "/tmp/vit_edu_work"  # where the scratch copy appears inside the notebook's own view of the files


def needed_paths(resolve: bool = True) -> List[str]:
    """The folders a notebook's imports read: the Python installation (stdlib, site-packages, the user's own
    of ``pip install --user`` where Python reads it) and vit_edu (``resolve``: with symbolic links resolved; else
    as Python names them)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(__file__).resolve().parents[1])}
    if site.ENABLE_USER_SITE:
        paths.add(site.getusersitepackages())
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            paths.add(sysconfig.get_paths()[key])
        except KeyError:
            pass
    return sorted((os.path.realpath(p) if resolve else os.path.normpath(p)) for p in paths if p and os.path.isdir(p))


def outside_the_system() -> Set[str]:
    """Every folder at the top of the file system but the system's own (:data:`SYSTEM`): /home, /root, /opt, /srv,
    /mnt (Windows' drives under WSL), /media, a /work or /data. A notebook's view covers them all and binds back
    only what its imports read (:func:`needed_paths`): an allow-list, so a teacher's file wherever it lies (a
    backup in ~/Downloads, a course in /opt) is out of sight. A link at the top (Fedora Atomic's /home -> var/home)
    counts as the folder it leads to."""
    found = set()
    for entry in os.scandir(TOP):
        if entry.name not in SYSTEM and entry.is_dir():
            real = os.path.realpath(entry.path)
            if real not in NEVER_HIDDEN and real != os.path.realpath(TOP):
                found.add(real)
    return found


def _mount(libc: Any, source: Optional[str], target: str, fstype: Optional[str], flags: int,
           data: Optional[str]) -> None:
    enc = lambda x: None if x is None else os.fsencode(x)  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or source} on {target}: {os.strerror(err)}")


def _isolate(job: dict) -> str:
    """As root, before dropping to the sandbox uid: a mount and IPC namespace of the notebook's own.

    Inside it ``job["hide"]`` (the submissions, the reference, the grades, the teacher's folder, the package's
    source checkout) and every folder outside the system's (:func:`outside_the_system`) are covered by empty
    read-only folders, /tmp, /var/tmp, /dev/shm and /run/lock are fresh private tmpfs, and ``job["expose"]``
    (the Python installation, the package) are bound back where a cover hid them. The scratch copy is bound at WORK and ``job["scratch"]`` points there. The namespaces, their
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
    hide = {os.path.realpath(h) for h in job.get("hide", [])} | outside_the_system()
    covers = sorted(hide | set(PRIVATE_TMP), key=len)
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
    copy_tree(f"/proc/self/fd/{scratch_fd}", WORK, max_bytes=1 << 62, max_entries=1 << 62, make=False)
    if job.get("uid") is not None:
        chown_tree(Path(WORK), int(job["uid"]), int(job["gid"]))
    for fd in [scratch_fd, *keep.values()]:
        os.close(fd)
    for target in covered:  # the covers themselves become read-only (the private tmp folders stay writable)
        if target not in PRIVATE_TMP:
            _mount(libc, None, target, None, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_RDONLY, None)
    try:  # a /proc of its own: other uids' processes (the grader's, the machine's, other notebooks') out of sight
        _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
    except OSError:  # refused (some containers): the machine's /proc stays; bubblewrap's PID namespace narrows it
        pass
    job["scratch"] = WORK
    job["writable"] = [WORK, *(t for t in covered if t in PRIVATE_TMP)]
    os.chdir(WORK)
    return ""


def _mount_points() -> List[Tuple[str, List[str]]]:
    """(mount point, its per-mount options) of every mount this process's namespace holds, from mountinfo."""
    points = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 6:
                continue
            target = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            points.append((os.fsdecode(target), fields[5].decode("ascii", "replace").split(",")))
    return points


MS_NOEXEC, MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 8, 1024, 2048, 1 << 21, 1 << 24
_KEPT_MOUNT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                     "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}


def _read_only_elsewhere(job: dict) -> None:
    """In the notebook's own mount namespace, make every mount read-only but its folder (:data:`WORK`) and its
    private /tmp, /var/tmp, /dev/shm, /run/lock: a world-writable folder of the host (/var/crash, a 1777 folder
    a teacher made) can then not be filled, and nothing the notebook writes outlives it. Bind remounts change
    the mount points of this namespace only (never the host's file systems, nor what the record's files, opened
    before the namespace, write to); their other flags (nosuid, nodev, noexec, atime) are kept. Devices such as
    /dev/null stay writable on a read-only mount. OSError when a mount this process can reach stays writable
    (the grader then runs without namespaces and says why)."""
    libc = _libc()
    writable = {os.path.realpath(p) for p in job.get("writable", [])}
    points = _mount_points()
    for target, options in points:
        if target in writable or "ro" in options:
            continue
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        for name, flag in _KEPT_MOUNT_FLAGS.items():
            flags |= flag if name in options else 0
        try:
            _mount(libc, None, target, None, flags, None)
        except OSError:
            pass  # a mount under a cover, out of reach (checked below)
    left = []
    for target, _ in points:
        if target in writable:
            continue
        try:
            if not os.statvfs(target).f_flag & os.ST_RDONLY:
                left.append(target)
        except OSError:
            continue  # under a cover: out of reach
    if left:
        raise OSError(f"could not make {', '.join(sorted(set(left))[:3])} read-only for the notebook")


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


def _cpu_cgroup_root() -> Optional[str]:
    """The folder under which a notebook's cpu cgroup can be made (cgroup v2 where the root hands the cpu
    controller to its children, else v1's cpu controller, alone or beside cpuacct), or None where this process
    may not (not root, no cpu controller, or read-only in this container)."""
    v2 = "/sys/fs/cgroup"
    if os.path.isfile(os.path.join(v2, "cgroup.controllers")) and os.access(v2, os.W_OK):
        try:
            with open(os.path.join(v2, "cgroup.subtree_control")) as f:
                if "cpu" in f.read().split():
                    return v2
        except OSError:
            pass
    for base in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpuacct,cpu"):
        if os.path.isfile(os.path.join(base, "cpu.shares")) and os.access(base, os.W_OK):
            return base
    return None


def _cgroup_name(child_pid: int) -> str:
    return f"vit_edu_{_SERVER_TOKEN}_{child_pid}"


def cgroup_path(child_pid: int) -> Optional[str]:
    """A notebook's memory cgroup (see :func:`cgroup_paths` for all of its cgroups)."""
    base = _memory_cgroup_root()
    return None if base is None else os.path.join(base, _cgroup_name(child_pid))


def cpu_cgroup_path(child_pid: int) -> Optional[str]:
    base = _cpu_cgroup_root()
    return None if base is None else os.path.join(base, _cgroup_name(child_pid))


def cgroup_paths(child_pid: int) -> List[str]:
    """Every cgroup a notebook may have made (memory, cpu; one folder for both under cgroup v2), to remove."""
    return list(dict.fromkeys(p for p in (cpu_cgroup_path(child_pid), cgroup_path(child_pid)) if p))


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
        try:  # swap counted too where the kernel accounts it
            with open(os.path.join(path, "memory.swap.max" if v2 else "memory.memsw.limit_in_bytes"), "w") as f:
                f.write("0" if v2 else str(limit))
        except OSError:
            pass
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    except OSError as err:
        return f"memory cgroup: {err.strerror}"
    return ""


CPU_SHARES = 1024  # cgroup v1: every notebook the same weight as one ordinary process, however many it starts
CPU_WEIGHT = 100  # cgroup v2: the same (the default weight)


def _join_cpu_cgroup(job: dict) -> str:
    """Put this child (and all it will start) in a cpu cgroup of its own with the same weight as every other
    notebook (and as one ordinary process of the machine): the scheduler shares the CPU between notebooks, not
    between processes, so a notebook that starts 30 busy processes (each in a session of its own, which would
    give each its own autogroup) slows the others no more than one busy process would. "" or why not."""
    path = cpu_cgroup_path(os.getpid())
    if path is None:
        return "no writable cpu cgroup"
    try:
        os.makedirs(path, exist_ok=True)  # cgroup v2: the memory cgroup's folder, made just before
        v2 = os.path.isfile(os.path.join(path, "cpu.weight"))
        with open(os.path.join(path, "cpu.weight" if v2 else "cpu.shares"), "w") as f:
            f.write(str(CPU_WEIGHT if v2 else CPU_SHARES))
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    except OSError as err:
        return f"cpu cgroup: {err.strerror}"
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
    if job.get("cpu_cgroup"):
        job["cpu_cgroup_problem"] = _join_cpu_cgroup(job)
    if not job["isolation"]:  # after the cgroups, whose files are written through /sys/fs/cgroup
        _read_only_elsewhere(job)
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
