"""Memory modes that run on CPU give the frames of full mode; the runtime picks sensible defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.conditioning import build_conditioning
from pipelines.generate import JobHooks, denoise
from pipelines.loading import ModelManager
from pipelines.runtime import RuntimeConfig, resolve_attention, resolve_memory_mode
from pipelines.samplers import make_scheduler
from pipelines.schema import VaceInput
from pipelines.video_io import read_frames


@pytest.fixture(scope="module")
def job(pose_video):
    inp = VaceInput(prompt="a person dancing", video_url=str(pose_video), num_inference_steps=2, num_frames=17)
    return inp, build_conditioning(read_frames(pose_video, range(17)), 416, 240)


def frames(manager: ModelManager, job, model: str = "wan-22-vace-fun-a14b") -> np.ndarray:
    inp, cond = job
    pipe = manager.get(model).pipeline(make_scheduler("unipc", inp.shift))
    return denoise(pipe, cond, inp, prompt=inp.prompt, width=416, height=240, seed=4, hooks=JobHooks())


@pytest.fixture(scope="module")
def full(tiny_weights, job):
    return frames(ModelManager(tiny_weights, device="cpu", runtime=RuntimeConfig(memory_mode="full", vae_tiling=False)), job)


@pytest.mark.parametrize("mode", ["group_offload", "model_offload"])
def test_offload_modes_match_full_mode(tiny_weights, job, full, mode):
    manager = ModelManager(tiny_weights, device="cpu", runtime=RuntimeConfig(memory_mode=mode, vae_tiling=False))
    assert manager.describe()["memory_mode"] == mode
    np.testing.assert_allclose(frames(manager, job), full, atol=1e-5)


def test_fp8_storage_stays_close_to_full_mode(tiny_weights, job, full):
    manager = ModelManager(tiny_weights, device="cpu", runtime=RuntimeConfig(memory_mode="fp8", vae_tiling=False))
    loaded = manager.get("wan-22-vace-fun-a14b")
    assert loaded.transformer.blocks[0].ffn.net[2].weight.dtype == torch.float8_e4m3fn
    out = frames(manager, job)
    # float8 storage rounds every weight to 3 mantissa bits: close to full mode, but not float-exact.
    assert np.abs(out - full).mean() < 0.02
    assert not np.array_equal(out, full)


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
