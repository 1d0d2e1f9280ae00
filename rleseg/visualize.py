"""Pictures people would rather look at than read: masks over images, side by side."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# A fixed palette of 20 distinguishable colours (Trubetskoy's list), class 1 first; background stays the
# image. Green comes late (class 8): early classes must stand out on foliage and grass backgrounds.
_PALETTE = np.array(
    [
        [230, 25, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180], [245, 130, 48], [70, 240, 240],
        [240, 50, 230], [60, 180, 75], [250, 190, 212], [0, 128, 128], [170, 110, 40], [128, 0, 0],
        [170, 255, 195], [128, 128, 0], [0, 0, 128], [255, 215, 180], [220, 190, 255], [255, 250, 200],
        [210, 245, 60], [128, 128, 128],
    ],
    dtype=np.float32,
) / 255.0  # fmt: skip
#: the colour of void pixels (labels outside the classes, e.g. 255)
VOID_COLOR = np.array([0.5, 0.5, 0.5], dtype=np.float32)


def class_colors(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` RGB in [0, 1]; class 0 (background) is black."""
    colors = np.zeros((max(num_classes, 1), 3), dtype=np.float32)
    for c in range(1, num_classes):
        colors[c] = _PALETTE[(c - 1) % len(_PALETTE)]
    return colors


def to_display(image: np.ndarray) -> np.ndarray:
    """A ``[C, H, W]`` (normalised) or ``[H, W]`` image as ``[H, W, 3]`` in [0, 1], contrast-stretched."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    lo, hi = np.percentile(img, [1, 99])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over an image where the mask is foreground (void labels, outside
    ``[0, num_classes)``, in grey)."""
    rgb = to_display(image)
    if rgb.shape[:2] != mask.shape:
        rows = np.arange(mask.shape[0]) * rgb.shape[0] // mask.shape[0]
        cols = np.arange(mask.shape[1]) * rgb.shape[1] // mask.shape[1]
        rgb = rgb[rows[:, None], cols[None, :]]
    void = (mask >= num_classes) | (mask < 0)  # e.g. 255 in VOC-style masks: drawn grey
    colors = class_colors(num_classes)
    painted = np.where(void[..., None], VOID_COLOR, colors[np.where(void, 0, mask)])
    fg = ((mask > 0) | void)[..., None]
    return np.where(fg, (1 - alpha) * rgb + alpha * painted, rgb)


def _plain_text(draw: Callable[..., Path]) -> Callable[..., Path]:
    """Draw with mathtext off: class names and titles come from data, and ``$...$`` in them must print as
    written (matplotlib would otherwise parse it, and crash on e.g. ``$\\frac{``)."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Path:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return wrapper


@_plain_text
def save_prediction_grid(
    path: str | Path,
    images: np.ndarray,
    targets: np.ndarray,
    preds: np.ndarray,
    num_classes: int,
    title: str = "",
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write a PNG with one row per sample: image | ground truth overlay | prediction overlay, and a
    legend of the class colours.

    Video inputs (``images [B, T, C, H, W]``) show every frame of the first clip as rows.
    """
    plt = _pyplot()
    images, targets, preds = np.asarray(images), np.asarray(targets), np.asarray(preds)
    if images.ndim == 5:  # first clip, one row per frame
        images, targets, preds = images[0], targets[0], preds[0]
    if targets.ndim == 4:  # static video: image [B, C, H, W] but masks [B, T, H, W]
        targets, preds = targets[:, 0], preds[:, 0]
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n + 0.4), squeeze=False)
    for i in range(n):
        panels = (
            to_display(images[i]),
            overlay(images[i], targets[i], num_classes),
            overlay(images[i], preds[i], num_classes),
        )
        for j, panel in enumerate(panels):
            axes[i, j].imshow(panel, interpolation="nearest")
            axes[i, j].axis("off")
    for j, name in enumerate(("image", "ground truth", "prediction")):
        axes[0, j].set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    _legend(fig, num_classes, class_names, shown=np.concatenate([targets.ravel(), preds.ravel()]))
    return _save_figure(fig, path)


def _legend(fig: Any, num_classes: int, class_names: Sequence[str] | None, shown: np.ndarray) -> None:
    """A legend of the class colours below the panels (classes 1..N-1, and void when it appears)."""
    from matplotlib.patches import Patch

    names = list(class_names or [])
    colors = class_colors(num_classes)
    handles = [
        Patch(color=colors[c], label=names[c] if c < len(names) else f"class {c}")
        for c in range(1, num_classes)
    ][:40]
    if ((shown >= num_classes) | (shown < 0)).any():
        handles.append(Patch(color=VOID_COLOR, label="void"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
        fig.subplots_adjust(bottom=0.08 + 0.03 * ((len(handles) - 1) // 4))


def legend_strip(width: int, num_classes: int, class_names: Sequence[str] | None) -> np.ndarray:
    """An ``[h, width, 3]`` uint8 strip naming the class colours (for overlays written without matplotlib).

    >>> legend_strip(120, 3, ["background", "cat", "dog"]).shape[1:]
    (120, 3)
    """
    from PIL import Image, ImageDraw

    names = list(class_names or [])
    colors = (class_colors(num_classes) * 255).astype(np.uint8)
    entries = [(names[c] if c < len(names) else f"class {c}", colors[c]) for c in range(1, num_classes)]
    line, box = 14, 10
    height = line * max(1, len(entries)) + 4
    strip = Image.new("RGB", (max(int(width), 1), height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, (name, color) in enumerate(entries):
        y = 2 + i * line
        draw.rectangle([2, y + 1, 2 + box, y + 1 + box], fill=tuple(int(v) for v in color))
        draw.text((box + 6, y), str(name), fill=(0, 0, 0))
    return np.asarray(strip)


def log_image(logger: Any, tag: str, path: str | Path, step: int) -> bool:
    """Send the PNG at ``path`` to a Lightning logger that takes pictures; False for one that takes none.

    TensorBoard: an image summary (``add_image``); W&B, Neptune and others with ``log_image``; MLflow: an
    artifact image. CSV loggers take none (the PNG file is their record).
    """
    from PIL import Image

    kind = type(logger).__name__
    if kind == "CSVLogger":
        return False
    image = np.asarray(Image.open(path).convert("RGB"))
    try:
        if kind == "TensorBoardLogger":
            logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")
        elif kind == "MLFlowLogger":
            logger.experiment.log_image(logger.run_id, image, f"{tag.replace('/', '_')}_step{step:06d}.png")
        elif hasattr(logger, "log_image"):
            logger.log_image(key=tag, images=[image], step=step)
        else:
            return False
    except Exception as exc:  # a logger's failure to take a picture must not stop training
        import warnings

        warnings.warn(f"{kind} did not take picture {tag}: {exc}", stacklevel=2)
        return False
    return True


@_plain_text
def save_confusion_matrix(
    path: str | Path, counts: np.ndarray, class_names: list[str], title: str = ""
) -> Path:
    """A heatmap of a ``[N, N]`` pixel confusion matrix (row = true class), each row normalised to the
    fraction of that class's pixels, with the fraction written in every cell. Rows of classes absent
    from the ground truth stay blank."""
    plt = _pyplot()
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.shape[0]
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, counts / totals, np.nan)
    side = min(1.2 + 0.55 * n, 12.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    if n <= 40:  # beyond that the names would overlap: the axes then count classes
        names = [class_names[c] if c < len(class_names) else str(c) for c in range(n)]
        ax.set_xticks(range(n), names, rotation=45, ha="right")
        ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if np.isfinite(share[i, j]):
                    color = "white" if share[i, j] > 0.6 else "black"
                    ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=8, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class's pixels")
    if title:
        ax.set_title(title, fontsize=9)
    return _save_figure(fig, path)


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display; imported only when a picture is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, write (PNG, 100 dpi, parent folders created) and close ``fig``; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
