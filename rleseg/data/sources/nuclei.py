"""Real fluorescence nuclei with instance labels, from the stardist 0.9.2 wheel (DATA.md §3).

The wheel carries ``stardist/data/images/img2d.tif`` and ``mask2d.tif``: one real 512×512 image with 125
labelled nuclei (2018 Data Science Bowl, CC0). The two members are read from the wheel (a zip) with
``tifffile``; stardist itself and its heavy dependencies are never installed. The wheel is looked for in
the data dir (``stardist-0.9.2-*.whl``); when missing and ``download=True`` it is fetched with
``pip download --no-deps stardist==0.9.2 -d <data_dir>/nuclei``.

Classes: background 0, nucleus 1 (a thing). Training samples are overlapping ``tile × tile`` crops
(``stride`` apart) that avoid the held-out quadrant; validation (= test) samples are the held-out quadrant
cut into non-overlapping tiles.

>>> from rleseg.data.sources import create_source
>>> create_source("nuclei").class_names
['background', 'nucleus']
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from rleseg.data.cache import load_npz, save_npz
from rleseg.data.errors import DataError, SourceMissingError
from rleseg.data.sources.base import LABEL_DIVISOR, Clip, Source, SourceSplit, register_source

__all__ = ["Nuclei", "read_wheel_tiffs"]

WHEEL_VERSION = "0.9.2"
MEMBERS = ("stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif")
QUADRANTS = ("top_left", "top_right", "bottom_left", "bottom_right")


def read_wheel_tiffs(wheel: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The (image, instance mask) pair stored in a stardist wheel."""
    import tifffile

    try:
        with zipfile.ZipFile(wheel) as zf:
            arrays = [tifffile.imread(io.BytesIO(zf.read(m))) for m in MEMBERS]
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as err:
        raise DataError(f"cannot read {list(MEMBERS)} from {wheel}: {err}") from err
    image, mask = arrays
    if image.shape != mask.shape or image.ndim != 2:
        raise DataError(f"{wheel}: image {image.shape} and mask {mask.shape} must be equal 2-D shapes")
    return image, mask


@lru_cache(maxsize=2)
def _load(path: str) -> dict[str, np.ndarray]:
    return load_npz(path)


@register_source("nuclei")
class Nuclei(Source):
    """Tiles of stardist's real nuclei image.

    Args:
        tile: side of every sample; at most half the image (the held-out quadrant must hold a tile).
        stride: distance between training crops (overlapping when < tile).
        holdout: which quadrant is validation/test: ``top_left``, ``top_right``, ``bottom_left``,
            ``bottom_right``.
        download: fetch the wheel with pip when it is not in the data dir.
        wheel: an explicit path to ``stardist-0.9.2-*.whl`` (skips the search).
        data_dir: cache folder (default ``$RLESEG_DATA_DIR`` or ``./data_cache``).
        seed: unused (the tiles are fixed); kept for a uniform source signature.
    """

    install_hint = f"pip download --no-deps stardist=={WHEEL_VERSION} -d <data_dir>/nuclei"
    has_video = False
    has_instances = True

    def __init__(
        self,
        tile: int = 128,
        stride: int = 32,
        holdout: str = "bottom_right",
        download: bool = True,
        wheel: str | None = None,
        data_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(data_dir=data_dir, seed=seed)
        if holdout not in QUADRANTS:
            raise DataError(f"unknown holdout quadrant {holdout!r}; choose one of {list(QUADRANTS)}")
        if not 8 <= tile <= 256 or stride < 1:
            raise DataError(
                f"tile must be in 8..256 (half the 512 image) and stride >= 1, got {tile}, {stride}"
            )
        self.tile, self.stride, self.holdout = int(tile), int(stride), holdout
        self.download, self.wheel = bool(download), wheel

    @property
    def class_names(self) -> list[str]:
        return ["background", "nucleus"]

    @property
    def thing_classes(self) -> list[int]:
        return [1]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.tile, self.tile)

    @property
    def cache_file(self) -> Path:
        return self.cache_path("stardist_nuclei.npz")

    def is_prepared(self) -> bool:
        return self.cache_file.is_file()

    def find_wheel(self) -> Path:
        """The stardist wheel: given, found in the data dir, or downloaded with pip (``download=True``)."""
        if self.wheel:
            if not Path(self.wheel).is_file():
                raise SourceMissingError(f"stardist wheel {self.wheel} does not exist")
            return Path(self.wheel)
        folder = self.data_dir / self.name
        found = sorted(folder.glob(f"stardist-{WHEEL_VERSION}-*.whl"))
        if found:
            return found[0]
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            f"stardist=={WHEEL_VERSION}",
            "-d",
            str(folder),
        ]
        hint = f"pip download --no-deps stardist=={WHEEL_VERSION} -d {folder}"
        if not self.download:
            raise SourceMissingError(f"no stardist-{WHEEL_VERSION}-*.whl in {folder}; fetch it with `{hint}`")
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(command, capture_output=True, text=True)
        found = sorted(folder.glob(f"stardist-{WHEEL_VERSION}-*.whl"))
        if proc.returncode != 0 or not found:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise SourceMissingError(
                f"could not download the stardist wheel ({tail[0]}); on a machine with PyPI access run "
                f"`{hint}` and copy the wheel into {folder}"
            )
        return found[0]

    def prepare(self) -> None:
        """Read the two TIFFs from the wheel, scale the image to uint8, renumber instances, cache (~0.1 s)."""
        if self.is_prepared():
            return
        from skimage.segmentation import relabel_sequential

        image, mask = read_wheel_tiffs(self.find_wheel())
        lo, hi = np.percentile(image, [0.5, 99.8])
        image8 = np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6) * 255 + 0.5, 0, 255).astype(
            np.uint8
        )
        instances = relabel_sequential(mask.astype(np.int32))[0]
        if instances.max() >= LABEL_DIVISOR:
            raise DataError(
                f"{instances.max()} instances do not fit panoptic ids (< {LABEL_DIVISOR} per class)"
            )
        save_npz(self.cache_file, image=image8, instances=instances.astype(np.int32))

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.is_prepared():
            self.prepare()
        data = _load(str(self.cache_file))
        return data["image"], data["instances"]

    def origins(self, split: str) -> np.ndarray:
        """Top-left corners ``[n, 2]`` of the tiles of ``split``; computable without reading pixels."""
        size, half = 512, 256
        q = QUADRANTS.index(self.holdout)
        qy, qx = (q // 2) * half, (q % 2) * half
        if split == "train":
            grid = np.arange(0, size - self.tile + 1, self.stride)
            ys, xs = np.meshgrid(grid, grid, indexing="ij")
            ys, xs = ys.ravel(), xs.ravel()
            overlaps = (ys < qy + half) & (ys + self.tile > qy) & (xs < qx + half) & (xs + self.tile > qx)
            return np.stack([ys[~overlaps], xs[~overlaps]], axis=1)
        grid = np.arange(0, half - self.tile + 1, self.tile)
        ys, xs = np.meshgrid(qy + grid, qx + grid, indexing="ij")
        return np.stack([ys.ravel(), xs.ravel()], axis=1)

    def split(self, split: str, *, video: bool = False) -> SourceSplit:
        self._check_split(split, video)
        return _NucleiSplit(self, split, self.origins(split))


class _NucleiSplit(SourceSplit):
    def __init__(self, source: Nuclei, split: str, origins: np.ndarray) -> None:
        self.source, self.split, self.origins = source, split, origins

    def __len__(self) -> int:
        return len(self.origins)

    def num_frames(self, i: int) -> int:
        return 1

    def frame_shape(self, i: int) -> tuple[int, int]:
        return self.source.frame_shape

    def load(self, i: int, start: int = 0, stop: int | None = None) -> Clip:
        self._check_index(i, start, stop)
        image, instances = self.source._arrays()
        (y, x), s = self.origins[i], self.source.tile
        inst = instances[y : y + s, x : x + s]
        grey = image[y : y + s, x : x + s]
        semantic = (inst > 0).astype(np.int32)
        panoptic = np.where(inst > 0, LABEL_DIVISOR + inst, 0).astype(np.int32)
        rgb = np.repeat(grey[None, :, :, None], 3, axis=-1)
        return Clip(rgb, semantic[None], panoptic[None], name=f"nuclei/{self.split}/y{y}x{x}")
