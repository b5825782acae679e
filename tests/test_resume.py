"""Resuming a job from a checkpoint of its denoising loop (``pipelines.resume``), at the denoise level on tiny weights.

The matrix: every sampler, both model families (one expert, two experts), the step cache off and on. Each case runs
the same call three ways on one torch thread: uninterrupted; killed after step 3 of 4 (an exception from the step
report, so no checkpoint is written at the kill, as with a SIGKILL) with a checkpoint every 2 steps; and resumed from
the checkpoint the killed run left. The resumed frames equal the uninterrupted frames bit for bit, and the
transformer calls of the killed and the resumed run together are those of n + 1 steps (the one step after the last
checkpoint is done twice), not 2n. With the step cache on, the first resumed step is a reused one
(``force_reuse``), so it runs only on the residual the checkpoint carried.

A cfg=2 job group (two processes) stops gracefully after step 2, checkpoints there with both ranks' step cache state,
and resumes to the same frames. Bad checkpoints (another request, other weights, another code version, another
long-video window, a torn or altered file) are not used: the job starts at step 0 and the log says why. The server
end to end, with a SIGKILLed worker process, is ``tests/test_server_resume.py``.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.conditioning import build_conditioning
from pipelines.denoise import DenoiseRequest, denoise, run_denoise
from pipelines.errors import JobCancelled
from pipelines.group import job_group
from pipelines.hooks import CheckpointSink, JobHooks
from pipelines.loading import ModelManager
from pipelines.parallel import ParallelSpec
from pipelines.resume import (
    SCHEDULER_STATE,
    CheckpointPolicy,
    Identity,
    code_version,
    load_resume,
    read_state,
    refuse,
    restore_scheduler,
    scheduler_state,
    write_state,
)
from pipelines.runtime import RuntimeConfig
from pipelines.samplers import make_scheduler
from pipelines.schema import VaceInput
from pipelines.step_cache import THRESHOLDS, StepCacheController

FAMILIES = ("wan-vace-14b", "wan-22-vace-fun-a14b")
SAMPLERS = ("unipc", "dpm++", "euler")
WIDTH, HEIGHT, FRAMES = 64, 48, 5  # 2 latent frames of 6 x 8: a whole job in well under a second
STEPS, EVERY, KILLED_AFTER = 4, 2, 3
SEED = 7
IDENTITY = Identity(request="r", weights="w", code=code_version())


class Killed(Exception):
    """The worker died after a step (nothing after the step report ran)."""


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cond():
    rng = np.random.default_rng(0)
    return build_conditioning(
        [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(FRAMES)], WIDTH, HEIGHT
    )


def job_input(sampler: str = "unipc", **fields) -> VaceInput:
    return VaceInput(
        prompt="a dancer",
        video_url="https://example.com/v.mp4",
        num_inference_steps=STEPS,
        sampler=sampler,
        guidance_scale=5.0,
        **fields,
    )


class Kept:
    """A job's checkpoints in a folder, as the server's file store keeps them: the newest replaces the last."""

    def __init__(self, folder: Path, every_steps: int = EVERY) -> None:
        self.folder = folder
        self.folder.mkdir(exist_ok=True)
        self.steps: list[int] = []
        self.current: Path | None = None
        self.resumes: list[tuple[int, int]] = []
        self.sink = CheckpointSink(
            every_steps=every_steps,
            every_s=0,
            folder=folder,
            keep=self.keep,
            latest=lambda: self.current,
            resumed=lambda k, n: self.resumes.append((k, n)),
        )

    def keep(self, path: Path, step: int) -> None:
        kept = self.folder / f"kept-{step}.safetensors"
        shutil.move(path, kept)
        if self.current is not None:
            self.current.unlink()
        self.current = kept
        self.steps.append(step)


class Calls:
    """Counts the forward calls of a model's transformers (two per step with guidance: cond and uncond)."""

    def __init__(self, models: ModelManager, key: str) -> None:
        loaded = models.get(key)
        self.count = 0
        self.handles = [
            t.register_forward_pre_hook(self.called)
            for t in (loaded.transformer, loaded.transformer_2)
            if t is not None
        ]

    def called(self, *_args: object) -> None:
        self.count += 1

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def run(
    models: ModelManager,
    key: str,
    sampler: str,
    cached: bool,
    cond,
    *,
    kept: Kept | None = None,
    kill_after: int | None = None,
    resume=None,
    log: list[str] | None = None,
) -> np.ndarray:
    inp = job_input(sampler)
    pipe = models.get(key).pipeline(make_scheduler(sampler, inp.shift))
    controller = StepCacheController(THRESHOLDS["regular"], STEPS, force_reuse=frozenset({EVERY})) if cached else None

    def step(i: int, _total: int) -> None:
        if i == kill_after:
            raise Killed()

    hooks = JobHooks(
        step=step, log=(log.append if log is not None else lambda _m: None), checkpoints=kept.sink if kept else None
    )
    return denoise(
        pipe,
        cond,
        inp,
        prompt=inp.prompt,
        width=WIDTH,
        height=HEIGHT,
        seed=SEED,
        hooks=hooks,
        cache=controller,
        identity=IDENTITY,
        resume=resume,
    )


@pytest.mark.parametrize("cached", [False, True], ids=["cache-off", "cache-on"])
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("key", FAMILIES)
def test_killed_and_resumed_equals_uninterrupted(models, cond, tmp_path, key, sampler, cached):
    calls = Calls(models, key)
    try:
        whole = run(models, key, sampler, cached, cond)
        assert calls.count == 2 * STEPS
        calls.count = 0

        kept = Kept(tmp_path)
        with pytest.raises(Killed):
            run(models, key, sampler, cached, cond, kept=kept, kill_after=KILLED_AFTER)
        assert kept.steps == [EVERY]  # none after the last step, none at the kill

        state = read_state(kept.current)
        assert (state.step, state.total, state.window, state.seed) == (EVERY, STEPS, 0, SEED)
        assert (state.step_cache is not None) == cached
        resumed = run(models, key, sampler, cached, cond, resume=state)
    finally:
        calls.close()
    assert np.array_equal(resumed, whole)
    assert calls.count == 2 * (KILLED_AFTER + STEPS - EVERY)  # n + (steps since the last checkpoint), two calls each


def test_a_restored_sampler_equals_the_one_it_was_taken_from(cond):
    """Attribute for attribute, after two steps: ``SCHEDULER_STATE`` misses nothing a sampler changes."""
    rng = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 16, 2, 6, 8, generator=rng)
    for sampler in SAMPLERS:
        ran = make_scheduler(sampler, 5.0)
        ran.set_timesteps(STEPS)
        for t in ran.timesteps[:2]:
            sample = ran.step(torch.randn(sample.shape, generator=rng), t, sample).prev_sample
        fresh = make_scheduler(sampler, 5.0)
        fresh.set_timesteps(STEPS)
        restore_scheduler(fresh, scheduler_state(ran), torch.device("cpu"))
        assert type(ran) in SCHEDULER_STATE
        assert ran.__dict__.keys() == fresh.__dict__.keys(), sampler
        for name, value in ran.__dict__.items():
            assert _same(value, fresh.__dict__[name]), (sampler, name)


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def test_a_graceful_stop_checkpoints_at_its_step(models, cond, tmp_path):
    """A stop (the server stopping, a cancel) writes a checkpoint at the step it stopped after, so a job handed back
    that way does no step twice."""
    inp = job_input()
    kept = Kept(tmp_path, every_steps=0)
    pipe = models.get(FAMILIES[0]).pipeline(make_scheduler("unipc", inp.shift))
    done: list[int] = []
    hooks = JobHooks(step=lambda i, _n: done.append(i), cancelled=lambda: len(done) >= 3, checkpoints=kept.sink)
    with pytest.raises(JobCancelled):
        denoise(
            pipe, cond, inp, prompt=inp.prompt, width=WIDTH, height=HEIGHT, seed=SEED, hooks=hooks, identity=IDENTITY
        )
    assert kept.steps == [3] and read_state(kept.current).step == 3


def test_a_cfg_group_resumes_to_the_same_frames(tiny_weights, cond, tmp_path):
    """Two processes, one guidance branch each, the step cache on: the checkpoint holds both ranks' cache state
    (each rank's own branch), and both ranks go on from it."""
    inp = job_input(acceleration="regular")
    identity = dataclasses.replace(IDENTITY, layout="cfg=2")
    with job_group(ParallelSpec(cfg=2), tiny_weights, RuntimeConfig()) as group:
        manager = ModelManager(tiny_weights, device="cpu", group=group)

        def call(hooks: JobHooks, resume=None) -> np.ndarray:
            request = DenoiseRequest(
                inp, cond, inp.prompt, WIDTH, HEIGHT, SEED, FAMILIES[0], [], identity=identity, resume=resume
            )
            group.send(request)
            return run_denoise(manager.get(FAMILIES[0]), request, hooks, group)

        whole = call(JobHooks())
        kept = Kept(tmp_path, every_steps=0)
        done: list[int] = []
        with pytest.raises(JobCancelled):
            call(JobHooks(step=lambda i, _n: done.append(i), cancelled=lambda: len(done) >= 2, checkpoints=kept.sink))
        state = read_state(kept.current)
        assert state.step == 2 and len(state.step_cache) == 2
        assert [set(rank["branches"]["transformer"]) for rank in state.step_cache] == [{"cond"}, {"uncond"}]
        resumed = call(JobHooks(), resume=state)
    assert np.array_equal(resumed, whole)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"request": "another"}, "it was made for another request"),
        ({"code": "another"}, "it was made for another code version"),
        ({"weights": "another"}, "it was made for other weights"),
        ({"window": 1}, "it belongs to window 1, not 0"),
    ],
)
def test_a_checkpoint_of_something_else_is_not_used(models, cond, tmp_path, change, reason):
    kept = Kept(tmp_path)
    with pytest.raises(Killed):
        run(models, FAMILIES[0], "unipc", False, cond, kept=kept, kill_after=KILLED_AFTER)
    state = read_state(kept.current)
    if "window" in change:
        state = dataclasses.replace(state, **change)
    else:
        state = dataclasses.replace(state, identity=dataclasses.replace(state.identity, **change))
    write_state(state, kept.current)
    log: list[str] = []
    found = load_resume(kept.sink, request=IDENTITY.request, log=log.append)
    found = refuse(found, IDENTITY, log.append)
    assert found is None
    assert log == [f"not resuming from this job's checkpoint: {reason}; starting from step 0"]


def test_step_cache_state_from_another_group_layout_is_not_used(models, cond, tmp_path):
    kept = Kept(tmp_path)
    with pytest.raises(Killed):
        run(models, FAMILIES[0], "unipc", True, cond, kept=kept, kill_after=KILLED_AFTER)
    state = read_state(kept.current)
    log: list[str] = []
    assert refuse(state, dataclasses.replace(IDENTITY, layout="cfg=2"), log.append) is None
    assert "its step cache state is from a group laid out as none, this one is cfg=2" in log[0]
    no_cache = dataclasses.replace(state, step_cache=None)  # without cache state any layout goes on
    assert refuse(no_cache, dataclasses.replace(IDENTITY, layout="cfg=2"), log.append) is no_cache


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "not a checkpoint"])
def test_a_corrupt_checkpoint_is_not_used(models, cond, tmp_path, damage):
    kept = Kept(tmp_path)
    with pytest.raises(Killed):
        run(models, FAMILIES[0], "unipc", False, cond, kept=kept, kill_after=KILLED_AFTER)
    data = kept.current.read_bytes()
    if damage == "truncated":
        data = data[: len(data) * 2 // 3]
    elif damage == "flipped":  # one bit of the last tensor byte: the file parses, its digest does not match
        data = data[:-1] + bytes([data[-1] ^ 1])
    elif damage == "empty":
        data = b""
    else:
        data = b"PK\x03\x04" + b"\0" * 100
    kept.current.write_bytes(data)
    log: list[str] = []
    assert load_resume(kept.sink, request=IDENTITY.request, log=log.append) is None
    assert len(log) == 1 and log[0].startswith("not resuming from this job's checkpoint: ")
    assert log[0].endswith("; starting from step 0")
    if damage == "flipped":
        assert "its tensors do not match their digest" in log[0]


def test_policy_by_steps_and_by_time():
    now = [0.0]
    policy = CheckpointPolicy(every_steps=3, every_s=10, total=20, clock=lambda: now[0])
    assert [s for s in range(1, 8) if policy.due(s)] == [3, 4, 5, 6, 7]  # due from step 3 until one is written
    policy.written(3)
    now[0] = 11.0
    assert policy.due(4)  # ten seconds since the last one
    policy.written(4)
    assert not policy.due(5) and policy.due(7) and not policy.due(20)  # never after the last step
    assert not CheckpointPolicy(every_steps=0, every_s=0, total=20).due(5)
