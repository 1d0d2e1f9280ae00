"""Kill a ``fit`` mid-epoch (SIGKILL, no chance to clean up) and resume from its last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from rleseg.lightning_cli import RlesegCLI

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "quickstart.yaml"
SMALL = [
    "--model.init_args.d_model=32",
    "--model.init_args.encoder_layers=1",
    "--model.init_args.decoder_layers=1",
    "--model.init_args.mlp_dim=64",
    "--data.init_args.limit_train=400",
    "--data.init_args.limit_val=4",
    "--data.init_args.batch_size=2",
    "--trainer.max_epochs=1",
    "--last_checkpoint.every_n_train_steps=3",
]


class FirstStep(Callback):
    """Remembers the global step at which training (re)started."""

    def __init__(self) -> None:
        self.first: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first is None:
            self.first = trainer.global_step


def test_fit_killed_mid_epoch_resumes_from_last_checkpoint(tmp_path: Path, monkeypatch):
    env = {**os.environ, "RLESEG_DATA_DIR": str(ROOT / "data_cache"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "rleseg", "fit", "--config", str(CONFIG), *SMALL]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(tmp_path.glob("runs/quickstart/version_*/checkpoints/last.ckpt"))
            if found:
                time.sleep(0.5)  # let the first save complete (Lightning writes atomically)
                ckpt = found[0]
                break
            time.sleep(0.2)
        assert proc.poll() is None, "fit ended before it could be killed mid-epoch"
        assert ckpt is not None, "no last.ckpt appeared within the deadline"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # our checkpoints hold plain types only
    saved_step, steps_per_epoch = state["global_step"], 400 // 2
    assert 0 < saved_step < steps_per_epoch, "the checkpoint should be mid-epoch"

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rleseg"])
    monkeypatch.setenv("RLESEG_DATA_DIR", str(ROOT / "data_cache"))
    first = FirstStep()
    cli = RlesegCLI(
        args=["--config", str(CONFIG), *SMALL, f"--trainer.max_steps={saved_step + 4}"], run=False
    )
    cli.trainer.callbacks.append(first)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(ckpt))
    assert first.first == saved_step  # continued where the killed run stopped, not from step 0
    assert cli.trainer.global_step == saved_step + 4
    # the run ends between two periodic saves (every 3 steps): last.ckpt still holds the final step
    last = cli.trainer.checkpoint_callbacks[-1].last_model_path
    assert Path(last).name == "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == saved_step + 4
