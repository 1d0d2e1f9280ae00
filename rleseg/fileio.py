"""Crash-safe file writes: a file appears under its final name complete, or not at all.

The temporary file is created *in the destination folder* (``os.replace`` is atomic only within one
filesystem; a temporary file under ``$TMPDIR`` on another filesystem would be copied, not renamed, and a
kill during the copy leaves a truncated file under the final name). It is flushed and fsync'ed before
the rename, and the folder is fsync'ed after it, so a power loss cannot reorder the two either.
Files are created with the permissions ``open()`` would give them (0666 minus the umask), not the 0600
of :func:`tempfile.mkstemp`, so a shared data folder stays readable to its group.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "default_file_mode"]


def default_file_mode() -> int:
    """``0o666`` minus the process umask: what a plain ``open(path, "w")`` would create."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, or a folder we may not open: the rename itself has happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, then move it to ``path`` in one step.

    On any error (a full disk, a kill signal turned into an exception, a bug in ``write``) the temporary
    file is removed and ``path`` keeps its previous content.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> atomic_write(p, lambda fh: fh.write(b"abc")).read_bytes()
    b'abc'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path
