"""File-system care: atomic writes, output locks, writable folders, and names taken from files.

- ``atomic_path``: a crash (even kill -9) leaves either the old file or the new one; a write that
  fails (read-only folder, full disk) is a DataError naming the path, and the old file stays.
- ``OutputLock``: one writer per output (a second run stops and names the holder).
- ``check_writable``: an output folder that cannot be written is found before the work starts.
- ``plain_name``: a name read from a file (an image name in a CSV, a checkpoint name in a JSON) is
  joined onto a folder only if it is a plain file name, never ``../x`` or ``/x``.
- ``open_nofollow`` / ``fresh_file``: the auxiliary files a stage keeps beside its output (locks,
  ``.part`` files, logs) are opened without following a symbolic link standing at their path, so
  no stage ever truncates or appends to a file elsewhere; every write of the pipeline goes through
  these, ``atomic_path`` (a new temporary file, renamed over the link itself), or a folder it made.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError


def os_error_message(path: str | os.PathLike, e: OSError) -> str:
    """``<path>: cannot write (No space left on device)`` and what to do about the usual causes."""
    reason = e.strerror or str(e)
    hint = {
        errno.ENOSPC: "free some space or point the output elsewhere",
        errno.EDQUOT: "free some space or point the output elsewhere",
        errno.EACCES: "make it writable or point the output elsewhere",
        errno.EPERM: "make it writable or point the output elsewhere",
        errno.EROFS: "the file system is read-only; point the output elsewhere",
    }.get(e.errno)
    return f"{path}: cannot write ({reason})" + (f"; {hint}" if hint else "")


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise DataError(os_error_message(path, e)) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give outputs the usual permissions
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, FileNotFoundError) and e.filename not in (None, tmp, str(tmp)):
            raise  # an input the writer was reading went missing: not this output's fault
        raise DataError(os_error_message(path, e)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _not_followed(path: Path, e: OSError) -> DataError:
    if e.errno == errno.ELOOP:
        return DataError(
            f"{path}: is a symbolic link; the pipeline never writes through one (it would change the file it "
            "points to). Remove the link, or choose another output"
        )
    return DataError(os_error_message(path, e))


def open_nofollow(path: str | os.PathLike, mode: str = "a", perm: int = 0o666):
    """``open(path, mode)`` for writing (``w``/``a``/``r+``, ``b`` for bytes), refusing a symbolic link at ``path``.

    The file is created if needed (except ``r+``); a link there is a DataError, never followed.
    """
    path = Path(path)
    base = mode.replace("b", "")
    flags = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND}.get(
        base, os.O_RDWR if base == "r+" else None
    )
    if flags is None:
        raise ValueError(f"open_nofollow: mode {mode!r}; use w, a or r+ (with b for bytes)")
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, perm)
    except OSError as e:
        raise _not_followed(path, e) from None
    return os.fdopen(fd, mode, buffering=0 if "b" in mode else -1)  # bytes unbuffered: a failed write raises here


def append_synced(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to ``path`` (never through a link) and fsync it: a record that survives kill -9 as a
    whole line or not at all is what resumable outputs rely on. A DataError naming the file otherwise."""
    try:
        with open_nofollow(path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise DataError(os_error_message(path, e)) from None


def fresh_file(path: str | os.PathLike) -> None:
    """An empty new file at ``path``, made under a temporary name and renamed there: whatever stood at
    ``path`` (an old file of ours, or a symbolic link) is replaced, and nothing it pointed to is touched."""
    with atomic_path(path):
        pass


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike):
    """json.load; a DataError naming the file when it is not JSON (truncated, edited, binary)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def check_writable(folder: str | os.PathLike, what: str = "output") -> Path:
    """Create ``folder`` if needed and prove a file can be made there, before any long work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataError(os_error_message(folder, e).replace("cannot write", f"cannot write the {what} here")) from None
    return folder


def plain_name(name, where: str) -> str:
    """``name`` if it is a plain file name (no folder part, not ``.``/``..``, no NUL); else a DataError."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or name != name.strip()
    ):
        raise DataError(f"{where}: {name!r} is not a plain file name (no folders, '..' or absolute paths)")
    return name


# Paths an artifact records (a recipe's checkpoints, a summary's recipe, a checkpoint's folds CSV)
# are stored relative to the folder of the file that holds them, so a project copied elsewhere, or
# attached read-only and used from another working directory, keeps every link.
RELATIVE_TO_FILE = "relative to this file"


def stored_path(path: str | os.PathLike, holder: str | os.PathLike) -> str:
    """``path`` as ``holder`` (a file) records it: relative to the holder's folder (absolute across drives)."""
    try:
        return Path(os.path.relpath(Path(path).absolute(), Path(holder).absolute().parent)).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return str(Path(path).absolute())


def resolve_stored(stored: str, holder: str | os.PathLike, relative_to_file: bool = True) -> Path:
    """The path a file recorded, as a usable path: from the holder's folder (``stored_path``), or as it was
    written (relative to the working directory) for files of earlier versions (``relative_to_file=False``)."""
    p = Path(stored)
    if p.is_absolute() or not relative_to_file:
        return p
    return Path(os.path.normpath(Path(holder).parent / p))


class OutputLock:
    """Exclusive ``flock`` on ``<target>.lock`` for as long as a run writes ``target``.

    flock (not a pid file) because the kernel drops it when the holder dies, even by kill -9:
    a stale lock file never blocks the next run. The file holds the holder's pid and host, for
    the error message of a second run. (flock is local to a host on some network filesystems.)
    """

    def __init__(self, target: str | Path, doing: str = "writing it", remove: bool = False):
        self.target = Path(target)
        self.path = self.target.with_name(self.target.name + ".lock")
        self.doing = doing
        self.remove = remove  # delete the lock file on release: for locks in a user's own folder
        self.fd: int | None = None

    def __enter__(self) -> OutputLock:
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            except OSError as e:
                raise _not_followed(self.path, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
                os.close(fd)
                raise DataError(
                    f"{self.target}: another run is {self.doing} ({holder}; lock {self.path}). "
                    "Wait for it or stop it; a killed run releases the lock by itself."
                ) from None
            # A holder that removes its file on release may have unlinked the one locked here: then
            # the lock is on a file no one else will open; take the lock on the file at the path.
            try:
                current = os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            if self.remove:  # unlinked while still held: a run that opens it next finds another file
                self.path.unlink(missing_ok=True)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


_MAGIC = {b"\x1f\x8b": "gzip", b"PK": "zip", b"BZ": "bzip2", b"\xfd7": "xz"}


def check_csv_name(path: str | os.PathLike, error=None) -> str | None:
    """The compression a CSV's name promises ("gzip" for .gz, None for .csv), checked against its bytes.

    pandas and Kaggle both go by the name, so a file whose name and content disagree (gzip bytes
    named .csv, plain text named .csv.gz) would fail later with a decode error or be rejected
    after upload: refuse it here, naming the file. Other names (e.g. ``.part``) go by content.
    """
    if error is None:
        error = DataError
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
    content = _MAGIC.get(head)
    name = path.name.lower()
    if name.endswith(".gz"):
        if content != "gzip":
            what = f"{content} data" if content else "not gzip data (plain text?)"
            raise error(f"{path}: named .gz but {what}; compress it with gzip or drop the .gz from the name")
        return "gzip"
    if name.endswith(".csv"):
        if content is not None:
            raise error(f"{path}: named .csv but holds {content}-compressed data; name it .csv.gz or decompress it")
        return None
    return "gzip" if content == "gzip" else None
