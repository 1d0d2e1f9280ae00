"""Using a trained model: load_segmenter in a process with no data, rleseg predict, old checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import TINY_RUN

from rleseg.checkpoints import CheckpointError
from rleseg.cli import main
from rleseg.inference import Segmenter, load_segmenter, resize_labels
from rleseg.lightning_cli import RlesegCLI

ROOT = Path(__file__).resolve().parents[1]
TINY = [*TINY_RUN, "--trainer.max_steps=2"]
EXPERIMENTS = {
    "image": "quickstart.yaml",
    "video": "video_composites_tac.yaml",
    "panoptic": "panoptic_composites.yaml",
    "dense": "dense_quickstart.yaml",
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data_fashion_dir: Path) -> dict[str, Path]:
    """A 2-step checkpoint of each kind of model."""
    out: dict[str, Path] = {}
    old_env, old_cwd, old_argv = os.environ.get("RLESEG_DATA_DIR"), Path.cwd(), sys.argv
    os.environ["RLESEG_DATA_DIR"] = str(data_fashion_dir)
    sys.argv = ["rleseg"]
    try:
        for kind, experiment in EXPERIMENTS.items():
            folder = tmp_path_factory.mktemp(f"ckpt_{kind}")
            os.chdir(folder)
            tiny = [a for a in TINY if kind != "dense" or "init_args.d_model" not in a and "_layers" not in a]
            tiny = [a for a in tiny if kind != "dense" or "mlp_dim" not in a]
            args = ["--config", str(ROOT / "experiments" / experiment), *tiny]
            cli = RlesegCLI(args=[*args, f"--trainer.default_root_dir={folder}"], run=False)
            cli.trainer.fit(cli.model, cli.datamodule)
            out[kind] = Path(cli.trainer.checkpoint_callbacks[-1].last_model_path).resolve()
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        if old_env is None:
            os.environ.pop("RLESEG_DATA_DIR", None)
        else:
            os.environ["RLESEG_DATA_DIR"] = old_env
    return out


_FRESH = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import rleseg
    seg = rleseg.load_segmenter(sys.argv[1])
    rng = np.random.default_rng(0)
    if seg.is_video:
        clip = rng.integers(0, 255, (5, 90, 120, 3), dtype=np.uint8)
        out = seg.predict(clip)
        want = [5, 90, 120]
    else:
        image = rng.integers(0, 255, (100, 37, 3), dtype=np.uint8)
        out = seg.predict(image)
        want = [100, 37]
    print(json.dumps({"shape": list(out.shape), "want": want, "dtype": str(out.dtype), "task": seg.task}))
    """
)


@pytest.mark.parametrize("kind", ["image", "video", "panoptic", "dense"])
def test_load_segmenter_in_a_fresh_process_with_no_data(kind, checkpoints, tmp_path):
    import json

    empty = tmp_path / "no_data"
    empty.mkdir()
    env = {**os.environ, "RLESEG_DATA_DIR": str(empty), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH, str(checkpoints[kind])],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == result["want"]
    assert result["dtype"].startswith("int")
    assert not list(empty.iterdir()), "inference wrote into the empty data dir"


def test_segmenter_inputs_lists_pil_paths_and_tiles(checkpoints, tmp_path):
    seg = load_segmenter(checkpoints["image"])
    assert isinstance(seg, Segmenter) and seg.task == "image" and seg.class_names[0] == "background"
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path)
    masks = seg.predict(
        [path, Image.open(path), np.zeros((70, 90), np.uint8), np.zeros((64, 64, 4), np.uint8)]
    )
    assert [m.shape for m in masks] == [(40, 50), (40, 50), (70, 90), (64, 64)]
    # larger than the model input on both sides: tiles of 64 with half overlap, stitched by vote
    big = np.random.default_rng(1).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    calls = []
    original = seg._run
    seg._run = lambda inputs: calls.append(inputs.shape) or original(inputs)
    assert seg.predict(big).shape == (150, 200)
    assert calls and calls[0][1:] == (64, 64, 3) and calls[0][0] > 1


def test_the_tokenizer_comes_from_the_checkpoint_not_the_data(checkpoints):
    seg = load_segmenter(checkpoints["image"], decoding="top_p", stitch="last")
    info = seg.info
    assert info.tokenizer == "lac" and info.tokenizer_args["shape"] == [64, 64]
    assert seg.module.tokenizer.vocab_size == info.vocab_size
    assert seg.module.hparams.decoding == "top_p" and seg.stitch == "last"
    with pytest.raises(ValueError, match="no option"):
        load_segmenter(checkpoints["image"], colour="red")


def test_a_checkpoint_from_before_the_contract_is_refused_with_advice(checkpoints, tmp_path):
    state = torch.load(checkpoints["image"], map_location="cpu", weights_only=True)
    info = state["hyper_parameters"]["data_info"]
    for key in ("tokenizer", "tokenizer_args", "image_size", "patch_size", "patch_stride", "mean", "std"):
        info.pop(key, None)
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    with pytest.raises(CheckpointError, match="saved before checkpoints described their data.*--config"):
        load_segmenter(old)


def test_resize_labels_is_nearest():
    mask = np.arange(4).reshape(2, 2)
    assert resize_labels(mask, (4, 4)).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


# ------------------------------------------------------------------------------------ rleseg predict


def test_predict_writes_masks_at_each_images_own_size(checkpoints, tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"small": (40, 30), "wide": (64, 150), "same": (64, 64), "big": (130, 140)}
    rng = np.random.default_rng(0)
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"{name}.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RLESEG_DATA_DIR", str(tmp_path / "no_data"))
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--config",
            str(ROOT / "experiments" / "quickstart.yaml"),
            f"--ckpt_path={checkpoints['image']}",
            f"--data.init_args.predict_path={images}",
            f"--prediction_writer.output_dir={out}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert code == 0
    for name, (h, w) in sizes.items():
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        assert mask.shape == (h, w), name
        over = np.asarray(Image.open(out / "overlays" / f"{name}.png"))  # with a class legend below
        assert over.shape[1:] == (w, 3) and over.shape[0] > h
    assert f"rleseg predict: wrote 4 masks to {out / 'masks'}" in capsys.readouterr().err


def test_predict_writes_each_video_frame_once(checkpoints, tmp_path, monkeypatch):
    clip = tmp_path / "clips" / "walk"
    clip.mkdir(parents=True)
    for t in range(5):
        Image.fromarray(np.full((50, 70, 3), 40 * t, np.uint8)).save(clip / f"frame{t:03d}.png")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--config",
            str(ROOT / "experiments" / "video_composites_tac.yaml"),
            f"--ckpt_path={checkpoints['video']}",
            f"--data.init_args.predict_path={tmp_path / 'clips'}",
            f"--prediction_writer.output_dir={out}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert code == 0
    written = sorted(p.name for p in (out / "masks" / "walk").iterdir())
    assert written == [f"frame{t:03d}.png" for t in range(5)]
    assert np.asarray(Image.open(out / "masks" / "walk" / "frame000.png")).shape == (50, 70)


def test_predict_without_a_checkpoint_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    code = main(
        [
            "predict",
            "--config",
            str(ROOT / "experiments" / "quickstart.yaml"),
            f"--data.init_args.predict_path={tmp_path / 'images'}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2].startswith("rleseg predict: error: predict needs the trained model: pass --ckpt_path")
    assert "--allow_untrained true" in err[-2]
    assert not (tmp_path / "runs").exists()


def test_the_readme_example_runs(checkpoints, tmp_path, monkeypatch):
    import doctest

    text = (ROOT / "README.md").read_text()
    block = text.split("## Use a trained model (Python)")[1].split("```python")[1].split("```")[0]
    block = block.replace("runs/quickstart/version_0/checkpoints/last.ckpt", str(checkpoints["image"]))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save("photo.jpg")
    globs = {"array": np.zeros((30, 40, 3), np.uint8), "pil_image": Image.new("RGB", (20, 10))}
    test = doctest.DocTestParser().get_doctest(block, globs, "README", "README.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0 and runner.tries >= 5


def test_load_from_checkpoint_then_predict_masks(checkpoints):
    from rleseg.module import RLESegModule

    module = RLESegModule.load_from_checkpoint(checkpoints["image"], map_location="cpu").eval()
    assert module.tokenizer is not None and module.tokenizer.name == "lac"
    out = module.predict_masks({"image": torch.zeros(2, 3, 64, 64)})
    assert tuple(out["mask"].shape) == (2, 64, 64)
