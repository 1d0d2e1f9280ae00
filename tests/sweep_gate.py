"""A callback the sweep tests put into trial configs (trial processes import it: the tests directory is on
their ``PYTHONPATH``). It holds one trial at the start of training while a file exists, so a test can
kill the sweep while that trial is provably mid-trial, however slow or busy the machine is."""

from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


class HoldTrial(Callback):
    """Wait at ``on_train_start`` of trial ``trial`` (its folder name) while ``hold`` exists.

    Writes ``<hold>.<trial>`` when it starts waiting, so the test knows the trial got there.
    """

    def __init__(self, trial: str, hold: str) -> None:
        super().__init__()
        self.trial, self.hold = trial, Path(hold)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if Path(trainer.default_root_dir).name != self.trial:
            return
        Path(f"{self.hold}.{self.trial}").touch()
        while self.hold.exists():
            time.sleep(0.1)
