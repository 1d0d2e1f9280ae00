"""Data: sources (composites, MRI, nuclei, folders), patches and stitching, transforms, DataModules.

Importing ``rleseg.data`` is light (numpy only); the torch/Lightning DataModules load on first use::

    from rleseg.data import ImageSegDataModule, VideoSegDataModule, PanopticDataModule

>>> from rleseg.data import create_source, cut_patches
>>> import numpy as np
>>> patches, origins = cut_patches(np.zeros((8, 8)), size=4, stride=4)
>>> patches.shape, origins.tolist()
((4, 4, 4), [[0, 0], [0, 4], [4, 0], [4, 4]])
"""

from __future__ import annotations

from typing import Any

from rleseg.data.cache import DATA_DIR_ENV, resolve_data_dir
from rleseg.data.errors import DataError, SourceMissingError
from rleseg.data.patches import PatchError, cut_patches, patch_origins, stitch_patches
from rleseg.data.sources import (
    LABEL_DIVISOR,
    Clip,
    Source,
    SourceSplit,
    create_source,
    list_sources,
    register_source,
    summarize,
)

_LAZY = {
    "ImageSegDataModule": "rleseg.data.datamodules",
    "VideoSegDataModule": "rleseg.data.datamodules",
    "PanopticDataModule": "rleseg.data.datamodules",
}

__all__ = [
    "DATA_DIR_ENV",
    "LABEL_DIVISOR",
    "Clip",
    "DataError",
    "ImageSegDataModule",
    "PanopticDataModule",
    "PatchError",
    "Source",
    "SourceMissingError",
    "SourceSplit",
    "VideoSegDataModule",
    "create_source",
    "cut_patches",
    "list_sources",
    "patch_origins",
    "register_source",
    "resolve_data_dir",
    "stitch_patches",
    "summarize",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rleseg.data' has no attribute {name!r}")
