"""``rleseg tokens stats``: plan an encoding before training (SPEC §8).

For a set of masks and one or more tokenizers, prints side by side: runs and tokens per mask
(p50/p95/max), vocabulary size, the fraction truncated at ``--max-seq-len`` and the Dice ceiling at token
resolution (the best any model could score with that encoding).

Masks come from a *mask source*: ``--masks PATH`` (a .npy/.npz of label masks, or a folder of mask files:
PNG, palette PNG, TIFF or .npy, such as a VOC/labelme export's ``SegmentationClass/``) or ``--synthetic N``
(seeded blob masks, no data needed).

Plan at the size you will train at: ``--image-size H W`` resizes every mask (nearest, the rule training
uses for ``image_size``), then ``--crop H W`` takes its centre crop (deterministic; a training patch of
``patch_size`` is a random crop of the same size, and the centre is a typical one). Masks of different
sizes need ``--image-size`` (the tokenizer has one shape). Void pixels (``--ignore-label``, default 255,
VOC's void; and -1, labelme's) are encoded as background, as training does, and left out of the Dice
ceiling; ``--ignore-label none`` turns void off (255 is then an ordinary class id).

A mask source is a function ``(args, kind, shape) -> iterable of masks`` registered with
:func:`register_mask_source` together with its command-line option, so other packages (the prepared
datasets) can plug in their own::

    rleseg tokens stats --synthetic 50 --shape 640 640 --subsample 8 -t lac -t gap -t rowwise
    rleseg tokens stats --masks voc/SegmentationClass --num-classes 21 --image-size 512 512 --subsample 8
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rleseg.tokenizers import create_tokenizer, list_tokenizers
from rleseg.tokenizers.registry import tokenizer_class
from rleseg.tokenizers.stats import format_table, synthetic_masks, token_stats

#: (args, kind, shape) -> masks; ``kind`` is "image", "video" or "panoptic", ``shape`` the tokenizer's
#: label shape ((H, W) or (T, H, W)) when the source can choose it, else None.
MaskSource = Callable[[argparse.Namespace, str, "tuple[int, ...] | None"], Iterable[np.ndarray]]


@dataclass(frozen=True)
class _Source:
    dest: str
    load: MaskSource
    shape_from_masks: bool  # the masks fix the label shape (files); synthetic masks follow --shape


_SOURCES: list[_Source] = []
_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = []


def register_mask_source(*flags: str, load: MaskSource, shape_from_masks: bool = True, **argparse_kw) -> None:
    """Add a mask source selected by the command-line option ``flags`` (``argparse_kw`` as for
    ``add_argument``). The first registered option given on the command line is used."""
    dest = argparse_kw.setdefault("dest", flags[0].lstrip("-").replace("-", "_"))
    _OPTIONS.append((flags, argparse_kw))
    _SOURCES.append(_Source(dest, load, shape_from_masks))


def load_mask_path(args: argparse.Namespace, kind: str, shape: tuple[int, ...] | None) -> list[np.ndarray]:
    """Masks from a .npy (one mask, or a stack along axis 0), a .npz (every array in it) or a folder of
    PNG masks (one label mask per file, sorted by name)."""
    path = Path(args.masks)
    if not path.exists():
        raise FileNotFoundError(f"--masks {path}: no such file or folder")
    if path.is_dir():
        from rleseg.data.sources.folder import MASK_EXTENSIONS, read_mask

        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in MASK_EXTENSIONS)
        if not files:
            raise FileNotFoundError(
                f"--masks {path}: the folder has no mask files ({', '.join(MASK_EXTENSIONS)})"
            )
        return [read_mask(f) for f in files]
    if path.suffix == ".npz":
        with np.load(path) as data:
            arrays = [data[k] for k in data.files]
    elif path.suffix == ".npy":
        arrays = [np.load(path)]
    else:
        raise ValueError(f"--masks {path}: expected a .npy, a .npz or a folder of .png masks")
    per_mask = 3 if kind == "video" else 2
    masks: list[np.ndarray] = []
    for a in arrays:
        masks.extend(a if a.ndim == per_mask + 1 else [a])
    return masks


def load_synthetic(
    args: argparse.Namespace, kind: str, shape: tuple[int, ...] | None
) -> Iterable[np.ndarray]:
    assert shape is not None
    return synthetic_masks(
        args.synthetic, shape, args.num_classes, seed=args.seed, noise=args.noise, kind=kind
    )


register_mask_source(
    "--masks",
    load=load_mask_path,
    metavar="PATH",
    help="a .npy/.npz of label masks or a folder of mask files (.png, .tif, .npy)",
)
register_mask_source(
    "--synthetic",
    load=load_synthetic,
    shape_from_masks=False,
    type=int,
    metavar="N",
    help="N seeded synthetic blob masks (no data needed)",
)


def _kind(name: str) -> str:
    cls = tokenizer_class(name)
    return "panoptic" if cls.task == "panoptic" else ("video" if getattr(cls, "ndim", 2) == 3 else "image")


def add_parser(subparsers: Any) -> None:
    """Add ``tokens`` (with ``stats``) to the ``rleseg`` sub-command parsers."""
    parser = subparsers.add_parser("tokens", help="token statistics and planning for the tokenizers")
    verbs = parser.add_subparsers(dest="tokens_command", metavar="VERB", required=True)
    p = verbs.add_parser(
        "stats",
        help="runs/tokens per mask, vocabulary, truncation and the Dice ceiling, per tokenizer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    for flags, kw in _OPTIONS:
        source.add_argument(*flags, **kw)
    p.add_argument(
        "-t",
        "--tokenizer",
        action="append",
        metavar="NAME",
        help=f"tokenizer (repeatable; default lac); registered: {', '.join(list_tokenizers())}",
    )
    p.add_argument("--num-classes", type=int, default=3, help="N, background included (default 3)")
    p.add_argument("--subsample", type=int, default=1, help="subsampling factor s (default 1)")
    p.add_argument("--subsample-method", default="nearest", choices=("nearest", "any"))
    p.add_argument("--max-run", type=int, default=None, help="M (default: one row of the token mask)")
    p.add_argument("--max-seq-len", type=int, default=None, help="report truncation at this length")
    p.add_argument("--truncation", default="tail", choices=("tail", "longest"))
    p.add_argument("--shape", type=int, nargs=2, default=(80, 80), metavar=("H", "W"), help="synthetic size")
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="resize every mask to H x W (nearest) before tokenizing: the training image_size",
    )
    p.add_argument(
        "--crop",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="then take the centre H x W crop of every mask: the training patch_size",
    )
    p.add_argument(
        "--ignore-label",
        type=_int_or_none,
        default=255,
        metavar="V",
        help="mask value of void pixels, encoded as background and not scored (default 255; -1 is void "
        "too; 'none': no void)",
    )
    p.add_argument("--frames", type=int, default=2, help="T of synthetic clips for video tokenizers")
    p.add_argument("--noise", type=float, default=0.0, help="salt-and-pepper fraction of synthetic masks")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _int_or_none(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def fit_masks(masks: Iterable[np.ndarray], args: argparse.Namespace) -> Iterable[np.ndarray]:
    """``masks`` resized to ``--image-size`` (nearest), then centre-cropped to ``--crop``."""
    from rleseg.data.transforms import center_crop, resize_labels

    size, crop = getattr(args, "image_size", None), getattr(args, "crop", None)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask)
        if size is not None:
            mask = resize_labels(mask, size)
        if crop is not None:
            if crop[0] > mask.shape[-2] or crop[1] > mask.shape[-1]:
                raise ValueError(
                    f"--crop {crop[0]} {crop[1]} is larger than mask {i} ({mask.shape[-2]}x{mask.shape[-1]}"
                    + (" after --image-size)" if size is not None else "); add --image-size")
                )
            mask = center_crop(mask, crop)
        yield mask


def _selected_source(args: argparse.Namespace) -> _Source:
    for s in _SOURCES:
        if getattr(args, s.dest, None) is not None:
            return s
    raise ValueError(f"give a mask source: {' or '.join('/'.join(f) for f, _ in _OPTIONS)}")


def collect_stats(args: argparse.Namespace, source: MaskSource | None = None) -> str:
    """The table ``rleseg tokens stats`` prints; ``source`` overrides the one chosen by the options."""
    names = args.tokenizer or ["lac"]
    chosen = None if source is not None else _selected_source(args)
    load = source or chosen.load
    results = []
    for name in names:
        kind = _kind(name)
        synthetic_shape = tuple(args.shape) if kind != "video" else (args.frames, *args.shape)
        masks = load(args, kind, None if chosen and chosen.shape_from_masks else synthetic_shape)
        masks = iter(fit_masks(masks, args))
        first = next(masks, None)
        if first is None:
            raise ValueError("the mask source gave no masks")
        cfg: dict[str, Any] = dict(
            num_classes=args.num_classes,
            shape=np.shape(first),
            subsample=args.subsample,
            subsample_method=args.subsample_method,
            max_run=args.max_run,
            max_seq_len=args.max_seq_len,
            truncation=args.truncation,
        )
        tokenizer = create_tokenizer(name, **cfg)
        ignore = getattr(args, "ignore_label", None)
        if ignore is not None and 0 <= ignore < args.num_classes:
            raise ValueError(
                f"--ignore-label {ignore} is a class id of --num-classes {args.num_classes}; "
                "pass --ignore-label none (no void) or a value outside the classes"
            )
        rest = _same_shape(masks, np.shape(first))
        results.append(token_stats(_chain(first, rest), tokenizer, ignore_index=ignore))
    return format_table(results)


def _same_shape(masks: Iterable[np.ndarray], shape: tuple[int, ...]) -> Iterable[np.ndarray]:
    for i, mask in enumerate(masks, start=1):
        if np.shape(mask) != shape:
            raise ValueError(
                f"mask {i} is {'x'.join(map(str, np.shape(mask)))}, mask 0 is {'x'.join(map(str, shape))}; "
                "pass --image-size H W to resize them all"
            )
        yield mask


def _chain(first: np.ndarray, rest: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    yield first
    yield from rest


def run(args: argparse.Namespace, source: MaskSource | None = None) -> int:
    print(collect_stats(args, source))
    return 0
