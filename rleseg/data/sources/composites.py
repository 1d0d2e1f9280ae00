"""Fashion-MNIST composite scenes and clips: real objects over real textures, with exact labels.

Things are Fashion-MNIST product photos (Debian package ``dataset-fashion-mnist``, MIT, Zalando SE);
an object's mask is ``pixel > 10``, one 3×3 closing, holes filled (DATA.md §1). Stuff is 2–3 Voronoi
regions, each filled with a real texture bundled in scikit-image (brick, grass, gravel; CC0). Objects are
pasted in painter's order (real occlusion) at a random size and position. Clips move every object at a
constant velocity with reflection at the borders while the stuff layer pans slowly, so instance ids
persist across frames. One generator therefore serves image semantic, video semantic, panoptic and video
panoptic tasks.

Everything is a pure function of ``(seed, split, index)``: a scene is generated on demand in ~0.1 ms,
identically in any worker process. Validation and test scenes use objects of the ``t10k`` split only.

Class ids: preset ``fashion3`` groups the ten Fashion-MNIST classes into tops {T-shirt, Pullover, Coat,
Shirt} = 1, bottoms/dresses {Trouser, Dress} = 2, footwear/bags {Sandal, Sneaker, Bag, Ankle boot} = 3;
``apparel3`` groups them as clothing {T-shirt, Trouser, Pullover, Dress, Coat, Shirt} = 1, footwear
{Sandal, Sneaker, Ankle boot} = 2, bags = 3 (the classes apart by shape; six in ten objects are clothing);
``fashion10`` keeps the ten classes as 1..10. With ``stuff_labels=True`` the three textures become stuff
classes after the things (brick, grass, gravel); otherwise stuff is background 0.

>>> from rleseg.data.sources import create_source
>>> src = create_source("composites", preset="fashion3", stuff_labels=True)
>>> src.class_names[4:], src.thing_classes
(['brick', 'grass', 'gravel'], [1, 2, 3])
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from rleseg.data.cache import load_npz, save_npz
from rleseg.data.errors import DataError, SourceMissingError
from rleseg.data.sources.base import LABEL_DIVISOR, Clip, Source, SourceSplit, register_source

__all__ = ["CompositeScenes", "FASHION_CLASSES", "PRESETS", "fashion_object_masks", "read_idx"]

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = (
    "t_shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
#: preset -> (class names after background, Fashion-MNIST label -> class id)
PRESETS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "fashion3": (("top", "bottom_or_dress", "footwear_or_bag"), (1, 2, 1, 2, 1, 3, 1, 3, 3, 3)),
    "fashion10": (FASHION_CLASSES, tuple(range(1, 11))),
    "apparel3": (("clothing", "footwear", "bag"), (1, 1, 1, 1, 1, 2, 1, 2, 3, 2)),
}
TEXTURES = ("brick", "grass", "gravel")
# RGB tints that make the three grey textures tell apart by colour as well as by pattern
TEXTURE_TINTS = np.array([[1.0, 0.55, 0.45], [0.5, 0.9, 0.4], [0.72, 0.72, 0.8]], dtype=np.float32)
RAW_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a (gzipped) idx file: 16-byte header for images ``[N, 28, 28]``, 8-byte for labels ``[N]``."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read idx file {path}: {err}") from err
    if len(raw) < 8 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 idx file (header {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataError(
            f"{path} is truncated: header promises {dims} ({expected} bytes), file has {len(raw) - offset}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def fashion_object_masks(images: np.ndarray, threshold: int = 10) -> np.ndarray:
    """Object masks of a stack ``[N, h, w]``: ``pixel > threshold``, one 3×3 closing, holes filled.

    Vectorised over the stack: the structuring elements connect pixels within a slice only, and the
    stack is padded so that neither slice borders nor neighbouring slices leak into a slice.

    >>> img = np.zeros((1, 7, 7), np.uint8); img[0, 1:6, 1:6] = 200; img[0, 3, 3] = 0
    >>> bool(fashion_object_masks(img)[0, 3, 3])
    True
    """
    from scipy import ndimage

    fg = np.pad(np.asarray(images) > threshold, ((1, 1), (1, 1), (1, 1)))
    square = np.zeros((3, 3, 3), dtype=bool)
    square[1] = True
    cross = np.zeros((3, 3, 3), dtype=bool)
    cross[1] = ndimage.generate_binary_structure(2, 1)
    closed = ndimage.binary_closing(fg, structure=square)
    filled = ndimage.binary_fill_holes(closed, structure=cross)
    return filled[1:-1, 1:-1, 1:-1]


@lru_cache(maxsize=2)
def _load_bank(path: str) -> dict[str, np.ndarray]:
    return load_npz(path)


@lru_cache(maxsize=1)
def _textures() -> np.ndarray:
    """The three textures as float32 ``[3, 512, 512]`` in [0, 1]."""
    import skimage.data

    return np.stack([getattr(skimage.data, name)().astype(np.float32) / 255.0 for name in TEXTURES])


def _reflect(x: np.ndarray, span: np.ndarray) -> np.ndarray:
    """Position of a point moving freely along ``x`` but bouncing inside ``[0, span]`` (a triangle wave)."""
    span = np.maximum(span, 1e-9)
    m = np.mod(x, 2 * span)
    return np.where(m <= span, m, 2 * span - m)


@register_source("composites")
class CompositeScenes(Source):
    """Generated scenes (images) and clips (videos) of Fashion-MNIST objects over textured stuff.

    Args:
        preset: ``"fashion3"`` or ``"apparel3"`` (3 grouped thing classes) or ``"fashion10"`` (the ten
            classes).
        canvas: side of the square scene in pixels.
        num_train, num_val, num_test: scenes (or clips) per split.
        objects: (min, max) objects per scene, inclusive.
        scale: (min, max) object side as a fraction of the canvas side.
        texture: fill stuff regions with textures (else with flat colours).
        stuff_labels: label the stuff regions as classes (else background 0).
        stuff_regions: (min, max) Voronoi stuff regions, at most 3.
        clip_len: frames per clip (video splits).
        speed: (min, max) object speed in pixels per frame.
        pan: stuff pan speed in pixels per frame (random direction per clip).
        seed: every scene is a function of (seed, split, index).
        data_dir: cache folder (default ``$RLESEG_DATA_DIR`` or ``./data_cache``).
        raw_dir: folder with the four Fashion-MNIST ``*-ubyte.gz`` files; default: search
            ``<data_dir>/fashion-mnist`` then the Debian path.

    >>> from rleseg.data.sources import create_source
    >>> src = create_source("composites", num_train=10)
    >>> src.num_classes, src.frame_shape
    (4, (64, 64))
    """

    install_hint = "sudo apt-get install -y dataset-fashion-mnist"
    has_video = True
    has_instances = True

    def __init__(
        self,
        preset: str = "fashion3",
        canvas: int = 64,
        num_train: int = 3000,
        num_val: int = 300,
        num_test: int = 300,
        objects: tuple[int, int] = (1, 4),
        scale: tuple[float, float] = (0.3, 0.6),
        texture: bool = True,
        stuff_labels: bool = False,
        stuff_regions: tuple[int, int] = (2, 3),
        clip_len: int = 16,
        speed: tuple[float, float] = (0.5, 2.0),
        pan: float = 0.5,
        seed: int = 0,
        data_dir: str | None = None,
        raw_dir: str | None = None,
    ) -> None:
        super().__init__(data_dir=data_dir, seed=seed)
        if preset not in PRESETS:
            raise DataError(f"unknown composites preset {preset!r}; choose one of {sorted(PRESETS)}")
        lo, hi = (int(v) for v in objects)
        if not 0 <= lo <= hi:
            raise DataError(f"objects must be (min, max) with 0 <= min <= max, got {objects}")
        smin, smax = (float(v) for v in scale)
        if not 0 < smin <= smax <= 1:
            raise DataError(f"scale must be (min, max) fractions of the canvas in (0, 1], got {scale}")
        rmin, rmax = (int(v) for v in stuff_regions)
        if not 1 <= rmin <= rmax <= len(TEXTURES):
            raise DataError(
                f"stuff_regions must be (min, max) within 1..{len(TEXTURES)}, got {stuff_regions}"
            )
        if canvas < 8 or clip_len < 1:
            raise DataError(f"canvas must be >= 8 and clip_len >= 1, got canvas={canvas} clip_len={clip_len}")
        self.preset = preset
        self.canvas = int(canvas)
        self.sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.objects = (lo, hi)
        self.scale = (smin, smax)
        self.texture = bool(texture)
        self.stuff_labels = bool(stuff_labels)
        self.stuff_regions = (rmin, rmax)
        self.clip_len = int(clip_len)
        self.speed = (float(speed[0]), float(speed[1]))
        self.pan = float(pan)
        self.raw_dir = raw_dir
        thing_names, mapping = PRESETS[preset]
        self._thing_names = thing_names
        self._label_to_class = np.asarray(mapping, dtype=np.int32)

    # ------------------------------------------------------------------ metadata
    @property
    def class_names(self) -> list[str]:
        stuff = list(TEXTURES) if self.stuff_labels else []
        return ["background", *self._thing_names, *stuff]

    @property
    def thing_classes(self) -> list[int]:
        return list(range(1, len(self._thing_names) + 1))

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.canvas, self.canvas)

    # ------------------------------------------------------------------ preparation
    @property
    def bank_path(self) -> Path:
        """The cached object bank (shared by every preset and canvas)."""
        return self.cache_path("fashion_mnist_objects.npz")

    def find_raw(self) -> Path:
        """The folder holding the four Fashion-MNIST files; raises SourceMissingError naming the install."""
        candidates = (
            [Path(self.raw_dir)] if self.raw_dir else [self.data_dir / "fashion-mnist", Path(DEBIAN_DIR)]
        )
        names = [n for pair in RAW_FILES.values() for n in pair]
        for folder in candidates:
            if all((folder / n).is_file() for n in names):
                return folder
        raise SourceMissingError(
            f"Fashion-MNIST not found (looked for {names[0]} and 3 more in {[str(c) for c in candidates]}). "
            f"Install it with `{self.install_hint}`, or copy the four *-ubyte.gz files into "
            f"{self.data_dir / 'fashion-mnist'}."
        )

    def is_prepared(self) -> bool:
        return self.bank_path.is_file()

    def prepare(self) -> None:
        """Read Fashion-MNIST once, compute every object's mask and cache the bank (~3 s)."""
        if self.is_prepared():
            return
        raw = self.find_raw()
        arrays: dict[str, np.ndarray] = {}
        for split, (img_name, lbl_name) in RAW_FILES.items():
            images = read_idx(raw / img_name)
            labels = read_idx(raw / lbl_name)
            if images.ndim != 3 or labels.shape != images.shape[:1]:
                raise DataError(f"{raw / img_name}: {images.shape} images do not match {labels.shape} labels")
            arrays[f"{split}_images"] = images
            arrays[f"{split}_masks"] = fashion_object_masks(images)
            arrays[f"{split}_labels"] = labels
        save_npz(self.bank_path, **arrays)

    def _bank(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.is_prepared():
            self.prepare()
        bank = _load_bank(str(self.bank_path))
        key = "train" if split == "train" else "test"  # val and test objects come from t10k only
        return bank[f"{key}_images"], bank[f"{key}_masks"], bank[f"{key}_labels"]

    # ------------------------------------------------------------------ splits
    def split(self, split: str, *, video: bool = False) -> SourceSplit:
        self._check_split(split, video)
        return _CompositeSplit(self, split, self.clip_len if video else 1)

    def render(self, split: str, index: int, start: int = 0, stop: int = 1) -> Clip:
        """Frames ``start:stop`` of scene ``index`` of ``split`` (frame 0 is the image-split scene)."""
        images, masks, labels = self._bank(split)
        rng = np.random.default_rng([self.seed, _SPLIT_CODE[split], index])
        H = W = self.canvas
        # --- draw everything first, in a fixed order, so a scene does not depend on the frames asked for
        k = int(rng.integers(self.stuff_regions[0], self.stuff_regions[1] + 1))
        region_types = rng.permutation(len(TEXTURES))[:k]
        seeds = rng.uniform(0, [H, W], size=(k, 2))
        tex_offset = rng.integers(0, 512, size=(k, 2))
        flat_colors = rng.uniform(0.15, 0.45, size=(k, 1)) * TEXTURE_TINTS[region_types]
        pan_angle = rng.uniform(0, 2 * np.pi)
        pan_v = self.pan * np.array([np.sin(pan_angle), np.cos(pan_angle)])
        n = int(rng.integers(self.objects[0], self.objects[1] + 1))
        obj = rng.integers(0, len(images), size=n)
        side = np.maximum(2, np.round(rng.uniform(*self.scale, size=n) * self.canvas)).astype(np.int64)
        span = (self.canvas - side).astype(np.float64)
        p0 = rng.uniform(0, 1, size=(n, 2)) * span[:, None]
        angle = rng.uniform(0, 2 * np.pi, size=n)
        speed = rng.uniform(*self.speed, size=n)
        vel = np.stack([np.sin(angle), np.cos(angle)], axis=1) * speed[:, None]
        tint = rng.uniform(0.7, 1.0, size=(n, 3)).astype(np.float32)
        obj_class = self._label_to_class[labels[obj]]
        # per-object resampled sprite (nearest: labels stay exact)
        sprites = []
        for j in range(n):
            idx = (np.arange(side[j]) * images.shape[1]) // side[j]
            sprites.append(
                (images[obj[j]][idx[:, None], idx[None, :]], masks[obj[j]][idx[:, None], idx[None, :]])
            )

        textures = _textures() if self.texture else None
        yy, xx = np.mgrid[0:H, 0:W]
        T = stop - start
        out_img = np.empty((T, H, W, 3), dtype=np.uint8)
        out_sem = np.zeros((T, H, W), dtype=np.int32)
        out_pan = np.zeros((T, H, W), dtype=np.int32)
        stuff_base = len(self._thing_names)
        for ti, t in enumerate(range(start, stop)):
            oy, ox = np.round(pan_v * t).astype(np.int64)
            d2 = (yy[None] + oy - seeds[:, 0, None, None]) ** 2 + (
                xx[None] + ox - seeds[:, 1, None, None]
            ) ** 2
            region = np.argmin(d2, axis=0)  # [H, W] index into region_types
            if textures is not None:
                rows = (tex_offset[:, 0, None] + np.arange(H)[None] + oy) % 512  # [k, H]
                cols = (tex_offset[:, 1, None] + np.arange(W)[None] + ox) % 512
                crops = textures[region_types[:, None, None], rows[:, :, None], cols[:, None, :]]  # [k, H, W]
                grey = np.take_along_axis(crops, region[None], axis=0)[0]
                canvas = (0.1 + 0.45 * grey)[..., None] * TEXTURE_TINTS[region_types][region]
            else:
                canvas = flat_colors[region].astype(np.float32)
            sem = out_sem[ti]
            pan = out_pan[ti]
            if self.stuff_labels:
                sem[:] = stuff_base + 1 + region_types[region]
                pan[:] = sem * LABEL_DIVISOR
            pos = np.round(_reflect(p0 + vel * t, span[:, None])).astype(np.int64)
            for j in range(n):  # painter's order: later objects occlude earlier ones
                pix, m = sprites[j]
                y, x, s = pos[j, 0], pos[j, 1], side[j]
                window = canvas[y : y + s, x : x + s]
                window[m] = (0.2 + 0.8 * pix[m, None] / 255.0) * tint[j]
                sem[y : y + s, x : x + s][m] = obj_class[j]
                pan[y : y + s, x : x + s][m] = obj_class[j] * LABEL_DIVISOR + j + 1
            out_img[ti] = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Clip(out_img, out_sem, out_pan, name=f"{split}/{index}")


#: rendered scenes kept per split (and per DataLoader worker): a 64x64 scene is ~28 KiB, so the 3,000
#: quickstart scenes take ~80 MiB; beyond the limit scenes are rendered on every access again
RENDER_CACHE_BYTES = 256 * 2**20


class _CompositeSplit(SourceSplit):
    """One split of the composites. Scenes are deterministic in (seed, split, index), and rendering one
    costs ~3 ms, most of a training sample's loading time: each rendered clip is kept (read-only, up to
    :data:`RENDER_CACHE_BYTES`), so every epoch after the first loads from memory."""

    def __init__(self, source: CompositeScenes, split: str, frames: int) -> None:
        self.source, self.split, self.frames = source, split, frames
        self._cache: dict[tuple[int, int, int], Clip] = {}
        self._cache_bytes = 0

    def __len__(self) -> int:
        return self.source.sizes[self.split]

    def num_frames(self, i: int) -> int:
        return self.frames

    def frame_shape(self, i: int) -> tuple[int, int]:
        return self.source.frame_shape

    def load(self, i: int, start: int = 0, stop: int | None = None) -> Clip:
        stop = self._check_index(i, start, stop)
        key = (i, start, stop)
        clip = self._cache.get(key)
        if clip is None:
            clip = self.source.render(self.split, i, start, stop)
            arrays = [a for a in (clip.image, clip.semantic, clip.panoptic) if a is not None]
            size = sum(a.nbytes for a in arrays)
            if self._cache_bytes + size <= RENDER_CACHE_BYTES:
                for a in arrays:
                    a.flags.writeable = False  # shared by every later load of this scene
                self._cache[key] = clip
                self._cache_bytes += size
        return clip
