"""LoRAs per request on tiny weights: what they change, what they leave exactly alone, refusals, the download cache,
and the fast path's transformer calls and timesteps."""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanVACEPipeline
from PIL import Image
from safetensors.torch import save_file

from pipelines.checks import check_inputs
from pipelines.conditioning import Conditioning, build_conditioning
from pipelines.context import JobContext
from pipelines.denoise import denoise
from pipelines.errors import InputError
from pipelines.generate import generate
from pipelines.hooks import JobHooks
from pipelines.limits import Limits
from pipelines.loading import ModelManager
from pipelines.lora_cache import LoraCache, sha256_file
from pipelines.lora_names import installed_loras
from pipelines.loras import JobLora, fetch_loras
from pipelines.runtime import RuntimeConfig
from pipelines.samplers import make_scheduler
from pipelines.schema import VaceInput
from pipelines.video_io import read_frames
from weights.tiny.loras import lora_weights, write_lora
from weights.tiny.wan import build_transformer

A14B, WAN21 = "wan-22-vace-fun-a14b", "wan-vace-14b"
BOTH = ("transformer", "transformer_2")
W, H = 208, 128  # small frames: every test here denoises several times


@pytest.fixture(scope="module")
def manager(tiny_weights: Path) -> ModelManager:
    return ModelManager(tiny_weights, device="cpu")


@pytest.fixture(scope="module")
def cond(pose_video: Path) -> Conditioning:
    return build_conditioning(read_frames(pose_video, range(17)), W, H)


@pytest.fixture(scope="module")
def loras(tiny_weights: Path) -> dict[str, Path]:
    return installed_loras(tiny_weights)


def job_lora(path: Path, scale: float = 1.0, experts: tuple[str, ...] = BOTH, index: int = 0) -> JobLora:
    return JobLora(index, path, sha256_file(path), scale, experts)


def frames(
    manager: ModelManager, cond: Conditioning, job_loras: list[JobLora], model: str = A14B, **fields: object
) -> np.ndarray:
    inp = VaceInput(prompt="a person dancing", video_url="x", num_inference_steps=2, num_frames=17, **fields)
    pipe = manager.get(model).pipeline(make_scheduler("unipc", 5.0), job_loras)
    return denoise(pipe, cond, inp, prompt=inp.prompt, width=W, height=H, seed=3, hooks=JobHooks())


@pytest.fixture(scope="module")
def plain(manager: ModelManager, cond: Conditioning) -> np.ndarray:
    return frames(manager, cond, [])


def test_a_lora_changes_the_output_and_scale_zero_is_exactly_none(manager, cond, loras, plain):
    styled = frames(manager, cond, [job_lora(loras["tiny-wan21"])])
    assert np.abs(styled - plain).mean() > 1e-3
    np.testing.assert_array_equal(frames(manager, cond, [job_lora(loras["tiny-wan21"], 0.0)]), plain)
    np.testing.assert_array_equal(frames(manager, cond, []), plain)  # and nothing stays behind


def test_two_loras_combine(manager, cond, loras):
    one, two = job_lora(loras["tiny-wan21"]), job_lora(loras["tiny-wan22"], index=1)
    both = frames(manager, cond, [one, two])
    assert not np.allclose(both, frames(manager, cond, [one]), atol=1e-4)
    assert not np.allclose(both, frames(manager, cond, [two]), atol=1e-4)
    # One file named twice is one adapter with the scales added.
    halves = [job_lora(loras["tiny-wan21"], 0.5), job_lora(loras["tiny-wan21"], 0.5, index=1)]
    np.testing.assert_array_equal(frames(manager, cond, halves), frames(manager, cond, [one]))


def expert_outputs(pipe: WanVACEPipeline) -> dict[str, torch.Tensor]:
    """Each expert's output on one fixed input: an expert's LoRA shows in its own output only."""
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 16, 2, 8, 8, generator=g), torch.randn(1, 4, 32, generator=g)
    control = torch.randn(1, 96, 2, 8, 8, generator=g)
    with torch.no_grad():
        return {
            name: getattr(pipe, name)(x, torch.tensor([500]), text, control_hidden_states=control, return_dict=False)[0]
            for name in BOTH
        }


def test_high_and_low_go_into_their_expert_only(manager, cond, loras, plain):
    lora = loras["tiny-wan21"]
    model = manager.get(A14B)
    base = expert_outputs(model.pipeline(make_scheduler("unipc", 5.0)))
    high = expert_outputs(model.pipeline(make_scheduler("unipc", 5.0), [job_lora(lora, experts=("transformer",))]))
    low = expert_outputs(model.pipeline(make_scheduler("unipc", 5.0), [job_lora(lora, experts=("transformer_2",))]))
    assert not torch.equal(high["transformer"], base["transformer"])
    assert torch.equal(high["transformer_2"], base["transformer_2"])
    assert torch.equal(low["transformer"], base["transformer"])
    assert not torch.equal(low["transformer_2"], base["transformer_2"])
    # Whole jobs: each expert's LoRA changes the video in its own way, and both together differ from either.
    on_high = frames(manager, cond, [job_lora(lora, experts=("transformer",))])
    on_low = frames(manager, cond, [job_lora(lora, experts=("transformer_2",))])
    on_both = frames(manager, cond, [job_lora(lora)])
    for one in (on_high, on_low):
        assert np.abs(one - plain).mean() > 1e-4
    assert np.abs(on_high - on_low).mean() > 1e-4 and np.abs(on_both - on_high).mean() > 1e-4


def test_the_same_set_stays_loaded_and_only_scales_change(manager, cond, loras, plain, monkeypatch):
    loads = []
    original = WanVACEPipeline.load_lora_into_transformer.__func__
    monkeypatch.setattr(
        WanVACEPipeline,
        "load_lora_into_transformer",
        classmethod(lambda cls, *a, **kw: loads.append(kw["adapter_name"]) or original(cls, *a, **kw)),
    )
    lora = loras["tiny-wan21"]
    frames(manager, cond, [])
    first = frames(manager, cond, [job_lora(lora)])
    assert len(loads) == 2  # one adapter per expert
    np.testing.assert_array_equal(frames(manager, cond, [job_lora(lora)]), first)
    np.testing.assert_array_equal(frames(manager, cond, [job_lora(lora, 0.0)]), plain)
    assert len(loads) == 2  # not loaded again
    frames(manager, cond, [])
    frames(manager, cond, [job_lora(lora)])
    assert len(loads) == 4  # dropped with the LoRA-free job, loaded again after


def run_job(models: ModelManager, tmp_path: Path, video: Path, **fields: object) -> np.ndarray:
    """A whole generate() job; returns its frames, read back from the frames zip."""
    out, work = tmp_path / "out", tmp_path / "work"
    for folder in (out, work):
        folder.mkdir(parents=True, exist_ok=True)

    def publish(path: Path, _content_type: str) -> str:
        return str(path.replace(out / path.name))

    inp = VaceInput(
        prompt="a person dancing",
        video_url=str(video),
        num_frames=17,
        num_inference_steps=2,
        acceleration="none",
        seed=5,
        return_frames_zip=True,
        **fields,
    )
    result = generate(inp, task="pose", model=A14B, manager=models, workdir=work, publish=publish)
    with zipfile.ZipFile(result.frames_zip.url) as zf:
        return np.stack([np.asarray(Image.open(io.BytesIO(zf.read(n)))) for n in sorted(zf.namelist())])


def test_no_leakage_into_the_next_job(tiny_weights, pose_video, tmp_path):
    used = ModelManager(tiny_weights, device="cpu")
    with_lora = run_job(used, tmp_path / "a", pose_video, loras=[{"path": "tiny-wan22", "transformer": "high"}])
    after = run_job(used, tmp_path / "b", pose_video)
    fresh = run_job(ModelManager(tiny_weights, device="cpu"), tmp_path / "c", pose_video)
    np.testing.assert_array_equal(after, fresh)
    assert not np.array_equal(after, with_lora)


def test_the_original_wan_key_layout_is_converted(manager, cond, tmp_path):
    """A LoRA saved with the original Wan names (as ComfyUI and musubi-tuner users have them) loads like the
    same LoRA in diffusers' names."""
    weights = lora_weights(build_transformer(), seed=7)
    names = {
        "attn1": "self_attn",
        "attn2": "cross_attn",
        "to_q": "q",
        "to_k": "k",
        "to_v": "v",
        "to_out.0": "o",
        "ffn.net.0.proj": "ffn.0",
        "ffn.net.2": "ffn.2",
    }
    original = {}
    for key, tensor in weights.items():
        module, part = key.rsplit(".lora_", 1)
        for ours, theirs in names.items():
            module = module.replace(ours, theirs)
        original[f"diffusion_model.{module}.{'lora_down' if part.startswith('A') else 'lora_up'}.weight"] = tensor
    save_file(original, tmp_path / "wan.safetensors")
    ours = write_lora(tmp_path / "diffusers.safetensors", weights)
    np.testing.assert_allclose(
        frames(manager, cond, [job_lora(tmp_path / "wan.safetensors")]),
        frames(manager, cond, [job_lora(ours)]),
        atol=1e-6,
    )


def _refusal(manager: ModelManager, cond: Conditioning, path: Path) -> InputError:
    with pytest.raises(InputError) as caught:
        frames(manager, cond, [job_lora(path)])
    return caught.value


def test_refused_files_name_the_lora_and_leave_the_model_plain(manager, cond, plain, tmp_path):
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 24)}, pickled)
    wider = tmp_path / "wider.safetensors"  # the same layers at another width: another model size
    write_lora(
        wider,
        {
            "blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 48),
            "blocks.0.attn1.to_q.lora_B.weight": torch.ones(48, 4),
        },
    )
    unet = tmp_path / "unet.safetensors"  # another architecture's layer names
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.ones(4, 24)}, unet)
    half = tmp_path / "half.safetensors"  # a down factor without its up factor
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 24)}, half)
    for path, words in (
        (pickled, "not a .safetensors file"),
        (wider, "does not fit"),
        (unet, "another architecture"),
        (half, "only one of the two factors"),
    ):
        error = _refusal(manager, cond, path)
        assert error.loc == ("loras", 0, "path") and error.type == "lora_load_error" and words in error.msg, path
    np.testing.assert_array_equal(frames(manager, cond, []), plain)


def test_up_front_checks(manager):
    def check(model: str = A14B, ctx: JobContext = JobContext(local_paths=False), **lora: object) -> InputError:
        inp = VaceInput(prompt="x", video_url="https://example.com/v.mp4", loras=[{"path": "tiny-wan21", **lora}])
        with pytest.raises(InputError) as caught:
            check_inputs(inp, "pose", ctx, manager, model=model)
        return caught.value

    assert check(path="no-such-lora").loc == ("loras", 0, "path")
    assert check(path="../wan2.1-vace-14b/transformer/config").type == "lora_not_found"
    assert check(path="/etc/passwd").type == "lora_not_found"  # a server takes names and URLs, not paths
    assert check(path="file:///etc/passwd").type == "file_download_error"
    assert check(WAN21, transformer="low").loc == ("loras", 0, "transformer")
    assert check(ctx=JobContext(limits=Limits(max_loras=0), local_paths=False)).type == "too_many_loras"
    for fine in (
        {"path": "tiny-wan21", "transformer": "high"},
        {"path": "tiny-wan22.safetensors"},
        {"path": "https://example.com/l.safetensors"},
    ):
        inp = VaceInput(prompt="x", video_url="https://example.com/v.mp4", loras=[fine])
        check_inputs(inp, "pose", JobContext(local_paths=False), manager, model=WAN21)


@pytest.fixture()
def lora_host(loras: dict[str, Path]) -> Iterator[tuple[str, list[str]]]:
    """A loopback server of the tiny LoRA files, counting requests."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            name = self.path.strip("/").removesuffix(".safetensors")
            if name not in loras:
                self.send_error(404)
                return
            body = loras[name].read_bytes()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", hits
    server.shutdown()


def test_the_cache_downloads_a_url_once_and_evicts_the_least_recent(tiny_weights, lora_host, loras, tmp_path):
    base, hits = lora_host
    cache = LoraCache(tmp_path / "cache", max_bytes=10**9)
    ctx = JobContext(fetch_allow=("127.0.0.1",), local_paths=False, lora_cache=cache)

    def fetch(*names: str, job: str) -> list[JobLora]:
        inp = VaceInput(prompt="x", video_url="x", loras=[{"path": f"{base}/{n}.safetensors"} for n in names])
        return fetch_loras(inp, A14B, tmp_path / job, ctx, tiny_weights)

    first = fetch("tiny-wan21", job="1")
    again = fetch("tiny-wan21", job="2")
    assert len(hits) == 1
    assert first[0].sha256 == again[0].sha256 == sha256_file(loras["tiny-wan21"])
    assert again[0].path.read_bytes() == loras["tiny-wan21"].read_bytes()
    # A budget of one file keeps the newest; the job that took the evicted one still has its link.
    cache.max_bytes = loras["tiny-wan22"].stat().st_size
    kept = fetch("tiny-wan22", job="3")
    assert cache.lookup(f"{base}/tiny-wan21.safetensors") is None
    assert cache.lookup(f"{base}/tiny-wan22.safetensors").sha256 == kept[0].sha256
    assert again[0].path.read_bytes() == loras["tiny-wan21"].read_bytes()
    fetch("tiny-wan21", job="4")
    assert len(hits) == 3


def test_private_addresses_and_size_limits_are_refused(tiny_weights, lora_host, tmp_path):
    base, hits = lora_host
    inp = VaceInput(prompt="x", video_url="x", loras=[{"path": f"{base}/tiny-wan21.safetensors"}])
    with pytest.raises(InputError, match="non-public address") as private:
        fetch_loras(inp, A14B, tmp_path, JobContext(local_paths=False), tiny_weights)
    small = JobContext(fetch_allow=("127.0.0.1",), limits=Limits(max_lora_bytes=1000), local_paths=False)
    with pytest.raises(InputError, match="1000-byte limit") as large:
        fetch_loras(inp, A14B, tmp_path, small, tiny_weights)
    assert private.value.loc == large.value.loc == ("loras", 0, "path")
    assert len(hits) == 1  # the private one never connected


def _count_calls(pipe: WanVACEPipeline) -> list[str]:
    calls: list[str] = []
    for name in BOTH:
        getattr(pipe, name).register_forward_pre_hook(lambda *_a, n=name: calls.append(n))
    return calls


def test_guidance_one_skips_the_unconditional_branch(tiny_weights, cond):
    """The fast path's speed-up is a count of transformer calls: guidance 1 runs one per step, CFG two."""
    manager = ModelManager(tiny_weights, device="cpu")
    calls = _count_calls(manager.get(A14B).pipe)
    frames(manager, cond, [], guidance_scale=1.0)
    assert calls == ["transformer", "transformer_2"]  # one call per step, one step per expert
    calls.clear()
    frames(manager, cond, [], guidance_scale=5.0)
    assert len(calls) == 4


def test_the_recipe_schedule_reaches_lightx2v_timesteps():
    """LightX2V's 4-step LoRAs were distilled at timesteps 1000/750/500/250 under shift 5, i.e. sigmas 1, 0.9375,
    0.8333, 0.625; unipc with shift 5 lands on them (to 1e-3), and the A14B boundary (t=875) splits them 2/2 as
    LightX2V's boundary_step_index 2 does. diffusers' Euler does not (README, "The fast path")."""
    unipc = make_scheduler("unipc", 5.0)
    unipc.set_timesteps(4)
    np.testing.assert_allclose(unipc.sigmas[:4].numpy(), [1.0, 0.9375, 0.8333, 0.625], atol=1.5e-3)
    assert [int(t >= 875) for t in unipc.timesteps] == [1, 1, 0, 0]
    euler = make_scheduler("euler", 5.0)
    euler.set_timesteps(4)
    assert abs(float(euler.sigmas[3]) - 0.625) > 0.5


@pytest.fixture(scope="module")
def compiled(tiny_weights: Path) -> ModelManager:
    """A server that compiles its transformers, here on CPU through the same path as on CUDA, with LoRA slots of
    rank 8: two of the tiny rank-4 LoRAs fill them."""
    runtime = RuntimeConfig(compile=True, compile_devices=("cpu",), lora_max_rank=8)
    return ModelManager(tiny_weights, device="cpu", runtime=runtime)


def _alpha_lora(path: Path, alpha: float) -> Path:
    """A tiny LoRA whose adapter config scales it by alpha / rank != 1."""
    weights = lora_weights(build_transformer(), seed=5, std=0.2)
    targets = sorted({key.rsplit(".lora_", 1)[0] for key in weights})
    WanVACEPipeline.save_lora_weights(
        path.parent,
        transformer_lora_layers=weights,
        weight_name=path.name,
        transformer_lora_adapter_metadata={"r": 4, "lora_alpha": alpha, "target_modules": targets},
    )
    return path


def test_compiled_transformers_swap_loras_without_recompiling(compiled, manager, cond, loras, tmp_path, monkeypatch):
    """With --compile, LoRAs are hot-swapped into each expert's slot: new LoRAs, sets and scales run on the blocks
    compiled by the first job, give the uncompiled server's frames (to float rounding), and a job without LoRAs
    after them gives exactly the frames of a fresh compiled server."""
    fresh = frames(compiled, cond, [])  # compiles the blocks (about a minute on one CPU core)
    stats = torch._dynamo.utils.counters["stats"]
    graphs = stats["unique_graphs"]
    assert graphs > 0  # the blocks really are compiled
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    halved = _alpha_lora(tmp_path / "alpha.safetensors", alpha=2.0)
    jobs = [
        [job_lora(loras["tiny-wan21"])],
        [job_lora(loras["tiny-wan21"], 0.5, experts=("transformer",)), job_lora(loras["tiny-wan22"], index=1)],
        [job_lora(halved, 1.5, experts=("transformer_2",))],
        [job_lora(loras["tiny-wan22"], 0.7), job_lora(loras["tiny-wan22"], 0.3, index=1)],  # one file: rank 4
    ]
    for job in jobs:
        swapped = frames(compiled, cond, job)
        assert np.abs(swapped - fresh).mean() > 1e-3
        np.testing.assert_allclose(swapped, frames(manager, cond, job), atol=2e-4)
    np.testing.assert_array_equal(frames(compiled, cond, [job_lora(loras["tiny-wan21"], 0.0)]), fresh)
    np.testing.assert_array_equal(frames(compiled, cond, []), fresh)
    assert stats["unique_graphs"] == graphs  # nothing compiled after the first job


def test_compiled_slot_refuses_loras_over_its_rank(compiled, cond, loras):
    fresh = frames(compiled, cond, [])
    three = [job_lora(loras[name], index=i) for i, name in enumerate(("tiny-wan21", "tiny-wan22"))]
    three.append(job_lora(next(path for name, path in loras.items() if name.startswith("lightx2v/")), index=2))
    with pytest.raises(InputError) as caught:
        frames(compiled, cond, three)
    assert caught.value.loc == ("loras", 2, "path") and caught.value.type == "lora_rank_too_high"
    assert "--lora-max-rank 8" in caught.value.msg
    np.testing.assert_array_equal(frames(compiled, cond, []), fresh)


def test_compile_without_a_slot_refuses_loras_up_front(tiny_weights):
    inp = VaceInput(prompt="x", video_url="https://example.com/v.mp4", loras=[{"path": "tiny-wan21"}])
    for rank, refused in ((0, True), (8, False)):
        runtime = RuntimeConfig(compile=True, compile_devices=("cpu",), lora_max_rank=rank)
        models = ModelManager(tiny_weights, device="cpu", runtime=runtime)
        if not refused:
            check_inputs(inp, "pose", JobContext(local_paths=False), models, model=A14B)
            continue
        with pytest.raises(InputError) as caught:
            check_inputs(inp, "pose", JobContext(local_paths=False), models, model=A14B)
        assert caught.value.loc == ("loras",) and caught.value.type == "not_supported"
