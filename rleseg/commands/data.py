"""``rleseg data``: list, prepare and look at the data sources.

* ``rleseg data list`` — registered sources, whether their raw files are found, and how to install them.
* ``rleseg data prepare NAME [NAME ...]`` (or ``all``) — locate the raw files (Debian path, downloaded
  wheel, or ``--raw-dir``/``--arg``), cache the prepared arrays under the data dir (``--data-dir``, else
  ``$RLESEG_DATA_DIR``, else ``./data_cache``) and print a summary: samples per split, classes, class
  pixel frequencies.
* ``rleseg data show NAME --out grid.png`` — a PNG grid of images with their mask overlays (a strip of
  frames per clip with ``--video``; instances instead of classes with ``--panoptic``).

Source knobs are given as ``--arg key=value`` (values parsed as YAML: ``--arg scale=[0.3,0.6]``).

>>> import argparse
>>> parser = argparse.ArgumentParser(); sub = parser.add_subparsers()
>>> add_parser(sub)
>>> args = parser.parse_args(["data", "prepare", "composites", "--arg", "canvas=32"])
>>> args.names, parse_source_args(args.arg)
(['composites'], {'canvas': 32})
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

BUILTIN = ("composites", "mri", "nuclei")


def add_parser(subparsers: Any) -> None:
    """Add ``data`` (with ``list``, ``prepare``, ``show``) to the ``rleseg`` sub-command parsers."""
    parser = subparsers.add_parser("data", help="list, prepare and look at the data sources")
    verbs = parser.add_subparsers(dest="data_command", metavar="VERB")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="cache folder (default: $RLESEG_DATA_DIR or ./data_cache)")
    common.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a source knob (repeatable; YAML value)",
    )

    p = verbs.add_parser(
        "list", parents=[common], help="registered sources and whether their files are found"
    )
    p.set_defaults(func=run)
    p = verbs.add_parser("prepare", parents=[common], help="cache a source's arrays and print a summary")
    p.add_argument(
        "names", nargs="+", metavar="NAME", help=f"source name(s), or 'all' ({', '.join(BUILTIN)})"
    )
    p.add_argument("--max-sequences", type=int, default=500, help="samples per split used for frequencies")
    p.set_defaults(func=run)
    p = verbs.add_parser("show", parents=[common], help="write a PNG grid of images with mask overlays")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    p.add_argument("-n", "--num", type=int, default=8, help="samples (clips with --video)")
    p.add_argument("--video", action="store_true", help="one row of frames per clip")
    p.add_argument("--frames", type=int, default=6, help="frames per clip shown with --video")
    p.add_argument("--panoptic", action="store_true", help="colour instances instead of classes")
    p.set_defaults(func=run)
    parser.set_defaults(func=run, data_command=None)


def parse_source_args(pairs: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: yaml(v)}``; a pair without ``=`` raises ValueError naming it."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--arg expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _source(name: str, args: argparse.Namespace) -> Any:
    from rleseg.data.sources import create_source

    cfg = parse_source_args(args.arg)
    if args.data_dir and name != "folder":
        cfg.setdefault("data_dir", args.data_dir)
    return create_source(name, **cfg)


def run(args: argparse.Namespace) -> int:
    """Dispatch ``rleseg data VERB``; returns the exit status."""
    verb = getattr(args, "data_command", None)
    if verb == "list":
        return _list(args)
    if verb == "prepare":
        return _prepare(args)
    if verb == "show":
        return _show(args)
    print("usage: rleseg data {list,prepare,show} ... (see rleseg data VERB --help)", file=sys.stderr)
    return 2


def _list(args: argparse.Namespace) -> int:
    from rleseg.data.errors import DataError
    from rleseg.data.sources import list_sources, source_class

    for name in list_sources():
        cls = source_class(name)
        if name == "folder":
            status = "your own data: rleseg data prepare folder --arg root=PATH"
        else:
            try:
                src = _source(name, args)
                status = "prepared" if src.is_prepared() else "raw files found" if _raw_found(src) else ""
            except DataError as err:
                status = f"unavailable ({err})"
            status = status or f"missing: {cls.install_hint}"
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<11} {doc}\n{'':<11} {status}")
    return 0


def _raw_found(src: Any) -> bool:
    from rleseg.data.errors import SourceMissingError

    finder = getattr(src, "find_raw", None)
    if finder is None:
        return False
    try:
        finder()
    except SourceMissingError:
        return False
    return True


def format_summary(summary: dict, top: int = 8) -> str:
    """Readable lines of :func:`rleseg.data.sources.summarize` output."""
    names = summary["class_names"]
    things = sorted(summary["thing_classes"])
    if len(things) == len(names) - 1 and things:
        thing_text = "all foreground classes"
    else:
        thing_text = ", ".join(names[c] for c in things) or "none"
    lines = [
        f"source {summary['source']}: {summary['num_classes']} classes (background included); "
        f"things: {thing_text}"
    ]
    for split, info in summary["splits"].items():
        shapes = ", ".join("x".join(str(v) for v in s) for s in info["shapes"])
        lines.append(
            f"  {split:<5} {info['sequences']:>6} samples of {shapes}"
            + (
                f" (frequencies over the first {info['sampled']})"
                if info["sampled"] < info["sequences"]
                else ""
            )
        )
        freq = np.asarray(info["class_pixel_freq"])
        order = np.argsort(-freq)
        shown = [f"{names[c]} {freq[c]:.3f}" for c in order[:top] if freq[c] > 0]
        present = int(np.count_nonzero(freq))
        more = f" ... ({present} classes present)" if present > top else ""
        lines.append(f"        pixel freq: {', '.join(shown)}{more}")
        train_freq = np.asarray(summary["splits"]["train"]["class_pixel_freq"])
        unseen = [names[c] for c in np.flatnonzero((freq > 0) & (train_freq == 0))]
        if split != "train" and unseen:  # a slab split can hide whole classes from training
            lines.append(f"        {len(unseen)} class(es) absent from train: {', '.join(unseen[:top])}")
    return "\n".join(lines)


def _prepare(args: argparse.Namespace) -> int:
    import time

    from rleseg.data.sources import summarize

    names = list(BUILTIN) if args.names == ["all"] else args.names
    status = 0
    for name in names:
        start = time.perf_counter()
        try:
            src = _source(name, args)
            src.prepare()
        except ValueError as err:
            if len(names) == 1:
                raise
            print(f"{name}: error: {err}", file=sys.stderr)
            status = 1
            continue
        took = time.perf_counter() - start
        where = getattr(src, "root", None) or src.data_dir / src.name
        print(f"{name}: prepared in {took:.1f} s -> {where}")
        print(format_summary(summarize(src, max_sequences=args.max_sequences)))
    return status


def _show(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from rleseg.visualize import class_colors, overlay, to_display

    src = _source(args.name, args)
    split = src.split(args.split, video=args.video)
    # spread the samples over the split (MRI slices, nuclei tiles are ordered)
    picks = np.unique(np.linspace(0, len(split) - 1, min(args.num, len(split))).round().astype(int))
    n = len(picks)
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = []
    present: set[int] = set()
    for i in picks.tolist():
        frames = min(args.frames, split.num_frames(i)) if args.video else 1
        clip = split.load(i, 0, frames)
        labels = clip.semantic
        if args.panoptic:
            if clip.panoptic is None:
                raise ValueError(f"source {args.name!r} has no instance labels; drop --panoptic")
            labels = np.unique(clip.panoptic, return_inverse=True)[1].reshape(clip.panoptic.shape)
            labels = labels if (clip.panoptic == 0).any() else labels + 1  # keep 0 = unlabelled only
        present.update(np.unique(clip.semantic).tolist())
        rows.append([(clip.image[t], labels[t]) for t in range(len(clip.image))])
    num_colors = (
        src.num_classes if not args.panoptic else max(int(r[1].max()) + 1 for row in rows for r in row)
    )
    if args.video:  # one clip per row: a strip of frames
        grid = [[overlay(img, lab, num_colors) for img, lab in row] for row in rows]
        ncols = max(len(r) for r in grid)
    else:  # image | overlay pairs, 4 pairs per row
        pairs = [
            np.concatenate([to_display(row[0][0]), overlay(*row[0], num_colors)], axis=1) for row in rows
        ]
        ncols = min(4, len(pairs))
        grid = [pairs[k : k + ncols] for k in range(0, len(pairs), ncols)]
    colors = class_colors(src.num_classes)
    handles = (
        []
        if args.panoptic
        else [Patch(color=colors[c], label=src.class_names[c]) for c in sorted(present) if c > 0]
    )
    handles = handles[:30]
    legend_inches = 0.2 * -(-len(handles) // 5) + 0.1  # five entries per legend row
    row_inches = 2.5 if args.video else 2.2  # video frames carry a title line each
    height = row_inches * len(grid) + 0.5 + legend_inches
    fig, axes = plt.subplots(
        len(grid),
        ncols,
        figsize=(2.2 * ncols * (1 if args.video else 2), height),
        squeeze=False,
    )
    for r, row in enumerate(grid):
        for c in range(ncols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(row):
                ax.imshow(row[c], interpolation="nearest")
                if args.video:
                    ax.set_title(f"clip {r} t={c}", fontsize=7)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=7, frameon=False)
    what = "instances" if args.panoptic else "classes"
    fig.suptitle(
        f"{args.name} {args.split}: {n} {'clips' if args.video else 'samples'}, {what} overlaid", fontsize=9
    )
    fig.tight_layout(rect=(0, legend_inches / height, 1, 1 - 0.3 / height))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out} ({n} {'clips' if args.video else 'samples'} of {args.name}/{args.split})")
    return 0
