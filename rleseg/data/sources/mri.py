"""Brain MRI slices and slice-clips labelled with the AAL atlas (real images, real hand-drawn labels).

The Debian package ``mricron-data`` ships ``ch2.nii.gz`` (a T1 MRI of one subject, MNI "Colin27") and
``aal.nii.gz`` (116 anatomical regions drawn on that same brain, names in ``aal.nii.txt``), on the same
181×217×181 grid (DATA.md §2). A 2-D slice is an image; consecutive slices are a clip whose regions appear,
grow, shrink and vanish with persistent ids. Left and right halves of a region are two instances of one
class (panoptic). Cite the AAL atlas (Tzourio-Mazoyer et al. 2002, research use).

Class groupings sweep N: ``aal116`` (every region), ``aal62`` (left/right merged: 54 pairs + 8 vermis
parts), ``lobes`` (8 groups by the atlas code's first digit: frontal, insula, limbic, occipital, parietal,
subcortical, temporal, cerebellum).

Two splits along the slicing axis, both with gaps of dropped slices so that no training slice is next
to a validation (= test: one subject only) slice:

* ``split="interleaved"`` (default): from the first labelled slice on, slabs of ``slab`` consecutive
  training slices and ``val_slab`` (default ``slab``) validation slices alternate, with ``gap`` slices
  dropped after every slab: train ``slab`` | gap | val ``val_slab`` | gap | train ``slab`` | ... Both
  splits sample the whole extent of the brain. The default (slabs of 8, gap 4) gives 50 training and 48
  validation slices axially (64 / 56 coronal, 50 / 48 sagittal) and keeps all 8 lobes in both splits on
  every axis; a few small fine regions can still fall on one side only (axial ``aal62``: Vermis_1_2 is
  missing from training; ``rleseg data prepare mri`` lists such classes). ``slab=4, gap=2`` keeps every
  region of every grouping on both sides on every axis.
* ``split="slab"``: one training slab below ``split_at`` (default: the middle labelled slice) and one
  validation slab from ``split_at + gap`` (default gap 10) up. Whole classes go missing from one side:
  axial lobes lose the cerebellum from validation, axial ``aal62`` 9 regions from training and 36 from
  validation.

Slices of one subject are correlated (and more so in the interleaved split, whose validation slices
lie ``gap + 1`` slices from training ones): say so in every report. With ``video=True`` each run of
consecutive slices of a split (one per slab) is a clip.

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

__all__ = ["BrainMRI", "GROUPINGS", "LOBES", "SPLITS", "interleaved_slabs", "parse_aal_names"]

DEBIAN_DIR = "/usr/share/mricron/templates"
RAW_FILES = ("ch2.nii.gz", "aal.nii.gz", "aal.nii.txt")
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
GROUPINGS = ("aal116", "aal62", "lobes")
#: split kinds -> their default gap (slices dropped between a training and a validation slab)
SPLITS = {"interleaved": 4, "slab": 10}
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


@lru_cache(maxsize=3)
def _volumes(path: str, ax: int) -> tuple[np.ndarray, np.ndarray]:
    """(T1, atlas) with the slicing axis first, contiguous: a slice is one block of memory (``np.take``
    along the volume's last axis cost ~15 ms a slice; ``load_slices`` now takes ~1 ms)."""
    data = _load(path)
    return tuple(np.ascontiguousarray(np.moveaxis(data[k], ax, 0)) for k in ("t1", "atlas"))


@register_source("mri")
class BrainMRI(Source):
    """Colin27 T1 slices with AAL labels.

    Args:
        grouping: ``"aal116"``, ``"aal62"`` or ``"lobes"`` (see module docstring).
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        split: ``"interleaved"`` (alternating slabs with gaps, both spanning the brain) or ``"slab"``
            (one training slab, one validation slab); see the module docstring.
        slab: interleaved split: consecutive training slices per slab.
        val_slab: interleaved split: consecutive validation slices per slab (default: ``slab``).
        split_at: slab split: first slice index excluded from training (default: middle of the
            labelled range).
        gap: slices dropped between a training slab and a validation slab (default: 4 interleaved,
            10 slab); no training slice lies within ``gap`` slices of a validation slice.
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
        split: str = "interleaved",
        slab: int = 8,
        val_slab: int | None = None,
        split_at: int | None = None,
        gap: int | None = None,
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
        if split not in SPLITS:
            raise DataError(f"unknown MRI split {split!r}; choose one of {list(SPLITS)}")
        if split == "interleaved" and split_at is not None:
            raise DataError("split_at applies to split='slab'; the interleaved split has no split point")
        val_slab = slab if val_slab is None else val_slab
        if slab < 1 or val_slab < 1:
            raise DataError(f"slab and val_slab must be >= 1, got {slab} and {val_slab}")
        gap = SPLITS[split] if gap is None else gap
        if gap < 0:
            raise DataError(f"gap must be >= 0, got {gap}")
        self.grouping, self.axis, self.gap, self.pad_to = grouping, axis, int(gap), int(pad_to)
        self.split_kind, self.slab, self.val_slab = split, int(slab), int(val_slab)
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
        """Indices of the labelled slices of ``split`` along the axis (val and test are the same slices)."""
        if not self.is_prepared():
            self.prepare()
        atlas = _load(str(self.cache_file))["atlas"]
        ax = AXES[self.axis]
        labelled = np.flatnonzero(atlas.any(axis=tuple(a for a in range(3) if a != ax)))
        if self.split_kind == "interleaved":
            train, val = interleaved_slabs(labelled, self.slab, self.val_slab, self.gap)
            out = train if split == "train" else val
            how = f"slab={self.slab}, val_slab={self.val_slab}, gap={self.gap}"
        else:
            split_at = self._split_at
            if split_at is None:
                split_at = int(labelled[len(labelled) // 2])
            if split == "train":
                out = labelled[labelled < split_at]
            else:
                out = labelled[labelled >= split_at + self.gap]
            how = f"split_at={split_at}, gap={self.gap}"
        if out.size == 0:
            raise DataError(
                f"MRI {self.axis} {self.split_kind} split {split!r} is empty with {how} "
                f"(labelled slices {labelled[0]}..{labelled[-1]})"
            )
        return out

    def split(self, split: str, *, video: bool = False) -> SourceSplit:
        self._check_split(split, video)
        return _MRISplit(self, split, self.slices(split), video)

    def load_slices(self, indices: np.ndarray, name: str) -> Clip:
        """Slices ``indices`` as a clip: T1 grey -> RGB, atlas -> semantic and panoptic, padded."""
        volumes = _volumes(str(self.cache_file), AXES[self.axis])
        _, to_class, to_inst = self._grouping()
        t1, atlas = volumes[0][indices], volumes[1][indices]
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


def interleaved_slabs(
    labelled: np.ndarray, slab: int, val_slab: int, gap: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) slice indices: from ``labelled[0]`` on, ``slab`` training slices, ``gap`` dropped,
    ``val_slab`` validation slices, ``gap`` dropped, and again (the last slab may be cut short).

    >>> train, val = interleaved_slabs(np.arange(10, 30), 3, 2, 1)
    >>> train.tolist(), val.tolist()
    ([10, 11, 12, 17, 18, 19, 24, 25, 26], [14, 15, 21, 22, 28, 29])
    """
    labelled = np.asarray(labelled)
    phase = (labelled - labelled[0]) % (slab + val_slab + 2 * gap)
    train = labelled[phase < slab]
    val = labelled[(phase >= slab + gap) & (phase < slab + gap + val_slab)]
    return train, val


class _MRISplit(SourceSplit):
    """Images: one sequence per slice. Clips: one sequence per run of consecutive slices (per slab)."""

    def __init__(self, source: BrainMRI, split: str, slices: np.ndarray, video: bool) -> None:
        self.source, self.split, self.slices, self.video = source, split, slices, video
        breaks = np.flatnonzero(np.diff(slices) != 1) + 1
        self.runs = np.split(slices, breaks) if video else [slices[i : i + 1] for i in range(len(slices))]

    def __len__(self) -> int:
        return len(self.runs)

    def num_frames(self, i: int) -> int:
        return len(self.runs[i])

    def frame_shape(self, i: int) -> tuple[int, int]:
        return self.source.frame_shape

    def load(self, i: int, start: int = 0, stop: int | None = None) -> Clip:
        stop = self._check_index(i, start, stop)
        idx = self.runs[i][start:stop]
        name = f"{self.source.axis}/{self.split}/" + (f"{idx[0]}-{idx[-1]}" if self.video else f"{idx[0]}")
        return self.source.load_slices(idx, name)
