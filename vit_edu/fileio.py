"""Files in and out: checks that run before any work, temporary files that never pile up.

* :func:`check_writable_dir` / :func:`check_writable_file` / :func:`check_space`: is there somewhere to write
  the result, with room for it? Asked before training or grading starts, so a bad or full ``--out-dir`` or
  ``--out`` fails in the first second, not after an hour of work. Their errors are :class:`OutputError`
  (an ``OSError``: the command line prints them as one line).
* :func:`temp_file_for` / :func:`remove_stale_temp_files`: atomic writes go through ``.<name>.<pid>-<random>.tmp``
  next to the target. A write killed by SIGKILL or a power cut cannot clean up after itself, so the next
  write (or the next start) removes the temporary files whose writing process is gone.
* :func:`atomic_write`: the one way this package writes a file that must never be seen half-written
  (checkpoints, exports, grade sheets, notebooks); :func:`build_folder` the same for a whole folder (the
  classroom's student copies and handout).
* :func:`describe_file`: "an empty file", "a text file", ... for error messages that say what came.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

PathLike = Union[str, os.PathLike]

STALE_AFTER_S = 24 * 3600.0  # a temp file this old is stale even if a process with its pid still runs (pid reuse)


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


class OutputError(OSError):
    """An output location that cannot take the result (not a folder, not writable, too little space), found
    before any work is done. Its message is one line that names the location. Each one is also the built-in
    error of its kind (NotADirectoryError, IsADirectoryError, PermissionError) for code that catches those."""

    def __new__(cls, message: str, code: int = errno.EACCES):
        if cls is OutputError:
            cls = _KINDS.get(code, cls)
        return super().__new__(cls, message)

    def __init__(self, message: str, code: int = errno.EACCES) -> None:
        super().__init__(message)
        self.errno = code


class _NotAFolder(OutputError, NotADirectoryError):
    pass


class _AFolder(OutputError, IsADirectoryError):
    pass


class _NotWritable(OutputError, PermissionError):
    pass


_KINDS = {errno.ENOTDIR: _NotAFolder, errno.EISDIR: _AFolder, errno.EACCES: _NotWritable, errno.EPERM: _NotWritable,
          errno.EROFS: _NotWritable, errno.ENOENT: _NotWritable}


def _probe(folder: Path, p: Path, what: str) -> None:
    """Create (and remove) an empty file in ``folder``: os.access says yes to root everywhere, and to
    everybody on a read-only mount, where nothing can be written."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".vit_edu-probe-", dir=folder)
    except OSError as err:
        raise OutputError(f"{what} {p} is not writable: cannot create a file in {folder} "
                          f"({err.strerror or err})", err.errno or errno.EACCES) from None
    os.close(fd)
    os.unlink(probe)


def check_writable_dir(path: PathLike, what: str = "output folder") -> Path:
    """Raise a one-line :class:`OutputError` unless ``path`` is (or can be created as) a folder this process can
    write into.

    Nothing is left behind: a folder that does not exist yet is judged by its nearest existing parent, where an
    empty file is created and removed again.
    """
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise OutputError(f"{what} {p} is a link to {os.readlink(p)}, which does not exist; expected a folder",
                          errno.ENOENT)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {p} is a file; expected a folder (or a path where one can be created)",
                          errno.ENOTDIR)
    base = _nearest_existing(p.absolute())
    if not base.is_dir():
        raise OutputError(f"{what} {p} cannot be created: {base} is a file, not a folder", errno.ENOTDIR)
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {p} is not writable: no write permission on {base}")
    _probe(base, p, what)
    return p


def check_writable_file(path: PathLike, what: str = "output file") -> Path:
    """Raise a one-line :class:`OutputError` unless ``path`` can be written as a file (its folder writable or
    creatable)."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} {p} is a folder; expected a file name", errno.EISDIR)
    if p.exists() and not p.is_file():  # atomic_write refuses it: writing would replace a device or a pipe
        raise OutputError(f"{what} {p} is not a regular file (a device or a pipe); expected a file name", errno.EINVAL)
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputError(f"{what} {p} exists and is not writable")
    base = _nearest_existing(p.absolute().parent)
    if not base.is_dir():
        raise OutputError(f"{what} {p} cannot be written: {base} is a file, not a folder", errno.ENOTDIR)
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {p} cannot be written: no write permission on {base}")
    _probe(base, p, what)
    return p


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"  # pragma: no cover


def file_size_limit() -> Optional[int]:
    """This process's largest writable file in bytes (``ulimit -f``, RLIMIT_FSIZE), or None for no limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def check_space(outputs: Sequence[Tuple[PathLike, int, str]]) -> None:
    """Refuse, with one :class:`OutputError` line, outputs that cannot fit: ``outputs`` lists (path, bytes it
    will take, what it is). Files on one disk are summed against its free space; each file is also held
    against the file-size limit (``ulimit -f``). Estimates: a little headroom is asked for, nothing more."""
    limit = file_size_limit()
    by_disk: dict = {}
    for path, need, what in outputs:
        p = Path(path)
        if limit is not None and need > limit:
            raise OutputError(f"{what} {p} would be a file of about {_size(need)} ({need:,} bytes), larger than "
                              f"this process's file-size limit of {_size(limit)} ({limit:,} bytes, ulimit -f); "
                              f"raise the limit (ulimit -f unlimited) or write less", errno.EFBIG)
        base = _nearest_existing(p.absolute())
        try:
            disk = base.stat().st_dev
        except OSError:
            continue
        by_disk.setdefault(disk, []).append((p, need, what, base))
    for items in by_disk.values():
        need = sum(n for _, n, _, _ in items)
        free = shutil.disk_usage(items[0][3]).free
        if need > free:
            names = ", ".join(f"{what} {p}" for p, _, what, _ in items)
            raise OutputError(f"{names}: needs about {_size(need)} ({need:,} bytes) but its disk has only "
                              f"{_size(free)} ({free:,} bytes) free; free some space or choose another folder",
                              errno.ENOSPC)


def error_line(err: BaseException) -> str:
    """An error as one line: an OSError's reason and file ("Permission denied: /x"), a failed folder copy's first
    failure and count, else its message."""
    if isinstance(err, shutil.Error) and err.args and isinstance(err.args[0], list) and err.args[0]:
        src, dst, why = err.args[0][0]
        return " ".join(f"cannot copy {src} to {dst}: {why} ({len(err.args[0])} file(s) failed)".split())
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    if isinstance(err, OSError) and err.strerror and err.filename:
        text += f": {err.filename}"
    return " ".join(text.split())


def exit_status(err: BaseException) -> int:
    """2 for what the user can change (a bad input, an output place refused up front), 1 for a fault of the
    machine met during the work (a full disk, a file-size limit)."""
    fault = isinstance(err, shutil.Error) or (isinstance(err, OSError) and err.strerror is not None)
    return 1 if fault and not isinstance(err, OutputError) else 2


def folder_size(path: PathLike, skip: Sequence[str] = ("__pycache__",)) -> Tuple[int, int]:
    """(bytes of the files, number of files and folders) under ``path``, folders named in ``skip`` left out:
    what a copy of it will take."""
    total = entries = 0
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in skip]
        entries += len(dirs) + len(files)
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total, entries


def folder_bytes(path: PathLike, skip: Sequence[str] = ("__pycache__",)) -> int:
    """Bytes of the files under ``path`` (folders named in ``skip`` left out): what a copy of it will take."""
    return folder_size(path, skip)[0]


def temp_file_for(path: PathLike) -> Tuple[int, str]:
    """``tempfile.mkstemp`` next to ``path``, named ``.<name>.<pid>-<random>.tmp`` so its owner is known."""
    path = Path(path)
    return tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C there: assume alive, the age rule decides
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


def remove_stale_temp_files(path: PathLike) -> List[Path]:
    """Remove ``.<name>.*.tmp`` files next to ``path`` left by writes that were killed (and the ``.tmp``/``.old``
    folders of killed :func:`build_folder` calls); returns what was removed.

    A temp file is kept only while the process that writes it (the pid in its name) still runs and the
    file is younger than a day; files of the older ``.<name>.<random>.tmp`` form (no pid) are always stale.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return []
    prefix = f".{path.name}."
    removed = []
    for candidate in folder.iterdir():
        name = candidate.name
        if not (name.startswith(prefix) and name.endswith((".tmp", ".old"))):
            continue
        if not candidate.is_file() and not (candidate.is_dir() and not candidate.is_symlink()):
            continue
        middle = name[len(prefix):-len(".tmp")]
        m = re.fullmatch(r"(\d+)-[A-Za-z0-9_]+", middle)
        if not m and not re.fullmatch(r"[a-z0-9_]{8}", middle):  # mkstemp's 8 random characters: the old form
            continue  # another file's temp file: ".a.b.<pid>-x.tmp" of "a.b" also starts with ".a."
        try:
            age = time.time() - candidate.stat().st_mtime
            if m and int(m.group(1)) == os.getpid() and age < STALE_AFTER_S:
                continue  # this process's own write in progress (another thread)
            if m and _pid_alive(int(m.group(1))) and age < STALE_AFTER_S:
                continue  # another process is writing it right now
            if candidate.is_dir():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink()
            removed.append(candidate)
        except FileNotFoundError:  # its writer finished (os.replace) or removed it meanwhile
            continue
    return removed


def _safetensors_head(head: bytes, size: int) -> bool:
    """Whether a file of ``size`` bytes starting with ``head`` is laid out as safetensors: an 8-byte little-endian
    header length, then that many bytes of JSON header (an object: ``{``), then the tensors' bytes."""
    return len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8


def looks_like_safetensors(path: PathLike) -> bool:
    """Whether the file at ``path`` holds safetensors bytes, whatever its name (False for a folder or an unreadable
    file). Its first byte can be 0x80, a pickle's first byte: check this before calling it a pickle."""
    if not os.path.isfile(path):  # a folder, or a pipe (opening one would wait for a writer forever)
        return False
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            return _safetensors_head(f.read(9), size)
    except OSError:
        return False


def looks_like_torch_save(path: PathLike) -> bool:
    """Whether the file at ``path`` begins as torch.save's format does (a zip archive), whatever its name."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def describe_file(path: PathLike) -> str:
    """A few words on what a file holds, judged from its first bytes (for "expected ..., got ..." messages)."""
    p = Path(path)
    if p.is_dir():
        return "a folder"
    if p.exists() and not p.is_file():  # reading a pipe would wait for a writer
        return "not a regular file (a pipe or a device)"
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(512)
    except OSError as err:
        return f"an unreadable file ({err.strerror or err})"
    if size == 0:
        return "an empty file (0 bytes)"
    if head.startswith(b"PK\x03\x04"):
        return f"a zip archive of {size} bytes (torch.save's format; damaged or cut short?)"
    if _safetensors_head(head, size):  # before the pickle: a header of 128 + 256k bytes starts with 0x80 too
        return f"a .safetensors file of {size} bytes"
    if head[:1] == b"\x80":
        return f"a pickle of {size} bytes"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8")):
        return f"an image file of {size} bytes"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:  # a multi-byte character cut at byte 512 is still text
        text = head[:err.start].decode("utf-8") if err.start >= len(head) - 3 and len(head) == 512 else None
    if text is None or "\x00" in text:
        return f"{size} bytes of binary data"
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"a text file of {size} bytes" + (f" starting with {first!r}" if first else "")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[IO[Any]], None], mode: str = "wb", fsync: bool = True,
                 **open_kwargs: Any) -> Path:
    """Write via ``write(file)`` into a temp file next to ``path``, then ``os.replace`` it into place.

    ``os.replace`` is atomic on POSIX and Windows: readers see the old file or the new one, never half. On any
    error the temp file is removed and the old file stays untouched. A write killed outright (SIGKILL, power
    cut) cannot clean up, so the temp files of writers that are gone are removed before each write. A link is
    kept: the file it points to is written. ``mode`` is ``"wb"`` or ``"w"`` (then pass ``encoding=``/``newline=``);
    a file replaced keeps its permissions (an export made private with chmod 600 stays private), a new file gets
    the usual ones (mkstemp's are 0600).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    if path.is_symlink():  # write the file it points to and keep the link (os.replace would replace the link)
        path = path.resolve()
    if path.exists() and not path.is_file() and not path.is_dir():  # os.replace would put a file in its place
        raise OutputError(f"{path} is not a regular file (a device or a pipe); expected a file to write",
                          errno.EINVAL)
    base = _nearest_existing(path.absolute().parent)
    if not base.is_dir():  # mkdir would say only "File exists" or "Not a directory"
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write {path}: {base} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    permissions = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~_umask()
    fd, tmp = temp_file_for(path)  # .<name>.<pid>-<random>.tmp
    failed: List[OSError] = []
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            try:
                write(_Recording(f, failed))
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
            except Exception as err:
                if failed and not isinstance(err, OSError):  # torch.save turns a failed write into a RuntimeError
                    raise failed[0] from None
                raise
        os.chmod(tmp, permissions)
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a file-size limit: name the file meant, not the temp file
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class _Recording:
    """A file that remembers the OSError of a failed write, so a writer that hides it (torch.save raises
    RuntimeError "unexpected pos") still ends with the real cause: "No space left on device"."""

    def __init__(self, f: IO[Any], failed: List[OSError]) -> None:
        self._f, self._failed = f, failed

    def write(self, data: Any) -> Any:
        try:
            return self._f.write(data)
        except OSError as err:
            self._failed.append(err)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def build_folder(out: PathLike, build: Callable[[Path], None]) -> Path:
    """Make folder ``out`` by ``build(tmp)`` into a temporary folder beside it, then rename it into place.

    Readers see the old folder or the new one, never a half-written one: on any error (a full disk, Ctrl-C)
    the temporary folder is removed and ``out`` is left as it was. An existing ``out`` is swapped out (two
    renames, undone if the second fails) and then removed."""
    out = Path(out).absolute()
    if out.is_symlink() and out.is_dir():  # a link to the folder: replace the folder, keep the link
        out = out.resolve()
    if out.exists() and not out.is_dir():  # swapping it out would delete a file that is not ours
        raise OutputError(f"{out} is a file; expected a folder (or a path where one can be created)", errno.ENOTDIR)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)  # the folders of builds that were killed
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}-", suffix=".tmp"))
    try:
        build(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}-", suffix=".old"))
            os.replace(out, old / "previous")
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / "previous", out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@contextmanager
def folder_lock(folder: PathLike, what: str = "output folder (--out-dir)") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` itself for the block: one run per folder, no lock file left behind.

    The operating system drops the lock when the process ends, however it ends, so a killed run never leaves
    the folder locked. Where ``fcntl`` is missing (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"another run is writing to {what} {folder} right now; wait for it to finish, or give "
                             f"another folder") from None
        yield
    finally:
        os.close(fd)  # releases the lock
