"""The errors a user can cause and act on.

Every stage raises a ``PipelineError`` subclass with a message that names the file or option and
what is allowed; ``python -m pipeline`` prints it as one line and exits with status 2 (``--debug``
or ``PIPELINE_DEBUG=1`` shows the traceback instead). Anything else is a bug and keeps its traceback.
The errors that several layers raise live here, at the bottom, so raising one never imports a stage.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of the errors shown to the user as ``error: <message>``."""


class DataError(PipelineError, ValueError):
    """Bad or missing input data; the message names the file and the problem."""


class CheckpointError(PipelineError, RuntimeError):
    """A checkpoint that is missing, truncated or not written by this pipeline."""


class TrainingError(PipelineError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the checkpoints keep the last good state."""


class LineageError(PipelineError, RuntimeError):
    """An artifact was made from an input that has changed since (or from another one)."""


class ResumeError(LineageError):
    """A run folder cannot be resumed or re-predicted as asked (another split, model or size)."""


class ModelFolderError(PipelineError, ValueError):
    """An exported model folder that cannot be used as it is; names the folder and the problem."""


def _os_message(exc: OSError) -> str:
    import errno

    hint = {
        errno.ENOSPC: "; free some space or point the output elsewhere",
        errno.EDQUOT: "; free some space or point the output elsewhere",
        errno.EROFS: "; the file system is read-only: point the output elsewhere",
        errno.EACCES: "; check the permissions, or point the output elsewhere",
    }.get(exc.errno, "")
    where = exc.filename if exc.filename is not None else "file system"
    return f"{where}: {exc.strerror or exc}{hint}"


def printable(text: str) -> str:
    """``text`` safe to print on any terminal: bytes of a file name that are not UTF-8 (which Python
    keeps as lone surrogates) show as \\xNN escapes instead of failing the print."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def user_message(exc: BaseException) -> str:
    """The message to show for ``exc``, without the traceback text DataLoader workers wrap it in.

    torch re-raises a worker's exception in the main process as the same type, but with the
    worker's whole traceback as its message; the user's message is what follows the last
    ``<type>: `` line.
    """
    if isinstance(exc, OSError) and not isinstance(exc, PipelineError):
        return printable(_os_message(exc))
    msg = printable(str(exc))
    if "DataLoader worker" in msg and "Original Traceback" in msg:
        name = type(exc).__name__
        lines = msg.rstrip().splitlines()
        for i in range(len(lines) - 1, -1, -1):
            head, sep, rest = lines[i].partition(": ")
            if sep and head.rsplit(".", 1)[-1] == name:
                return "\n".join([rest, *lines[i + 1 :]])
    return msg
