"""The console script: help, sub-command discovery, readable errors, and bad experiment configs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rleseg.cli import LIGHTNING_VERBS, command_modules, main


def test_help_lists_lightning_verbs_and_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for verb in LIGHTNING_VERBS:
        assert verb in out
    for name in command_modules():
        assert name in out


def test_unknown_subcommand_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_python_dash_m_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "rleseg", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "fit" in proc.stdout


def test_import_rleseg_is_light():
    # `import rleseg` must not drag in torch, Lightning or matplotlib (tokenizers are numpy-only).
    code = (
        "import sys, rleseg; "
        "bad = [m for m in ('torch', 'lightning', 'matplotlib', 'optuna') if m in sys.modules]; print(bad)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


QUICK = ["--trainer.fast_dev_run=1", "--data.init_args.limit_train=8", "--data.init_args.limit_val=4"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--data.init_args.tokenizer=nope", "unknown tokenizer 'nope'; registered tokenizers: ["),
        ("--data.init_args.tokenizer=tac", "tokenizer 'tac' is for task 'video'"),
        ("--data.init_args.max_seq_len=8", "set data max_seq_len to at least"),
    ],
    ids=["unknown-tokenizer", "video-tokenizer-on-image-data", "max-seq-len-too-small"],
)
def test_bad_config_fails_before_training_with_advice(override, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
    code = main(["fit", "--config", str(config), override, *QUICK])
    err = capsys.readouterr().err
    assert code == 2
    # The last words are one readable error (earlier stderr may hold unrelated logging noise).
    last = err.strip().splitlines()[-2:]
    assert last[0].startswith("rleseg fit: error: ") and expected in last[0], err[-2000:]
    assert last[1] == "(set RLESEG_DEBUG=1 to see the traceback)"
    # Nothing was trained: no checkpoint was written.
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    "cls_path",
    [
        "rleseg.module.RLESegModule",
        "rleseg.module.DenseSegModule",
        "rleseg.data.ImageSegDataModule",
        "rleseg.data.VideoSegDataModule",
        "rleseg.data.PanopticDataModule",
    ],
)
def test_every_model_and_data_option_has_help(cls_path):
    # `rleseg fit --model.help CLASS` shows these descriptions (Google-style Args, one per parameter)
    import importlib
    import inspect

    import docstring_parser

    module, _, name = cls_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    documented = {p.arg_name for p in docstring_parser.parse(cls.__doc__ or "").params}
    options = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert options <= documented, sorted(options - documented)


def test_a_missing_optional_dependency_is_one_line_naming_its_extra(tmp_path, monkeypatch):
    # A TIFF mask read without tifffile (the `data` extra): the error names the extra to install.
    import numpy as np

    from rleseg.cli import environment_error
    from rleseg.data.sources.folder import read_mask

    np.save(tmp_path / "unused.npy", np.zeros((2, 2), np.uint8))
    monkeypatch.setitem(sys.modules, "tifffile", None)  # `import tifffile` raises ModuleNotFoundError
    with pytest.raises(ModuleNotFoundError) as caught:
        read_mask(tmp_path / "mask.tif")
    assert environment_error(caught.value) == (
        "reading TIFF images and masks needs tifffile, which is not installed: pip install 'rleseg[data]'"
    )
    # a module that is not an optional dependency stays a traceback (a bug or a broken install)
    assert environment_error(ModuleNotFoundError("No module named 'numpyy'", name="numpyy")) is None
