"""The denoising stage: one job's ``WanVACEPipeline`` call, on one process or on every rank of a job group.

``DenoiseRequest`` is everything that call needs once the conditioning is built; in a job group rank 0 hands it to
the other ranks (``pipelines.group``) and every rank runs ``run_denoise`` on it. ``denoise`` is the call itself:
the job's sampler, seed and guidance, the step cache when asked for, a progress report after every step and a
cancel check that stops the job at the next step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from diffusers import WanVACEPipeline

from .conditioning import Conditioning
from .errors import JobCancelled
from .hooks import JobHooks
from .loading import LoadedModel
from .loras import JobLora
from .parallel import GroupMember, cfg_parallel
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
) -> np.ndarray | None:
    """Run the diffusers pipeline, with the step cache when given; returns float frames (N, H, W, 3) in [0, 1].

    In a job group (``group``) every rank runs this with the same arguments: rank 0 decides cancellation for all
    (broadcast after each step, so every rank stops at the same step), the guidance branches are split over the
    ``cfg`` ranks when guidance is on, and only rank 0 decodes (the others return None)."""
    total = inp.num_inference_steps
    experts = {"high-noise": pipe.transformer, "low-noise": pipe.transformer_2} if pipe.transformer_2 else {
        "transformer": pipe.transformer
    }
    decodes = group is None or group.rank == 0

    def cancelled() -> bool:
        if group is None:
            return hooks.cancelled()
        flag = torch.tensor([hooks.cancelled() if group.rank == 0 else False])
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def on_step_end(_pipe: WanVACEPipeline, i: int, _t: torch.Tensor, _kw: dict) -> dict:
        hooks.step(i + 1, total)
        if cache is not None:
            cache.step = i + 1
        if cancelled():
            raise JobCancelled(f"cancelled after step {i + 1}/{total}")
        return {}

    split_cfg = group is not None and group.spec.cfg == 2 and inp.guidance_scale > 1
    with contextlib.ExitStack() as stack:
        if cache is not None:
            stack.enter_context(step_cache(experts, cache))
        if split_cfg:
            stack.enter_context(cfg_parallel(list(experts.values()), group))
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
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np" if decodes else "latent",
            callback_on_step_end=on_step_end,
        )
    if cache is not None:
        hooks.log(cache.summary())
    return result.frames[0] if decodes else None


def run_denoise(model: LoadedModel, request: DenoiseRequest, hooks: JobHooks | None = None,
                group: GroupMember | None = None) -> np.ndarray | None:
    """One request's pipeline call on ``model`` (the request's), with its scheduler, LoRAs and step cache (see
    ``denoise``)."""
    inp = request.inp
    pipe = model.pipeline(make_scheduler(inp.sampler, inp.shift), request.loras)
    threshold = THRESHOLDS[inp.acceleration]
    cache = StepCacheController(threshold, inp.num_inference_steps) if threshold is not None else None
    return denoise(pipe, request.cond, inp, prompt=request.prompt, width=request.width, height=request.height,
                   seed=request.seed, hooks=hooks or JobHooks(), cache=cache, group=group)
