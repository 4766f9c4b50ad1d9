"""Files in and out: checks that run before any work, temporary files that never pile up.

* :func:`check_writable_dir` / :func:`check_writable_file`: is there somewhere to write the result? Asked
  before training or grading starts, so a bad ``--out-dir`` or ``--out`` fails in the first second, not
  after an hour of work.
* :func:`temp_file_for` / :func:`remove_stale_temp_files`: atomic writes go through ``.<name>.<pid>-<random>.tmp``
  next to the target. A write killed by SIGKILL or a power cut cannot clean up after itself, so the next
  write (or the next start) removes the temporary files whose writing process is gone.
* :func:`atomic_write`: the one way this package writes a file that must never be seen half-written
  (checkpoints, exports, grade sheets, notebooks).
* :func:`describe_file`: "an empty file", "a text file", ... for error messages that say what came.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, List, Tuple, Union

PathLike = Union[str, os.PathLike]

STALE_AFTER_S = 24 * 3600.0  # a temp file this old is stale even if a process with its pid still runs (pid reuse)


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(path: PathLike, what: str = "output folder") -> Path:
    """Raise a one-line error unless ``path`` is (or can be created as) a folder this process can write into.

    Nothing is created: a folder that does not exist yet is judged by its nearest existing parent.
    NotADirectoryError: the path (or a parent) is a file; PermissionError: no write access.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(f"{what} {p} is a file; expected a folder (or a path where one can be created)")
    base = _nearest_existing(p.absolute())
    if not base.is_dir():
        raise NotADirectoryError(f"{what} {p} cannot be created: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {p} is not writable: no write permission on {base}")
    return p


def check_writable_file(path: PathLike, what: str = "output file") -> Path:
    """Raise a one-line error unless ``path`` can be written as a file (its folder writable or creatable)."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{what} {p} is a folder; expected a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise PermissionError(f"{what} {p} exists and is not writable")
    base = _nearest_existing(p.absolute().parent)
    if not base.is_dir():
        raise NotADirectoryError(f"{what} {p} cannot be written: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {p} cannot be written: no write permission on {base}")
    return p


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
    """Remove ``.<name>.*.tmp`` files next to ``path`` left by writes that were killed; returns what was removed.

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
        if not (name.startswith(prefix) and name.endswith(".tmp")) or not candidate.is_file():
            continue
        middle = name[len(prefix):-len(".tmp")]
        m = re.fullmatch(r"(\d+)-[A-Za-z0-9_]+", middle)
        try:
            age = time.time() - candidate.stat().st_mtime
            if m and int(m.group(1)) == os.getpid() and age < STALE_AFTER_S:
                continue  # this process's own write in progress (another thread)
            if m and _pid_alive(int(m.group(1))) and age < STALE_AFTER_S:
                continue  # another process is writing it right now
            candidate.unlink()
            removed.append(candidate)
        except FileNotFoundError:  # its writer finished (os.replace) or removed it meanwhile
            continue
    return removed


def describe_file(path: PathLike) -> str:
    """A few words on what a file holds, judged from its first bytes (for "expected ..., got ..." messages)."""
    p = Path(path)
    if p.is_dir():
        return "a folder"
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
    if head[:1] == b"\x80":
        return f"a pickle of {size} bytes"
    if len(head) >= 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return f"a .safetensors file of {size} bytes"
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
    cut) cannot clean up, so the temp files of writers that are gone are removed before each write. ``mode``
    is ``"wb"`` or ``"w"`` (then pass ``encoding=``/``newline=``); the file gets the usual permissions
    (mkstemp's are 0600).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = temp_file_for(path)  # .<name>.<pid>-<random>.tmp
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
