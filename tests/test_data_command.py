"""``rleseg data list | prepare | show``, called through its own argparse parser."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from rleseg.commands import data as data_command
from rleseg.data import SourceMissingError


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    data_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *argv])
    return args.func(args)


def test_prepare_prints_a_summary(data_fashion_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "prepare",
        "composites",
        "--data-dir",
        str(data_fashion_dir),
        "--arg",
        "num_train=12",
        "--arg",
        "canvas=32",
    ]
    assert _run(*argv, "--max-sequences", "4") == 0
    out = capsys.readouterr().out
    assert "composites: prepared" in out and "4 classes (background included)" in out
    assert "train     12 samples of 32x32" in out and "pixel freq: background" in out


def test_prepare_nuclei_from_a_given_wheel(tmp_path: Path, data_fake_wheel: Path, capsys) -> None:
    assert _run("prepare", "nuclei", "--data-dir", str(tmp_path), "--arg", f"wheel={data_fake_wheel}") == 0
    out = capsys.readouterr().out
    assert "things: all foreground classes" in out and "val        4 samples" in out


def test_missing_source_names_the_install_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SourceMissingError, match="apt-get install -y mricron-data"):
        _run("prepare", "mri", "--data-dir", str(tmp_path), "--arg", f"raw_dir={tmp_path}")
    # several sources: each failure is reported, the others still run, the status says it failed
    status = _run("prepare", "mri", "composites", "--data-dir", str(tmp_path), "--arg", f"raw_dir={tmp_path}")
    err = capsys.readouterr().err
    assert status == 1 and "mri: error:" in err and "composites: error:" in err
    assert "apt-get install -y dataset-fashion-mnist" in err


def test_list_says_what_is_prepared(data_fashion_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("list", "--data-dir", str(data_fashion_dir)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("composites") and lines[1].strip() == "prepared"
    assert any("your own data" in line for line in lines)


@pytest.mark.parametrize(
    "extra", [[], ["--video", "-n", "2", "--frames", "3"], ["--panoptic", "--split", "val"]]
)
def test_show_writes_a_png_grid(data_fashion_dir: Path, tmp_path: Path, extra: list[str]) -> None:
    from PIL import Image

    out = tmp_path / "grid.png"
    argv = [
        "show",
        "composites",
        "--out",
        str(out),
        "--data-dir",
        str(data_fashion_dir),
        "--arg",
        "canvas=32",
    ]
    assert _run(*argv, "-n", "4", *extra) == 0
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert pixels.shape[0] > 100 and pixels.std() > 10  # a picture, not a blank page


def test_bad_source_argument_is_named() -> None:
    with pytest.raises(ValueError, match="KEY=VALUE, got 'canvas'"):
        data_command.parse_source_args(["canvas"])
