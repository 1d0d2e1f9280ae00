"""Data sources and their registry: ``create_source(name, **cfg)``, ``list_sources(pattern)``.

Built in: ``composites`` (Fashion-MNIST scenes and clips), ``mri`` (Colin27 T1 with the AAL atlas),
``nuclei`` (stardist's real nuclei image), ``folder`` (users' own images, clips and masks).

>>> from rleseg.data.sources import create_source, list_sources
>>> list_sources()
['composites', 'folder', 'mri', 'nuclei']
"""

from rleseg.data.sources.base import (
    LABEL_DIVISOR,
    SPLITS,
    Clip,
    Source,
    SourceSplit,
    create_source,
    list_sources,
    register_source,
    source_class,
    summarize,
)
from rleseg.data.sources.composites import CompositeScenes
from rleseg.data.sources.folder import FolderSource
from rleseg.data.sources.mri import BrainMRI
from rleseg.data.sources.nuclei import Nuclei

__all__ = [
    "LABEL_DIVISOR",
    "SPLITS",
    "BrainMRI",
    "Clip",
    "CompositeScenes",
    "FolderSource",
    "Nuclei",
    "Source",
    "SourceSplit",
    "create_source",
    "list_sources",
    "register_source",
    "source_class",
    "summarize",
]
