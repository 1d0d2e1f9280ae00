"""``rleseg sweep``: run, resume, dry-run or export an Optuna sweep under memory budgets.

* ``rleseg sweep --config sweeps/encodings.yaml`` — run the sweep (a new study).
* ``... --resume`` — continue it after a crash or Ctrl-C (finished trials are kept, killed ones retried);
  also how a worker on another machine joins a study (with ``--storage postgresql://...``).
* ``... --n-trials N`` — the total the study should reach; ``--workers K`` — K processes at once.
* ``... --scale gpu`` — the sweep file's full-size settings.
* ``... --dry-run`` — print every trial's memory estimate and whether it fits; train nothing.
* ``... --export trials.csv`` — write the study's trials (params, objectives, records) to CSV and exit.

Browse a study: ``optuna-dashboard sqlite:///runs/sweeps/NAME/SCALE/study.db``. See :mod:`rleseg.sweep`.

>>> import argparse
>>> parser = argparse.ArgumentParser(); sub = parser.add_subparsers()
>>> add_parser(sub)
>>> args = parser.parse_args(["sweep", "--config", "sweeps/encodings.yaml", "--n-trials", "4"])
>>> args.config, args.n_trials, args.workers, args.resume
('sweeps/encodings.yaml', 4, 1, False)
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Add ``sweep`` to the ``rleseg`` sub-command parsers."""
    parser = subparsers.add_parser(
        "sweep",
        help="Optuna sweeps under memory budgets (run, resume, dry-run, export)",
        description="Run an Optuna sweep over an experiment's knobs under fixed memory budgets.",
        epilog="Browse a study with: optuna-dashboard sqlite:///runs/sweeps/NAME/SCALE/study.db",
    )
    parser.add_argument("--config", required=True, metavar="SWEEP.yaml", help="sweep file (sweeps/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue an existing study (or join it)")
    parser.add_argument(
        "--n-trials", type=int, default=None, metavar="N", help="total trials the study should reach"
    )
    parser.add_argument("--storage", default=None, metavar="URL", help="SQLAlchemy URL (default SQLite)")
    parser.add_argument("--workers", type=int, default=1, metavar="K", help="worker processes on the study")
    parser.add_argument("--scale", default=None, metavar="NAME", help="a `scales:` entry of the sweep file")
    parser.add_argument("--dry-run", action="store_true", help="print memory estimates only; train nothing")
    parser.add_argument("--export", default=None, metavar="CSV", help="export the study's trials and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the ``sweep`` command; returns the exit status."""
    from rleseg.sweep import SweepError, SweepSpec, export_trials, open_storage, run_sweep, shown_url

    if args.workers < 1:
        raise SweepError(f"--workers must be >= 1, got {args.workers}")
    if args.n_trials is not None and args.n_trials < 0:
        raise SweepError(f"--n-trials must be >= 0, got {args.n_trials}")
    spec = SweepSpec.load(args.config, scale=args.scale)
    if args.export:
        import optuna

        url = args.storage or spec.resolved_storage()
        storage = open_storage(url, heartbeat=False)
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if spec.study_name not in names:
            raise SweepError(f"no study {spec.study_name!r} in {shown_url(url)} (studies there: {names})")
        frame = export_trials(optuna.load_study(study_name=spec.study_name, storage=storage), args.export)
        print(f"wrote {len(frame)} trials of {spec.study_name} to {args.export}")
        return 0
    run_sweep(
        spec,
        resume=args.resume,
        n_trials=args.n_trials,
        storage=args.storage,
        workers=args.workers,
        dry_run=args.dry_run,
    )
    return 0
