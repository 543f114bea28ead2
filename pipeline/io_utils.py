"""Atomic file writes: a crash (even kill -9) leaves either the old file or the new one."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give outputs the usual permissions
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike):
    """json.load; a DataError naming the file when it is not JSON (truncated, edited, binary)."""
    from .errors import DataError

    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def file_sha256(path: str | os.PathLike, n_hex: int = 16) -> str:
    """Content hash of a file (a checkpoint's identity: ~1 GB/s, so well under a second)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n_hex]


_MAGIC = {b"\x1f\x8b": "gzip", b"PK": "zip", b"BZ": "bzip2", b"\xfd7": "xz"}


def check_csv_name(path: str | os.PathLike, error=None) -> str | None:
    """The compression a CSV's name promises ("gzip" for .gz, None for .csv), checked against its bytes.

    pandas and Kaggle both go by the name, so a file whose name and content disagree (gzip bytes
    named .csv, plain text named .csv.gz) would fail later with a decode error or be rejected
    after upload: refuse it here, naming the file. Other names (e.g. ``.part``) go by content.
    """
    if error is None:
        from .errors import DataError as error
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
