"""The denoising stage: one job's ``WanVACEPipeline`` call, on one process or on every rank of a job group.

``DenoiseRequest`` is everything that call needs once the conditioning is built; in a job group rank 0 hands it to
the other ranks (``pipelines.group``) and every rank runs ``run_denoise`` on it. ``denoise`` is the call itself:
the job's sampler, seed and guidance, the step cache when asked for, a progress report after every step and a
cancel check that stops the job at the next step. After a step it may also write a checkpoint of the loop (every
few steps or seconds, and when the job is stopped; ``pipelines.resume``) and a live preview (``pipelines.
live_preview``), both finished beside the loop (``pipelines.background``); a call given a checkpoint goes on from
its step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from diffusers import WanVACEPipeline

from .background import Background
from .conditioning import Conditioning
from .errors import JobCancelled
from .hooks import JobHooks
from .live_preview import latent_rgb, write_webp
from .loading import LoadedModel
from .loras import JobLora
from .parallel import GroupMember, cfg_parallel
from .resume import CheckpointPolicy, DenoiseState, Identity, LoopScheduler, keep_checkpoint, scheduler_state
from .samplers import make_scheduler
from .schema import JobInput
from .step_cache import THRESHOLDS, StepCacheController, step_cache


@dataclass
class DenoiseRequest:
    """Everything a rank needs to run one job's pipeline call."""

    inp: JobInput
    cond: Conditioning
    prompt: str
    width: int
    height: int
    seed: int
    model: str
    loras: Sequence[JobLora]
    fps: float = 16.0
    """The generated video's frame rate (the live preview's is a quarter of it)."""
    identity: Identity | None = None
    """What this job's checkpoints are valid for; None: the call writes none."""
    resume: DenoiseState | None = None
    """The checkpoint the call goes on from (each rank takes its own step cache state from it)."""
    window: int = 0
    """The long job's window this call denoises (``pipelines.windows``), which its checkpoints name."""


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Pipeline output in [0, 1] to uint8 frames."""
    return np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)


def denoise(
    pipe: WanVACEPipeline,
    cond: Conditioning,
    inp: JobInput,
    *,
    prompt: str,
    width: int,
    height: int,
    seed: int,
    hooks: JobHooks,
    cache: StepCacheController | None = None,
    group: GroupMember | None = None,
    fps: float = 16.0,
    identity: Identity | None = None,
    resume: DenoiseState | None = None,
    window: int = 0,
) -> np.ndarray | None:
    """Run the diffusers pipeline, with the step cache when given; returns float frames (N, H, W, 3) in [0, 1].

    In a job group (``group``) every rank runs this with the same arguments: rank 0 decides cancellation and
    checkpoints for all (broadcast after each step, so every rank stops and checkpoints at the same step), the
    guidance branches are split over the ``cfg`` ranks when guidance is on, and only rank 0 decodes (the others
    return None), writes checkpoints (with every rank's step cache state, gathered) and previews.

    ``resume``: go on from that checkpoint's step, with its latents, sampler, step cache and generator state;
    checkpoints are written (to ``hooks.checkpoints``) only with an ``identity`` to write in them."""
    total = inp.num_inference_steps
    experts = (
        {"high-noise": pipe.transformer, "low-noise": pipe.transformer_2}
        if pipe.transformer_2
        else {"transformer": pipe.transformer}
    )
    rank = group.rank if group is not None else 0
    start = resume.step if resume is not None else 0
    device = pipe._execution_device
    scheduler = LoopScheduler(pipe.scheduler, start, resume.scheduler if resume else None, device)
    generator = torch.Generator("cpu").manual_seed(seed)
    if resume is not None:
        generator.set_state(resume.generator)
        if cache is not None and resume.step_cache is not None:
            cache.restore(resume.step_cache[rank], device)
    if cache is not None:
        cache.step = start
    sink = hooks.checkpoints if identity is not None else None
    policy = CheckpointPolicy(sink.every_steps, sink.every_s, total, start) if sink is not None else None
    preview = hooks.preview
    checkpoints, previews = Background("checkpoint", hooks.log), Background("preview", hooks.log)
    boundary = pipe.config.boundary_ratio

    def expert_at(index: int) -> str:
        """The expert the pipeline runs at step ``index`` (as it picks them: by the timestep)."""
        if pipe.transformer_2 is None:
            return "transformer"
        t = scheduler.inner.timesteps[index]
        return "high-noise" if boundary is None or t >= boundary * scheduler.config.num_train_timesteps else "low-noise"

    def decide(step: int) -> tuple[bool, bool]:
        """Whether every rank stops after ``step``, and whether it checkpoints first (rank 0 decides both: when the
        policy says so, or when stopping with steps done since the last checkpoint)."""
        stop = due = False
        if rank == 0:
            stop = hooks.cancelled()
            if policy is not None:
                due = policy.due(step) or (stop and policy.last_step < step < total)
        if group is None:
            return stop, due
        flags = torch.tensor([stop, due])
        dist.broadcast(flags, src=0)
        return bool(flags[0].item()), bool(flags[1].item())

    def checkpoint(step: int, latents: torch.Tensor) -> None:
        cache_state = cache.snapshot({expert_at(i) for i in range(step, total)}) if cache is not None else None
        cache_states: list | None = [cache_state] if cache is not None else None
        if group is not None and cache is not None:
            cache_states = [None] * dist.get_world_size() if rank == 0 else None
            dist.gather_object(cache_state, cache_states, dst=0)
        if rank != 0 or sink is None or policy is None or identity is None:
            return
        state = DenoiseState(
            identity=identity,
            step=step,
            total=total,
            window=window,
            seed=seed,
            prompt=prompt,
            expert=expert_at(step - 1),
            latents=latents.detach().to("cpu", copy=True),
            generator=generator.get_state(),
            scheduler=scheduler_state(scheduler.inner),
            step_cache=cache_states,
        )
        checkpoints.run(lambda: keep_checkpoint(state, sink))
        policy.written(step)

    def show(step: int) -> None:
        """Hand the current prediction of the clean video to the preview sink every ``every_steps`` steps and after
        the last (skipped while the last one is still being written, but for the last step's)."""
        if preview is None or (step % preview.every_steps and step != total):
            return
        if step == total:
            previews.wait()
        prediction = scheduler.prediction()
        if previews.busy() or prediction is None:
            return
        frames = latent_rgb(prediction, len(cond.reference_images or ()))
        path = preview.folder / f"preview-{step}.webp"
        previews.run(lambda: preview.publish(write_webp(frames, path, fps), step))

    def on_step_end(_pipe: WanVACEPipeline, i: int, _t: torch.Tensor, kw: dict) -> dict:
        step = start + i + 1
        hooks.step(step, total)
        if cache is not None:
            cache.step = step
        stop, due = decide(step)
        if due:
            checkpoint(step, kw["latents"])
        if rank == 0:
            show(step)
        if stop:
            raise JobCancelled(f"cancelled after step {step}/{total}")
        return {}

    cfg_group = group if group is not None and group.spec.cfg == 2 and inp.guidance_scale > 1 else None
    pipe.scheduler = scheduler
    try:
        with contextlib.ExitStack() as stack:
            if cache is not None:
                stack.enter_context(step_cache(experts, cache))
            if cfg_group is not None:
                stack.enter_context(cfg_parallel(list(experts.values()), cfg_group))
            result = pipe(
                prompt=prompt,
                negative_prompt=inp.negative_prompt,
                video=cond.video,
                mask=cond.mask,
                reference_images=cond.reference_images,
                height=height,
                width=width,
                num_frames=len(cond.video),
                num_inference_steps=total,
                guidance_scale=inp.guidance_scale,
                generator=generator,
                latents=resume.latents if resume is not None else None,
                output_type="np" if rank == 0 else "latent",
                callback_on_step_end=on_step_end,
            )
    finally:
        pipe.scheduler = scheduler.inner
        checkpoints.wait()
        previews.wait()
    if cache is not None:
        hooks.log(cache.summary())
    return result.frames[0] if rank == 0 else None


def run_denoise(
    model: LoadedModel, request: DenoiseRequest, hooks: JobHooks | None = None, group: GroupMember | None = None
) -> np.ndarray | None:
    """One request's pipeline call on ``model`` (the request's), with its scheduler, LoRAs and step cache (see
    ``denoise``)."""
    inp = request.inp
    pipe = model.pipeline(make_scheduler(inp.sampler, inp.shift), request.loras)
    assert inp.acceleration is not None  # the schema reads null as the default
    threshold = THRESHOLDS[inp.acceleration]
    cache = StepCacheController(threshold, inp.num_inference_steps) if threshold is not None else None
    return denoise(
        pipe,
        request.cond,
        inp,
        prompt=request.prompt,
        width=request.width,
        height=request.height,
        seed=request.seed,
        hooks=hooks or JobHooks(),
        cache=cache,
        group=group,
        fps=request.fps,
        identity=request.identity,
        resume=request.resume,
        window=request.window,
    )
