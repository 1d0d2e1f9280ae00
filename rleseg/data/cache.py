"""Where prepared arrays live, and how they are written and read.

Every source caches what it prepares under one folder, the *data dir*:

* ``$RLESEG_DATA_DIR`` when set (point a machine with no network at a copied folder this way),
* else ``./data_cache`` relative to the working directory (git-ignored in this repository).

A source's ``data_dir`` argument overrides both. Arrays are stored as uncompressed ``.npz`` files written
atomically (a half-written cache from an interrupted run is never picked up).

>>> import os, tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     path = save_npz(os.path.join(d, "x.npz"), a=np.arange(3))
...     int(load_npz(path)["a"].sum())
3
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from rleseg.data.errors import DataError
from rleseg.fileio import atomic_write

DATA_DIR_ENV = "RLESEG_DATA_DIR"
DEFAULT_DATA_DIR = "data_cache"


def resolve_data_dir(override: str | os.PathLike | None = None) -> Path:
    """The data dir: ``override``, else ``$RLESEG_DATA_DIR``, else ``./data_cache``.

    >>> resolve_data_dir("/tmp/somewhere").as_posix()
    '/tmp/somewhere'
    """
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path(DEFAULT_DATA_DIR)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Write ``arrays`` to ``path`` atomically (:func:`rleseg.fileio.atomic_write`); returns the path."""
    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of a cache file; a damaged file raises :class:`DataError` naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(
            f"cannot read cached arrays {path}: {err}; delete the file and prepare again"
        ) from err
