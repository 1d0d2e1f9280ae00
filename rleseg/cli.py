"""The ``rleseg`` console script.

Two families of verbs share one entry point:

* ``fit | validate | test | predict`` go to :class:`RlesegCLI`, a ``LightningCLI`` whose model and data
  are chosen by ``class_path`` in an experiment YAML (``rleseg fit --config experiments/quickstart.yaml``).
  The DataModule decides the sizes the model needs (vocabulary size, sequence length, classes); they are
  linked into the model as a :class:`~rleseg.module.DataInfo`, never typed twice.
* every module in :mod:`rleseg.commands` is a sub-command (``rleseg data prepare``, ``rleseg tokens
  stats``, ``rleseg sweep``, ``rleseg report``, ...), each exposing ``add_parser`` and ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

LIGHTNING_VERBS = ("fit", "validate", "test", "predict")


def _offline_defaults() -> None:
    # Nothing may reach the network at run time (HF hub weights, albumentations' update check).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")


def command_modules() -> dict[str, object]:
    """Sub-command modules found in :mod:`rleseg.commands`, by name."""
    import rleseg.commands as pkg

    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"rleseg.commands.{info.name}")
        if hasattr(module, "add_parser") and hasattr(module, "run"):
            found[info.name] = module
    return found


def build_lightning_cli(args: Sequence[str] | None = None, run: bool = True):
    """Build (and by default run) the LightningCLI with rleseg's defaults."""
    from rleseg.lightning_cli import RlesegCLI

    return RlesegCLI(args=args, run=run)


def _command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rleseg",
        description="Segmentation as language modelling with run-length-encoded mask tokens.",
        epilog="Training verbs: rleseg {fit,validate,test,predict} --config experiments/NAME.yaml "
        "(see `rleseg fit --help`).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb in LIGHTNING_VERBS:
        sub.add_parser(verb, help=f"LightningCLI: {verb} a model from an experiment YAML", add_help=False)
    for module in command_modules().values():
        module.add_parser(sub)
    return parser


USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def user_error(exc: BaseException) -> BaseException | None:
    """The exception rleseg itself raised about the user's input, if ``exc`` (or its cause) is one.

    LightningCLI/jsonargparse wrap errors raised while instantiating a DataModule in long messages; the
    useful sentence is the one our code raised, so walk the chain for an error whose traceback ends in
    the rleseg package.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if (
            isinstance(exc, USER_ERRORS)
            and tb is not None
            and tb.tb_frame.f_code.co_filename.startswith(package)
        ):
            return exc  # the outermost of our own errors carries the most context
        exc = exc.__cause__ or exc.__context__
    return None


def _report(command: str, err: BaseException) -> int:
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    print(f"rleseg {command}: error: {message}\n(set RLESEG_DEBUG=1 to see the traceback)", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rleseg`` and ``python -m rleseg``."""
    _offline_defaults()
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_VERBS:
        try:
            # args=None lets LightningCLI read sys.argv itself (it warns when given both).
            build_lightning_cli(args=None if from_sys else argv)
        except Exception as exc:
            err = user_error(exc)
            if err is None or os.environ.get("RLESEG_DEBUG"):
                raise
            return _report(argv[0], err)
        return 0
    parser = _command_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        # Expected user errors get one readable line, not a traceback (set RLESEG_DEBUG=1 for one).
        if os.environ.get("RLESEG_DEBUG"):
            raise
        return _report(args.command, err)


if __name__ == "__main__":
    raise SystemExit(main())
