"""One pipeline call on one job, made plain diffusers' way or this server's way, with the same inputs.

A runner takes the job's conditioning and request and a ``step`` callback the meter stamps at every denoising step;
it returns the step cache it used (for the "cache reused" column) or None."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from diffusers import UniPCMultistepScheduler, WanVACEPipeline

from pipelines.conditioning import Conditioning, build_conditioning
from pipelines.denoise import denoise
from pipelines.hooks import JobHooks
from pipelines.loading import LoadedModel
from pipelines.loras import JobLora
from pipelines.samplers import make_scheduler
from pipelines.schema import VaceInput
from pipelines.step_cache import THRESHOLDS, StepCacheController
from weights.tiny.samples import pose_frames

from .plan import PROMPT, SEED, SHIFT

Runner = Callable[[Conditioning, VaceInput, int, int, Callable[[], None]], StepCacheController | None]


def job_input(
    steps: int, acceleration: str | None, num_frames: int, fields: Mapping[str, object] | None = None
) -> VaceInput:
    """The request fields ``denoise()`` reads; everything else keeps the fal schema's defaults (CFG 5, unipc) unless
    ``fields`` sets it (they win over the arguments too)."""
    request: dict[str, object] = {
        "prompt": PROMPT,
        "video_url": "synthetic:pose",  # not fetched: the control frames are made here
        "num_frames": max(17, num_frames),
        "num_inference_steps": steps,
        "seed": SEED,
        "acceleration": acceleration,
        "shift": SHIFT,
    }
    return VaceInput(**(request | dict(fields or {})))


def pose_conditioning(width: int, height: int, frames: int) -> Conditioning:
    """The synthetic pose control video at the job's size, conditioned as the server conditions a pose request."""
    return build_conditioning(pose_frames(width, height, frames, 16.0), width, height)


def diffusers_runner(pipe: WanVACEPipeline) -> Runner:
    """Plain diffusers: one ``__call__`` with the scheduler the brief fixes and no hooks. It passes the same arguments
    as ``denoise()`` but does not call it: the baseline must not change when the server's code does."""

    def run(cond: Conditioning, inp: VaceInput, width: int, height: int, step: Callable[[], None]) -> None:
        pipe.scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=inp.shift
        )

        def on_step_end(_pipe: WanVACEPipeline, _i: int, _t: torch.Tensor, _kwargs: dict) -> dict:
            step()
            return {}

        pipe(
            prompt=inp.prompt,
            negative_prompt=inp.negative_prompt,
            video=cond.video,
            mask=cond.mask,
            reference_images=cond.reference_images,
            height=height,
            width=width,
            num_frames=len(cond.video),
            num_inference_steps=inp.num_inference_steps,
            guidance_scale=inp.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="np",
            callback_on_step_end=on_step_end,
        )
        return None

    return run


def ours_runner(loaded: LoadedModel, loras: Sequence[JobLora] = ()) -> Runner:
    """This server: the job's scheduler, LoRAs and step cache exactly as ``generate()`` makes them, then
    ``denoise()``."""

    def run(
        cond: Conditioning, inp: VaceInput, width: int, height: int, step: Callable[[], None]
    ) -> StepCacheController | None:
        pipe = loaded.pipeline(make_scheduler(inp.sampler, inp.shift), loras)
        assert inp.acceleration is not None  # the schema reads null as the default
        threshold = THRESHOLDS[inp.acceleration]
        cache = StepCacheController(threshold, inp.num_inference_steps) if threshold is not None else None
        hooks = JobHooks(step=lambda _i, _n: step())
        denoise(pipe, cond, inp, prompt=inp.prompt, width=width, height=height, seed=SEED, hooks=hooks, cache=cache)
        return cache

    return run
