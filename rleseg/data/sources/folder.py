"""Users' own data: a folder of images (or clips) and masks (DATA.md §4).

The folder (``root``) holds one of three layouts (looked for in this order):

1. Split folders: ``root/train/{images,masks}``, ``root/val/...`` (and optionally ``root/test/...``).
2. One folder: ``root/images`` + ``root/masks``, split by a seeded shuffle (``val_fraction`` to
   validation)::

    root/classes.yaml            classes: [background, cell, debris]   # index = class id
                                 things: [cell]                        # names or ids; default none
                                 panoptic: false                       # masks hold class*1000+instance
    root/images/a.png            an image ...
    root/masks/a.png             ... and its mask (8/16-bit PNG, TIFF or .npy; same stem)
    root/images/clip1/0001.png   a clip: one subfolder of frames ...
    root/masks/clip1/0001.png    ... and one of masks, frame for frame

3. A Pascal VOC or labelme (``labelme2voc.py``) export, read as it is::

    root/JPEGImages/a.jpg                 the images
    root/SegmentationClass/a.png          VOC: palette PNG, palette index = class id, 255 = void
    root/SegmentationClass/a.npy          labelme: int32 class ids, -1 = void (__ignore__)
    root/SegmentationClassPNG/a.png       labelme: palette PNG, 255 = void
    root/class_names.txt                  one name per line, line i = class i (labelme: see below)
    root/ImageSets/Segmentation/train.txt optional: the stems of each split (val.txt, test.txt)

   Masks are read from the first of ``SegmentationClass/``, ``SegmentationClassPNG/`` that holds any;
   the samples are the masks (an image without a mask, as VOC's detection-only ones, is not a sample).
   labelme's ``class_names.txt`` starts with ``__ignore__`` (its -1 label: void, not a class) and
   ``_background_`` (class 0, named ``background`` here). Without ``ImageSets/Segmentation/train.txt``
   the masks are split by the seeded shuffle of layout 2.

Test falls back to validation. Classes come from ``classes=``, else ``classes.yaml``/``classes.yml``/
``classes.json``, else ``class_names.txt``.

Void: mask pixels equal to ``ignore_label`` (default 255, VOC's void; in panoptic masks, pixels whose class
``id // 1000`` is ``ignore_label``) and pixels equal to -1 (labelme's ignore) are void: not a class, never
an "unknown class" error. They hold ``ignore_label`` in the semantic map and ``ignore_label * 1000`` in the
panoptic map; ``source.ignore_index`` says which value (None with ``ignore_label=None``: no void, and 255 is
a class id like any other).

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
#: labelme's / VOC's class list: one name per line
CLASS_NAMES_TXT = "class_names.txt"
#: the mask folders of a VOC / labelme export, in the order they are looked for
VOC_MASK_DIRS = ("SegmentationClass", "SegmentationClassPNG")
LAYOUTS = (
    "train/images/ + val/images/ (and masks/)",
    "images/ + masks/",
    "a VOC/labelme export: JPEGImages/ + SegmentationClass/ or SegmentationClassPNG/",
)


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


def _find_mask(folder: Path, stem: str, extensions: tuple[str, ...] = MASK_EXTENSIONS) -> Path | None:
    for ext in extensions:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def _mask_files(folder: Path) -> list[Path]:
    """Mask files directly inside ``folder``, one per stem (the first of MASK_EXTENSIONS), by stem."""
    if not folder.is_dir():
        return []
    by_stem: dict[str, Path] = {}
    rank = {ext: i for i, ext in enumerate(MASK_EXTENSIONS)}
    for p in folder.iterdir():
        ext = p.suffix.lower()
        if p.is_file() and ext in rank:
            old = by_stem.get(p.stem)
            if old is None or rank[ext] < rank[old.suffix.lower()]:
                by_stem[p.stem] = p
    return [by_stem[k] for k in sorted(by_stem)]


def read_class_names_txt(path: Path) -> list[str]:
    """Class names from a ``class_names.txt`` (line i = class i). labelme's leading ``__ignore__`` (its -1
    label) is void, not a class, and is dropped; its ``_background_`` (class 0) is named ``background``."""
    try:
        names = [line.strip() for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    names = [n for n in names if n]
    if names and names[0] == "__ignore__":
        names = names[1:]
    if names and names[0] == "_background_":
        names[0] = "background"
    if "__ignore__" in names:
        raise DataError(f"{path}: __ignore__ must be the first line (labelme's -1 label), not a class")
    return names


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
        val_fraction: share of a flat (unsplit) folder, or of an export without split lists, that goes
            to validation.
        ignore_label: the mask value of void pixels (default 255, VOC's void); -1 is void too. None: no
            void (255 is then a class id like any other).
        on_error: ``"raise"`` (default) or ``"skip"`` bad samples (counted and warned about).
        validate: decode every file once when a split is first built (needed for ``on_error="skip"``);
            with False, bad files raise when a sample is loaded.
        seed: seed of the train/val shuffle of a flat folder.
        data_dir: unused (the folder is read in place); kept for a uniform source signature.
    """

    install_hint = (
        "create the folder as described in rleseg.data.sources.folder (images/, masks/, classes.yaml), "
        "or point root at a VOC/labelme export (JPEGImages/, SegmentationClass/, class_names.txt)"
    )
    has_instances = True

    def __init__(
        self,
        root: str,
        classes: list[str] | None = None,
        things: list[str | int] | None = None,
        panoptic: bool | None = None,
        val_fraction: float = 0.2,
        ignore_label: int | None = 255,
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
        self.layout = self._detect_layout()
        meta = self._read_class_file() if classes is None or things is None or panoptic is None else {}
        names = classes if classes is not None else meta.get("classes")
        if not names:
            raise DataError(
                f"no classes for folder {self.root}: pass classes=[...] or write "
                f"{self.root / 'classes.yaml'} like:\n"
                "  classes: [background, cell]\n  things: [cell]\n  panoptic: false\n"
                f"(or {self.root / CLASS_NAMES_TXT}: one class name per line, line i = class i)"
            )
        self._class_names = [str(n) for n in names]
        if ignore_label is not None and not isinstance(ignore_label, int | np.integer):
            raise DataError(f"ignore_label must be an integer or None, got {ignore_label!r}")
        self.ignore_index = None if ignore_label is None else int(ignore_label)
        if self.ignore_index is not None and 0 <= self.ignore_index < len(self._class_names):
            raise DataError(
                f"ignore_label={self.ignore_index} is a class id of the {len(self._class_names)} classes; "
                f"pass ignore_label=None (no void) or a value outside 0..{len(self._class_names) - 1}"
            )
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
        txt = self.root / CLASS_NAMES_TXT
        if txt.is_file():
            return {"classes": read_class_names_txt(txt)}
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
        if self.layout == "voc":
            for seq in self._voc_sequences("train")[0]:
                if seq.images:
                    return read_image_shape(seq.images[0])
            return None
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
    def _detect_layout(self) -> str:
        """``"splits"``, ``"flat"`` or ``"voc"`` (see the module docstring); a folder matching none raises."""
        if (self.root / "train" / "images").is_dir():
            return "splits"
        if (self.root / "images").is_dir():
            return "flat"
        if (self.root / "JPEGImages").is_dir():
            if self._voc_mask_dir() is None:
                raise DataError(
                    f"{self.root} has JPEGImages/ but no masks in "
                    f"{' or '.join(d + '/' for d in VOC_MASK_DIRS)} (a VOC/labelme export needs them)"
                )
            return "voc"
        raise DataError(
            f"{self.root} matches no folder layout; looked for {'; '.join(LAYOUTS)} "
            "(see rleseg.data.sources.folder)"
        )

    def _voc_mask_dir(self) -> Path | None:
        for name in VOC_MASK_DIRS:
            if _mask_files(self.root / name):
                return self.root / name
        return None

    def _voc_sequences(self, split: str) -> tuple[list[_Sequence], bool]:
        """The samples of a VOC/labelme export for ``split``, and whether they still need the seeded
        train/val shuffle (no ``ImageSets/Segmentation`` lists)."""
        mask_dir, image_dir = self._voc_mask_dir(), self.root / "JPEGImages"
        assert mask_dir is not None
        sets = self.root / "ImageSets" / "Segmentation"
        if not (sets / "train.txt").is_file():
            out = []
            for m in _mask_files(mask_dir):
                img = _find_mask(image_dir, m.stem, IMAGE_EXTENSIONS)
                problem = None if img else f"no image for mask {m} (expected {image_dir / m.stem}.jpg)"
                out.append(_Sequence(m.stem, [img] if img else [], [m], problem=problem))
            return out, True
        if not (sets / "val.txt").is_file():
            raise DataError(f"{sets} has train.txt but no val.txt")
        listed = sets / f"{split}.txt"
        if not listed.is_file():
            listed = sets / "val.txt"
        try:
            stems = [line.split()[0] for line in listed.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read {listed}: {err}") from err
        out = []
        for stem in stems:
            img, m = _find_mask(image_dir, stem, IMAGE_EXTENSIONS), _find_mask(mask_dir, stem)
            problem = None
            if img is None:
                problem = f"{listed} lists {stem!r} but {image_dir} has no image {stem}.jpg"
            elif m is None:
                problem = f"no mask for {img} (expected {mask_dir / stem}.png)"
            out.append(_Sequence(stem, [img] if img else [], [m] if m else [], problem=problem))
        return out, False

    def _split_dirs(self) -> dict[str, Path] | None:
        if (self.root / "train" / "images").is_dir():
            dirs = {s: self.root / s for s in SPLITS if (self.root / s / "images").is_dir()}
            if "val" not in dirs:
                raise DataError(f"{self.root} has train/images but no val/images")
            return dirs
        if not (self.root / "images").is_dir():
            raise DataError(
                f"{self.root} matches no folder layout; looked for {'; '.join(LAYOUTS)} "
                "(see rleseg.data.sources.folder)"
            )
        return None

    def _has_clips(self) -> bool:
        if self.layout == "voc":
            return False
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
        classes = raw // LABEL_DIVISOR if self.panoptic else raw
        ignore = self.ignore_index
        void = None
        if ignore is not None:
            void = (classes == ignore) | (raw == -1)
            if not void.any():
                void = None
        raw_ok, cls_ok = (raw, classes) if void is None else (raw[~void], classes[~void])
        if raw_ok.size and (raw_ok.min() < 0 or cls_ok.max() >= n):
            bad = int(cls_ok.max()) if cls_ok.max() >= n else int(raw_ok.min())
            kind = "panoptic id class" if self.panoptic else "class id"
            void_note = "" if ignore is None else f"; void pixels are {ignore} or -1"
            raise DataError(
                f"mask {mask_path} holds {kind} {bad}, outside 0..{n - 1} ({self._class_names}){void_note}"
            )
        semantic = classes.astype(np.int32)
        panoptic = raw.astype(np.int32) if self.panoptic else None
        if void is not None:
            semantic[void] = ignore
            if panoptic is not None:
                panoptic[void] = ignore * LABEL_DIVISOR
        return semantic, panoptic

    def scan(self, split: str, video: bool) -> list[_Sequence]:
        """The usable sequences of ``split``, validated once and cached; bad ones raise or are skipped."""
        key = (split, video)
        if key in self._scanned:
            return self._scanned[key]
        if self.layout == "voc":
            if video:
                raise DataError(f"{self.root} is a VOC/labelme export of images; it holds no clips")
            seqs, shuffle = self._voc_sequences(split)
        else:
            dirs = self._split_dirs()
            shuffle = dirs is None
            base = self.root if dirs is None else dirs.get(split, dirs["val"])
            seqs = self._sequences(base, video)
        if shuffle and seqs:
            rng = np.random.default_rng(self.seed)
            order = rng.permutation(len(seqs))
            n_val = int(round(self.val_fraction * len(seqs)))
            if self.val_fraction > 0 and n_val == 0:
                n_val = 1
            if n_val >= len(seqs) and split == "train":
                raise DataError(f"{self.root}: val_fraction={self.val_fraction} leaves no training samples")
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
        self.ignore_index = source.ignore_index

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
