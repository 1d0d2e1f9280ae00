"""What differs between the tasks, in one place (the module and inference ask a :class:`Task`, never a
task string).

=============  ==========  ================  =============  ==========================================
task           input       model sees        labels         notes
=============  ==========  ================  =============  ==========================================
image          [B, C, H, W] the image        class ids
panoptic       [B, C, H, W] the image        class·1000+id  PQ; token probabilities rank instances
video          [B, T, C..]  all T frames     class ids      the encoder fuses the frames
static_video   [B, T, C..]  frame 0 only     class ids      one mask written for every frame
=============  ==========  ================  =============  ==========================================

>>> get_task("static_video").model_frames(4), get_task("video").model_frames(4)
(1, 4)
"""

from __future__ import annotations

from dataclasses import dataclass

from rleseg.tokenizers.base import PROMPTS

__all__ = ["TASKS", "Task", "get_task"]


@dataclass(frozen=True)
class Task:
    """One task's behaviour.

    Attributes:
        name: the task string (a tokenizer's ``task``).
        clip: inputs and labels carry a time axis ``[B, T, ...]``.
        fuse_frames: the model reads every frame of the window (else only frame 0, when ``clip``).
        panoptic: labels are ``class * label_divisor + instance``; scored with PQ too.
    """

    name: str
    clip: bool = False
    fuse_frames: bool = False
    panoptic: bool = False

    @property
    def prompt(self) -> int:
        """The token that starts every sequence of this task (SPEC §3)."""
        return PROMPTS[self.name]

    @property
    def single_frame(self) -> bool:
        """One frame's visual grid per sample (auxiliary head, run anchors, token-grid diagnostics)."""
        return not self.clip

    @property
    def first_frame_only(self) -> bool:
        """A clip task whose model sees frame 0 only (static video)."""
        return self.clip and not self.fuse_frames

    def model_frames(self, frames: int) -> int:
        """Frames the model's encoder takes for windows of ``frames`` frames."""
        return int(frames) if self.fuse_frames else 1


TASKS: dict[str, Task] = {
    "image": Task("image"),
    "panoptic": Task("panoptic", panoptic=True),
    "video": Task("video", clip=True, fuse_frames=True),
    "static_video": Task("static_video", clip=True),
}


def get_task(name: str) -> Task:
    """The :class:`Task` called ``name``; a clear error for an unknown one."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; tasks are {sorted(TASKS)}") from None
