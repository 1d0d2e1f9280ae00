"""``RlesegCLI``: LightningCLI with rleseg's links, checkpoints, loggers and prediction writer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from rleseg.callbacks import RandomState, RunSummary
from rleseg.checkpoints import CheckpointError, is_remote, load_checkpoint, local_path, save_error
from rleseg.fileio import atomic_write
from rleseg.module import MODEL_CLASSES, DataInfo, plain_value, resolve_preset

#: Model classes a checkpoint may name when the configuration names none.
ALLOWED_MODEL_CLASSES = tuple(MODEL_CLASSES)
#: Settings of how a trained model is evaluated, not of what it is: with ``--ckpt_path`` the config's and
#: the command line's values apply; every other model setting comes from the checkpoint.
RUNTIME_SETTINGS = frozenset(
    {"decoding", "top_p", "constrained", "num_vis", "max_truncated_fraction", "diagnostics"}
)
#: Settings that only initialise weights the checkpoint then replaces: the config's value is kept silently
#: (a checkpoint trained with ``pretrained: true`` must not trigger a download to be evaluated offline).
INIT_SETTINGS = frozenset({"pretrained", "weights_path"})


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: weights-only loads from any location, atomic saves of local files."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        if storage_options is not None or is_remote(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            atomic_write(local_path(path), lambda fh: torch.save(checkpoint, fh))
        except OSError as exc:
            raise save_error(path, exc) from exc

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        # weights_only is ignored on purpose: a checkpoint is never unpickled with arbitrary objects
        return load_checkpoint(path, map_location="cpu" if map_location is None else map_location)

    def remove_checkpoint(self, path) -> None:
        if is_remote(path):
            return super().remove_checkpoint(path)
        local_path(path).unlink(missing_ok=True)


class PredictionWriter(BasePredictionWriter):
    """Writes ``masks/NAME.png`` (class ids, 8- or 16-bit; panoptic ids beyond 16 bits as ``.npy``) and
    ``overlays/NAME.png`` for ``rleseg predict``, at each input's own size. Video clips are written per
    frame (``masks/CLIP/FRAME.png``), each frame once (overlapping windows are voted per frame).

    Args:
        output_dir: where to write; defaults to ``<log dir>/predictions``.
        stitch: how overlapping tiles of a large image are merged: ``vote`` (majority label) or ``last``.
        overlap: share of a tile (or video window) overlapping its neighbour, where the training data
            gives no patch stride.
    """

    def __init__(self, output_dir: str | None = None, stitch: str = "vote", overlap: float = 0.5) -> None:
        super().__init__(write_interval="batch")
        self.output_dir, self.stitch, self.overlap = output_dir, stitch, overlap
        self.written = 0
        self.root: Path | None = None

    def _root(self, trainer: Trainer) -> Path:
        return Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "predictions")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from rleseg.inference import Segmenter

        self.written, self.root = 0, self._root(trainer)
        # the module's predict_step prepares each input through this (tiles, windows, resizing)
        pl_module._segmenter = Segmenter(
            pl_module, device=pl_module.device, stitch=self.stitch, overlap=self.overlap
        )

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        from PIL import Image

        from rleseg.visualize import legend_strip, overlay

        root = self._root(trainer)
        num_classes = pl_module.num_classes
        for item in prediction:
            masks, raws = item["mask"], item["raw"]
            video = masks.ndim == 3
            if not video:
                masks, raws = masks[None], raws[None]
            clip = Path(item["path"]).name if video else ""
            for frame_path, mask, raw in zip(item["frames"], masks, raws, strict=True):
                name = str(Path(clip) / Path(frame_path).stem)
                for kind in ("masks", "overlays"):
                    (root / kind / name).parent.mkdir(parents=True, exist_ok=True)
                if mask.max() < 2**16 and mask.min() >= 0:
                    dtype = np.uint8 if mask.max() < 256 else np.uint16
                    Image.fromarray(mask.astype(dtype)).save(root / "masks" / f"{name}.png")
                else:
                    np.save(root / "masks" / f"{name}.npy", mask)
                semantic = pl_module._semantic(mask)
                over = (overlay(raw.astype(np.float32) / 255.0, semantic, num_classes) * 255).astype(np.uint8)
                legend = legend_strip(over.shape[1], num_classes, pl_module.info.class_names)
                Image.fromarray(np.concatenate([over, legend])).save(root / "overlays" / f"{name}.png")
                self.written += 1

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            root = self._root(trainer)
            print(
                f"rleseg predict: wrote {self.written} masks to {root / 'masks'} and {self.written} "
                f"overlays to {root / 'overlays'}",
                file=sys.stderr,
            )


def _share_version(loggers: list[Any]) -> None:
    """Loggers writing under one ``save_dir/name`` share one ``version_N`` folder (each would otherwise
    pick the next free number: the CSV metrics in version_0, the TensorBoard events in version_1)."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for logger in loggers:
        if getattr(logger, "_version", 0) is None and hasattr(logger, "save_dir"):
            groups.setdefault((str(logger.save_dir), str(logger.name)), []).append(logger)
    for members in groups.values():
        version = members[0].version
        for logger in members[1:]:
            logger._version = version


def _default_loggers() -> list[dict[str, Any]]:
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}}]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(
            {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}}
        )
    return loggers


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every N training steps (to resume a killed run), and at the end of training too.

    Lightning's ``ModelCheckpoint`` with ``every_n_train_steps`` saves ``last.ckpt`` only on those steps,
    so a run whose step count is not a multiple of N would end with a ``last.ckpt`` up to N - 1 steps
    old. This one also saves the final step.
    """

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class RlesegCLI(LightningCLI):
    """LightningCLI for rleseg: ``rleseg fit --config experiments/NAME.yaml``.

    * ``model`` and ``data`` are chosen by ``class_path`` (``rleseg.module.RLESegModule`` or
      ``DenseSegModule``; ``rleseg.data.ImageSegDataModule``, ``VideoSegDataModule``, ``PanopticDataModule``).
    * The DataModule's sizes flow into the model as one :class:`DataInfo` (``link_arguments``).
    * ``checkpoint`` (best by validation Dice) and ``last_checkpoint`` (every N steps, for resuming with
      ``--ckpt_path .../last.ckpt``) are configurable sections; predictions are written as PNGs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", LightningModule)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        defaults = {"logger": _default_loggers(), "default_root_dir": "runs", "log_every_n_steps": 10}
        kwargs.setdefault("trainer_defaults", defaults)
        super().__init__(*args, **kwargs)

    def _parse_ckpt_path(self) -> None:
        """Bind ``--ckpt_path``'s model to the configuration, safely and visibly.

        Replaces Lightning's version, which loads only local files, lets the checkpoint name any class to
        import (``_class_path``) and silently overrides every model option given in the config or on the
        command line. Here the checkpoint is read weights-only from any location; its class must be the
        config's (or an rleseg model when the config names none); architecture settings come from the
        checkpoint and evaluation settings (:data:`RUNTIME_SETTINGS`) from the config, with one line on
        standard error for every value that differs.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if subcommand == "predict" and not ckpt_path and not self.config[subcommand].get("allow_untrained"):
            raise CheckpointError(
                "predict needs the trained model: pass --ckpt_path runs/NAME/version_K/checkpoints/"
                "best-....ckpt (or last.ckpt); --allow_untrained true predicts with untrained weights"
            )
        if not ckpt_path or str(ckpt_path) in ("last", "best", "hpc", "registry"):
            return
        hparams = dict(load_checkpoint(ckpt_path).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        ckpt_class = hparams.pop("_class_path", None)
        model = self.config[subcommand].get("model")
        config_class = model.get("class_path") if model is not None else None
        if ckpt_class is not None and config_class is not None and ckpt_class != config_class:
            raise CheckpointError(
                f"checkpoint {ckpt_path} holds a {ckpt_class}, the config selects {config_class}; "
                "pass the experiment file the checkpoint was trained with"
            )
        class_path = config_class or ckpt_class
        if class_path not in ALLOWED_MODEL_CLASSES and config_class is None:
            raise CheckpointError(
                f"checkpoint {ckpt_path} names model class {ckpt_class!r}, which is not an rleseg model; "
                "pass --config with the experiment the checkpoint was trained with"
            )
        if not hparams:
            return
        current = model.get("init_args") if model is not None and config_class == class_path else None
        current = plain_value(current) if current is not None else {}
        if current and "preset" in current:  # compare the sizes the config builds, not its literal values
            current.update(resolve_preset(current))
        updates: dict[str, Any] = {}
        for key, saved in hparams.items():
            if key in INIT_SETTINGS or key == "data_info":  # data_info: linked from the data, checked on load
                continue
            if current and key not in current:
                self._note(f"checkpoint setting {key}={saved!r} is not an option of {class_path}; ignored")
                continue
            mine = current.get(key, saved)
            if plain_value(saved) == plain_value(mine):
                continue
            if key in RUNTIME_SETTINGS:
                self._note(
                    f"model.{key}={mine!r} from the config / command line (the checkpoint has {saved!r})"
                )
            else:
                updates[key] = saved
                self._note(
                    f"model.{key}={saved!r} from the checkpoint (the config / command line has {mine!r})"
                )
        if updates or config_class is None:
            patch = {subcommand: {"model": {"class_path": class_path, "init_args": updates}}}
            self.config = self.parser.parse_object(patch, self.config)

    def _note(self, message: str) -> None:
        print(f"rleseg {self.config.get('subcommand')}: note: {message}", file=sys.stderr)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Trainer:
        # Every checkpoint the Trainer reads or writes goes through SafeCheckpointIO (weights-only loads
        # from any location, atomic saves) unless the configuration brings its own CheckpointIO.
        from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

        plugins = config.get("plugins")
        plugins = (
            [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        )
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(SafeCheckpointIO())
        config["plugins"] = plugins
        extra = [RandomState(), RunSummary()]
        loggers = config.get("logger")
        loggers = (
            [] if loggers in (None, False, True) else loggers if isinstance(loggers, list) else [loggers]
        )
        _share_version(loggers)
        given = [*(config.get("callbacks") or []), *callbacks]
        if loggers and not any(isinstance(c, LearningRateMonitor) for c in given):
            extra.append(LearningRateMonitor(logging_interval="step"))  # the warm-up and decay, as logged
        return super()._instantiate_trainer(config, [*callbacks, *extra])

    def before_instantiate_classes(self) -> None:
        """Name the default loggers after the experiment file (``runs/<stem>/version_N``)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        files = config.get("config") or []
        loggers = config.get("trainer", {}).get("logger")
        if not files or not isinstance(loggers, list):
            return
        stem = Path(str(files[-1])).stem
        for logger in loggers:
            init = logger.get("init_args") if hasattr(logger, "get") else None
            if init is not None and init.get("name") in (None, "lightning_logs"):
                init["name"] = stem

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data", "model.init_args.data_info", compute_fn=DataInfo.from_datamodule, apply_on="instantiate"
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/dice_mean",
                "checkpoint.mode": "max",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-epoch{epoch:03d}-dice{val/dice_mean:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.save_top_k": 0,
                "last_checkpoint.save_last": True,
                "last_checkpoint.every_n_train_steps": 50,
            }
        )
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_argument(
            "--allow_untrained",
            type=bool,
            default=False,
            help="predict without --ckpt_path, i.e. with untrained weights (refused otherwise)",
        )
