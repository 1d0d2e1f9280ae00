"""Packaging: the extras the README names, and the experiment / sweep YAMLs reachable from a wheel.

The wheel test builds rleseg (``pip wheel --no-build-isolation``, a few seconds with the C kernels) and
runs ``rleseg experiments copy`` from the unpacked wheel, away from the checkout; it is marked slow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from rleseg.commands.experiments import compose_experiment, pieces

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_extras_the_readme_names():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    assert {"data", "tensorboard", "dashboard", "smp", "postgres", "dev"} <= set(extras)
    # make install / make quickstart install dev: it must keep everything the tests and the README's
    # pictures need
    assert "rleseg[data,tensorboard,smp]" in extras["dev"]
    names = {d.split(">")[0].split("[")[0].split("<")[0].strip() for d in project["dependencies"]}
    assert "opencv-python-headless" in names  # cv2 is imported (rleseg/data/transforms.py)
    assert not {"nibabel", "tifffile", "tensorboard"} & names  # extras, not core
    readme = (ROOT / "README.md").read_text()
    for extra in extras:
        assert f"`{extra}`" in readme, f"README does not name the {extra!r} extra"
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme


def test_shipped_configs_are_self_contained():
    """Everything an experiment or a sweep reads lies in the folders setup.py copies into the wheel."""
    shipped = (ROOT / "experiments", ROOT / "sweeps")
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        for piece in pieces(path):
            assert piece.is_relative_to(shipped[0]), f"{path.name} reads {piece}, outside experiments/"
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        base = (path.parent / yaml.safe_load(path.read_text())["base"]).resolve()
        assert base.is_file() and any(base.is_relative_to(f) for f in shipped), (path.name, base)


@pytest.mark.slow
def test_wheel_ships_experiments_and_sweeps(tmp_path: Path):
    wheels = tmp_path / "wheels"
    leave_build = (ROOT / "build").exists()  # setuptools builds in ROOT/build (git-ignored)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels)],
        check=True,
        cwd=ROOT,
    )  # fmt: skip
    if not leave_build:
        shutil.rmtree(ROOT / "build", ignore_errors=True)
    (wheel,) = wheels.glob("rleseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = [p.relative_to(ROOT) for p in (ROOT / "experiments").rglob("*.yaml")]
    needed += [p.relative_to(ROOT) for p in (ROOT / "sweeps").rglob("*.yaml")]
    missing = [str(p) for p in needed if f"rleseg/_configs/{p.as_posix()}" not in names]
    assert not missing, missing
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    run = subprocess.run(
        [sys.executable, "-m", "rleseg", "experiments", "copy", "quickstart", "."],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "wrote quickstart.yaml" in run.stdout
    copied = yaml.safe_load((work / "quickstart.yaml").read_text())
    assert copied == compose_experiment(ROOT / "experiments" / "quickstart.yaml")
    listing = subprocess.run(
        [sys.executable, "-c", "import rleseg.commands.experiments as e; print(e.config_root())"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert listing.stdout.strip() == str(unpacked / "rleseg" / "_configs")
