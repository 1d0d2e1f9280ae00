"""What ``rleseg predict`` reads: images (or clips of frames) from a folder, exactly as they are on disk.

Items are not resized, patched or normalised here: inputs of any size go to
:class:`rleseg.inference.Segmenter`, which prepares them as the model's training data was and returns
masks at each input's own size. Batches are lists of items (images of one folder may differ in size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from rleseg.data.errors import DataError
from rleseg.data.sources.folder import IMAGE_EXTENSIONS, list_images, read_image

__all__ = ["PredictDataset", "collate_items"]


class PredictDataset(Dataset):
    """The images of a folder, or with ``video`` its subfolders as clips (frames in name order).

    Items: ``raw`` uint8 ``[H, W, 3]`` (video: ``[T, H, W, 3]``, the whole clip), ``path`` (the image file,
    or the clip folder), ``frames`` (the frame files; one for an image) and ``index``.
    """

    def __init__(self, root: str | Path, *, video: bool = False) -> None:
        self.root, self.video = Path(root), bool(video)
        if not self.root.is_dir():
            raise DataError(f"predict_path {self.root} is not a folder")
        if video:
            clips = sorted(p for p in self.root.iterdir() if p.is_dir())
            self.items = [(clip, list_images(clip)) for clip in clips]
            self.items = [(clip, files) for clip, files in self.items if files]
        else:
            self.items = [(p, [p]) for p in list_images(self.root)]
        if not self.items:
            what = "clips (subfolders of frames)" if video else f"images ({', '.join(IMAGE_EXTENSIONS)})"
            raise DataError(f"predict_path {self.root} holds no {what}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from rleseg.inference import as_rgb

        path, files = self.items[index]
        frames = [as_rgb(read_image(f)) for f in files]
        if len({f.shape for f in frames}) > 1:
            raise DataError(f"the frames of {path} differ in size")
        raw = np.stack(frames) if self.video else frames[0]
        return {"raw": raw, "path": str(path), "frames": [str(f) for f in files], "index": index}


def collate_items(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batches of predict items stay lists (their images may differ in size)."""
    return list(batch)
