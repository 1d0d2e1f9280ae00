"""Use a trained model: ``rleseg.load_segmenter(ckpt).predict(image)`` gives a mask at the image's size.

A checkpoint describes its data (:class:`rleseg.module.DataInfo`: tokenizer, image size, patch geometry,
classes, normalisation), so nothing else is needed: no experiment file, no training data on disk.

How an input reaches the model, the way training saw its data:

* **image_size** (the training data was resized): the image is resized to it, predicted, and the mask
  resized back (nearest).
* **patches** (``patch_size``), or an input larger than the model input on both sides: the image is cut
  into model-input tiles (the training grid's stride, or ``overlap`` of a tile), every tile is
  predicted, and the tiles are stitched back (``stitch``: ``vote`` = majority label per pixel, or
  ``last``).
* otherwise (smaller or differently shaped than the model input): resized to the model input and the
  mask resized back, with a one-line note.
* **video** checkpoints take a clip (a list of frames or a ``[T, H, W, 3]`` array): overlapping windows
  of the model's ``frames`` (``overlap`` of a window), each frame's label voted over the windows that
  hold it.
* **panoptic** checkpoints return ``class * label_divisor + instance`` ids; split them with
  ``np.divmod(mask, segmenter.label_divisor)``. Tiles are not used for panoptic models (instance ids
  would not agree across tiles): the image is resized to the model input instead.

>>> import numpy as np
>>> from rleseg.inference import as_rgb
>>> as_rgb(np.zeros((5, 7), np.uint8)).shape
(5, 7, 3)
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rleseg.checkpoints import CheckpointError, load_checkpoint
from rleseg.data.patches import cut_patches, stitch_patches
from rleseg.data.transforms import normalize, resize_frames, resize_labels

__all__ = ["Segmenter", "as_rgb", "load_segmenter", "resize_labels"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- inputs
def as_rgb(image: Any) -> np.ndarray:
    """An image (path, PIL image, ``[H, W]`` / ``[H, W, C]`` array) as ``[H, W, 3]`` uint8."""
    if isinstance(image, (str, os.PathLike)):
        from rleseg.data.sources.folder import read_image

        return as_rgb(read_image(Path(image)))
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and float(np.nanmax(array)) <= 1.0:
            array = array * 255.0
        array = np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image must be [H, W] or [H, W, 1|3|4]; got an array of shape {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


# ------------------------------------------------------------------------------------------ segmenter
class Segmenter:
    """A trained model ready for inference (see the module docstring for how inputs are handled).

    Args:
        module: an :class:`~rleseg.module.RLESegModule` or :class:`~rleseg.module.DenseSegModule` with its
            weights (its tokenizer comes from its ``DataInfo``).
        device: where to run.
        stitch: ``"vote"`` or ``"last"`` for overlapping tiles.
        overlap: fraction of a tile (or video window) shared with its neighbour when the training data
            gives no patch stride.
        batch_size: tiles / windows per forward pass.
    """

    def __init__(
        self,
        module: Any,
        device: str | torch.device = "cpu",
        stitch: str = "vote",
        overlap: float = 0.5,
        batch_size: int = 16,
    ) -> None:
        if stitch not in ("vote", "last"):
            raise ValueError(f"stitch must be 'vote' or 'last', got {stitch!r}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.module = module.eval().to(device)
        self.info = module.info
        self.device = torch.device(device)
        self.stitch, self.overlap, self.batch_size = stitch, float(overlap), max(1, int(batch_size))
        self._noted: set[str] = set()

    # what a user asks of a model
    @property
    def task(self) -> str:
        return self.info.task

    @property
    def class_names(self) -> list[str]:
        return list(self.info.class_names) or [str(c) for c in range(self.info.num_classes)]

    @property
    def num_classes(self) -> int:
        return int(self.info.num_classes)

    @property
    def label_divisor(self) -> int:
        return int(self.info.label_divisor)

    @property
    def is_video(self) -> bool:
        return self.module.task.clip

    def __repr__(self) -> str:
        return (
            f"Segmenter({type(self.module).__name__}, task {self.task!r}, {self.num_classes} classes, input "
            f"{tuple(self.info.input_size)}, tokenizer {self.info.tokenizer or '-'!r})"
        )

    def predict(self, x: Any) -> Any:
        """Masks for an image, a list of images, or (video checkpoints) a clip or a list of clips.

        Image checkpoints: an ``[H, W]`` / ``[H, W, C]`` array, a PIL image or a path gives an ``[H, W]``
        int64 class-id mask; a list of them gives a list of masks, each at its own image's size.
        Video checkpoints: a clip (a list of frames, a ``[T, H, W, C]`` array, or a folder of frames)
        gives a ``[T, H, W]`` mask; a list of clips gives a list.
        """
        if self.is_video:
            if self._is_clip(x):
                return self._predict_clip(self._frames(x))
            return [self._predict_clip(self._frames(c)) for c in x]
        if isinstance(x, (list, tuple)):
            return [self._predict_image(as_rgb(item)) for item in x]
        array = x if isinstance(x, np.ndarray) else None
        if array is not None and array.ndim == 4:  # a stack of same-size images
            return np.stack([self._predict_image(as_rgb(a)) for a in array])
        return self._predict_image(as_rgb(x))

    __call__ = predict

    # ------------------------------------------------------------------------------------ images
    def _note(self, message: str) -> None:
        if message not in self._noted:
            self._noted.add(message)
            log.warning("rleseg: %s", message)

    def _tensor(self, images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(normalize(images, self.info.mean, self.info.std)).to(self.device)

    @torch.no_grad()
    def _run(self, inputs: np.ndarray) -> np.ndarray:
        """Masks at the model input size for ``[N, (T,) h, w, 3]`` uint8 inputs, in batches."""
        out = []
        for i in range(0, len(inputs), self.batch_size):
            batch = {"image": self._tensor(inputs[i : i + self.batch_size])}
            out.append(self.module.predict_masks(batch)["mask"].cpu().numpy())
        return np.concatenate(out).astype(np.int64)

    def _tiling(self, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """(tile, stride) when an image of ``size`` is cut into tiles, else None."""
        tile = tuple(self.info.input_size)
        if self.module.task.panoptic:
            return None
        if self.info.patch_size is not None:
            stride = tuple(self.info.patch_stride or tile)
        elif size[0] > tile[0] and size[1] > tile[1] and self.info.image_size is None:
            stride = tuple(max(1, int(round(t * (1.0 - self.overlap)))) for t in tile)
        else:
            return None
        if size[0] < tile[0] or size[1] < tile[1]:
            return None
        return tile, stride  # type: ignore[return-value]

    def _predict_image(self, image: np.ndarray) -> np.ndarray:
        original = image.shape[:2]
        work = image
        if self.info.image_size is not None and tuple(original) != tuple(self.info.image_size):
            work = resize_frames(image[None], self.info.image_size)[0]  # as the training data was
        size = tuple(work.shape[:2])
        tiling = self._tiling(size)
        if tiling is not None:
            tile, stride = tiling
            tiles, origins = cut_patches(np.moveaxis(work, -1, 0), tile, stride)
            preds = self._run(np.moveaxis(tiles, 1, -1))
            mask = stitch_patches(preds, origins, size, mode=self.stitch)
        else:
            model = tuple(self.info.input_size)
            if size != model:
                self._note(
                    f"images of {size[0]}x{size[1]} are resized to the model input {model[0]}x{model[1]} "
                    "and their masks resized back"
                )
                work = resize_frames(work[None], model)[0]
            mask = self._run(work[None])[0]
        return resize_labels(mask, original)

    # ------------------------------------------------------------------------------------- video
    @staticmethod
    def _is_clip(x: Any) -> bool:
        if isinstance(x, np.ndarray):
            return x.ndim == 4 or (x.ndim == 3 and x.shape[-1] not in (1, 3, 4))
        if isinstance(x, (str, os.PathLike)):
            return Path(x).is_dir()
        if isinstance(x, (list, tuple)):
            return (
                bool(x)
                and not isinstance(x[0], (list, tuple))
                and not (isinstance(x[0], (str, os.PathLike)) and Path(x[0]).is_dir())
                and not (isinstance(x[0], np.ndarray) and x[0].ndim == 4)
            )
        return False

    @staticmethod
    def _frames(clip: Any) -> np.ndarray:
        if isinstance(clip, (str, os.PathLike)) and Path(clip).is_dir():
            from rleseg.data.sources.folder import list_images

            clip = list_images(Path(clip))
        frames = [as_rgb(f) for f in clip]
        if not frames:
            raise ValueError("a clip needs at least one frame")
        if len({f.shape for f in frames}) > 1:
            raise ValueError(f"the frames of a clip differ in size: {sorted({f.shape for f in frames})}")
        return np.stack(frames)

    def _predict_clip(self, clip: np.ndarray) -> np.ndarray:
        from rleseg.data.datasets import window_starts

        T, original = len(clip), clip.shape[1:3]
        model = tuple(self.info.input_size)
        if tuple(original) != model:
            self._note(
                f"frames of {original[0]}x{original[1]} are resized to the model input {model[0]}x{model[1]} "
                "and their masks resized back"
            )
            clip = resize_frames(clip, model)
        frames = max(1, int(self.info.frames))
        if T < frames:  # repeat the last frame to fill one window
            clip = np.concatenate([clip, np.repeat(clip[-1:], frames - T, axis=0)])
        stride = max(1, int(round(frames * (1.0 - self.overlap))))
        starts = window_starts(len(clip), frames, stride, cover_end=True)
        preds = self._run(np.stack([clip[s : s + frames] for s in starts]))  # [W, T, h, w]
        if preds.ndim == 3:  # a model that returns one frame per window
            preds = preds[:, None]
        votes: list[list[np.ndarray]] = [[] for _ in range(len(clip))]
        for s, window in zip(starts, preds, strict=True):
            for t, frame in enumerate(window):
                votes[s + t].append(frame)
        # each frame's majority label over the windows that hold it (ties: the smaller label), as tiles vote
        masks = np.stack(
            [stitch_patches(np.stack(v), np.zeros((len(v), 2), np.int64), model) for v in votes[:T]]
        )
        return resize_labels(masks, original)


# ---------------------------------------------------------------------------------------- loading
def load_segmenter(path: str | os.PathLike, device: str | torch.device = "cpu", **options: Any) -> Segmenter:
    """Load a checkpoint written by ``rleseg fit`` (weights-only, from a path or URL) for inference.

    Args:
        path: a ``.ckpt`` file (``runs/NAME/version_K/checkpoints/best-*.ckpt`` or ``last.ckpt``), or URL.
        device: ``"cpu"``, ``"cuda"``, ...
        options: evaluation settings of the model (``decoding``, ``top_p``, ``constrained``) and of the
            :class:`Segmenter` (``stitch``, ``overlap``, ``batch_size``).

    >>> seg = load_segmenter("runs/quickstart/version_0/checkpoints/last.ckpt")  # doctest: +SKIP
    >>> mask = seg.predict("photo.png")  # [H, W] class ids at the photo's size      # doctest: +SKIP
    """
    from rleseg.module import MODEL_CLASSES, DataInfo

    checkpoint = load_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    class_path = hparams.pop("_class_path", None)
    data_info = hparams.pop("data_info", None)
    if class_path is None:  # saved outside the CLI: tell the two models apart by their options
        class_path = "rleseg.module.RLESegModule" if "d_model" in hparams else "rleseg.module.DenseSegModule"
    if class_path not in MODEL_CLASSES:
        raise CheckpointError(f"checkpoint {path} holds a {class_path}, which is not an rleseg model")
    cls = MODEL_CLASSES[class_path]
    if not isinstance(data_info, dict) or (cls.__name__ == "RLESegModule" and not data_info.get("tokenizer")):
        raise CheckpointError(
            f"checkpoint {path} was saved before checkpoints described their data (no tokenizer or image "
            "size recorded): use it through the CLI with the experiment it was trained with, e.g. rleseg "
            "predict --config EXPERIMENT.yaml --ckpt_path CKPT --data.init_args.predict_path IMAGES/"
        )
    segmenter_options = {k: options.pop(k) for k in ("stitch", "overlap", "batch_size") if k in options}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "data_info"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"load_segmenter: {cls.__name__} has no option(s) {unknown}")
    kwargs = {k: v for k, v in hparams.items() if k in accepted}
    kwargs.update(options)
    kwargs.update(pretrained=False, weights_path=None)  # the checkpoint's weights replace both
    module = cls(data_info=DataInfo.from_dict(data_info), **kwargs)
    try:
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
        raise CheckpointError(f"checkpoint {path} does not fit the model it describes: {detail}") from exc
    return Segmenter(module, device=device, **segmenter_options)
