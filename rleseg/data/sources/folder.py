"""Users' own data: a folder of images (or clips) and masks (DATA.md §4).

Layout (``root`` is the ``root`` argument)::

    root/classes.yaml            classes: [background, cell, debris]   # index = class id
                                 things: [cell]                        # names or ids; default none
                                 panoptic: false                       # masks hold class*1000+instance
    root/images/a.png            an image ...
    root/masks/a.png             ... and its mask (8/16-bit PNG, TIFF or .npy; same stem)
    root/images/clip1/0001.png   a clip: one subfolder of frames ...
    root/masks/clip1/0001.png    ... and one of masks, frame for frame

Splits: ``root/train/{images,masks}``, ``root/val/...`` (and optionally ``root/test/...``) when present,
else the one ``root/images`` folder split by a seeded shuffle (``val_fraction`` to validation). Test falls
back to validation. ``classes.json`` works like ``classes.yaml``; ``classes=`` overrides both.

Bad data (a corrupt or truncated file, a mask whose size differs from its image, an unknown class id, a
clip with a missing frame) raises :class:`~rleseg.data.errors.DataError` naming the file. With
``on_error="skip"`` the sample is dropped instead, and counted: a warning says how many and why, and
``source.skipped[split]`` lists them.

>>> import tempfile, numpy as np
>>> from PIL import Image
>>> from rleseg.data.sources import create_source
>>> root = tempfile.mkdtemp()
>>> for d in ("images", "masks"): os.makedirs(os.path.join(root, d))
>>> Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(root, "images", "a.png"))
>>> Image.fromarray(np.eye(8, dtype=np.uint8)).save(os.path.join(root, "masks", "a.png"))
>>> src = create_source("folder", root=root, classes=["background", "line"], val_fraction=0.0)
>>> clip = src.split("train").load(0)
>>> clip.image.shape, int(clip.semantic.sum())
((1, 8, 8, 3), 8)
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rleseg.data.errors import DataError
from rleseg.data.sources.base import LABEL_DIVISOR, SPLITS, Clip, Source, SourceSplit, register_source

__all__ = ["FolderSource", "IMAGE_EXTENSIONS", "list_images", "read_image", "read_image_shape", "read_mask"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".npy")
CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json")


def _pil_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    return (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 ``[H, W, 3]``; grey and 16-bit images are scaled to 8-bit RGB.

    Raises:
        DataError: the file is missing, corrupt or truncated (the message names it).
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()  # decode now: a truncated file fails here, not later in a worker
                arr = np.asarray(
                    im.convert("RGB") if im.mode in ("P", "PA", "1", "CMYK", "YCbCr", "LA") else im
                )
    except _pil_errors() as err:
        raise DataError(f"cannot read image {path}: {err}") from err
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise DataError(f"image {path} has shape {arr.shape}; expected [H, W], [H, W, 3] or [H, W, 4]")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        top = arr.max()
        arr = (arr * (255.0 / top) if top > 0 else arr).round().astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(arr, (*arr.shape[:2], 3)))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A single-channel mask file (PNG of any bit depth, palette PNG, TIFF or .npy) as int32 ``[H, W]``."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                    raise DataError(f"mask {path} is {im.mode}; masks must be single-channel class ids")
                arr = np.asarray(im)
    except DataError:
        raise
    except _pil_errors() as err:
        raise DataError(f"cannot read mask {path}: {err}") from err
    if arr.ndim != 2:
        raise DataError(f"mask {path} has shape {arr.shape}; masks must be 2-D class ids")
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        raise DataError(f"mask {path} holds {arr.dtype}; masks must hold integer class ids")
    return arr.astype(np.int32)


def read_image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                shape = tf.pages[0].shape
            return int(shape[0]), int(shape[1])
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        return h, w
    except _pil_errors() as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _find_mask(folder: Path, stem: str) -> Path | None:
    for ext in MASK_EXTENSIONS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


@dataclass
class _Sequence:
    """One image (one frame) or one clip: parallel lists of image and mask files."""

    name: str
    images: list[Path]
    masks: list[Path]
    shape: tuple[int, int] | None = None
    #: why the sequence is unusable, found while pairing files (a missing mask or frame)
    problem: str | None = None


def _frame_number(stem: str) -> int | None:
    m = re.search(r"(\d+)$", stem)
    return int(m.group(1)) if m else None


@register_source("folder")
class FolderSource(Source):
    """Images or clips with masks from a folder; see the module docstring for the layout.

    Args:
        root: the folder.
        classes: class names (index = id, 0 = background); default from ``root/classes.yaml|json``.
        things: thing classes (names or ids); default from the classes file, else none.
        panoptic: masks hold ``class * 1000 + instance``; default from the classes file, else False.
        val_fraction: share of a flat (unsplit) folder that goes to validation.
        on_error: ``"raise"`` (default) or ``"skip"`` bad samples (counted and warned about).
        validate: decode every file once when a split is first built (needed for ``on_error="skip"``);
            with False, bad files raise when a sample is loaded.
        seed: seed of the train/val shuffle of a flat folder.
        data_dir: unused (the folder is read in place); kept for a uniform source signature.
    """

    install_hint = (
        "create the folder as described in rleseg.data.sources.folder (images/, masks/, classes.yaml)"
    )
    has_instances = True

    def __init__(
        self,
        root: str,
        classes: list[str] | None = None,
        things: list[str | int] | None = None,
        panoptic: bool | None = None,
        val_fraction: float = 0.2,
        on_error: str = "raise",
        validate: bool = True,
        seed: int = 0,
        data_dir: str | None = None,
    ) -> None:
        super().__init__(data_dir=data_dir, seed=seed)
        if on_error not in ("raise", "skip"):
            raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if on_error == "skip" and not validate:
            raise DataError(
                "on_error='skip' needs validate=True (bad samples are found by the validation pass)"
            )
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"folder source root {self.root} does not exist")
        self.on_error, self.validate, self.val_fraction = on_error, bool(validate), float(val_fraction)
        meta = self._read_class_file() if classes is None or things is None or panoptic is None else {}
        names = classes if classes is not None else meta.get("classes")
        if not names:
            raise DataError(
                f"no classes for folder {self.root}: pass classes=[...] or write "
                f"{self.root / 'classes.yaml'} like:\n"
                "  classes: [background, cell]\n  things: [cell]\n  panoptic: false"
            )
        self._class_names = [str(n) for n in names]
        thing_list = things if things is not None else meta.get("things", [])
        self._things = sorted({self._class_id(t) for t in thing_list})
        self.panoptic = bool(panoptic if panoptic is not None else meta.get("panoptic", False))
        self.skipped: dict[str, list[tuple[str, str]]] = {}
        self.has_video = self._has_clips()  # type: ignore[misc]  # a folder holds clips or not
        self._scanned: dict[tuple[str, bool], list[_Sequence]] = {}

    # ------------------------------------------------------------------ metadata
    def _read_class_file(self) -> dict:
        for name in CLASS_FILES:
            path = self.root / name
            if path.is_file():
                try:
                    if path.suffix == ".json":
                        data = json.loads(path.read_text())
                    else:
                        import yaml

                        data = yaml.safe_load(path.read_text())
                except (OSError, ValueError) as err:
                    raise DataError(f"cannot parse {path}: {err}") from err
                except Exception as err:  # yaml.YAMLError is not a ValueError
                    raise DataError(f"cannot parse {path}: {err}") from err
                if isinstance(data, list):
                    data = {"classes": data}
                if not isinstance(data, dict):
                    raise DataError(
                        f"{path} must hold a mapping with a 'classes' list, got {type(data).__name__}"
                    )
                return data
        return {}

    def _class_id(self, thing: str | int) -> int:
        if isinstance(thing, int) or (isinstance(thing, str) and thing.isdigit()):
            cid = int(thing)
        elif thing in self._class_names:
            cid = self._class_names.index(thing)
        else:
            raise DataError(f"thing class {thing!r} is not one of the classes {self._class_names}")
        if not 1 <= cid < len(self._class_names):
            raise DataError(f"thing class id {cid} is outside 1..{len(self._class_names) - 1}")
        return cid

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def thing_classes(self) -> list[int]:
        return list(self._things)

    def is_prepared(self) -> bool:
        return True

    def peek_shape(self) -> tuple[int, int] | None:
        """(H, W) of the first training image, from its header; None when the folder holds none."""
        dirs = self._split_dirs()
        folder = (dirs["train"] if dirs else self.root) / "images"
        images = list_images(folder)
        if not images:
            clips = sorted(p for p in folder.iterdir() if p.is_dir())
            images = list_images(clips[0]) if clips else []
        return read_image_shape(images[0]) if images else None

    def prepare(self) -> None:
        """Validate every split once (raises on bad data unless ``on_error="skip"``)."""
        for split in ("train", "val"):
            for video in (False, True) if self._has_clips() else (False,):
                self.split(split, video=video)

    # ------------------------------------------------------------------ scanning
    def _split_dirs(self) -> dict[str, Path] | None:
        if (self.root / "train" / "images").is_dir():
            dirs = {s: self.root / s for s in SPLITS if (self.root / s / "images").is_dir()}
            if "val" not in dirs:
                raise DataError(f"{self.root} has train/images but no val/images")
            return dirs
        if not (self.root / "images").is_dir():
            raise DataError(
                f"{self.root} has neither images/ nor train/images/ (see rleseg.data.sources.folder)"
            )
        return None

    def _has_clips(self) -> bool:
        dirs = self._split_dirs()
        for base in dirs.values() if dirs else [self.root]:
            if any(p.is_dir() for p in (base / "images").iterdir()):
                return True
        return False

    def _sequences(self, base: Path, video: bool) -> list[_Sequence]:
        """Pair every image (and every clip frame) in ``base/images`` with its mask in ``base/masks``."""
        img_dir, mask_dir = base / "images", base / "masks"
        out: list[_Sequence] = []
        singles = list_images(img_dir)
        clips = sorted(p for p in img_dir.iterdir() if p.is_dir())
        if not video:
            for p in singles:
                m = _find_mask(mask_dir, p.stem)
                problem = None if m else f"no mask for {p} (expected {mask_dir / p.stem}.png)"
                out.append(_Sequence(p.name, [p], [m] if m else [], problem=problem))
        for clip in clips:
            frames = list_images(clip)
            masks = [_find_mask(mask_dir / clip.name, f.stem) for f in frames]
            problem = self._clip_problem(clip, frames, masks, mask_dir / clip.name)
            if video:
                out.append(_Sequence(clip.name, frames, [m for m in masks if m is not None], problem=problem))
            else:  # the image DataModule sees every frame of a clip as an image (a bad clip: every frame)
                for f, m in zip(frames, masks, strict=True):
                    out.append(_Sequence(f"{clip.name}/{f.name}", [f], [m] if m else [], problem=problem))
        if video and not out:
            raise DataError(
                f"{img_dir} holds no clips (subfolders of frames); the video DataModule needs clips"
            )
        return out

    @staticmethod
    def _clip_problem(clip: Path, frames: list[Path], masks: list[Path | None], mask_dir: Path) -> str | None:
        if not frames:
            return f"clip {clip} has no frames"
        for f, m in zip(frames, masks, strict=True):
            if m is None:
                return f"clip {clip}: frame {f.name} has no mask (expected {mask_dir / f.stem}.png)"
        image_stems = {f.stem for f in frames}
        if mask_dir.is_dir():
            extra = sorted(p.name for p in mask_dir.iterdir() if p.is_file() and p.stem not in image_stems)
            if extra:
                return f"clip {clip}: mask {mask_dir / extra[0]} has no image frame"
        numbers = [_frame_number(f.stem) for f in frames]
        if all(n is not None for n in numbers):
            for a, b, fa, fb in zip(numbers, numbers[1:], frames, frames[1:], strict=False):
                if b != a + 1:
                    return f"clip {clip}: frame {a + 1} is missing between {fa.name} and {fb.name}"
        return None

    def _check_sequence(self, seq: _Sequence) -> str | None:
        """Why ``seq`` is unusable, or None; records its frame shape."""
        if seq.problem:
            return seq.problem
        if not self.validate:
            seq.shape = read_image_shape(seq.images[0])
            return None
        shape = None
        for img_path, mask_path in zip(seq.images, seq.masks, strict=True):
            try:
                image = read_image(img_path)
                self._labels(read_mask(mask_path), image.shape[:2], mask_path, img_path)
            except DataError as err:
                return str(err)
            if shape is not None and image.shape[:2] != shape:
                return f"clip {seq.name}: frame {img_path.name} is {image.shape[:2]}, earlier frames {shape}"
            shape = image.shape[:2]
        seq.shape = shape
        return None

    def _labels(
        self, raw: np.ndarray, shape: tuple[int, int], mask_path: Path, image_path: Path
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(semantic, panoptic) of a raw mask, checked against the image size and the class list."""
        if raw.shape != tuple(shape):
            raise DataError(
                f"mask {mask_path} is {raw.shape[0]}x{raw.shape[1]} but "
                f"image {image_path} is {shape[0]}x{shape[1]}"
            )
        n = len(self._class_names)
        semantic = raw // LABEL_DIVISOR if self.panoptic else raw
        if raw.size and (raw.min() < 0 or semantic.max() >= n):
            bad = int(semantic.max()) if semantic.max() >= n else int(raw.min())
            kind = "panoptic id class" if self.panoptic else "class id"
            raise DataError(f"mask {mask_path} holds {kind} {bad}, outside 0..{n - 1} ({self._class_names})")
        panoptic = raw if self.panoptic else None
        return semantic.astype(np.int32), panoptic

    def scan(self, split: str, video: bool) -> list[_Sequence]:
        """The usable sequences of ``split``, validated once and cached; bad ones raise or are skipped."""
        key = (split, video)
        if key in self._scanned:
            return self._scanned[key]
        dirs = self._split_dirs()
        if dirs is not None:
            seqs = self._sequences(dirs.get(split, dirs["val"]), video)
        else:
            seqs = self._sequences(self.root, video)
            if seqs:
                rng = np.random.default_rng(self.seed)
                order = rng.permutation(len(seqs))
                n_val = int(round(self.val_fraction * len(seqs)))
                if self.val_fraction > 0 and n_val == 0:
                    n_val = 1
                if n_val >= len(seqs) and split == "train":
                    raise DataError(
                        f"{self.root}: val_fraction={self.val_fraction} leaves no training samples"
                    )
                chosen = order[n_val:] if split == "train" else order[:n_val]
                seqs = [seqs[i] for i in sorted(chosen)]
        good, skipped = [], []
        for seq in seqs:
            problem = self._check_sequence(seq)
            if problem is None:
                good.append(seq)
            elif self.on_error == "skip":
                skipped.append((seq.name, problem))
            else:
                raise DataError(problem)
        if skipped:
            self.skipped[split] = self.skipped.get(split, []) + skipped
            warnings.warn(
                f"folder {self.root} split {split!r}: skipped {len(skipped)} bad sample(s), "
                f"first: {skipped[0][1]}",
                stacklevel=2,
            )
        self._scanned[key] = good
        return good

    def split(self, split: str, *, video: bool = False) -> SourceSplit:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        return _FolderSplit(self, self.scan(split, video))

    def load_sequence(self, seq: _Sequence, start: int, stop: int) -> Clip:
        images, semantics, panoptics = [], [], []
        for img_path, mask_path in zip(seq.images[start:stop], seq.masks[start:stop], strict=True):
            image = read_image(img_path)
            semantic, panoptic = self._labels(read_mask(mask_path), image.shape[:2], mask_path, img_path)
            if images and image.shape != images[0].shape:
                raise DataError(
                    f"clip {seq.name}: frame {img_path.name} is {image.shape[:2]}, earlier frames differ"
                )
            images.append(image)
            semantics.append(semantic)
            panoptics.append(panoptic)
        pan = None if panoptics[0] is None else np.stack(panoptics).astype(np.int32)
        return Clip(np.stack(images), np.stack(semantics), pan, name=seq.name)


class _FolderSplit(SourceSplit):
    def __init__(self, source: FolderSource, sequences: list[_Sequence]) -> None:
        self.source, self.sequences = source, sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def num_frames(self, i: int) -> int:
        return len(self.sequences[i].images)

    def frame_shape(self, i: int) -> tuple[int, int]:
        seq = self.sequences[i]
        if seq.shape is None:
            seq.shape = read_image_shape(seq.images[0])
        return seq.shape

    def load(self, i: int, start: int = 0, stop: int | None = None) -> Clip:
        stop = self._check_index(i, start, stop)
        return self.source.load_sequence(self.sequences[i], start, stop)
