"""Jobs that resume where they stopped: what a checkpoint of the denoising loop holds, how it is written and read,
what it is valid for, and the scheduler the pipeline runs on so that a resumed call goes on from step k.

A checkpoint (:class:`DenoiseState`) is everything the loop carries from one step to the next: the latents, the
sampler's own state (UniPC and DPM++ keep the last model outputs and counters, Euler its step index; see
``SCHEDULER_STATE``), the step cache's per-branch state on every rank of the job group, the generator's state, the
step index, and which expert of a two-expert model ran the last step. Everything else a step needs is rebuilt on
resume, deterministically: the conditioning (the same request, frames and masks), the text embeddings (the prompt
the first run used, which the checkpoint keeps, so an expanded prompt is not expanded again), and the timesteps.
With those, a resumed call computes the same numbers as the uninterrupted one would have from step k on: on one
torch thread the frames are bit-identical (``tests/test_resume.py``).

``window`` is the long-video window the state belongs to (0 for a single-pass job): a job that denoises several
windows in turn checkpoints within the running one, and a window before it is finished, never computed again.

A checkpoint is valid only for what made it (:class:`Identity`): the request (endpoint, model and every field), the
weights (a digest of the model's files and the LoRAs' contents), the code (a digest of the ``pipelines`` sources and
the torch and diffusers versions) and, when it holds step cache state, the job group's layout (each rank's cache
holds its own shard of the sequence). A checkpoint that was made for something else, or that does not read back
whole (the digest of its tensors is stored with them), is not used: the job starts at step 0 and its log says why.

The file is a safetensors file (no pickle: a checkpoint read from a shared bucket cannot run code): the tensors, and
the rest as JSON in its metadata.

Why the loop is not our own: the denoising stays diffusers' unmodified ``WanVACEPipeline.__call__`` (the parity
tests pin it bit for bit). A resumed call hands the pipeline the checkpoint's latents (``latents=``) and a
:class:`LoopScheduler` in place of the job's scheduler: it restores the sampler's state right after the pipeline
sets the timesteps, and shows the pipeline's loop only the timesteps not yet run, while the sampler itself keeps the
whole schedule (UniPC and DPM++ lower their order on the last steps, counted against all of them).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .hooks import CheckpointSink

FORMAT = 1
"""The layout of a checkpoint file; a file of another layout is not read (the code digest changes with it too)."""

SCHEDULER_STATE: dict[type[SchedulerMixin], tuple[str, ...]] = {
    UniPCMultistepScheduler: (
        "model_outputs",
        "timestep_list",
        "lower_order_nums",
        "last_sample",
        "this_order",
        "_step_index",
    ),
    DPMSolverMultistepScheduler: ("model_outputs", "lower_order_nums", "_step_index"),
    FlowMatchEulerDiscreteScheduler: ("_step_index",),
}
"""What each sampler changes between steps (everything else it derives from its config and ``set_timesteps``);
``tests/test_resume.py`` checks that a restored sampler equals the one it was taken from, attribute for attribute."""

_HASHED_EDGE = 1 << 20
"""Bytes hashed at each end of a weight file for its digest: reading 64 GB of shards at every load would take
minutes, and a different file (another checkpoint, other random weights) differs at both ends anyway."""


class CorruptCheckpoint(ValueError):
    """A checkpoint file that does not read back whole."""


@dataclass(frozen=True)
class Identity:
    """What a checkpoint is valid for (module docstring); each field a digest or a short name."""

    request: str
    weights: str
    code: str
    layout: str = "none"
    """The job group's spec (``cfg=2``, ...; ``none`` for one device): binding only for step cache state."""

    def mismatch(self, other: Identity, *, has_cache_state: bool) -> str | None:
        """Why a checkpoint made under ``other`` cannot continue under this identity, or None when it can."""
        for name, what in (
            ("request", "another request"),
            ("weights", "other weights"),
            ("code", "another code version"),
        ):
            if getattr(self, name) != getattr(other, name):
                return f"it was made for {what}"
        if has_cache_state and self.layout != other.layout:
            return f"its step cache state is from a group laid out as {other.layout}, this one is {self.layout}"
        return None


@dataclass
class DenoiseState:
    """A checkpoint of one job's denoising loop after ``step`` of ``total`` steps (module docstring)."""

    identity: Identity
    step: int
    total: int
    window: int
    seed: int
    prompt: str
    expert: str
    """The expert that ran the last step (``transformer``, or ``high-noise``/``low-noise`` of a two-expert model);
    the pipeline picks the expert of each step from its timestep, so a resumed call switches where the first did."""
    latents: torch.Tensor
    generator: torch.Tensor
    scheduler: dict[str, Any]
    step_cache: list[dict[str, Any]] | None
    """Each rank's step cache state (``StepCacheController.snapshot``), rank 0 first; None with the cache off."""


def request_digest(task: str, model: str, fields: dict[str, Any]) -> str:
    """A request as its checkpoints name it: the endpoint task, the model and every field of the validated input."""
    text = json.dumps({"task": task, "model": model, "input": fields}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def code_version() -> str:
    """This code as checkpoints name it: the ``pipelines`` package's sources and the versions of torch and
    diffusers, whose numbers a resumed loop must reproduce. Any change of the sources counts, which is conservative:
    a deploy of other code starts its interrupted jobs over rather than continuing one it might compute
    differently."""
    digest = hashlib.sha256(f"format {FORMAT} torch {torch.__version__} diffusers {diffusers.__version__}".encode())
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def weights_digest(folder: Path) -> str:
    """The model in ``folder`` (its index and each component's files, shared folders followed) as checkpoints name
    it: each file's path, size and both ends (``_HASHED_EDGE``)."""
    files = sorted(Path(root, name) for root, _dirs, names in os.walk(folder, followlinks=True) for name in names)
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with path.open("rb") as f:
            digest.update(f.read(_HASHED_EDGE))
            if size > 2 * _HASHED_EDGE:
                f.seek(size - _HASHED_EDGE)
                digest.update(f.read())
    return digest.hexdigest()


def job_weights(model_digest: str, lora_digests: Iterable[str]) -> str:
    """What a job denoises with, as its checkpoints name it: the model's digest and its LoRAs' contents."""
    return hashlib.sha256(" ".join((model_digest, *lora_digests)).encode()).hexdigest()


def scheduler_state(scheduler: SchedulerMixin) -> dict[str, Any]:
    """The sampler's state after a step, tensors copied to the CPU."""
    names = SCHEDULER_STATE[type(scheduler)]
    return {name: _to_cpu(getattr(scheduler, name)) for name in names if hasattr(scheduler, name)}


def restore_scheduler(scheduler: SchedulerMixin, state: dict[str, Any], device: torch.device) -> None:
    """Put a state from :func:`scheduler_state` back on a sampler whose timesteps are set (the same schedule)."""
    for name, value in state.items():
        setattr(scheduler, name, _to_device(value, device))


class LoopScheduler:
    """The job's sampler as the pipeline's loop sees it: the same sampler, with two additions.

    - On a resumed call, ``set_timesteps`` also restores the sampler's state of step ``start``, and ``timesteps``
      holds only the steps from ``start`` on, so the pipeline's loop (which reads them once, right after setting
      them) runs those alone; the sampler itself keeps the whole schedule.
    - ``step`` keeps what the prediction of the clean video needs (:meth:`prediction`), for live previews.

    Everything else is the sampler's own (attribute reads go through to it).
    """

    def __init__(
        self,
        scheduler: SchedulerMixin,
        start: int = 0,
        state: dict[str, Any] | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.inner = scheduler
        self.start = start
        self._state, self._device = state, device
        self._position = start
        self._last: tuple[torch.Tensor, torch.Tensor, float] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def timesteps(self) -> torch.Tensor:
        return self.inner.timesteps[self.start :]

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        self.inner.set_timesteps(*args, **kwargs)
        if self._state is not None:
            restore_scheduler(self.inner, self._state, self._device or self.inner.timesteps.device)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self._last = (sample, model_output, float(self.inner.sigmas[self._position]))
        self._position += 1
        return self.inner.step(model_output, timestep, sample, *args, **kwargs)

    def prediction(self) -> torch.Tensor | None:
        """The last step's prediction of the clean latents: a flow-matching model predicts the velocity
        ``v = noise - x0`` at ``x_t = (1 - sigma) x0 + sigma noise``, so ``x0 = x_t - sigma v`` (the same
        ``x0_pred`` that UniPC and DPM++ compute inside their step)."""
        if self._last is None:
            return None
        sample, velocity, sigma = self._last
        return sample - sigma * velocity.to(sample.dtype)


def write_state(state: DenoiseState, path: Path) -> None:
    """Write ``state`` to ``path`` (a safetensors file; the caller makes it visible atomically)."""
    tensors: dict[str, torch.Tensor] = {}
    meta = _flatten(
        {
            "identity": asdict(state.identity),
            "step": state.step,
            "total": state.total,
            "window": state.window,
            "seed": state.seed,
            "prompt": state.prompt,
            "expert": state.expert,
            "latents": state.latents,
            "generator": state.generator,
            "scheduler": state.scheduler,
            "step_cache": state.step_cache,
        },
        tensors,
    )
    save_file(
        tensors,
        str(path),
        metadata={"format": str(FORMAT), "state": json.dumps(meta), "sha256": _tensor_digest(tensors)},
    )


def read_state(path: Path) -> DenoiseState:
    """Read a checkpoint written by :func:`write_state`; raises :class:`CorruptCheckpoint` for a file that does
    not read back whole (torn, truncated, altered) or that has another layout."""
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptCheckpoint(f"it does not read back ({exc})") from None
    if meta.get("format") != str(FORMAT):
        raise CorruptCheckpoint(f"its layout is {meta.get('format')!r}, this code reads {FORMAT}")
    if meta.get("sha256") != _tensor_digest(tensors):
        raise CorruptCheckpoint("its tensors do not match their digest")
    try:
        fields = _unflatten(json.loads(meta["state"]), tensors)
        fields["identity"] = Identity(**fields["identity"])
        return DenoiseState(**fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptCheckpoint(f"its state does not parse ({exc})") from None


def load_resume(
    sink: CheckpointSink | None, *, request: str, window: int | None = 0, log: Callable[[str], None]
) -> DenoiseState | None:
    """The job's latest checkpoint when there is one that this request, this code and this window (None: whichever
    window it belongs to, for a long job that sorts its windows out itself) can go on from; the weights and the
    group's layout are checked once the model is resolved (:func:`refuse`)."""
    if sink is None:
        return None
    try:
        path = sink.latest()
    except Exception as exc:  # noqa: BLE001 - a bucket unreachable: starting over costs time, failing costs the job
        log(f"could not read this job's checkpoint ({exc}); starting from step 0")
        return None
    if path is None:
        return None
    try:
        state = read_state(path)
    except CorruptCheckpoint as exc:
        return _not_resuming(str(exc), log)
    early = Identity(request, state.identity.weights, code_version(), state.identity.layout)  # weights: known later
    reason = early.mismatch(state.identity, has_cache_state=False) or (
        f"it belongs to window {state.window}, not {window}" if window is not None and state.window != window else None
    )
    return state if reason is None else _not_resuming(reason, log)


def refuse(state: DenoiseState | None, identity: Identity, log: Callable[[str], None]) -> DenoiseState | None:
    """``state`` when it can go on under ``identity``, else None with the reason logged."""
    if state is None:
        return None
    reason = identity.mismatch(state.identity, has_cache_state=state.step_cache is not None)
    return state if reason is None else _not_resuming(reason, log)


def _not_resuming(reason: str, log: Callable[[str], None]) -> DenoiseState | None:
    """No checkpoint to go on from (None, for the caller to return), with ``reason`` logged."""
    log(f"not resuming from this job's checkpoint: {reason}; starting from step 0")
    return None


class CheckpointPolicy:
    """When the loop writes a checkpoint: after every ``every_steps`` steps, or the first step ``every_s`` seconds
    after the last checkpoint (or the start), whichever comes first; never after the last step."""

    def __init__(
        self, every_steps: int, every_s: float, total: int, start: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every_steps, self.every_s, self.total = every_steps, every_s, total
        self.clock = clock
        self.last_step, self.last_time = start, clock()

    def due(self, step: int) -> bool:
        if step >= self.total or step <= self.last_step:
            return False
        return (self.every_steps > 0 and step - self.last_step >= self.every_steps) or (
            self.every_s > 0 and self.clock() - self.last_time >= self.every_s
        )

    def written(self, step: int) -> None:
        self.last_step, self.last_time = step, self.clock()


def keep_checkpoint(state: DenoiseState, sink: CheckpointSink) -> None:
    """Write ``state`` into the sink's folder and hand the complete file to the sink (which makes it the job's
    newest checkpoint, replacing the last); a file left half-written by a failure is deleted."""
    path = sink.folder / f"checkpoint-{state.step}.safetensors"
    try:
        write_state(state, path)
        sink.keep(path, state.step)
    finally:
        path.unlink(missing_ok=True)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


def _flatten(value: Any, tensors: dict[str, torch.Tensor], name: str = "") -> Any:
    """``value`` as JSON, each tensor replaced by ``{"tensor": NAME}`` and put in ``tensors`` under that name."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value.contiguous()
        return {"tensor": name}
    if isinstance(value, dict):
        return {"dict": {k: _flatten(v, tensors, f"{name}.{k}") for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"list": [_flatten(v, tensors, f"{name}.{i}") for i, v in enumerate(value)]}
    return value


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict) and value.keys() == {"tensor"}:
        return tensors[value["tensor"]]
    if isinstance(value, dict) and value.keys() == {"dict"}:
        return {k: _unflatten(v, tensors) for k, v in value["dict"].items()}
    if isinstance(value, dict) and value.keys() == {"list"}:
        return [_unflatten(v, tensors) for v in value["list"]]
    return value


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        for chunk in _chunks(tensor):
            digest.update(chunk)
    return digest.hexdigest()


def _chunks(tensor: torch.Tensor, size: int = 64 << 20) -> Iterator[memoryview]:
    """The tensor's bytes in pieces, without a second copy of a large one."""
    data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data
    for start in range(0, len(data), size):
        yield data[start : start + size]
