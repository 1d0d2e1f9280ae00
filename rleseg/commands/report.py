"""``rleseg report``: an Optuna study as ``report.md`` + ``report.html`` (+ ``figures/``, ``trials.csv``).

* ``rleseg report --study runs/sweeps/encodings/cpu/study.db --out reports/encodings/`` — a path to the
  SQLite file ``rleseg sweep`` wrote (or its folder), or any SQLAlchemy URL (``postgresql://...``).
* ``--name NAME`` — which study, when the storage holds several (an unknown name lists the valid ones).
* ``--title TEXT`` — the report's title; ``--notes FILE.md`` — hand-written conclusions placed after the
  study summary; ``--metric KEY`` — the quality metric of the plots (default: the first maximised objective).
* By default the report keeps what it needs beside it, to commit with it: a copy of the study
  (``DIR/study.db``) and each trial's small artifacts (``metrics.csv``, ``config.yaml``, ``hparams.yaml``,
  the last ``val_predictions/epoch_*.png``) in ``DIR/trials/trial_NNNN/``; the report links them, and
  ``rleseg report --study DIR/study.db`` regenerates every figure when the trials' own folders (under
  ``runs/``) are gone. ``--no-copy`` writes the report alone.

The report's first lines give the command that regenerates it (from ``DIR/study.db``). See
:mod:`rleseg.report`.

>>> import argparse
>>> parser = argparse.ArgumentParser(); sub = parser.add_subparsers()
>>> add_parser(sub)
>>> args = parser.parse_args(["report", "--study", "s.db", "--out", "reports/x"])
>>> args.study, args.name, args.out, args.notes, args.copy
('s.db', None, 'reports/x', None, True)
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Add ``report`` to the ``rleseg`` sub-command parsers."""
    parser = subparsers.add_parser(
        "report",
        help="a Markdown + HTML report (tables, plots, Pareto fronts) from an Optuna study",
        description="Generate report.md, report.html, figures/ and trials.csv from a sweep's Optuna study.",
        epilog="Example: rleseg report --study runs/sweeps/encodings/cpu/study.db --out reports/encodings/",
    )
    parser.add_argument(
        "--study",
        required=True,
        metavar="STORAGE",
        help="a study .db file (or its folder) or a SQLAlchemy URL",
    )
    parser.add_argument("--name", default=None, help="the study name (optional when the storage holds one)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the report folder (e.g. reports/NAME/)")
    parser.add_argument("--title", default=None, help="the report's title")
    parser.add_argument("--notes", default=None, metavar="FILE.md", help="Markdown conclusions to include")
    parser.add_argument("--metric", default=None, metavar="KEY", help="quality metric (e.g. val/dice_mean)")
    parser.add_argument(
        "--no-copy",
        dest="copy",
        action="store_false",
        help="do not copy the study to DIR/study.db and each trial's metrics.csv, config.yaml, hparams.yaml "
        "and last val_predictions/epoch_*.png to DIR/trials/trial_NNNN/ (copied by default, to commit "
        "beside the report)",
    )
    parser.add_argument("--copy-trials", action="store_true", help=argparse.SUPPRESS)  # the default now
    parser.set_defaults(func=run)


def regenerate_command(args: argparse.Namespace, name: str) -> str:
    """The command line that rebuilds the report from what is kept beside it (the study's copy in
    ``DIR/study.db``; the study name spelt out, so it stays unambiguous).

    >>> ns = argparse.Namespace(study="runs/a.db", out="reports/a/", title="A b", notes=None, metric=None)
    >>> regenerate_command(ns, "a-cpu")
    "rleseg report --study reports/a/study.db --name a-cpu --out reports/a/ --title 'A b'"
    >>> ns.copy = False
    >>> regenerate_command(ns, "a-cpu").split()[3], regenerate_command(ns, "a-cpu").endswith("--no-copy")
    ('runs/a.db', True)
    """
    copy = getattr(args, "copy", True)
    study = (Path(args.out) / "study.db").as_posix() if copy else args.study
    parts = ["rleseg", "report", "--study", study, "--name", name, "--out", args.out]
    for flag in ("title", "notes", "metric"):
        value = getattr(args, flag, None)
        if value:
            parts += [f"--{flag}", value]
    if not copy:
        parts.append("--no-copy")
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    """Run the ``report`` command; returns the exit status."""
    from rleseg.report import ReportOptions, load_study, resolve_storage, write_report

    notes = None
    if args.notes:
        path = Path(args.notes)
        if not path.is_file():
            raise FileNotFoundError(f"--notes {args.notes!r}: no such file")
        notes = path.read_text()
    study = load_study(args.study, args.name)
    url = resolve_storage(args.study)
    roots = [Path(url[len("sqlite:///") :]).parent] if url.startswith("sqlite:///") else []
    copy = bool(getattr(args, "copy", True))
    options = ReportOptions(
        title=args.title,
        notes=notes,
        command=regenerate_command(args, study.study_name),
        metric=args.metric,
        storage=(Path(args.out) / "study.db").as_posix() if copy else args.study,
        trial_roots=roots,
        copy_trials=copy,
        copy_study=copy,
    )
    result = write_report(study, args.out, options)
    print(
        f"wrote {result.markdown} and {result.html} ({len(result.figures)} figures in "
        f"{result.markdown.parent / 'figures'}) from study {study.study_name!r}"
    )
    if copy:
        print(
            f"kept the study in {Path(args.out) / 'study.db'} and the artifacts of {len(result.trials)} "
            f"trial(s) in {Path(args.out) / 'trials'}"
        )
    return 0
