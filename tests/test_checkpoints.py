"""Checkpoints: weights-only loading from anywhere, exact resume, atomic saves, one-line errors."""

from __future__ import annotations

import errno
import functools
import http.server
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from tiny_runs import TINY_RUN

from rleseg.checkpoints import CheckpointError, load_checkpoint
from rleseg.cli import main
from rleseg.lightning_cli import RlesegCLI, SafeCheckpointIO

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "quickstart.yaml"
TINY = TINY_RUN


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch, data_fashion_dir: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RLESEG_DATA_DIR", str(data_fashion_dir))
    monkeypatch.setattr(sys, "argv", ["rleseg"])
    return tmp_path


# ----------------------------------------------------------------------------------------- hostile files


class _Payload:
    """Unpickling this creates ``marker``: the proof that a checkpoint's pickle code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": _Payload(marker)}, path)
    return path


@pytest.fixture
def served(tmp_path: Path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/www``; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _last_error(capsys, verb: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "(set RLESEG_DEBUG=1 to see the traceback)", err[-5:]
    assert err[-2].startswith(f"rleseg {verb}: error: "), err[-5:]
    assert not any(line.startswith("Traceback") for line in err)
    return err[-2]


@pytest.mark.parametrize("verb", ["validate", "predict", "fit"])
def test_malicious_checkpoint_served_over_http_never_runs(verb, workdir, served, capsys):
    www, url = served
    marker = workdir / "pwned"
    _malicious_checkpoint(www / "evil.ckpt", marker)
    code = main([verb, "--config", str(CONFIG), *TINY, f"--ckpt_path={url}/evil.ckpt"])
    assert not marker.exists(), "the checkpoint's pickle code ran"
    assert code == 2
    assert "refusing checkpoint" in _last_error(capsys, verb)


def test_malicious_weights_path_over_http_never_runs(workdir, served, capsys):
    www, url = served
    marker = workdir / "pwned"
    _malicious_checkpoint(www / "evil.pth", marker)
    args = ["fit", "--config", str(CONFIG), *TINY, "--trainer.fast_dev_run=1"]
    code = main([*args, f"--model.init_args.weights_path={url}/evil.pth"])
    assert not marker.exists(), "the weights file's pickle code ran"
    assert code == 2
    assert "weights_path" in _last_error(capsys, "fit")


@pytest.mark.parametrize("scheme", ["path", "file"])
def test_local_malicious_checkpoint_is_refused(scheme, tmp_path):
    marker = tmp_path / "pwned"
    path = _malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match="refusing checkpoint"):
        load_checkpoint(path if scheme == "path" else f"file://{path}")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p, "does not exist"),
        (lambda p: (p.write_bytes(b"PK\x03\x04 truncated"), p)[1], "not a readable PyTorch checkpoint"),
        (lambda p: (p.write_text("model:\n  lr: 0.1\n"), p)[1], "not a PyTorch checkpoint (a text file)"),
        (lambda p: (torch.save(torch.zeros(3), p), p)[1], "not a Lightning checkpoint"),
        (lambda p: (p.mkdir(), p)[1], "is a folder"),
    ],
    ids=["missing", "corrupt", "yaml", "tensor", "folder"],
)
def test_bad_checkpoint_is_one_line(make, expected, workdir, capsys):
    path = make(workdir / "model.ckpt")
    code = main(["validate", "--config", str(CONFIG), *TINY, f"--ckpt_path={path}"])
    assert code == 2
    assert expected in _last_error(capsys, "validate")


def test_checkpoint_of_another_model_class_is_refused(workdir, capsys):
    path = workdir / "dense.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "builtins.eval", "lr": 1.0}}, path)
    code = main(["validate", "--config", str(CONFIG), *TINY, f"--ckpt_path={path}"])
    assert code == 2
    assert "holds a builtins.eval, the config selects rleseg.module.RLESegModule" in _last_error(
        capsys, "validate"
    )


# ------------------------------------------------------------------------- a real (tiny) checkpoint


@pytest.fixture
def trained(workdir: Path) -> Path:
    """A checkpoint of a 2-step run with d_model 32 and greedy decoding."""
    cli = RlesegCLI(args=["--config", str(CONFIG), *TINY, "--trainer.max_steps=2"], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    return Path(cli.trainer.checkpoint_callbacks[-1].last_model_path)


def test_command_line_generation_settings_apply_and_architecture_comes_from_checkpoint(
    trained, monkeypatch, capsys
):
    seen = {}
    monkeypatch.setattr(RlesegCLI, "_run_subcommand", lambda self, sub: seen.update(model=self.model))
    args = ["validate", "--config", str(CONFIG), *TINY, f"--ckpt_path={trained}"]
    main([*args, "--model.init_args.decoding=top_p", "--model.init_args.d_model=16"])
    hp = seen["model"].hparams
    assert hp.decoding == "top_p"  # the command line's (the checkpoint was trained greedy)
    assert hp.d_model == 32  # the checkpoint's: its weights only fit this size
    err = capsys.readouterr().err
    assert "note: model.decoding='top_p' from the config / command line (the checkpoint has 'greedy')" in err
    assert "note: model.d_model=32 from the checkpoint (the config / command line has 16)" in err


def test_checkpoint_trained_on_other_data_is_one_line(trained, workdir, capsys):
    code = main(
        [
            "validate",
            "--config",
            str(CONFIG),
            *TINY,
            f"--ckpt_path={trained}",
            "--data.init_args.tokenizer=mc",
        ]
    )
    assert code == 2
    line = _last_error(capsys, "validate")
    assert "the checkpoint was trained on data with vocab_size" in line, line


def test_unwritable_output_folder_is_one_line(trained, workdir, capsys):
    from PIL import Image

    blocker = workdir / "a_file"
    blocker.write_text("not a folder")
    (workdir / "images").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(workdir / "images" / "a.png")
    args = ["predict", "--config", str(CONFIG), *TINY, f"--ckpt_path={trained}"]
    args.append(f"--data.init_args.predict_path={workdir / 'images'}")
    code = main([*args, f"--prediction_writer.output_dir={blocker}/predictions"])
    assert code == 2
    assert f"cannot write {blocker}" in _last_error(capsys, "predict")


def test_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(workdir, monkeypatch, capsys):
    import rleseg.fileio

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rleseg.fileio.os, "fsync", no_space)
    code = main(["fit", "--config", str(CONFIG), *TINY, "--trainer.max_steps=1"])
    assert code == 2
    assert "no space left on the device" in _last_error(capsys, "fit")
    assert not [p for p in workdir.rglob("*") if p.name.endswith(".tmp") or p.suffix == ".ckpt"]


# ------------------------------------------------------------------------------------ exact resume


class _Stop(Exception):
    pass


class _StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise _Stop  # like a kill: nothing more is saved


def _fit(folder: Path, ckpt: Path | None = None, stop: int | None = None) -> RlesegCLI:
    args = [
        "--config", str(CONFIG), *TINY,
        "--model.init_args.dropout=0.2",  # draws from the global RNG at every step
        "--seed_everything=3",
        "--trainer.max_steps=10",  # 4 steps per epoch: the stop at 6 is mid-epoch 1
        "--trainer.max_epochs=-1",
        "--trainer.check_val_every_n_epoch=100",
        "--last_checkpoint.every_n_train_steps=3",
        f"--trainer.default_root_dir={folder}",
    ]  # fmt: skip
    cli = RlesegCLI(args=args, run=False)
    if stop is not None:
        cli.trainer.callbacks.append(_StopAt(stop))
    try:
        cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=ckpt)
    except _Stop:
        pass
    return cli


def test_run_stopped_mid_epoch_and_resumed_ends_with_the_uninterrupted_weights(workdir):
    whole = _fit(workdir / "whole")
    stopped = _fit(workdir / "stopped", stop=6)
    last = Path(stopped.trainer.checkpoint_callbacks[-1].last_model_path)
    assert load_checkpoint(last)["global_step"] == 6
    resumed = _fit(workdir / "resumed", ckpt=last)
    assert resumed.trainer.global_step == 10
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert diff <= 1e-5, diff


# ----------------------------------------------------------------------------------- atomic saving


_SAVER = textwrap.dedent(
    """
    import sys, torch
    from rleseg.lightning_cli import SafeCheckpointIO
    io, target = SafeCheckpointIO(), sys.argv[1]
    big = torch.arange(6_000_000, dtype=torch.float32)
    for i in range(10_000):
        io.save_checkpoint({"state_dict": {"w": big + i}, "step": i}, target)
        print(i, flush=True)
    """
)


def test_kill_during_save_never_leaves_a_truncated_file_under_the_final_name(tmp_path):
    # the run folder on another filesystem than $TMPDIR when the machine has /dev/shm
    shm = Path("/dev/shm")
    folder = Path(tempfile_dir(shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path / "run"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "last.ckpt"
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    rng = np.random.default_rng(0)
    try:
        for _ in range(4):
            proc = subprocess.Popen(
                [sys.executable, "-c", _SAVER, str(target)], env=env, stdout=subprocess.PIPE, text=True
            )
            proc.stdout.readline()  # one complete save, then kill somewhere inside a later one
            time.sleep(float(rng.uniform(0.0, 0.3)))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            state = load_checkpoint(target)  # always complete and readable
            assert state["state_dict"]["w"][0].item() == state["step"]
    finally:
        import shutil

        if folder.is_relative_to(shm):
            shutil.rmtree(folder, ignore_errors=True)


def tempfile_dir(base: Path) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="rleseg-test-", dir=base)


def test_save_error_removes_the_temporary_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = SafeCheckpointIO()
    io.save_checkpoint({"state_dict": {}, "step": 1}, target)

    def broken(obj, fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(CheckpointError, match="no space left"):
        io.save_checkpoint({"state_dict": {}, "step": 2}, target)
    monkeypatch.undo()
    assert load_checkpoint(target)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_saved_files_respect_the_umask(tmp_path):
    from rleseg.data.cache import save_npz

    old = os.umask(0o022)
    try:
        npz = save_npz(tmp_path / "a.npz", x=np.zeros(2))
        SafeCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "b.ckpt")
    finally:
        os.umask(old)
    assert oct(npz.stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "b.ckpt").stat().st_mode & 0o777) == oct(0o644)


def test_checkpoints_hold_plain_data_only(trained):
    # everything rleseg writes loads weights-only: no class is unpickled from our own checkpoints
    state = torch.load(trained, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["_class_path"] == "rleseg.module.RLESegModule"
    assert pickle.dumps(state["hyper_parameters"]["data_info"])  # a plain dict


def test_class_names_with_mathtext_are_drawn_as_written(tmp_path):
    from rleseg.visualize import save_confusion_matrix, save_prediction_grid

    names = ["$\\frac{", "a$b$c", "`x`", "<script>"]
    save_confusion_matrix(tmp_path / "cm.png", np.eye(4) * 5, names, title="$\\frac{")
    images = np.zeros((1, 3, 8, 8), np.float32)
    masks = np.zeros((1, 8, 8), np.int64)
    save_prediction_grid(tmp_path / "grid.png", images, masks, masks, 4, title="$\\frac{")
    assert (tmp_path / "cm.png").stat().st_size > 0 and (tmp_path / "grid.png").stat().st_size > 0
