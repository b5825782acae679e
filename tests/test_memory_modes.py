"""Memory modes that run on CPU give the frames of full mode, with and without LoRAs; the runtime picks sensible
defaults."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer

from pipelines.conditioning import build_conditioning
from pipelines.denoise import denoise
from pipelines.hooks import JobHooks
from pipelines.loading import ModelManager
from pipelines.lora_cache import sha256_file
from pipelines.lora_names import installed_loras
from pipelines.loras import JobLora
from pipelines.runtime import RuntimeConfig, resolve_attention, resolve_memory_mode
from pipelines.samplers import make_scheduler
from pipelines.schema import VaceInput
from pipelines.video_io import read_frames


@pytest.fixture(scope="module")
def job(pose_video):
    inp = VaceInput(prompt="a person dancing", video_url=str(pose_video), num_inference_steps=2, num_frames=17)
    return inp, build_conditioning(read_frames(pose_video, range(17)), 416, 240)


def frames(
    manager: ModelManager, job, model: str = "wan-22-vace-fun-a14b", loras: Sequence[JobLora] = ()
) -> np.ndarray:
    inp, cond = job
    pipe = manager.get(model).pipeline(make_scheduler("unipc", inp.shift), loras)
    return denoise(pipe, cond, inp, prompt=inp.prompt, width=416, height=240, seed=4, hooks=JobHooks())


def manager_in(tiny_weights, mode: str) -> ModelManager:
    return ModelManager(tiny_weights, device="cpu", runtime=RuntimeConfig(memory_mode=mode, vae_tiling=False))


@pytest.fixture(scope="module")
def full_manager(tiny_weights) -> ModelManager:
    return manager_in(tiny_weights, "full")


@pytest.fixture(scope="module")
def full(full_manager, job):
    return frames(full_manager, job)


@pytest.fixture(scope="module")
def job_loras(tiny_weights) -> list[JobLora]:
    """Two LoRAs, one on both experts and one on the low-noise expert only."""
    files = installed_loras(tiny_weights)
    return [
        JobLora(0, files["tiny-wan21"], sha256_file(files["tiny-wan21"]), 0.8, ("transformer", "transformer_2")),
        JobLora(1, files["tiny-wan22"], sha256_file(files["tiny-wan22"]), 1.0, ("transformer_2",)),
    ]


@pytest.fixture(scope="module")
def full_with_loras(full_manager, job, job_loras):
    return frames(full_manager, job, loras=job_loras)


@pytest.mark.parametrize("mode", ["group_offload", "model_offload"])
def test_offload_modes_match_full_mode(tiny_weights, job, full, mode):
    manager = manager_in(tiny_weights, mode)
    assert manager.describe()["memory_mode"] == mode
    np.testing.assert_allclose(frames(manager, job), full, atol=1e-5)


def test_fp8_storage_stays_close_to_full_mode(tiny_weights, job, full):
    manager = manager_in(tiny_weights, "fp8")
    loaded = manager.get("wan-22-vace-fun-a14b")
    assert loaded.transformer.blocks[0].ffn.net[2].weight.dtype == torch.float8_e4m3fn
    out = frames(manager, job)
    # float8 storage rounds every weight to 3 mantissa bits: close to full mode, but not float-exact.
    assert np.abs(out - full).mean() < 0.02
    assert not np.array_equal(out, full)


@pytest.mark.parametrize("mode", ["fp8", "group_offload", "model_offload"])
def test_loras_work_in_every_memory_mode(tiny_weights, job, job_loras, full, full_with_loras, mode):
    """Each mode runs LoRAs (none refuses them): the offload modes give full mode's LoRA frames, fp8 close ones
    with the LoRA factors kept in the compute dtype beside the float8 base weights; and in each mode a job without
    LoRAs after them gives exactly that mode's plain frames."""
    manager = manager_in(tiny_weights, mode)
    plain = frames(manager, job)
    styled = frames(manager, job, loras=job_loras)
    assert np.abs(styled - plain).mean() > 1e-3
    if mode == "fp8":
        layer = next(m for m in manager.get("wan-22-vace-fun-a14b").transformer_2.modules() if isinstance(m, LoraLayer))
        assert layer.get_base_layer().weight.dtype == torch.float8_e4m3fn
        assert {factor.weight.dtype for factor in (*layer.lora_A.values(), *layer.lora_B.values())} == {torch.float32}
        # float8 rounding moves the frames (as without LoRAs), but they are full mode's LoRA frames, not its plain ones
        off, from_plain = np.abs(styled - full_with_loras).mean(), np.abs(styled - full).mean()
        assert off < 0.03 and off < from_plain, (off, from_plain)
    else:
        np.testing.assert_allclose(styled, full_with_loras, atol=1e-5)
    np.testing.assert_array_equal(frames(manager, job), plain)


def test_vae_tiling_decodes_in_tiles_close_to_untiled_decoding(tiny_weights, job, full, monkeypatch):
    manager = ModelManager(tiny_weights, device="cpu", runtime=RuntimeConfig(memory_mode="full", vae_tiling=True))
    vae = manager.get("wan-22-vace-fun-a14b").pipe.vae
    assert vae.use_tiling
    tiles: list[tuple[int, ...]] = []
    decode_tile = vae.decoder.forward

    def counting_decoder(x, *args, **kwargs):
        tiles.append(tuple(x.shape[-2:]))
        return decode_tile(x, *args, **kwargs)

    monkeypatch.setattr(vae.decoder, "forward", counting_decoder)
    out = frames(manager, job)
    # 416x240 is 52x30 latents: the default 256 px tiles (32 latents) start every 192 px (24 latents); untiled
    # decoding would run the decoder on the whole 30x52 latent
    assert {shape[-1] for shape in tiles} == {32, 28, 4} and {shape[-2] for shape in tiles} == {30, 6}
    assert not np.array_equal(out, full)  # the tiles' overlaps are blended: not the untiled decode bit for bit
    assert np.abs(out - full).mean() < 0.02


def test_automatic_choices_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_memory_mode("auto", cpu) == "full"
    assert resolve_attention("auto", cpu) == "native"
    assert resolve_memory_mode("group_offload", cpu) == "group_offload"
    with pytest.raises(ValueError):
        RuntimeConfig(memory_mode="tiny")


@pytest.mark.parametrize(
    "mode,compiles", [("full", True), ("model_offload", True), ("fp8", False), ("group_offload", False)]
)
def test_compile_applies_only_in_modes_it_can_trace(tiny_weights, mode, compiles):
    """fp8's casting hooks and group offload's onload hooks fail a fullgraph compile on the first job: those modes
    run uncompiled (and say so in /ready) instead of failing every job."""
    runtime = RuntimeConfig(memory_mode=mode, compile=True, compile_devices=("cpu",))
    manager = ModelManager(tiny_weights, device="cpu", runtime=runtime)
    assert manager.compiles is compiles
    assert manager.describe()["compile"] is compiles
