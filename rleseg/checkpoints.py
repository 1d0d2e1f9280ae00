"""Reading and writing checkpoints safely.

* :func:`load_checkpoint` is the one way rleseg reads a checkpoint (CLI verbs through
  ``SafeCheckpointIO``, ``--ckpt_path`` hyperparameters, backbone ``weights_path``). It is always
  weights-only (``torch.load(weights_only=True)``: tensors and plain data, never arbitrary pickled
  objects), whatever the location: a local path, ``file://``, ``http(s)://`` or any fsspec URL.
  Lightning itself loads URLs with ``weights_only=False`` unless told otherwise, which would run a
  checkpoint's pickle code.
* :class:`rleseg.lightning_cli.SafeCheckpointIO`, the Trainer's checkpoint plugin, loads through
  :func:`load_checkpoint` and saves crash-safely (:func:`rleseg.fileio.atomic_write`). This module itself
  needs torch only (no Lightning): the backbones read ``weights_path`` through it.
* Every failure is a :class:`CheckpointError` whose message says what is wrong and what to do; the CLI
  prints it as one line.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = ["CheckpointError", "is_remote", "load_checkpoint", "local_path", "read_bytes", "save_error"]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or written; the message names the file, the cause and the remedy."""


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URL (``http://``, ``s3://``, ...) rather than a local path or ``file://``."""
    scheme = urlparse(str(path)).scheme
    return len(scheme) > 1 and scheme != "file"  # one letter: a Windows drive


def local_path(path: str | os.PathLike) -> Path | None:
    """The local file behind ``path`` (a plain path or ``file://``), or None for a URL."""
    text = str(path)
    if text.startswith("file://"):
        return Path(urlparse(text).path)
    return None if is_remote(text) else Path(text)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a local file or URL (http(s) through urllib, anything else through fsspec)."""
    text = str(path)
    scheme = urlparse(text).scheme
    if scheme in ("http", "https"):
        import urllib.request

        try:
            with urllib.request.urlopen(text, timeout=60) as response:  # noqa: S310 (scheme checked)
                return response.read()
        except OSError as exc:  # URLError, HTTPError, timeouts
            reason = getattr(exc, "reason", None) or exc
            raise CheckpointError(f"cannot download checkpoint {text}: {reason}") from exc
    import fsspec

    try:
        with fsspec.open(text, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {text} does not exist") from exc
    except (ImportError, ValueError) as exc:
        raise CheckpointError(f"cannot open checkpoint {text}: {exc}") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {text}: {exc.strerror or exc}") from exc


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *, lightning: bool = True) -> Any:
    """Load a checkpoint weights-only from a path or URL; raise :class:`CheckpointError` on any failure.

    Args:
        path: a local path, ``file://``, ``http(s)://`` or fsspec URL.
        map_location: as for :func:`torch.load`.
        lightning: require a Lightning checkpoint (a dict with ``state_dict``); ``False`` accepts any
            weights-only content (a plain state dict, for ``weights_path``).
    """
    import torch

    local = local_path(path)
    if local is not None:
        if local.is_dir():
            raise CheckpointError(f"checkpoint {path} is a folder; pass a .ckpt file inside it")
        if not local.is_file():
            hint = " (runs/NAME/version_K/checkpoints/ holds last.ckpt and best-*.ckpt)"
            raise CheckpointError(f"checkpoint {path} does not exist{hint}")
        source: Any = local
    else:
        source = io.BytesIO(read_bytes(path))
    head = local.open("rb").read(4) if local is not None else source.getvalue()[:4]
    if not head.startswith((b"PK", b"\x80")):  # torch.save writes a zip archive (or a legacy pickle)
        kind = "an empty" if not head else "a text" if _is_text(head) else "another kind of"
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({kind} file); pass a .ckpt file")
    try:
        checkpoint = torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise CheckpointError(
                f"refusing checkpoint {path}: it holds Python objects beyond tensors and plain data, which "
                f"could run code when loaded ({first}); rleseg loads checkpoints weights-only, re-save it "
                "from a trusted environment with plain data only"
            ) from exc
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (unreadable: {first})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, IndexError, ValueError, KeyError) as exc:
        # torch raises RuntimeError for a truncated zip, IndexError/EOFError for text or empty files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated, corrupt or another file type: {reason})"
        ) from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    if lightning and not (isinstance(checkpoint, dict) and "state_dict" in checkpoint):
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (no 'state_dict' entry); pass a .ckpt written by "
            "rleseg fit (weights for a backbone go to model.init_args.weights_path instead)"
        )
    return checkpoint


def save_error(path: str | os.PathLike, exc: OSError) -> CheckpointError:
    """The one-line error for an OS error while writing checkpoint ``path`` (full disk, read-only, ...)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(
            f"cannot save checkpoint {path}: no space left on the device; the previous checkpoint is "
            "intact, free some space or point --trainer.default_root_dir elsewhere and resume from it"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CheckpointError(
            f"cannot save checkpoint {path}: {exc.strerror}; choose a writable folder with "
            "--trainer.default_root_dir"
        )
    return CheckpointError(f"cannot save checkpoint {path}: {exc.strerror or exc}")
