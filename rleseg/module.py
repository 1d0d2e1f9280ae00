"""The LightningModules: the one place where model, tokenizer and metrics meet.

:class:`RLESegModule` trains the Pix2Seq token model (teacher forcing, weighted token cross-entropy)
and evaluates it by generating sequences, decoding them into masks and scoring those masks the way the
paper does (SPEC §8). :class:`DenseSegModule` is the dense baseline in the same harness: same
DataModules, same metrics, same logging, pixel cross-entropy instead of tokens.

Both take their data-dependent sizes as one :class:`DataInfo`, which the ``rleseg`` CLI links from the
DataModule (``link_arguments``), so a vocabulary size or a sequence length is never typed twice.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from rleseg.data.patches import cut_patches, stitch_patches
from rleseg.data.transforms import IMAGENET_MEAN as _IMAGENET_MEAN
from rleseg.data.transforms import IMAGENET_STD as _IMAGENET_STD
from rleseg.diagnostics import TokenDiagnostics
from rleseg.metrics import ConfusionMatrix, PanopticMetrics, SegmentationMetrics, SequenceStats, WeightedMean
from rleseg.tasks import get_task
from rleseg.tokenizers.base import EOS, PAD, Tokenizer
from rleseg.tokenizers.runs import subsample, upsample


def plain_value(value: Any) -> Any:
    """A setting as plain YAML/JSON data, so that equal settings compare equal: namespaces as dicts,
    tuples as lists, numpy scalars as Python numbers.

    >>> plain_value({"shape": (64, 64), "n": np.int64(3)})
    {'shape': [64, 64], 'n': 3}
    """
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


# the data's normalisation, as plain numbers for the contract (the arrays live in rleseg.data.transforms)
IMAGENET_MEAN = tuple(float(v) for v in _IMAGENET_MEAN)
IMAGENET_STD = tuple(float(v) for v in _IMAGENET_STD)


@dataclass
class DataInfo:
    """The data → model contract: everything a trained model needs to know about its data.

    Built from a DataModule (:meth:`from_datamodule`, linked by the CLI), saved in every checkpoint as a
    plain dict (``hyper_parameters.data_info``; checkpoints then load weights-only), and enough on its
    own to use a trained model without its training data (:func:`rleseg.load_segmenter`): the module
    builds its tokenizer from ``tokenizer`` + ``tokenizer_args`` (:meth:`build_tokenizer`), and
    inference resizes, patches and normalises images as training did.

    Attributes:
        task: ``image``, ``video``, ``static_video`` or ``panoptic`` (the tokenizer's task).
        num_classes, class_names, thing_classes: the classes (class 0 is background; things have instances).
        vocab_size, max_seq_len: the token vocabulary and the longest sequence (prompt + content + EOS).
        input_size: the model input (h, w): the patch size with patches, else the (resized) image size.
        frames: T of a video window (1 for images). in_chans: image channels.
        label_divisor: panoptic ids are ``class * label_divisor + instance``.
        tokenizer, tokenizer_args: the registered tokenizer name and every argument it was built with.
        image_size: whole frames were resized to this (h, w) before anything else (None: source size).
        patch_size, patch_stride: training patches and the evaluation grid (None: whole frames).
        eval_stride: frames between evaluation windows (video).
        ignore_index: the void label in masks, skipped by the loss and the metrics (None: no void).
        mean, std: per-channel normalisation of ``[0, 1]`` pixels.
    """

    task: str = "image"
    num_classes: int = 2
    vocab_size: int = 0
    max_seq_len: int = 0
    class_names: list[str] = field(default_factory=list)
    thing_classes: list[int] = field(default_factory=list)
    input_size: tuple[int, int] = (64, 64)
    frames: int = 1
    in_chans: int = 3
    label_divisor: int = 1000
    tokenizer: str = ""
    tokenizer_args: dict[str, Any] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    patch_size: tuple[int, int] | None = None
    patch_stride: tuple[int, int] | None = None
    eval_stride: int = 1
    ignore_index: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def from_datamodule(cls, dm: Any) -> DataInfo:
        """Read the attributes every rleseg DataModule exposes after ``__init__``."""
        spec = dict(getattr(dm, "tokenizer_spec", None) or {})
        return cls(
            task=dm.task,
            num_classes=int(dm.num_classes),
            vocab_size=int(dm.vocab_size),
            max_seq_len=int(dm.max_seq_len),
            class_names=list(dm.class_names),
            thing_classes=[int(c) for c in getattr(dm, "thing_classes", [])],
            input_size=_pair(dm.input_size),
            frames=int(getattr(dm, "frames", 1)),
            in_chans=int(getattr(dm, "in_chans", 3)),
            label_divisor=int(getattr(dm, "label_divisor", 1000)),
            tokenizer=str(spec.get("name", "")),
            tokenizer_args=plain_value(dict(spec.get("args", {}))),
            image_size=_pair(getattr(dm, "image_size", None)),
            patch_size=_pair(getattr(dm, "patch_size", None)),
            patch_stride=_pair(getattr(dm, "patch_stride", None)),
            eval_stride=int(getattr(dm, "eval_stride", 1) or 1),
            ignore_index=getattr(dm, "ignore_index", None),
            mean=tuple(float(v) for v in getattr(dm, "mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in getattr(dm, "std", IMAGENET_STD)),
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataInfo:
        """From a checkpoint's ``data_info`` (unknown keys of a newer version are dropped)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def build_tokenizer(self) -> Tokenizer:
        """The tokenizer the data was encoded with, rebuilt from ``tokenizer`` + ``tokenizer_args``.

        Only registered tokenizer names are built (a checkpoint never names code to import); a custom
        tokenizer must be registered (:func:`rleseg.register_tokenizer`) before loading.
        """
        from rleseg.tokenizers import create_tokenizer

        if not self.tokenizer:
            raise ValueError(
                "this model's data_info names no tokenizer (a checkpoint saved before checkpoints "
                "described their data): use it through the CLI with the experiment it was trained with "
                "(rleseg predict --config EXPERIMENT --ckpt_path CKPT), which rebuilds the tokenizer"
            )
        return create_tokenizer(self.tokenizer, **self.tokenizer_args)


def _pair(value: Any) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


#: The size options of RLESegModule a preset sets, with the module's own defaults.
SIZE_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet18",
    "feature_stride": 16,
    "d_model": 256,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "num_heads": 8,
    "mlp_dim": 1024,
}


def resolve_preset(options: Any) -> dict[str, Any]:
    """The model sizes that ``options`` (RLESegModule arguments, with ``preset``) build.

    A size option given (not None) is kept; one left unset takes the preset's value, or without a preset
    the module's default (:data:`SIZE_DEFAULTS`). ``preset: tiny`` + ``mlp_dim: 256`` is tiny with a
    narrower MLP; ``preset: tiny`` + ``d_model: 256`` is tiny at width 256.

    >>> sizes = resolve_preset({"preset": "tiny", "mlp_dim": 256})
    >>> sizes["d_model"], sizes["mlp_dim"], resolve_preset({})["d_model"]
    (128, 256, 256)
    """
    from rleseg.models import Pix2Seq

    preset = options.get("preset")
    if preset and preset not in Pix2Seq.size_presets:
        raise ValueError(f"unknown model preset {preset!r}; presets are {sorted(Pix2Seq.size_presets)}")
    chosen = Pix2Seq.size_presets[preset] if preset else {}
    values = {}
    for key, default in SIZE_DEFAULTS.items():
        given = options.get(key)
        values[key] = given if given is not None else chosen.get(key, default)
    return values


class SegModuleBase(LightningModule):
    """Shared evaluation, logging, visualisation and optimisation of the token and dense modules."""

    def __init__(
        self,
        data_info: DataInfo | dict | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.05,
        num_vis: int = 6,
        max_truncated_fraction: float = 0.05,
    ) -> None:
        super().__init__()
        if data_info is None:
            raise ValueError(
                f"{type(self).__name__} needs `data_info`; the rleseg CLI links it from the DataModule "
                "(run through `rleseg fit --config ...`, or pass DataInfo.from_datamodule(dm))."
            )
        # Checkpoints keep it as a plain dict so they load with torch.load(weights_only=True).
        self.info = DataInfo.from_dict(data_info) if isinstance(data_info, dict) else data_info
        self.task = get_task(self.info.task)  # everything task-specific is asked of it (rleseg.tasks)
        self.num_classes = n = self.info.num_classes
        void = self.info.ignore_index  # void pixels of the targets count for no metric and no loss
        self.val_metrics = SegmentationMetrics(n, ignore_index=void)
        self.test_metrics = SegmentationMetrics(n, ignore_index=void)
        self.val_token_metrics = SegmentationMetrics(n, ignore_index=void)
        self.test_token_metrics = SegmentationMetrics(n, ignore_index=void)
        self.val_ceiling = SegmentationMetrics(n, ignore_index=void)
        self.test_ceiling = SegmentationMetrics(n, ignore_index=void)
        # where the validation pixels go (saved as a picture beside the overlays each epoch)
        self.val_confusion = ConfusionMatrix(n, ignore_index=void)
        # The loss over the whole evaluation set, weighted by what each batch's mean is taken over
        # (tokens, pixels): the same number whatever the batch size or the number of processes.
        self.val_loss = WeightedMean()
        self.test_loss = WeightedMean()
        if self.task.panoptic:
            things = list(self.info.thing_classes)
            stuffs = [c for c in range(1, n) if c not in set(things)]
            self.val_pq = PanopticMetrics(things=things, stuffs=stuffs, ignore_index=void)
            self.test_pq = PanopticMetrics(things=things, stuffs=stuffs, ignore_index=void)
        self._vis: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            # Norms, biases, embeddings and positions are not weight-decayed (standard for transformers).
            (no_decay if p.ndim < 2 or "embed" in name or "pos" in name else decay).append(p)
        hp = self.hparams
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
            betas=tuple(hp.betas),
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup_ratio * total)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def predict_masks(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Predicted label-resolution masks (and token-resolution ones where they exist) of a batch."""
        raise NotImplementedError  # each concrete module implements its own prediction path

    def _eval_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        self._score(batch, batch_idx, stage, self.predict_masks(batch))

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> list[dict[str, Any]]:
        """Masks at each input's own size for a list of raw images / clips (:mod:`rleseg.data.predict`),
        prepared as the training data was (:class:`rleseg.inference.Segmenter`: resize, tiles, windows)."""
        from rleseg.inference import Segmenter

        if getattr(self, "_segmenter", None) is None:
            self._segmenter = Segmenter(self, device=self.device)
        return [{**item, "mask": self._segmenter.predict(item["raw"])} for item in batch]

    def _setup_input_normalisation(self, backbone: str, pretrained: bool) -> None:
        """Inputs arrive normalised with the data's ``mean``/``std`` (ImageNet's, a fixed documented choice);
        pretrained timm weights that expect other statistics (CLIP, Inception, ...) get their own, through
        a per-channel affine map in front of the backbone."""
        self._input_affine = False
        if not pretrained:
            return
        from rleseg.models.backbones import pretrained_normalisation

        wanted = pretrained_normalisation(backbone)
        if wanted is None or (tuple(wanted[0]), tuple(wanted[1])) == (
            tuple(self.info.mean),
            tuple(self.info.std),
        ):
            return
        m_d, s_d = torch.tensor(self.info.mean), torch.tensor(self.info.std)
        m_b, s_b = torch.tensor(wanted[0]), torch.tensor(wanted[1])
        self.register_buffer("input_scale", (s_d / s_b)[:, None, None], persistent=False)
        self.register_buffer("input_shift", ((m_d - m_b) / s_b)[:, None, None], persistent=False)
        self._input_affine = True

    def _renormalise(self, images: torch.Tensor) -> torch.Tensor:
        if not self._input_affine:
            return images
        return images * self.input_scale.to(images.dtype) + self.input_shift.to(images.dtype)

    @property
    def _void_target(self) -> int:
        """``ignore_index`` for ``F.cross_entropy``: the data's void label, or -100 (no pixel is void)."""
        return -100 if self.info.ignore_index is None else int(self.info.ignore_index)

    def _semantic(self, labels: torch.Tensor) -> torch.Tensor:
        """Class ids of label maps: panoptic ``class * label_divisor + instance`` ids divided out."""
        return labels // self.info.label_divisor if self.task.panoptic else labels

    def _score(self, batch: dict[str, Any], batch_idx: int, stage: str, out: dict[str, Any]) -> None:
        """Update the metrics (and the overlay samples) with the prediction ``out`` of ``batch``."""
        target = batch["mask"]
        if self.task.panoptic:
            getattr(self, f"{stage}_pq").update(out["mask"], target)
        semantic_pred, semantic_target = self._semantic(out["mask"]), self._semantic(target)
        getattr(self, f"{stage}_metrics").update(semantic_pred, semantic_target)
        if stage == "val":
            self.val_confusion.update(semantic_pred, semantic_target)
        if out.get("token_mask") is not None and "token_mask" in batch:
            tok_pred, tok_target = self._semantic(out["token_mask"]), self._semantic(batch["token_mask"])
            getattr(self, f"{stage}_token_metrics").update(tok_pred, tok_target)
            # The encoding's own ceiling: ground-truth tokens decoded and upsampled back.
            ceiling = torch.from_numpy(upsample(tok_target.cpu().numpy(), tuple(target.shape)))
            getattr(self, f"{stage}_ceiling").update(ceiling.to(target.device), semantic_target)
        if stage == "val" and batch_idx == 0 and self.global_rank == 0:
            self._vis = {
                "image": batch["image"][: self.hparams.num_vis].float().cpu().numpy(),
                "target": semantic_target[: self.hparams.num_vis].cpu().numpy(),
                "pred": semantic_pred[: self.hparams.num_vis].cpu().numpy(),
            }

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _log_metrics(self, stage: str) -> None:
        names = self.info.class_names or [str(c) for c in range(self.num_classes)]
        for prefix, metric in (
            ("", getattr(self, f"{stage}_metrics")),
            ("token_", getattr(self, f"{stage}_token_metrics")),
            ("ceiling_", getattr(self, f"{stage}_ceiling")),
        ):
            if not metric.update_called:
                continue
            values = metric.compute()  # torchmetrics syncs the states across processes here
            for key in ("recall", "precision", "dice", "iou"):
                headline = prefix == "" and key == "dice"  # the number people watch: on the progress bar
                self.log(
                    f"{stage}/{prefix}{key}_mean", values[f"mean_{key}"], sync_dist=False, prog_bar=headline
                )
                if prefix == "":
                    for c in range(1, self.num_classes):
                        v = values[key][c]
                        if not torch.isnan(v):
                            self.log(f"{stage}/{key}_{names[c] if c < len(names) else c}", v)
            if prefix == "" and stage == "val":
                # TensorBoard's hparams view pairs each run's hyperparameters with this number
                self.log("hp_metric", values["mean_dice"], sync_dist=False)
            metric.reset()
        if self.task.panoptic:
            pq = getattr(self, f"{stage}_pq")
            if pq.update_called:
                for key, v in pq.compute().items():
                    self.log(f"{stage}/{key}", v.float())
                pq.reset()

    def _log_loss(self, stage: str, loss: torch.Tensor, weight: torch.Tensor | float) -> None:
        metric = getattr(self, f"{stage}_loss")
        metric.update(loss, weight)
        self.log(f"{stage}/loss", metric, on_step=False, on_epoch=True)

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()

    #: DataInfo fields that shape the weights: a checkpoint only loads into a model built from data that
    #: agrees on them.
    _WEIGHT_SHAPING = ("task", "num_classes", "vocab_size", "max_seq_len", "in_chans", "frames")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = (checkpoint.get("hyper_parameters") or {}).get("data_info")
        if not isinstance(saved, dict):
            return  # an older checkpoint: the state dict's own shape check still applies
        mine = asdict(self.info)
        differ = [
            k for k in self._WEIGHT_SHAPING if k in saved and plain_value(saved[k]) != plain_value(mine[k])
        ]
        if differ:
            was = ", ".join(f"{k} {saved[k]!r}" for k in differ)
            now = ", ".join(f"{k} {mine[k]!r}" for k in differ)
            raise ValueError(
                f"the checkpoint was trained on data with {was}; this data gives {now}: use the data "
                "settings of the training run (source, tokenizer, classes, max_seq_len)"
            )

    def on_validation_epoch_end(self) -> None:
        started = getattr(self, "_fit_started", None)
        if started is not None and not self.trainer.sanity_checking:
            # wall-clock seconds since this fit started (a resumed fit counts from its own start):
            # the x axis of learning curves against time
            self.log("val/elapsed_seconds", time.perf_counter() - started)
        self._log_metrics("val")
        # compute() syncs across processes: every rank takes part, rank 0 draws
        confusion = self.val_confusion.compute().cpu().numpy() if self.val_confusion.update_called else None
        self.val_confusion.reset()
        if not self.trainer.sanity_checking:
            # trainer.log_dir broadcasts rank 0's folder: under DDP every rank must ask, although only
            # rank 0 holds samples to draw (a rank-0-only call leaves rank 0 waiting on a finished peer)
            log_dir = self.trainer.log_dir or self.trainer.default_root_dir
            if self._vis is not None:
                self._save_visualisation(self._vis, log_dir)
            if confusion is not None and self.global_rank == 0:
                self._save_confusion(confusion, log_dir)
        self._vis = None

    def _save_confusion(self, confusion: np.ndarray, log_dir: str) -> None:
        from rleseg.visualize import save_confusion_matrix

        names = self.info.class_names or [str(c) for c in range(self.num_classes)]
        path = save_confusion_matrix(
            Path(log_dir) / "val_predictions" / f"confusion_{self._picture_stamp()}.png",
            confusion,
            names,
            title=f"step {self.global_step} (epoch {self.current_epoch}): validation pixels (rows sum to 1)",
        )
        self._log_picture("val/confusion_matrix", path)

    def _log_picture(self, tag: str, path: Path) -> None:
        """Send a written PNG to every active logger that takes pictures (TensorBoard, W&B, MLflow, ...).

        CSV loggers take none; the PNG beside the metrics stays the record they point to.
        """
        from rleseg.visualize import log_image

        if self.global_rank != 0 or self._trainer is None:
            return
        for logger in self.loggers:
            log_image(logger, tag, path, self.global_step)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _save_visualisation(self, vis: dict[str, np.ndarray], log_dir: str) -> None:
        from rleseg.visualize import save_prediction_grid

        path = Path(log_dir) / "val_predictions" / f"epoch_{self._picture_stamp()}.png"
        save_prediction_grid(
            path,
            vis["image"],
            vis["target"],
            vis["pred"],
            num_classes=self.num_classes,
            title=f"step {self.global_step} (epoch {self.current_epoch}): image | ground truth | prediction",
            class_names=self.info.class_names,
        )
        self._log_picture("val/predictions", path)

    def _picture_stamp(self) -> str:
        """``EEE_stepSSSSSS``: pictures of validations within one epoch get names of their own."""
        return f"{self.current_epoch:03d}_step{self.global_step:06d}"


class RLESegModule(SegModuleBase):
    """The Pix2Seq token model: teacher-forced training, generation-based evaluation (SPEC §6–8).

    Args:
        data_info: what the model needs to know about its data (:class:`DataInfo`; linked from the
            DataModule by the CLI, saved in checkpoints).
        preset: a model size of :attr:`rleseg.models.Pix2Seq.size_presets` (``tiny``, ``small``,
            ``paper``): it sets the backbone, feature stride, width, depths, heads and MLP width that are
            left unset (see :func:`resolve_preset`). Without a preset, unset sizes are resnet18, stride 16,
            d_model 256, 6 + 6 layers, 8 heads, MLP 1024.
        backbone: a timm model name (the visual encoder's feature extractor).
        pretrained: start from timm's pretrained weights (downloads; inputs are then normalised as those
            weights expect).
        weights_path: a local (or URL) weights file for the backbone instead, read weights-only.
        feature_stride: reduction of the backbone feature map the encoder reads (8, 16, 32, ...).
        deep_stride: also read a deeper map at this reduction (``None``: only ``feature_stride``).
        backbone_kwargs: extra timm arguments (e.g. ``channels``, ``stem_width``).
        d_model: width of the encoder and decoder.
        encoder_layers: transformer layers over the visual tokens.
        decoder_layers: transformer layers of the token decoder.
        num_heads: attention heads.
        mlp_dim: hidden width of the transformer MLPs.
        dropout: dropout rate in the transformers.
        fusion: how a video encoder fuses frames: ``sequential`` (a fusion layer last) or ``late``.
        eos_weight: loss weight of EOS targets.
        pad_weight: loss weight of PAD targets (the reference used 0.1 with no EOS; with an explicit EOS,
            0 is the clean choice, and lets training cut each batch to its longest sequence).
        class_token_weight: loss weight of tokens that carry the class (the tokenizer's
            ``class_fields``), against the class imbalance the paper names as its weakness.
        label_smoothing: label smoothing of the token cross-entropy.
        decoding: ``greedy`` or ``top_p`` (nucleus sampling) generation.
        top_p: the nucleus mass of ``top_p`` decoding (the reference's 0.4).
        constrained: grammar-constrained decoding (only the field that belongs at a position).
        lr: AdamW learning rate (peak, after the linear warm-up).
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_ratio: share of the training steps spent warming the learning rate up linearly.
        min_lr_ratio: the cosine decay ends at ``lr * min_lr_ratio``.
        num_vis: validation samples drawn in the prediction grid at each validation (0: none).
        max_truncated_fraction: training stops at once, saying what to set, when more than this share of
            the training sequences is cut by ``max_seq_len``.
        position_init: start the embeddings of start tokens at the sin-cos position of their cell (aligned
            with the visual tokens' positions) instead of at random.
        aux_dense_weight: weight of an auxiliary pixel cross-entropy of a linear class head on the visual
            tokens, during training only (0: off). Generation and every metric still use tokens alone.
        memory_stride: reduction of the visual memory the decoder reads (``None``: ``feature_stride``);
            e.g. 4 beside ``feature_stride`` 8 gives a 64×64 input a 16×16 memory, the grid of s = 4 tokens.
        fine_smooth: a depthwise-separable 3×3 conv + BatchNorm + ReLU on the finer memory.
        cross_memory: ``fine`` or ``coarse``: which grid cross-attention reads when ``memory_stride`` is
            finer (coarse: 4× cheaper; the fine grid then feeds the anchors and the aux head only).
        anchor: each decoder input also carries the visual token under its run's start cell (image and
            panoptic tokenizers with a flat start field; see ``TokenDecoder.configure_anchor``).
        diagnostics: token-level diagnostics at every validation (and test) epoch, logged as
            ``{stage}/diag/<key>`` (:class:`rleseg.diagnostics.TokenDiagnostics`): teacher-forced argmax
            accuracy per grammar field, the exposure-bias gap, run and object class errors. It reuses the
            validation loss's teacher-forced logits (no extra decoder pass).
    """

    def __init__(
        self,
        data_info: DataInfo | dict | None = None,
        preset: str | None = None,
        backbone: str | None = None,
        pretrained: bool = False,
        weights_path: str | None = None,
        feature_stride: int | None = None,
        deep_stride: int | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        d_model: int | None = None,
        encoder_layers: int | None = None,
        decoder_layers: int | None = None,
        num_heads: int | None = None,
        mlp_dim: int | None = None,
        dropout: float = 0.1,
        fusion: Literal["sequential", "late"] = "sequential",
        eos_weight: float = 1.0,
        pad_weight: float = 0.0,
        class_token_weight: float = 1.0,
        label_smoothing: float = 0.0,
        decoding: Literal["greedy", "top_p"] = "greedy",
        top_p: float = 0.4,
        constrained: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.05,
        num_vis: int = 6,
        max_truncated_fraction: float = 0.05,
        position_init: bool = True,
        aux_dense_weight: float = 0.0,
        memory_stride: int | None = None,
        fine_smooth: bool = False,
        cross_memory: Literal["fine", "coarse"] = "fine",
        anchor: bool = False,
        diagnostics: bool = True,
    ) -> None:
        super().__init__(
            data_info, lr, weight_decay, betas, warmup_ratio, min_lr_ratio, num_vis, max_truncated_fraction
        )
        if decoding not in ("greedy", "top_p"):
            raise ValueError(f"decoding must be 'greedy' or 'top_p', got {decoding!r}")
        self.save_hyperparameters(ignore=["data_info"])
        self.hparams["data_info"] = asdict(self.info)
        sizes = resolve_preset(self.hparams)  # the checkpoint records the sizes it was built with
        self.hparams.update(sizes)
        backbone, feature_stride, d_model = sizes["backbone"], sizes["feature_stride"], sizes["d_model"]
        encoder_layers, decoder_layers = sizes["encoder_layers"], sizes["decoder_layers"]
        num_heads, mlp_dim = sizes["num_heads"], sizes["mlp_dim"]
        from rleseg.models import Pix2Seq

        info = self.info
        model_frames = self.task.model_frames(info.frames)
        self.model = Pix2Seq(
            vocab_size=info.vocab_size,
            max_seq_len=info.max_seq_len,
            backbone=backbone,
            pretrained=pretrained,
            weights_path=weights_path,
            in_chans=info.in_chans,
            feature_stride=feature_stride,
            deep_stride=deep_stride,
            backbone_kwargs=backbone_kwargs,
            d_model=d_model,
            encoder_layers=encoder_layers,
            decoder_layers=decoder_layers,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            dropout=dropout,
            frames=model_frames,
            fusion=fusion,
            memory_stride=memory_stride,
            fine_smooth=fine_smooth,
            cross_memory=cross_memory,
            anchor=anchor,
        )
        if anchor and model_frames > 1:
            raise ValueError(
                f"anchor reads the visual token under a run's start cell, one frame's grid; the data's task "
                f"is {info.task!r} with {model_frames} frames: set model anchor to false"
            )
        if aux_dense_weight < 0:
            raise ValueError(f"aux_dense_weight must be >= 0, got {aux_dense_weight}")
        if aux_dense_weight > 0 and not self.task.single_frame:
            raise ValueError(
                f"aux_dense_weight is for image and panoptic tasks (the visual tokens of one frame); the "
                f"data's task is {info.task!r}: set model aux_dense_weight to 0"
            )
        # Training-only auxiliary class head on the visual tokens (see _aux_dense_loss).
        self.aux_head = nn.Linear(d_model, info.num_classes) if aux_dense_weight > 0 else None
        self.val_seq = SequenceStats()
        self.test_seq = SequenceStats()
        # label-resolution Dice of the aux head's argmax (with diagnostics): the visual features' own answer
        self.val_probe_metrics = SegmentationMetrics(info.num_classes, ignore_index=info.ignore_index)
        self.test_probe_metrics = SegmentationMetrics(info.num_classes, ignore_index=info.ignore_index)
        self.tokenizer: Tokenizer | None = None
        # built with the tokenizer (attach_tokenizer): their fields are its vocabulary's ranges
        self.val_diag: TokenDiagnostics | None = None
        self.test_diag: TokenDiagnostics | None = None
        self.register_buffer("token_weight", torch.ones(info.vocab_size), persistent=False)
        self._check_sizes(feature_stride)
        self._setup_input_normalisation(backbone, pretrained)
        if info.tokenizer:  # the contract names the tokenizer: build it (no DataModule needed)
            self.attach_tokenizer(info.build_tokenizer())

    def _check_sizes(self, feature_stride: int) -> None:
        """The model input must tile into whole visual tokens and whole token cells."""
        stride = int(self.model.encoder.stride)
        cell = int(self.info.tokenizer_args.get("subsample", 1) or 1)
        unit = math.lcm(stride, cell, int(feature_stride))
        size = tuple(self.info.input_size)
        if size[0] % unit or size[1] % unit:
            near = sorted({max(unit, n // unit * unit) for n in size} | {-(-n // unit) * unit for n in size})
            raise ValueError(
                f"the model input {size[0]}x{size[1]} (image_size, or patch_size with patches) must be a "
                f"multiple of {unit} on both sides (feature stride {stride}, token cell {cell}); nearest "
                f"valid sides: {', '.join(map(str, near))}"
            )

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        if self.tokenizer is None:
            raise ValueError(
                "RLESegModule has no tokenizer: its data_info names none. Build it with "
                "DataInfo.from_datamodule(dm) (the CLI does), or call attach_tokenizer(tokenizer)"
            )

    @staticmethod
    def _start_ranges(tokenizer: Tokenizer) -> list[Any]:
        """The vocabulary ranges of start tokens that name one cell each of the token mask (flat starts)."""
        cells = math.prod(tokenizer.token_shape)
        return [r for r in tokenizer.vocab.ranges if r.name == "start" and r.count == cells]

    def _init_position_tokens(self, tokenizer: Tokenizer) -> None:
        """Start tokens name a cell of the token mask: initialise them with that cell's sin-cos position,
        expressed in the grid of the encoder's visual tokens (see ``TokenDecoder.init_position_tokens``)."""
        shape = tuple(tokenizer.token_shape)
        ranges = self._start_ranges(tokenizer)
        if not ranges:
            return  # gap / row-col / dense encodings have no flat start field
        from rleseg.models.layers import grid_points

        coords = grid_points(shape)
        stride = self.model.encoder.cross_stride
        for axis, size in zip((-2, -1), self.info.input_size, strict=True):
            ratio = (size / stride) / shape[axis]  # visual tokens per token-mask cell along this axis
            coords[:, axis] = (coords[:, axis] + 0.5) * ratio - 0.5
        for r in ranges:
            self.model.decoder.init_position_tokens(r.lo, coords)

    def _configure_anchor(self, tokenizer: Tokenizer) -> None:
        """Tell the decoder which memory token lies under each start token's cell (``anchor``)."""
        shape = tuple(int(n) for n in tokenizer.token_shape)
        ranges = self._start_ranges(tokenizer)
        if len(shape) != 2 or not ranges:
            raise ValueError(
                f"anchor needs a tokenizer whose start tokens name the cells of a 2-D token mask; "
                f"{type(tokenizer).__name__} (token shape {shape}) has none: set model anchor to false"
            )
        grid = [size // self.model.encoder.stride for size in self.info.input_size]
        rows = ((torch.arange(shape[0]) + 0.5) * grid[0] / shape[0]).long().clamp_max(grid[0] - 1)
        cols = ((torch.arange(shape[1]) + 0.5) * grid[1] / shape[1]).long().clamp_max(grid[1] - 1)
        index = (rows[:, None] * grid[1] + cols[None, :]).flatten()
        # the fine grid comes after the coarse tokens when cross-attention reads the coarse ones
        offset = self.model.encoder.cross_tokens(self.info.input_size) or 0
        self.model.decoder.configure_anchor(ranges[0].lo, index + offset)

    def attach_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Use ``tokenizer`` for decoding, build the per-token loss weights from its vocabulary, and set
        up what depends on its vocabulary (run anchors; start-token positions when ``position_init``)."""
        if tokenizer.vocab_size != self.info.vocab_size:
            raise ValueError(
                f"tokenizer vocabulary ({tokenizer.vocab_size}) differs from the model's "
                f"({self.info.vocab_size}); was the checkpoint trained with another tokenizer configuration?"
            )
        self.tokenizer = tokenizer
        if self.model.decoder.anchor_proj is not None:
            self._configure_anchor(tokenizer)
        if self.hparams.position_init:
            # at construction, before Lightning restores a checkpoint: a resumed run keeps its weights
            self._init_position_tokens(tokenizer)
        w = torch.ones(self.info.vocab_size)
        w[PAD] = self.hparams.pad_weight
        w[EOS] = self.hparams.eos_weight
        for r in tokenizer.vocab.ranges:
            if r.name in tokenizer.class_fields:
                w[r.lo : r.hi] = self.hparams.class_token_weight
        self.token_weight = w.to(self.token_weight.device)
        if self.hparams.get("diagnostics", True):
            self.val_diag = TokenDiagnostics(tokenizer, self.num_classes).to(self.token_weight.device)
            self.test_diag = TokenDiagnostics(tokenizer, self.num_classes).to(self.token_weight.device)

    def on_train_start(self) -> None:
        self._check_truncation()

    def _check_truncation(self, samples: int = 64) -> None:
        """Fail before training when ``max_seq_len`` cuts too many training sequences.

        Reads the first ``samples`` items of the training set the trainer holds, by index: the loader's
        sampler (and so the order of a resumed run) is left alone.
        """
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if dataset is None or not hasattr(dataset, "__len__"):
            return
        items = [dataset[i] for i in range(min(samples, len(dataset)))]
        if not items or "truncated" not in items[0]:
            return
        flags = [torch.as_tensor(item["truncated"]).reshape(1) for item in items]
        runs = [torch.as_tensor(item["num_runs"]).reshape(1) for item in items]
        truncated = torch.cat(flags).float().mean().item()
        if truncated > self.hparams.max_truncated_fraction:
            need = int(torch.cat(runs).float().quantile(0.95).item()) * self.tokenizer.tokens_per_run + 2
            raise ValueError(
                f"max_seq_len={self.info.max_seq_len} truncates {truncated:.0%} of the training sequences "
                f"(more than max_truncated_fraction={self.hparams.max_truncated_fraction}); set data "
                f"max_seq_len to at least {need} (p95 of runs × tokens per run + prompt + EOS), use a "
                "coarser subsample / larger max_run, or raise model max_truncated_fraction."
            )

    # ------------------------------------------------------------------ training
    def _model_input(self, images: torch.Tensor) -> torch.Tensor:
        images = self._renormalise(images)
        # Static video: the model sees frame 0 only but predicts the whole window.
        if self.task.first_frame_only and images.ndim == 5:
            return images[:, 0]
        return images

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The weighted token cross-entropy of a teacher-forced batch."""
        return self._losses(batch, dense=False)[0]

    def _losses(self, batch: dict[str, Any], dense: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token loss and, with ``dense`` and an auxiliary head, the auxiliary dense loss."""
        return self._teacher_forced(batch, dense)[:2]  # type: ignore[return-value]

    def _teacher_forced(
        self, batch: dict[str, Any], dense: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(token loss, auxiliary dense loss or None, logits [B, L, V], target tokens [B, L], memory)``
        of one teacher-forced pass (see :meth:`_losses`)."""
        tokens = batch["tokens"]
        # Fake tensors (rleseg.memory's estimate) have no values to trim by: they size the worst case, a
        # batch holding a max_seq_len sequence, which is what a memory budget must cover.
        if self.hparams.pad_weight == 0 and not is_fake(tokens):
            # Dynamic padding: PAD targets weigh nothing and the decoder is causal, so the columns after
            # the batch's longest sequence change neither the loss nor its gradient. Cutting them makes
            # a step cost the batch's length instead of max_seq_len.
            tokens = tokens[:, : max(int((tokens != PAD).sum(dim=1).max()), 2)]
        images = self._model_input(batch["image"])
        memory = self.model.encode(images)
        logits = self.model.decoder(tokens[:, :-1], memory)
        target = tokens[:, 1:]
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            target.reshape(-1),
            reduction="none",
            label_smoothing=self.hparams.label_smoothing,
        )
        w = self.token_weight[target.reshape(-1)]
        token_loss = (ce * w).sum() / w.sum().clamp_min(1e-6)
        aux = self._aux_dense_loss(memory, batch["mask"]) if dense and self.aux_head is not None else None
        return token_loss, aux, logits, target, memory

    def _aux_dense_loss(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pixel cross-entropy of a linear class head on the visual tokens (training only).

        The token loss reaches the backbone only through cross-attention, a sparse signal; this dense
        one teaches the features where each class is, which the decoder then reads runs from. Inference
        is unchanged: masks still come from generated tokens.
        """
        semantic = self._semantic(mask)
        logits = self._aux_logits(memory, tuple(semantic.shape[-2:]))
        return F.cross_entropy(logits, semantic.long(), ignore_index=self._void_target)

    def _aux_logits(self, memory: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The auxiliary head's class logits ``[B, N, H, W]`` at the label size ``size``."""
        h, w = (n // self.model.encoder.stride for n in size)
        memory = memory[:, memory.shape[1] - h * w :]  # the finest grid comes last
        if h * w != memory.shape[1]:
            raise ValueError(
                f"aux_dense_weight: {memory.shape[1]} visual tokens do not form the {h}x{w} feature grid of "
                f"a {size} input"
            )
        logits = self.aux_head(memory).transpose(1, 2).reshape(memory.shape[0], -1, h, w)
        return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The loss a training step optimises (what ``rleseg.memory`` estimates the memory of)."""
        return self._combine(*self._losses(batch, dense=True))

    def _combine(self, token_loss: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor:
        return token_loss if aux is None else token_loss + self.hparams.aux_dense_weight * aux

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        token_loss, aux = self._losses(batch, dense=True)
        loss = self._combine(token_loss, aux)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        size = batch["tokens"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        if aux is not None:
            self.log("train/token_loss", token_loss, batch_size=size)
            self.log("train/aux_dense_loss", aux, batch_size=size)
        self.log("train/truncated", batch["truncated"].float().mean(), batch_size=size)
        return loss

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, images: torch.Tensor):
        """Generate token sequences for a batch of model inputs (image or clip)."""
        return self.model.generate(
            self._model_input(images),
            prompt=self.task.prompt,
            max_len=self.info.max_seq_len,
            strategy=self.hparams.decoding,
            top_p=self.hparams.top_p,
            grammar=self.tokenizer.grammar if self.hparams.constrained else None,
        )

    def _decode(self, tokens: np.ndarray, probs: np.ndarray | None):
        results = []
        for i, row in enumerate(tokens):
            if self.task.panoptic and probs is not None:
                results.append(self.tokenizer.decode_report(row, token_probs=probs[i]))
            else:
                results.append(self.tokenizer.decode_report(row))
        return results

    def predict_masks(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self._generate_masks(batch)

    def _patch_origins(self, batch: dict[str, Any]) -> np.ndarray | None:
        """Grid-patch origins when the DataModule evaluates whole images patch by patch, else None."""
        if "patch_origins" in batch:
            return batch["patch_origins"][0].cpu().numpy()
        size = self.info.patch_size
        if size is None or tuple(batch["image"].shape[-2:]) == tuple(size):
            return None
        return cut_patches(batch["image"][0], size, self.info.patch_stride or size)[1]

    def _model_inputs(self, batch: dict[str, Any], origins: np.ndarray | None) -> torch.Tensor:
        if origins is None:
            return batch["image"]
        size = self.info.input_size
        patches, _ = cut_patches(batch["image"], size, batch_dims=1, origins=origins)
        return patches.flatten(0, 1)  # [B * P, (T,) C, h, w]

    def _generate_masks(self, batch: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        origins = self._patch_origins(batch)
        out = self.generate(self._model_inputs(batch, origins))
        tokens = out.tokens.cpu().numpy()
        probs = out.probs.float().cpu().numpy() if self.task.panoptic else None
        results = self._decode(tokens, probs)
        token_masks = np.stack([r.mask for r in results]).astype(np.int64)
        if "mask" in batch:
            label_shape = tuple(batch["mask"].shape[1:])
        else:  # predict: no labels; video inputs are [B, T, C, H, W]
            lead = tuple(batch["image"].shape[1:2]) if self.task.clip and batch["image"].ndim == 5 else ()
            label_shape = (*lead, *batch["image"].shape[-2:])
        if origins is not None:
            s = int(getattr(self.tokenizer, "subsample_factor", 1))
            token_masks = token_masks.reshape(len(batch["image"]), len(origins), *token_masks.shape[1:])
            full = (*label_shape[:-2], label_shape[-2] // s, label_shape[-1] // s)
            token_masks = stitch_patches(token_masks, origins, full, batch_dims=1, scale=s)
        seconds = time.perf_counter() - start
        masks = upsample(token_masks, label_shape)
        device = batch["image"].device
        return {
            "mask": torch.from_numpy(np.ascontiguousarray(masks)).to(device),
            "token_mask": torch.from_numpy(np.ascontiguousarray(token_masks)).to(device),
            "results": results,
            "tokens": tokens,
            "seconds": seconds,
        }

    def _eval_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        out = self._generate_masks(batch)
        if "patch_tokens" in batch:
            origins = batch["patch_origins"][0].cpu().numpy()
            images = self._model_inputs(batch, origins)
            tokens, truncated = batch["patch_tokens"].flatten(0, 1), batch["patch_truncated"].flatten()
        else:
            images, tokens, truncated = batch["image"], batch["tokens"], batch["truncated"]
        loss, _, logits, target, memory = self._teacher_forced(
            {"image": images, "tokens": tokens}, dense=False
        )
        self._log_loss(stage, loss, self.token_weight[tokens[:, 1:]].sum())
        diag = getattr(self, f"{stage}_diag", None)
        if diag is not None and self.aux_head is not None and "patch_tokens" not in batch:
            # what a linear probe of the visual memory reads (the aux head): features vs decoder
            mask = self._semantic(batch["mask"])
            probe = self._aux_logits(memory, tuple(mask.shape[-2:])).argmax(dim=1)
            getattr(self, f"{stage}_probe_metrics").update(probe, mask)
        if diag is not None:
            diag.update_teacher_forced(logits, target)
            tok_pred, tok_target = out["token_mask"], batch.get("token_mask")
            if (
                self.task.single_frame
                and tok_target is not None
                and tok_target.ndim == 3
                and tok_pred.shape == tok_target.shape
            ):
                diag.update_generated(self._semantic(tok_pred), self._semantic(tok_target))
        getattr(self, f"{stage}_seq").update(
            torch.as_tensor([int((row != PAD).sum()) - 1 - int((row == EOS).any()) for row in out["tokens"]]),
            runs_total=sum(r.runs_total for r in out["results"]),
            runs_dropped=sum(r.runs_dropped for r in out["results"]),
            decode_seconds=out["seconds"],
            truncated=truncated,
        )
        self._score(batch, batch_idx, stage, out)

    def _log_metrics(self, stage: str) -> None:
        super()._log_metrics(stage)
        seq = getattr(self, f"{stage}_seq")
        if seq.update_called:
            for key, v in seq.compute().items():
                self.log(f"{stage}/{key}", v.float())
            seq.reset()
        probe = getattr(self, f"{stage}_probe_metrics")
        if probe.update_called:
            self.log(f"{stage}/diag/probe_dice_mean", probe.compute()["mean_dice"])
            probe.reset()
        diag = getattr(self, f"{stage}_diag", None)
        if diag is not None and diag.update_called:
            for key, v in diag.compute().items():  # syncs the states across processes
                self.log(f"{stage}/diag/{key}", v)
            diag.reset()


class DenseSegModule(SegModuleBase):
    """The dense baseline: a segmentation head on the same timm backbone, pixel cross-entropy.

    Same DataModules (it ignores the token sequences), same metrics and logging as the token model, so
    the two can be compared on the same data and memory budget.

    Args:
        data_info: what the model needs to know about its data (:class:`DataInfo`; linked from the
            DataModule by the CLI, saved in checkpoints).
        arch: ``fpn`` (default: rleseg's light FPN head) or any segmentation-models-pytorch architecture
            (``unet``, ``unetplusplus``, ``deeplabv3plus``, ``smp_fpn``, ``pspnet``, ``upernet``, ...) on the
            same timm backbone (smp's ``tu-`` encoders; needs ``pip install 'rleseg[smp]'``).
        backbone: a timm model name.
        pretrained: start from timm's pretrained weights (downloads; inputs are then normalised as those
            weights expect).
        weights_path: a local (or URL) weights file for the backbone instead, read weights-only.
        feature_stride: the deepest backbone stage used (smp: ``encoder_depth = log2(feature_stride)``).
        backbone_kwargs: extra timm arguments (e.g. ``channels``, ``stem_width``).
        decoder_channels: width of the segmentation head.
        class_weights: per-class cross-entropy weights (``num_classes`` values; None: equal).
        lr: AdamW learning rate (peak, after the linear warm-up).
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_ratio: share of the training steps spent warming the learning rate up linearly.
        min_lr_ratio: the cosine decay ends at ``lr * min_lr_ratio``.
        num_vis: validation samples drawn in the prediction grid at each validation (0: none).
        max_truncated_fraction: unused by the dense model (kept for a uniform signature).
        arch_kwargs: further smp options (``arch`` other than ``fpn`` only).
    """

    _WEIGHT_SHAPING = ("task", "num_classes", "in_chans", "frames")  # no tokens: any tokenizer will do

    def __init__(
        self,
        data_info: DataInfo | dict | None = None,
        arch: str = "fpn",
        backbone: str = "resnet18",
        pretrained: bool = False,
        weights_path: str | None = None,
        feature_stride: int = 8,
        backbone_kwargs: dict[str, Any] | None = None,
        decoder_channels: int = 64,
        class_weights: list[float] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.05,
        num_vis: int = 6,
        max_truncated_fraction: float = 1.0,
        arch_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            data_info, lr, weight_decay, betas, warmup_ratio, min_lr_ratio, num_vis, max_truncated_fraction
        )
        if self.task.panoptic:
            raise ValueError("the dense baseline predicts semantic masks; use an image or video DataModule")
        self.save_hyperparameters(ignore=["data_info"])
        self.hparams["data_info"] = asdict(self.info)
        from rleseg.models import build_dense_model

        self.model = build_dense_model(
            arch,
            arch_kwargs=arch_kwargs,
            num_classes=self.num_classes,
            backbone=backbone,
            pretrained=pretrained,
            weights_path=weights_path,
            in_chans=self.info.in_chans,
            feature_stride=feature_stride,
            decoder_channels=decoder_channels,
            frames=self.task.model_frames(self.info.frames),
            backbone_kwargs=backbone_kwargs,
        )
        if class_weights is not None and len(class_weights) != self.num_classes:
            raise ValueError(f"class_weights needs {self.num_classes} values, got {len(class_weights)}")
        cw = (
            torch.tensor(class_weights, dtype=torch.float32)
            if class_weights
            else torch.ones(self.num_classes)
        )
        self.register_buffer("class_weights", cw, persistent=False)
        self._setup_input_normalisation(backbone, pretrained)
        # seconds per image of the forward pass and argmax (the token model's counterpart is generation
        # plus decoding): the decode-time axis of the sweep reports
        self.val_decode_time = WeightedMean()
        self.test_decode_time = WeightedMean()
        # the dense prediction written at the token grid (subsampled as the tokenizer does, upsampled back):
        # the Dice a token model as good as this dense one per cell would score
        self.val_grid_metrics = SegmentationMetrics(self.num_classes, ignore_index=self.info.ignore_index)
        self.test_grid_metrics = SegmentationMetrics(self.num_classes, ignore_index=self.info.ignore_index)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        images = self._renormalise(images)
        if self.task.first_frame_only and images.ndim == 5:
            # Static video: frame 0 in, the whole window out (the same prediction for every frame).
            logits = self.model(images[:, 0])
            return logits.unsqueeze(1).expand(-1, images.shape[1], -1, -1, -1)
        return self.model(images)

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        logits = self._logits(batch["image"])
        if logits.ndim == 5:  # video [B, T, N, H, W] -> [B*T, N, H, W]
            logits = logits.flatten(0, 1)
        target = batch["mask"].reshape(-1, *batch["mask"].shape[-2:])
        return F.cross_entropy(
            logits.float(), target, weight=self.class_weights, ignore_index=self._void_target
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def predict_masks(self, batch: dict[str, Any]) -> dict[str, Any]:
        logits = self._logits(batch["image"])
        return {"mask": logits.argmax(dim=-3), "token_mask": None}

    def _eval_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        mask = batch["mask"]  # cross_entropy's mean is over pixels, each weighted by its class's weight
        valid = mask[mask != self._void_target]
        weight = valid.numel() if self.class_weights is None else self.class_weights[valid].sum()
        self._log_loss(stage, self._loss(batch), weight)
        start = time.perf_counter()
        out = self.predict_masks(batch)
        if out["mask"].is_cuda:  # the time until the masks exist, not until the kernels are queued
            torch.cuda.synchronize(out["mask"].device)
        images = batch["image"].shape[0]
        getattr(self, f"{stage}_decode_time").update(
            torch.tensor((time.perf_counter() - start) / images), images
        )
        self._score(batch, batch_idx, stage, out)
        token_mask = batch.get("token_mask")
        if token_mask is not None and token_mask.ndim == mask.ndim:
            s = mask.shape[-1] // token_mask.shape[-1]
            if s > 1 and tuple(token_mask.shape[-2:]) == (mask.shape[-2] // s, mask.shape[-1] // s):
                # nearest subsampling as the tokenizers do, back to the label size as token masks are
                grid = upsample(subsample(out["mask"].cpu().numpy(), s), tuple(mask.shape))
                getattr(self, f"{stage}_grid_metrics").update(torch.from_numpy(grid).to(mask.device), mask)

    def _log_metrics(self, stage: str) -> None:
        super()._log_metrics(stage)
        decode_time = getattr(self, f"{stage}_decode_time")
        if decode_time.update_called:
            self.log(f"{stage}/decode_seconds_per_image", decode_time.compute())
            decode_time.reset()
        grid = getattr(self, f"{stage}_grid_metrics")
        if grid.update_called:
            self.log(f"{stage}/token_grid_dice_mean", grid.compute()["mean_dice"])
            grid.reset()


#: The LightningModules a checkpoint may name (``_class_path``): nothing else is ever instantiated from one.
MODEL_CLASSES: dict[str, type[SegModuleBase]] = {
    "rleseg.module.RLESegModule": RLESegModule,
    "rleseg.module.DenseSegModule": DenseSegModule,
}
