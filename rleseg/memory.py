"""Peak training memory of a configuration: estimated before training, and measured for real.

A sweep under a memory budget must know, *before* it trains a configuration, whether that configuration
fits. :func:`estimate_config_memory` answers in about a second for any model size: it builds the
configured LightningModule under :class:`~torch._subclasses.fake_tensor.FakeTensorMode` (tensors carry
shapes and dtypes but no storage) and runs two training steps — forward, backward, AdamW step — of the
real module on a fake batch of the configured shape under
:class:`~torch.distributed._tools.mem_tracker.MemTracker`, which accounts every tensor by category
(parameters, gradients, optimizer state, activations, temporaries) and keeps the peak. Two steps, because
AdamW allocates its state lazily during the first one; the second is the steady state.

What is counted is **tensor memory**: what ``torch.cuda.max_memory_allocated`` reports on a GPU, or what
the CPU allocator hands out. Not counted: the CUDA context (~0.3–0.5 GiB), the caching allocator's
reserve and fragmentation, cuDNN workspaces, DataLoader worker processes. Leave that headroom when you
choose a budget.

Two real measurements check the estimate:

* :func:`measure_config_memory` builds the same module and batch for real and runs the same two steps:
  on CUDA it reads ``torch.cuda.max_memory_allocated``; on the CPU it records every allocation and free
  of PyTorch's CPU allocator with the profiler (``profile_memory=True``) and returns the peak of the
  running total — the CPU counterpart of ``max_memory_allocated``, independent of the estimate's
  tracker (``benchmarks/bench_memory.py`` prints both for several model sizes).
* :class:`rleseg.callbacks.PeakMemory` measures inside a real ``trainer.fit`` (every sweep trial
  records it next to its estimate).

>>> from rleseg.memory import estimate_step_memory, TrainingStep
>>> import torch
>>> def make_step():
...     net = torch.nn.Linear(256, 256)
...     batch = torch.zeros(32, 256)
...     opt = torch.optim.AdamW(net.parameters())
...     return TrainingStep(net, opt, lambda: net(batch).square().mean(), batch=(batch,))
>>> est = estimate_step_memory(make_step)
>>> est.num_parameters, est.method, est.breakdown["parameters"] == 65792 * 4
(65792, 'fake', True)
"""

from __future__ import annotations

import contextlib
import gc
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "MemoryConfigError",
    "MemoryEstimate",
    "TrainingStep",
    "build_training_step",
    "estimate_config_memory",
    "estimate_step_memory",
    "fake_batch",
    "instantiate_data",
    "live_tensor_bytes",
    "measure_config_memory",
    "measure_step_memory",
]

MIB = 2**20

# MemTracker's categories, under the names rleseg records.
_CATEGORIES = {
    "Parameter": "parameters",
    "Buffer": "buffers",
    "Gradient": "gradients",
    "Activation": "activations",
    "Temp": "temporary",
    "Optstate": "optimizer",
    "Other": "inputs",
}


class MemoryConfigError(ValueError):
    """A configuration the memory estimate cannot be built from (missing section, bad class path)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak tensor memory of training steps, in bytes.

    Attributes:
        peak_bytes: the peak of live tensor memory over the steps.
        num_parameters: parameters of the module (trainable or not).
        breakdown: what was live at the peak, by category (``parameters``, ``buffers``, ``gradients``,
            ``activations``, ``temporary``, ``optimizer``, ``inputs``); empty for a measurement, which
            sees allocations, not their meaning.
        method: ``"fake"`` (estimate), ``"cpu-profiler"`` or ``"cuda"`` (measurements).
        seconds: wall time the estimate or measurement took.
    """

    peak_bytes: int
    num_parameters: int
    breakdown: dict[str, int] = field(default_factory=dict)
    method: str = "fake"
    seconds: float = 0.0

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MIB

    def record(self, prefix: str = "estimated_") -> dict[str, float | int | str]:
        """Flat, JSON-friendly attributes (MiB) for a sweep trial's record."""
        out: dict[str, float | int | str] = {
            f"{prefix}peak_mib": round(self.peak_mib, 3),
            f"{prefix}method": self.method,
        }
        for key, value in self.breakdown.items():
            out[f"{prefix}{key}_mib"] = round(value / MIB, 3)
        return out


@dataclass
class TrainingStep:
    """One training step to estimate or measure: a module, its optimizer, and a loss closure.

    Args:
        module: the trainable module (its parameters are what the optimizer updates).
        optimizer: the optimizer (its state is allocated during the first step, as in real training).
        loss: computes the loss of one batch (forward pass); backward and the optimizer step are ours.
        batch: the input tensors (any nesting), counted as live memory.
        autocast_dtype: run the forward under ``torch.autocast`` with this dtype (mixed precision).
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[], Tensor]
    batch: Any = None
    autocast_dtype: torch.dtype | None = None

    def run(self, steps: int, after_step: Callable[[], None] | None = None) -> None:
        """Run ``steps`` steps as Lightning does: forward (autocast if set), free grads, backward, step."""
        device_type = next(self.module.parameters()).device.type
        for _ in range(steps):
            ctx = (
                torch.autocast(device_type, dtype=self.autocast_dtype)
                if self.autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with ctx:
                loss = self.loss()
            # Lightning's closure order: the previous step's gradients live through this forward pass and
            # are freed (set to None) just before backward, so the forward peak includes them.
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if after_step is not None:
                after_step()


def _num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _peak_tracker() -> Any:
    """A ``MemTracker`` that keeps only the global peak.

    ``MemTracker`` also keeps per-module peaks, walking every tracked module on every operator; for a
    ResNet + transformer that is two thirds of the estimate's time (9 s -> 3 s here). The global peak it
    computes is unchanged. Falls back to the stock tracker if its internals ever change.
    """
    from torch.distributed._tools import mem_tracker

    class PeakTracker(mem_tracker.MemTracker):
        def _update_peak_stats(self, peak_state: Any) -> None:
            current = getattr(self, "_curr_mem_snap", None)
            if current is None or not hasattr(self, "_peak_mem") or not hasattr(self, "_peak_mem_snap"):
                return super()._update_peak_stats(peak_state)
            for dev, snap in current.items():
                if self._peak_mem.get(dev, 0) < snap[mem_tracker._TOTAL_KEY]:
                    self._peak_mem[dev] = snap[mem_tracker._TOTAL_KEY]
                    self._peak_mem_snap[dev] = dict(snap)

    return PeakTracker()


def _without_frames(err: BaseException) -> BaseException:
    """``err`` with its traceback (and those of its causes) dropped, so the frames it held can be freed.

    The dropped frames are kept as text in the exception's notes (printed with its traceback, e.g. in a
    sweep trial's error.txt or under ``RLESEG_DEBUG=1``); ``str(err)`` is unchanged.
    """
    where = "".join(traceback.format_tb(err.__traceback__))
    if where and hasattr(err, "add_note"):  # Python >= 3.11
        err.add_note("raised while the model was built for the estimate, at:\n" + where.rstrip())
    seen: set[int] = set()
    node: BaseException | None = err
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        node.__traceback__ = None
        node = node.__cause__ or node.__context__
    return err


def estimate_step_memory(make_step: Callable[[], TrainingStep], steps: int = 2) -> MemoryEstimate:
    """Estimate the peak memory of ``steps`` training steps without allocating any tensor memory.

    ``make_step`` is called under ``FakeTensorMode``, so everything it creates (module, optimizer, batch)
    is fake; the steps then run under ``MemTracker``. Works for any size, on a machine with no GPU.

    Args:
        make_step: builds the :class:`TrainingStep` (called once, inside the fake mode).
        steps: training steps to run (2: the first allocates the optimizer state).

    Returns:
        A :class:`MemoryEstimate` with ``method="fake"`` and the breakdown at the peak.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    start = time.perf_counter()
    failure: BaseException | None = None
    try:
        with FakeTensorMode(allow_non_fake_inputs=False), warnings.catch_warnings():
            # torchmetrics deep-copies its default states, which reads a fake tensor's data pointer: harmless.
            warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
            step = make_step()
            tracker = _peak_tracker()
            tracker.track_external(step.module, step.optimizer)
            if step.batch is not None:
                tracker.track_external(*[t for t in _tensors(step.batch)])
            with tracker:
                # The per-module statistics must be cleared between iterations; the global peak is kept.
                step.run(steps, after_step=tracker.reset_mod_stats)
            snapshot = tracker.get_tracker_snapshot("peak")
            num_parameters = _num_parameters(step.module)
    except Exception as err:  # noqa: BLE001 - re-raised below, once the fake objects are gone
        failure = _without_frames(err)
    if failure is not None:
        # A build that failed half-way leaves fake modules and tensors in reference cycles (held by the
        # traceback's frames). Freed later -- inside the next estimate's fake mode, or at exit after two
        # or more failures -- they corrupted the heap (a dry run with three unbuildable points ended in
        # "free(): corrupted unsorted chunks" / SIGSEGV). Free them now, outside any fake mode.
        gc.collect()
        raise failure
    peak, breakdown = 0, dict.fromkeys(_CATEGORIES.values(), 0)
    for per_device in snapshot.values():
        for key, value in per_device.items():
            name = getattr(key, "value", key)
            if name == "Total":
                peak += int(value)
            elif name in _CATEGORIES:
                breakdown[_CATEGORIES[name]] += int(value)
    return MemoryEstimate(peak, num_parameters, breakdown, "fake", time.perf_counter() - start)


def measure_step_memory(
    make_step: Callable[[], TrainingStep], steps: int = 2, device: str | torch.device = "cpu"
) -> MemoryEstimate:
    """Measure the peak tensor memory of ``steps`` real training steps.

    The step is built first (construction temporaries are not training memory); the peak then counts
    the tensors live when the steps start (parameters, buffers, batch) plus the most the steps
    allocate on top. On CUDA the allocator's own ``max_memory_allocated`` gives it; on the CPU the
    profiler records every allocation and free of PyTorch's CPU allocator and the peak of their running
    total is added to the live tensors.

    Args:
        make_step: builds the :class:`TrainingStep` (called once, with ``device`` as default device).
        steps: training steps to run.
        device: ``"cpu"`` or a CUDA device.

    Returns:
        A :class:`MemoryEstimate` with ``method`` ``"cpu-profiler"`` or ``"cuda"`` and no breakdown.
    """
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise MemoryConfigError(f"memory can be measured on 'cpu' or 'cuda' devices, not {device}")
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
    with torch.device(device):
        step = make_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step.run(steps)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        return MemoryEstimate(peak, _num_parameters(step.module), {}, "cuda", time.perf_counter() - start)
    live = live_tensor_bytes(step.module, step.optimizer, step.batch)
    with _cpu_allocations() as events:
        step.run(steps)
    peak = live + _running_peak(events())
    return MemoryEstimate(peak, _num_parameters(step.module), {}, "cpu-profiler", time.perf_counter() - start)


@contextlib.contextmanager
def _cpu_allocations() -> Iterator[Callable[[], list[tuple[int, int]]]]:
    """Profile CPU allocator events; yields a function returning ``[(time_ns, bytes ±), ...]`` afterwards."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    events: list[tuple[int, int]] = []

    def collect() -> list[tuple[int, int]]:
        if not events:
            stack = list(prof.profiler.kineto_results.experimental_event_tree())
            while stack:
                event = stack.pop()
                if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
                    events.append((event.start_time_ns, int(event.extra_fields.alloc_size)))
                stack.extend(event.children)
            events.sort()
        return events

    with prof:
        yield collect


def _running_peak(events: list[tuple[int, int]]) -> int:
    current = peak = 0
    for _, size in events:
        current += size
        peak = max(peak, current)
    return peak


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def live_tensor_bytes(*objects: Any) -> int:
    """Bytes of the distinct storages behind the tensors of modules, optimizers and batches.

    Used to turn a profiled *delta* into an absolute peak when profiling starts in the middle of
    training (parameters, gradients, optimizer state and the batch already exist).
    """
    seen: set[tuple[int, int]] = set()
    total = 0

    def add(t: Tensor | None) -> None:
        nonlocal total
        if t is None or not isinstance(t, Tensor):
            return
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()

    for obj in objects:
        if isinstance(obj, nn.Module):
            for p in obj.parameters():
                add(p)
                add(p.grad)
            for b in obj.buffers():
                add(b)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for value in state.values():
                    add(value)
        else:
            for t in _tensors(obj):
                add(t)
    return total


# ---------------------------------------------------------------------------------------- configs
def _section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    section = config.get(name)
    if not isinstance(section, Mapping) or "class_path" not in section:
        raise MemoryConfigError(
            f"the config needs a `{name}:` section with a class_path (and init_args), as in "
            f"experiments/*.yaml; got {section!r}"
        )
    return {"class_path": section["class_path"], "init_args": dict(section.get("init_args") or {})}


def _instantiate(section: Mapping[str, Any], what: str, **extra: Any) -> Any:
    from lightning.pytorch.cli import instantiate_class

    class_path = str(section["class_path"])
    if "." not in class_path:
        raise MemoryConfigError(
            f"{what}.class_path must be a full import path (e.g. rleseg.module.RLESegModule), "
            f"got {class_path!r}"
        )
    init = {"class_path": class_path, "init_args": {**section["init_args"], **extra}}
    try:
        return instantiate_class((), init)
    except (ImportError, AttributeError) as err:
        raise MemoryConfigError(f"cannot import {what}.class_path {class_path!r}: {err}") from err


def instantiate_data(config: Mapping[str, Any]) -> Any:
    """The DataModule of an experiment config (``data:`` section), built for real (it is cheap)."""
    return _instantiate(_section(config, "data"), "data")


_PRECISION_DTYPES = {"16": torch.float16, "bf16": torch.bfloat16, "64": torch.float64}


def _precision(config: Mapping[str, Any]) -> tuple[torch.dtype | None, torch.dtype | None]:
    """(autocast dtype, parameter dtype) of the trainer's ``precision`` setting."""
    precision = str((config.get("trainer") or {}).get("precision") or "32-true")
    kind, _, mode = precision.partition("-")
    if kind in ("32", ""):
        return None, None
    if kind not in _PRECISION_DTYPES:
        raise MemoryConfigError(f"unsupported trainer.precision {precision!r} for the memory estimate")
    dtype = _PRECISION_DTYPES[kind]
    return (dtype, None) if mode == "mixed" else (None, dtype)


def fake_batch(info: Any, batch_size: int, vocab_size: int | None = None) -> dict[str, Tensor]:
    """A training batch of the shapes and dtypes an rleseg DataModule produces (see ``rleseg.data``).

    Token sequences are full length (``max_seq_len``): the worst case a peak must cover.

    Args:
        info: a :class:`rleseg.module.DataInfo` (task, input size, frames, channels, sequence length).
        batch_size: samples per batch.
        vocab_size: token ids are drawn below it (default ``info.vocab_size``).
    """
    b, (h, w) = int(batch_size), tuple(int(v) for v in info.input_size)
    video = info.task in ("video", "static_video") and int(info.frames) > 1
    lead = (b, int(info.frames)) if video else (b,)
    vocab = max(2, int(vocab_size or info.vocab_size or 2))
    seq = max(2, int(info.max_seq_len or 2))
    mask = torch.zeros(*lead, h, w, dtype=torch.int64)
    return {
        "image": torch.zeros(*lead, int(info.in_chans), h, w),
        "mask": mask,
        "token_mask": torch.zeros_like(mask),
        "tokens": torch.randint(0, vocab, (b, seq)),
        "truncated": torch.zeros(b, dtype=torch.bool),
        "num_runs": torch.zeros(b, dtype=torch.int64),
        "index": torch.arange(b),
    }


def build_training_step(
    config: Mapping[str, Any], datamodule: Any | None = None
) -> tuple[Callable[[], TrainingStep], Any]:
    """The training step of an experiment config, as a factory for :func:`estimate_step_memory`.

    The DataModule is built for real (it only creates its tokenizer); the LightningModule, its AdamW
    optimizer and a batch of the configured shape are built by the returned factory, inside whichever
    mode the caller chooses (fake for the estimate, real for a measurement). The loss is the module's own
    training loss, so the estimate follows the module as it changes.

    Args:
        config: an experiment config (``model``, ``data``, optional ``trainer.precision``).
        datamodule: an already-built DataModule of the config's ``data`` section (skips building one).

    Returns:
        ``(make_step, datamodule)``.
    """
    from rleseg.module import DataInfo

    model_section = _section(config, "model")
    dm = datamodule if datamodule is not None else instantiate_data(config)
    info = DataInfo.from_datamodule(dm)
    batch_size = int(
        getattr(dm, "batch_size", 0) or _section(config, "data")["init_args"].get("batch_size", 1)
    )
    autocast_dtype, param_dtype = _precision(config)
    hp = model_section["init_args"]

    def make_step() -> TrainingStep:
        # as the CLI builds it: the contract from the DataModule, the module builds its tokenizer from it
        module = _instantiate(model_section, "model", data_info=info)
        if param_dtype is not None:
            module = module.to(param_dtype)
        module.train()
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=float(hp.get("lr", 1e-3)), betas=tuple(hp.get("betas", (0.9, 0.95)))
        )
        batch = fake_batch(info, batch_size)
        if param_dtype is not None:
            batch["image"] = batch["image"].to(param_dtype)
        loss_fn = getattr(module, "training_loss", None) or module._loss
        return TrainingStep(
            module, optimizer, lambda: loss_fn(batch), batch=batch, autocast_dtype=autocast_dtype
        )

    return make_step, dm


def estimate_config_memory(config: Mapping[str, Any], datamodule: Any | None = None) -> MemoryEstimate:
    """Estimate the peak training memory of an experiment config (see the module docstring).

    Args:
        config: an experiment config as loaded from YAML (``model``, ``data``, ``trainer`` sections).
        datamodule: reuse a DataModule already built from ``config["data"]``.

    >>> import yaml
    >>> config = yaml.safe_load(open("experiments/quickstart.yaml"))  # doctest: +SKIP
    >>> estimate_config_memory(config).peak_mib  # doctest: +SKIP
    181.4
    """
    make_step, _ = build_training_step(config, datamodule)
    return estimate_step_memory(make_step)


def measure_config_memory(
    config: Mapping[str, Any], device: str | torch.device = "cpu", datamodule: Any | None = None
) -> MemoryEstimate:
    """Measure the peak training memory of an experiment config with two real steps on ``device``."""
    make_step, _ = build_training_step(config, datamodule)
    return measure_step_memory(make_step, device=device)
