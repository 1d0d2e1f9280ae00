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
