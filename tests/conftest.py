"""Shared fixtures. Data fixtures (``data_*``) prepare real sources once per session into a temporary
data dir, build a small stand-in for the stardist wheel, and write PNG folders for the folder source."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MRICRON_DIR = Path("/usr/share/mricron/templates")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty data dir shared by the session's data fixtures (never the repository's ./data_cache)."""
    return tmp_path_factory.mktemp("rleseg_data")


@pytest.fixture(scope="session")
def data_fashion_dir(data_dir: Path) -> Path:
    """The data dir with the Fashion-MNIST object bank prepared (skips without the Debian package)."""
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs Fashion-MNIST: apt-get install -y dataset-fashion-mnist")
    from rleseg.data.sources import create_source

    create_source("composites", data_dir=str(data_dir)).prepare()
    return data_dir


@pytest.fixture(scope="session")
def data_mri_dir(data_dir: Path) -> Path:
    """The data dir with the MRI volumes prepared (skips without the Debian package)."""
    if not (MRICRON_DIR / "aal.nii.gz").is_file():
        pytest.skip("needs the AAL atlas: apt-get install -y mricron-data")
    from rleseg.data.sources import create_source

    create_source("mri", data_dir=str(data_dir)).prepare()
    return data_dir


def make_fake_stardist_wheel(path: Path, seed: int = 0) -> Path:
    """A zip laid out like the stardist wheel, holding a synthetic 512×512 image and instance mask
    (discs with non-consecutive ids), so the real wheel-reading code runs without a download."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512]
    mask = np.zeros((512, 512), np.uint16)
    for k in range(60):
        cy, cx, r = rng.integers(10, 502), rng.integers(10, 502), rng.integers(5, 12)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 3 * k + 7
    image = (mask > 0) * 180 + rng.integers(0, 40, size=mask.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, arr in (("img2d.tif", image.astype(np.uint16)), ("mask2d.tif", mask)):
            buf = io.BytesIO()
            tifffile.imwrite(buf, arr)
            zf.writestr(f"stardist/data/images/{name}", buf.getvalue())
    return path


@pytest.fixture(scope="session")
def data_fake_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_stardist_wheel(tmp_path_factory.mktemp("wheel") / "stardist-0.9.2-py3-none-any.whl")


def write_png_folder(
    root: Path,
    n: int = 6,
    size: tuple[int, int] = (32, 32),
    num_classes: int = 3,
    clips: int = 0,
    frames: int = 5,
    panoptic: bool = False,
    seed: int = 0,
) -> Path:
    """Write a folder-source dataset: ``n`` images (or ``clips`` clips of ``frames`` frames) of
    rectangles whose class is also their colour, plus masks and ``classes.yaml``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    names = ["background"] + [f"class{c}" for c in range(1, num_classes)]
    things = "[class1]" if panoptic else "[]"
    (root / "classes.yaml").write_text(
        f"classes: [{', '.join(names)}]\nthings: {things}\npanoptic: {str(panoptic).lower()}\n"
    )

    def sample(shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
        h, w = size
        mask = np.zeros(size, np.int32)
        for inst in range(1, 3):
            c = int(rng.integers(1, num_classes))
            y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
            x = min(w - 8, x + shift)
            mask[y : y + 8, x : x + 8] = c * 1000 + inst if panoptic else c
        cls = mask // 1000 if panoptic else mask
        image = np.stack([cls * 80, 255 - cls * 60, np.full(size, 40)], axis=-1).astype(np.uint8)
        return image, mask

    def save(image: np.ndarray, mask: np.ndarray, img_path: Path, mask_path: Path) -> None:
        Image.fromarray(image).save(img_path)
        Image.fromarray(mask.astype(np.uint16 if mask.max() > 255 else np.uint8)).save(mask_path)

    if clips:
        for c in range(clips):
            (root / "images" / f"clip{c}").mkdir(exist_ok=True)
            (root / "masks" / f"clip{c}").mkdir(exist_ok=True)
            for t in range(frames):
                image, mask = sample(shift=t)
                save(
                    image,
                    mask,
                    root / "images" / f"clip{c}" / f"{t:04d}.png",
                    root / "masks" / f"clip{c}" / f"{t:04d}.png",
                )
    else:
        for i in range(n):
            image, mask = sample()
            save(image, mask, root / "images" / f"img{i:03d}.png", root / "masks" / f"img{i:03d}.png")
    return root


@pytest.fixture
def data_png_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``data_png_folder(**kw)`` writes a folder dataset under a fresh temporary path."""
    counter = iter(range(1000))
    return lambda **kw: write_png_folder(tmp_path / f"folder{next(counter)}", **kw)


#: the classes of the synthetic VOC / labelme exports (background + 3), each drawn in its own colour
EXPORT_CLASSES = ["background", "red_square", "green_square", "blue_square"]
_EXPORT_COLOURS = np.array([(40, 40, 40), (220, 50, 50), (50, 200, 60), (60, 80, 230)], np.uint8)


def _voc_palette() -> list[int]:
    """Pascal VOC's 256-colour label palette (index 255, void, is (224, 224, 192))."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _export_sample(
    rng: np.random.Generator, index: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """An image of 1-3 coloured squares on grey (colour = class) and its clean class mask; class
    ``index % 3 + 1`` is always present, so every class occurs in any 3 consecutive samples."""
    h, w = size
    mask = np.zeros(size, np.int32)
    others = [c for c in (1, 2, 3) if c != index % 3 + 1]
    for c in [index % 3 + 1, *others[: int(rng.integers(0, 3))]]:
        s = int(rng.integers(12, 22))
        y, x = int(rng.integers(2, h - s - 2)), int(rng.integers(2, w - s - 2))
        mask[y : y + s, x : x + s] = c
    noise = rng.integers(-12, 13, size=(h, w, 3))
    image = np.clip(_EXPORT_COLOURS[mask].astype(np.int32) + noise, 0, 255).astype(np.uint8)
    return image, mask


def _save_palette_png(mask: np.ndarray, path: Path) -> None:
    from PIL import Image

    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(_voc_palette())
    im.save(path)


def write_voc_export(
    root: Path, n_train: int = 8, n_val: int = 4, size: tuple[int, int] = (64, 64), seed: int = 0
) -> Path:
    """A Pascal VOC style export: ``JPEGImages/*.jpg``, palette PNG masks in ``SegmentationClass/``
    (palette index = class id) whose object outlines are void (255, 2 px wide, as in VOC),
    ``ImageSets/Segmentation/{train,val,trainval}.txt``, ``class_names.txt`` (``EXPORT_CLASSES``), and
    two detection-only images without a mask (not samples)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    stems = [f"2007_{i:06d}" for i in range(n_train + n_val)]
    h, w = size
    for i, stem in enumerate(stems):
        image, mask = _export_sample(rng, i, size)
        pad = np.pad(mask, 1, mode="edge")
        edge = np.zeros(size, bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                edge |= pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] != mask
        Image.fromarray(image).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
        _save_palette_png(np.where(edge, 255, mask), root / "SegmentationClass" / f"{stem}.png")
    for k in range(2):  # detection-only images
        Image.fromarray(_export_sample(rng, k, size)[0]).save(root / "JPEGImages" / f"2008_{k:06d}.jpg")
    sets = root / "ImageSets" / "Segmentation"
    (sets / "train.txt").write_text("".join(f"{s}\n" for s in stems[:n_train]))
    (sets / "val.txt").write_text("".join(f"{s}\n" for s in stems[n_train:]))
    (sets / "trainval.txt").write_text("".join(f"{s}\n" for s in stems))
    (root / "class_names.txt").write_text("\n".join(EXPORT_CLASSES) + "\n")
    return root


def write_labelme_export(root: Path, n: int = 20, size: tuple[int, int] = (64, 64), seed: int = 1) -> Path:
    """A labelme ``labelme2voc.py`` export: ``JPEGImages/*.jpg``, ``SegmentationClass/*.npy`` (int32 class
    ids, -1 = ``__ignore__``), ``SegmentationClassPNG/*.png`` (palette PNG, -1 written as 255),
    ``SegmentationClassVisualization/`` and ``class_names.txt`` (``__ignore__``, ``_background_``, then
    the 3 classes of ``EXPORT_CLASSES``). No split lists: the folder source splits it by its seeded shuffle
    (``val_fraction`` 0.2 of 20 samples: 16 train, 4 val). Every even sample has an 8×8 ignore region."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassPNG", "SegmentationClassVisualization"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        stem = f"img_{i:03d}"
        image, mask = _export_sample(rng, i, size)
        if i % 2 == 0:
            y, x = int(rng.integers(0, size[0] - 8)), int(rng.integers(0, size[1] - 8))
            mask[y : y + 8, x : x + 8] = -1
        Image.fromarray(image).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
        np.save(root / "SegmentationClass" / f"{stem}.npy", mask.astype(np.int32))
        _save_palette_png(mask.astype(np.uint8), root / "SegmentationClassPNG" / f"{stem}.png")  # -1 -> 255
        Image.fromarray(image).save(root / "SegmentationClassVisualization" / f"{stem}.jpg")
    names = ["__ignore__", "_background_", *EXPORT_CLASSES[1:]]
    (root / "class_names.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture
def voc_export(tmp_path: Path) -> Path:
    """A synthetic Pascal VOC export (64×64, 8 train + 4 val listed in ImageSets, 3 classes +
    background, 255 void outlines); see :func:`write_voc_export`."""
    return write_voc_export(tmp_path / "voc")


@pytest.fixture
def labelme_export(tmp_path: Path) -> Path:
    """A synthetic labelme export (64×64, 20 samples: 16 train + 4 val by the folder source's default
    split, 3 classes + background, -1 / 255 ignore regions); see :func:`write_labelme_export`."""
    return write_labelme_export(tmp_path / "labelme")
