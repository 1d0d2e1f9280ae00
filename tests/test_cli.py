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
    proc = subprocess.run([sys.executable, "-m", "rleseg", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "fit" in proc.stdout


def test_import_rleseg_is_light():
    # `import rleseg` must not drag in torch, Lightning or matplotlib (tokenizers are numpy-only).
    code = "import sys, rleseg; bad = [m for m in ('torch', 'lightning', 'matplotlib', 'optuna') if m in sys.modules]; print(bad)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
