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
import errno
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

LIGHTNING_VERBS = ("fit", "validate", "test", "predict")


def _offline_defaults() -> None:
    # No update check at import (albumentations), pictures without a display. HF_HUB_OFFLINE is left to
    # the user (tests, CI and the Makefile set it): `pretrained: true` downloads weights when online, and
    # an offline failure names the variable.
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


def _chain(exc: BaseException | None):
    """``exc`` and its causes / contexts, outermost first."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def user_error(exc: BaseException) -> BaseException | None:
    """The exception rleseg itself raised about the user's input, if ``exc`` (or its cause) is one.

    LightningCLI/jsonargparse wrap errors raised while instantiating a DataModule in long messages; the
    useful sentence is the one our code raised, so walk the chain for an error whose traceback ends in
    the rleseg package.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    for err in _chain(exc):
        tb = err.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if (
            isinstance(err, USER_ERRORS)
            and tb is not None
            and tb.tb_frame.f_code.co_filename.startswith(package)
        ):
            return err  # the outermost of our own errors carries the most context
    return None


def environment_error(exc: BaseException) -> str | None:
    """A one-line explanation for failures caused by the machine, not by rleseg or the user's config.

    A folder that cannot be written (permissions, a read-only filesystem, a file where a folder should
    be), a full disk, an optional dependency that is not installed (named with its extra), and a
    checkpoint whose tensors do not fit the model built from today's data.
    """
    for err in _chain(exc):
        if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] in OPTIONAL_MODULES:
            module = (err.name or "").split(".")[0]
            extra, what = OPTIONAL_MODULES[module]
            return f"{what} needs {module}, which is not installed: pip install 'rleseg[{extra}]'"
        if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
            where = err.filename or "a file"
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                return f"no space left on the device writing {where}; free some space or write elsewhere"
            return (
                f"cannot write {where}: {err.strerror}; choose a writable output folder "
                "(--trainer.default_root_dir, or the option that names this path)"
            )
        if isinstance(err, RuntimeError) and "Error(s) in loading state_dict" in str(err):
            detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), "")
            return (
                f"the checkpoint does not fit this model ({detail.rstrip('.')}); pass the experiment "
                "and data settings it was trained with"
            )
    return None


#: optional dependencies -> (the extra that installs them, what needs them), for a one-line error
OPTIONAL_MODULES = {
    "nibabel": ("data", "reading NIfTI volumes (the MRI source)"),
    "tifffile": ("data", "reading TIFF images and masks"),
    "tensorboard": ("tensorboard", "the TensorBoard logger"),
    "segmentation_models_pytorch": ("smp", "a dense model with an smp architecture (arch)"),
    "psycopg": ("postgres", "a postgresql:// study storage"),
    "optuna_dashboard": ("dashboard", "browsing a study"),
}

_WRITE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR}
)


def _report(command: str, err: BaseException | str) -> int:
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
            if os.environ.get("RLESEG_DEBUG"):
                raise
            err = user_error(exc) or environment_error(exc)
            if err is None:
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
    except Exception as exc:
        # Expected user errors get one readable line, not a traceback (set RLESEG_DEBUG=1 for one).
        if os.environ.get("RLESEG_DEBUG"):
            raise
        err = exc if isinstance(exc, USER_ERRORS) else environment_error(exc)
        if err is None:
            raise
        return _report(args.command, err)


if __name__ == "__main__":
    raise SystemExit(main())
