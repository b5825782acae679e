"""The VACE step cache: off is exact, a reused step is exactly "the previous residual, hints counted once"."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.conditioning import build_conditioning
from pipelines.denoise import denoise
from pipelines.hooks import JobHooks
from pipelines.samplers import make_scheduler
from pipelines.schema import VaceInput
from pipelines.step_cache import StepCacheController
from pipelines.video_io import read_frames

STEPS = 4


@pytest.fixture(scope="module")
def job(models, pose_video):
    inp = VaceInput(prompt="a person dancing", video_url=str(pose_video), num_inference_steps=STEPS, num_frames=17)
    cond = build_conditioning(read_frames(pose_video, range(17)), 416, 240)
    return inp, cond


def run(models, job, cache=None, model="wan-vace-14b", log=None):
    inp, cond = job
    pipe = models.get(model).pipeline(make_scheduler("unipc", inp.shift))
    hooks = JobHooks(log=log.append if log is not None else lambda m: None)
    return denoise(pipe, cond, inp, prompt=inp.prompt, width=416, height=240, seed=3, hooks=hooks, cache=cache)


@pytest.fixture(scope="module")
def plain(models, job):
    return run(models, job)


def test_threshold_zero_equals_no_cache_exactly(models, job, plain):
    cache = StepCacheController(threshold=0.0, num_steps=STEPS)
    assert np.array_equal(run(models, job, cache), plain)
    assert cache.calls == 2 * STEPS and not any(cache.skipped.values())


def test_forced_reuse_equals_previous_residual_with_hints_once(models, job, plain):
    k = 2
    log: list[str] = []
    cache = StepCacheController(threshold=0.0, num_steps=STEPS, force_reuse=frozenset({k}))
    cached = run(models, job, cache, log=log)
    assert cache.skipped == {"transformer/cond": [k], "transformer/uncond": [k]}
    assert any("reused 2 of 8 transformer calls" in line for line in log)

    # Reference with plain torch hooks: on step k, the hidden states entering the output head are replaced by the
    # blocks' input of step k plus the (head input - blocks input) of step k-1, per CFG branch. Calls alternate
    # cond, uncond on every step.
    transformer = models.get("wan-vace-14b").transformer
    block_inputs: list[torch.Tensor] = []
    head_inputs: list[torch.Tensor] = []

    def record_block_input(_module, args):
        block_inputs.append(args[0])

    def head(_module, args):
        call = len(head_inputs)
        step = call // 2
        hidden = args[0]
        if step == k:
            hidden = block_inputs[call].float() + (head_inputs[call - 2] - block_inputs[call - 2].float())
        head_inputs.append(args[0])
        return (hidden,)

    handles = [
        transformer.blocks[0].register_forward_pre_hook(record_block_input),
        transformer.norm_out.register_forward_pre_hook(head),
    ]
    try:
        reference = run(models, job)
    finally:
        for h in handles:
            h.remove()
    assert len(head_inputs) == 2 * STEPS
    np.testing.assert_allclose(cached, reference, atol=1e-5)
    assert np.abs(cached - plain).max() > 1e-4  # the reuse really changed the result


def test_cache_state_is_per_expert_and_never_at_the_edges(models, job):
    cache = StepCacheController(threshold=1e9, num_steps=STEPS)  # reuse whenever allowed
    run(models, job, cache, model="wan-22-vace-fun-a14b")
    reused = {name: steps for name, steps in cache.skipped.items() if steps}
    assert reused, "an unbounded threshold must reuse some steps"
    for name, steps in reused.items():
        assert name.split("/")[0] in {"high-noise", "low-noise"}
        assert 0 not in steps and STEPS - 1 not in steps


def test_hooks_are_removed_after_the_job(models, job, plain):
    cache = StepCacheController(threshold=1e9, num_steps=STEPS)
    run(models, job, cache)
    assert np.array_equal(run(models, job), plain)
