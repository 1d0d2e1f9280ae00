"""Brain MRI slices and slice-clips labelled with the AAL atlas (real images, real hand-drawn labels).

The Debian package ``mricron-data`` ships ``ch2.nii.gz`` (a T1 MRI of one subject, MNI "Colin27") and
``aal.nii.gz`` (116 anatomical regions drawn on that same brain, names in ``aal.nii.txt``), on the same
181×217×181 grid (DATA.md §2). A 2-D slice is an image; consecutive slices are a clip whose regions appear,
grow, shrink and vanish with persistent ids. Left and right halves of a region are two instances of one
class (panoptic). Cite the AAL atlas (Tzourio-Mazoyer et al. 2002, research use).

Class groupings sweep N: ``aal116`` (every region), ``aal62`` (left/right merged: 54 pairs + 8 vermis
parts), ``lobes`` (8 groups by the atlas code's first digit: frontal, insula, limbic, occipital, parietal,
subcortical, temporal, cerebellum). Splits are slabs along the slicing axis with a gap: training slices
lie below ``split_at``, validation (= test: one subject only) slices at ``split_at + gap`` and above.
Slices of one subject are correlated: say so in every report. An axial or coronal slab split leaves some
fine regions (``aal62``/``aal116``) out of training altogether (``rleseg data prepare mri`` lists them);
``axis="sagittal"`` splits left from right hemisphere and keeps every class on both sides.

>>> from rleseg.data.sources import create_source
>>> src = create_source("mri", grouping="lobes")
>>> src.num_classes, src.class_names[1]
(9, 'frontal')
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from rleseg.data.cache import load_npz, save_npz
from rleseg.data.errors import DataError, SourceMissingError
from rleseg.data.sources.base import LABEL_DIVISOR, Clip, Source, SourceSplit, register_source

__all__ = ["BrainMRI", "GROUPINGS", "LOBES", "parse_aal_names"]

DEBIAN_DIR = "/usr/share/mricron/templates"
RAW_FILES = ("ch2.nii.gz", "aal.nii.gz", "aal.nii.txt")
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
GROUPINGS = ("aal116", "aal62", "lobes")
#: first digit of the AAL code -> lobe
LOBES = {
    2: "frontal",
    3: "insula",
    4: "limbic",
    5: "occipital",
    6: "parietal",
    7: "subcortical",
    8: "temporal",
    9: "cerebellum",
}
#: instance ids of the two hemispheres and of midline (vermis) structures
HEMISPHERES = {"L": 1, "R": 2, "": 3}


def parse_aal_names(text: str) -> tuple[list[int], list[str], list[int]]:
    """Parse ``aal.nii.txt`` lines ``"id Name code"`` into (ids, names, codes); blank lines are skipped.

    >>> parse_aal_names("1 Precentral_L 2001\\n2 Precentral_R 2002\\n \\n")
    ([1, 2], ['Precentral_L', 'Precentral_R'], [2001, 2002])
    """
    ids, names, codes = [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise DataError(f"aal.nii.txt line {lineno}: expected 'id Name code', got {line!r}")
        ids.append(int(parts[0]))
        names.append(parts[1])
        codes.append(int(parts[2]))
    return ids, names, codes


def _hemisphere(name: str) -> str:
    return name[-1] if name.endswith(("_L", "_R")) else ""


@lru_cache(maxsize=2)
def _load(path: str) -> dict[str, np.ndarray]:
    return load_npz(path)


@register_source("mri")
class BrainMRI(Source):
    """Colin27 T1 slices with AAL labels.

    Args:
        grouping: ``"aal116"``, ``"aal62"`` or ``"lobes"`` (see module docstring).
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        split_at: first slice index excluded from training (default: middle of the labelled range).
        gap: slices skipped between the training and validation slabs.
        pad_to: every slice is zero-padded (centred) to ``pad_to × pad_to`` (>= 217, the largest side);
            224 divides by 8, 16 and 32.
        data_dir: cache folder (default ``$RLESEG_DATA_DIR`` or ``./data_cache``).
        raw_dir: folder with ``ch2.nii.gz``, ``aal.nii.gz``, ``aal.nii.txt``; default: search
            ``<data_dir>/mricron`` then the Debian path.
        seed: unused (the slices are fixed); kept for a uniform source signature.
    """

    install_hint = "sudo apt-get install -y mricron-data"
    has_video = True
    has_instances = True

    def __init__(
        self,
        grouping: str = "aal62",
        axis: str = "axial",
        split_at: int | None = None,
        gap: int = 10,
        pad_to: int = 224,
        data_dir: str | None = None,
        raw_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(data_dir=data_dir, seed=seed)
        if grouping not in GROUPINGS:
            raise DataError(f"unknown MRI grouping {grouping!r}; choose one of {list(GROUPINGS)}")
        if axis not in AXES:
            raise DataError(f"unknown MRI axis {axis!r}; choose one of {list(AXES)}")
        if pad_to < 217:
            raise DataError(f"pad_to must be >= 217 (the largest slice side), got {pad_to}")
        if gap < 0:
            raise DataError(f"gap must be >= 0, got {gap}")
        self.grouping, self.axis, self.gap, self.pad_to = grouping, axis, int(gap), int(pad_to)
        self._split_at = split_at
        self.raw_dir = raw_dir
        self._meta: tuple[list[str], np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ raw files and cache
    @property
    def cache_file(self) -> Path:
        return self.cache_path("colin27_aal.npz")

    def find_raw(self) -> Path:
        """The folder holding the three raw files; raises SourceMissingError naming the install."""
        candidates = [Path(self.raw_dir)] if self.raw_dir else [self.data_dir / "mricron", Path(DEBIAN_DIR)]
        for folder in candidates:
            if all((folder / n).is_file() for n in RAW_FILES):
                return folder
        raise SourceMissingError(
            f"the AAL atlas and Colin27 T1 were not found (looked for {list(RAW_FILES)} in "
            f"{[str(c) for c in candidates]}). Install them with `{self.install_hint}`, or copy the three "
            f"files into {self.data_dir / 'mricron'}."
        )

    def is_prepared(self) -> bool:
        return self.cache_file.is_file()

    def prepare(self) -> None:
        """Read the two volumes and the region names once and cache them (~1 s)."""
        if self.is_prepared():
            return
        import nibabel as nib

        raw = self.find_raw()
        try:
            t1_img, atlas_img = nib.load(raw / "ch2.nii.gz"), nib.load(raw / "aal.nii.gz")
            t1, atlas = np.asarray(t1_img.dataobj), np.asarray(atlas_img.dataobj)
        except Exception as err:  # nibabel raises several unrelated types on a damaged file
            raise DataError(f"cannot read the MRI volumes in {raw}: {err}") from err
        if t1.shape != atlas.shape or not np.allclose(t1_img.affine, atlas_img.affine):
            raise DataError(f"{raw}: ch2 {t1.shape} and aal {atlas.shape} are not on the same grid")
        ids, names, codes = parse_aal_names((raw / "aal.nii.txt").read_text())
        unknown = np.setdiff1d(np.unique(atlas), [0, *ids])
        if unknown.size:
            raise DataError(
                f"{raw / 'aal.nii.gz'} holds region ids {unknown.tolist()} missing from aal.nii.txt"
            )
        t1 = np.clip(t1, 0, 255).astype(np.uint8) if t1.dtype != np.uint8 else t1
        save_npz(
            self.cache_file,
            t1=t1,
            atlas=atlas.astype(np.uint8),
            ids=np.asarray(ids, np.int32),
            names=np.asarray(names),
            codes=np.asarray(codes, np.int32),
        )

    def _region_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, names, codes) from the cache, else straight from the small text file (no volume read)."""
        if self.is_prepared():
            data = _load(str(self.cache_file))
            return data["ids"], data["names"], data["codes"]
        ids, names, codes = parse_aal_names((self.find_raw() / "aal.nii.txt").read_text())
        return np.asarray(ids), np.asarray(names), np.asarray(codes)

    def _grouping(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(class names, lookup atlas id -> class, lookup atlas id -> instance) for this grouping."""
        if self._meta is None:
            ids, names, codes = self._region_table()
            size = int(ids.max()) + 1
            to_class = np.zeros(size, np.int32)
            to_inst = np.zeros(size, np.int32)
            classes = ["background"]
            for rid, name, code in zip(ids.tolist(), names.tolist(), codes.tolist(), strict=True):
                hemi = _hemisphere(name)
                if self.grouping == "aal116":
                    key = name
                elif self.grouping == "aal62":
                    key = name[:-2] if hemi else name
                else:
                    key = LOBES[code // 1000]
                if key not in classes:
                    classes.append(key)
                to_class[rid] = classes.index(key)
                to_inst[rid] = 1 if self.grouping == "aal116" else HEMISPHERES[hemi]
            self._meta = (classes, to_class, to_inst)
        return self._meta

    # ------------------------------------------------------------------ metadata
    @property
    def class_names(self) -> list[str]:
        return list(self._grouping()[0])

    @property
    def thing_classes(self) -> list[int]:
        # every region is countable per hemisphere: all foreground classes are things
        return list(range(1, self.num_classes))

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.pad_to, self.pad_to)

    # ------------------------------------------------------------------ splits
    def slices(self, split: str) -> np.ndarray:
        """Indices of the labelled slices of ``split`` along the axis (val and test share the upper slab)."""
        if not self.is_prepared():
            self.prepare()
        atlas = _load(str(self.cache_file))["atlas"]
        ax = AXES[self.axis]
        labelled = np.flatnonzero(atlas.any(axis=tuple(a for a in range(3) if a != ax)))
        split_at = self._split_at
        if split_at is None:
            split_at = int(labelled[len(labelled) // 2])
        if split == "train":
            out = labelled[labelled < split_at]
        else:
            out = labelled[labelled >= split_at + self.gap]
        if out.size == 0:
            raise DataError(
                f"MRI {self.axis} split {split!r} is empty with split_at={split_at}, gap={self.gap} "
                f"(labelled slices {labelled[0]}..{labelled[-1]})"
            )
        return out

    def split(self, split: str, *, video: bool = False) -> SourceSplit:
        self._check_split(split, video)
        return _MRISplit(self, split, self.slices(split), video)

    def load_slices(self, indices: np.ndarray, name: str) -> Clip:
        """Slices ``indices`` as a clip: T1 grey -> RGB, atlas -> semantic and panoptic, padded."""
        data = _load(str(self.cache_file))
        ax = AXES[self.axis]
        _, to_class, to_inst = self._grouping()
        t1 = np.moveaxis(np.take(data["t1"], indices, axis=ax), ax, 0)
        atlas = np.moveaxis(np.take(data["atlas"], indices, axis=ax), ax, 0)
        # rotate so that the top of each picture is anterior (axial) or superior (coronal, sagittal)
        t1, atlas = np.rot90(t1, axes=(1, 2)), np.rot90(atlas, axes=(1, 2))
        h, w = t1.shape[1:]
        top, left = (self.pad_to - h) // 2, (self.pad_to - w) // 2
        pad = ((0, 0), (top, self.pad_to - h - top), (left, self.pad_to - w - left))
        t1, atlas = np.pad(t1, pad), np.pad(atlas, pad)
        semantic = to_class[atlas]
        panoptic = np.where(semantic > 0, semantic * LABEL_DIVISOR + to_inst[atlas], 0).astype(np.int32)
        image = np.repeat(t1[..., None], 3, axis=-1)
        return Clip(np.ascontiguousarray(image), semantic.astype(np.int32), panoptic, name=name)


class _MRISplit(SourceSplit):
    def __init__(self, source: BrainMRI, split: str, slices: np.ndarray, video: bool) -> None:
        self.source, self.split, self.slices, self.video = source, split, slices, video

    def __len__(self) -> int:
        return 1 if self.video else len(self.slices)

    def num_frames(self, i: int) -> int:
        return len(self.slices) if self.video else 1

    def frame_shape(self, i: int) -> tuple[int, int]:
        return self.source.frame_shape

    def load(self, i: int, start: int = 0, stop: int | None = None) -> Clip:
        stop = self._check_index(i, start, stop)
        idx = self.slices[start:stop] if self.video else self.slices[i : i + 1]
        name = f"{self.source.axis}/{self.split}/" + (f"{idx[0]}-{idx[-1]}" if self.video else f"{idx[0]}")
        return self.source.load_slices(idx, name)
