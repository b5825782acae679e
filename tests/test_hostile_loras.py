"""Hostile LoRA files on tiny weights (#28): a file's header never configures peft, so no LoRA changes the base
weights or any later job. Each probe checks the experts' own weights against a fresh load and a plain job's frames
against a fresh manager's, bit for bit; a load that fails halfway leaves the model to be loaded anew."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import peft
import peft.utils.hotswap
import pytest
import torch
from safetensors.torch import save_file
from test_loras import A14B, expert_outputs, frames, job_lora, run_job

from pipelines.conditioning import Conditioning, build_conditioning
from pipelines.context import JobContext
from pipelines.errors import InputError
from pipelines.loading import LoadedModel, ModelManager
from pipelines.lora_cache import LoraCache, sha256_file
from pipelines.lora_files import read_lora_file
from pipelines.loras import JobLora, fetch_loras, pipeline_experts
from pipelines.runtime import RuntimeConfig
from pipelines.samplers import make_scheduler
from pipelines.schema import VaceInput
from pipelines.video_io import read_frames
from weights.tiny.loras import RANK, lora_weights
from weights.tiny.wan import build_transformer

HIGH = ("transformer",)
W, H = 208, 128
TENSORS = {f"transformer.{key}": value for key, value in lora_weights(build_transformer(), seed=7).items()}
TARGETS = sorted({key.removeprefix("transformer.").rsplit(".lora_", 1)[0] for key in TENSORS})
CLEAN = {"r": RANK, "lora_alpha": RANK, "target_modules": TARGETS}

# Header options that peft would act on, none of which describes the tensors: each must be ignored, so the file
# loads exactly as the same tensors with a clean header.
IGNORED = {
    "pissa": {"init_lora_weights": "pissa"},
    "pissa_niter": {"init_lora_weights": "pissa_niter_2"},
    "olora": {"init_lora_weights": "olora"},
    "loftq": {"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4}},
    "gaussian": {"init_lora_weights": "gaussian"},
    "orthogonal": {"init_lora_weights": "orthogonal"},
    "higher r": {"r": 8},
    "lower r": {"r": 2},
    "rank_pattern": {"rank_pattern": {"blocks.0.attn1.to_q": 16}},
    "dora": {"use_dora": True},
    "unknown keys": {"peft_type": "LOHA", "no_such_option": [1, 2], "task_type": "CAUSAL_LM"},
    "foreign targets": {"target_modules": [*TARGETS, "proj_out", "condition_embedder.time_proj", "patch_embedding"]},
    "regex targets": {"target_modules": ".*"},
    "layer_replication": {"layer_replication": [[0, 2], [1, 3]]},
    "fan_in_fan_out": {"fan_in_fan_out": True},
    "modules_to_save": {"modules_to_save": ["proj_out", "scale_shift_table"]},
    "bias all": {"bias": "all", "lora_bias": True},
    "exclude": {"exclude_modules": ["blocks.0.attn1.to_q"], "layers_to_transform": [1]},
    "dropout": {"lora_dropout": 0.9, "inference_mode": False},
}
# Alphas and switches the header may give, in a form that is not a plain value: refused with a 422.
REFUSED = {
    "string alpha": {"lora_alpha": "4"},
    "list alpha": {"lora_alpha": [4]},
    "bool alpha": {"lora_alpha": True},
    "nan alpha": {"lora_alpha": math.nan},
    "infinite alpha": {"lora_alpha": math.inf},
    "huge int alpha": {"lora_alpha": 10**400},
    "pattern of strings": {"alpha_pattern": {"blocks.0.attn1.to_q": "8"}},
    "pattern list": {"alpha_pattern": [8]},
    "rslora string": {"use_rslora": "yes"},
}


def write_header_lora(
    path: Path,
    options: dict[str, object] | None = None,
    raw: str | None = None,
    tensors: dict[str, torch.Tensor] = TENSORS,
) -> Path:
    """A diffusers-layout LoRA whose header carries ``CLEAN`` with ``options`` on top (or the ``raw`` text)."""
    header = {f"transformer.{key}": value for key, value in (CLEAN | (options or {})).items()}
    save_file(
        tensors,
        path,
        metadata={"lora_adapter_metadata": raw if raw is not None else json.dumps(header), "format": "pt"},
    )
    return path


def base_weights(model: LoadedModel) -> dict[str, torch.Tensor]:
    """The experts' own weights, named as in a model without adapters (peft's wrappers and factors left out)."""
    weights = {}
    for name, expert in pipeline_experts(model.pipe).items():
        for key, value in expert.state_dict().items():
            if ".lora_" not in key:
                weights[f"{name}.{key.replace('.base_layer', '')}"] = value
    return weights


def assert_base_unchanged(model: LoadedModel, fresh: dict[str, torch.Tensor], case: str) -> None:
    now = base_weights(model)
    assert now.keys() == fresh.keys(), case
    changed = [key for key in fresh if not torch.equal(now[key], fresh[key])]
    assert not changed, (case, changed[:5])


@pytest.fixture(scope="module")
def cond(pose_video: Path) -> Conditioning:
    return build_conditioning(read_frames(pose_video, range(17)), W, H)


@pytest.fixture(scope="module")
def fresh(tiny_weights: Path, cond: Conditioning) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """A manager that never saw a LoRA: its experts' weights and its plain frames."""
    manager = ModelManager(tiny_weights, device="cpu")
    return base_weights(manager.get(A14B)), frames(manager, cond, [])


@pytest.fixture(scope="module")
def manager(tiny_weights: Path) -> ModelManager:
    return ModelManager(tiny_weights, device="cpu")


def outputs(manager: ModelManager, loras: list[JobLora]) -> dict[str, torch.Tensor]:
    """Each expert's output on one fixed input with ``loras`` on: one forward each, where a job would take many."""
    return expert_outputs(manager.get(A14B).pipeline(make_scheduler("unipc", 5.0), loras))


def test_header_options_are_ignored_and_never_touch_the_base_weights(manager, cond, fresh, tmp_path):
    """Each option loads the file exactly as the same tensors with a clean header (the same expert outputs, bit for
    bit) and with peft's defaults; the experts' own weights stay those of a fresh load, and a plain job afterwards
    gives a fresh manager's frames."""
    base, plain = fresh
    clean = outputs(manager, [job_lora(write_header_lora(tmp_path / "clean.safetensors"), experts=HIGH)])
    assert not torch.equal(clean["transformer"], outputs(manager, [])["transformer"])
    for case, options in IGNORED.items():
        path = write_header_lora(tmp_path / f"{case}.safetensors", options)
        hostile = outputs(manager, [job_lora(path, experts=HIGH)])
        assert all(torch.equal(hostile[name], clean[name]) for name in clean), case
        assert_base_unchanged(manager.get(A14B), base, case)  # with the adapter on: its base layers
        config = manager.get(A14B).transformer.peft_config[f"lora_{sha256_file(path)}"]
        assert (config.init_lora_weights, config.use_dora, config.r, config.fan_in_fan_out) == (
            True,
            False,
            RANK,
            False,
        ), case
        assert not config.layer_replication and not config.modules_to_save and config.bias == "none", case
    np.testing.assert_array_equal(frames(manager, cond, []), plain)
    assert_base_unchanged(manager.get(A14B), base, "after a plain job")


def test_unreadable_strengths_are_refused_and_change_nothing(manager, cond, fresh, tmp_path):
    base, plain = fresh
    cases = {
        case: write_header_lora(tmp_path / f"{i}.safetensors", options)
        for i, (case, options) in enumerate(REFUSED.items())
    }
    cases["not json"] = write_header_lora(tmp_path / "raw.safetensors", raw="{'lora_alpha': 4")
    cases["not an object"] = write_header_lora(tmp_path / "list.safetensors", raw="[4]")
    mixed = dict(TENSORS, **{"transformer.blocks.0.attn1.to_q.lora_B.weight": torch.ones(24, 3)})
    cases["factors of two ranks"] = write_header_lora(tmp_path / "mixed.safetensors", tensors=mixed)
    ints = dict(TENSORS, **{"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 24, dtype=torch.int64)})
    cases["integer factors"] = write_header_lora(tmp_path / "ints.safetensors", tensors=ints)
    for case, path in cases.items():
        with pytest.raises(InputError) as caught:
            frames(manager, cond, [job_lora(path, index=2)])
        assert caught.value.loc == ("loras", 2, "path") and caught.value.type == "lora_load_error", case
        assert not manager.get(A14B).spoiled, case  # refused before anything changed
        assert_base_unchanged(manager.get(A14B), base, case)
    np.testing.assert_array_equal(frames(manager, cond, []), plain)


def _adapter_layers(model: LoadedModel, path: Path) -> dict[str, tuple[int, float]]:
    """(rank, scaling) of each layer of the high-noise expert that carries the adapter of ``path``."""
    adapter = f"lora_{sha256_file(path)}"
    return {
        name: (module.r[adapter], module.scaling[adapter])
        for name, module in model.transformer.named_modules()
        if isinstance(module, peft.tuners.lora.LoraLayer) and adapter in module.r
    }


def test_well_formed_files_load_with_the_ranks_and_alphas_they_state(tiny_weights, manager, cond, tmp_path):
    """Rank and alpha built from the tensors equal what a well-formed header says, per layer (also with mixed ranks,
    an alpha_pattern and rank-stabilised scaling), and the frames equal those of diffusers loading the same file with
    its own header, the way every LoRA was loaded before (the high-noise expert's output on a fixed input)."""
    narrow = ("blocks.0.attn1.to_q", "blocks.1.ffn.net.2")
    mixed = dict(TENSORS)
    for layer in narrow:  # rank 2 on two layers
        mixed[f"transformer.{layer}.lora_A.weight"] = TENSORS[f"transformer.{layer}.lora_A.weight"][:2]
        mixed[f"transformer.{layer}.lora_B.weight"] = TENSORS[f"transformer.{layer}.lora_B.weight"][:, :2].contiguous()
    patterns = {
        "rank_pattern": {f"^{layer}": 2 for layer in narrow},
        "lora_alpha": 3,
        "alpha_pattern": {"^blocks.0.attn1.to_q": 1, "attn2.to_k": 6},
        "use_rslora": True,
    }

    def pattern_scaling(layer: str) -> float:
        alpha = 1 if layer == "blocks.0.attn1.to_q" else 6 if layer.endswith(".attn2.to_k") else 3
        return alpha / math.sqrt(2 if layer in narrow else 4)

    cases = {
        "alpha = rank": ({}, TENSORS, lambda layer: 1.0),
        "alpha 2": ({"lora_alpha": 2}, TENSORS, lambda layer: 0.5),
        "patterns": (patterns, mixed, pattern_scaling),
    }
    for case, (options, tensors, scaling_of) in cases.items():
        path = write_header_lora(tmp_path / f"{case}.safetensors", options, tensors=tensors)
        lora = read_lora_file(path, ("loras", 0, "path"))
        ours = outputs(manager, [job_lora(path, experts=HIGH)])
        layers = _adapter_layers(manager.get(A14B), path)
        assert set(layers) == set(TARGETS), case
        for layer, (rank, scaling) in layers.items():
            assert rank == lora.ranks[layer] == (2 if case == "patterns" and layer in narrow else RANK), (case, layer)
            assert scaling == pytest.approx(scaling_of(layer)) == lora.scaling(layer), (case, layer)
        reference = ModelManager(tiny_weights, device="cpu").get(A14B).pipe  # diffusers with the file's header
        reference.load_lora_weights(str(path), adapter_name="reference")
        torch.testing.assert_close(
            ours["transformer"], expert_outputs(reference)["transformer"], rtol=0, atol=1e-6, msg=case
        )


def test_a_load_that_fails_halfway_reloads_the_model(manager, cond, fresh, tmp_path, monkeypatch):
    """peft failing after it changed the base weights (as a mismatched r did, leaving them at ~1e-6 of their norm):
    the model is loaded anew before the next job, which gives a fresh manager's frames."""
    base, plain = fresh
    real = peft.set_peft_model_state_dict

    def wrecks_then_fails(model: torch.nn.Module, *args: object, **kwargs: object) -> object:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_" not in name:
                    parameter.mul_(1e-6)
        raise RuntimeError("size mismatch")

    monkeypatch.setattr(peft, "set_peft_model_state_dict", wrecks_then_fails)
    before = manager.get(A14B)
    with pytest.raises(RuntimeError):
        frames(manager, cond, [job_lora(write_header_lora(tmp_path / "x.safetensors"))])
    assert before.spoiled
    monkeypatch.setattr(peft, "set_peft_model_state_dict", real)
    np.testing.assert_array_equal(frames(manager, cond, []), plain)
    assert manager.get(A14B) is not before
    assert_base_unchanged(manager.get(A14B), base, "reloaded")


def test_whole_jobs_after_hostile_files_equal_a_fresh_managers(tiny_weights, pose_video, tmp_path):
    """Through generate(): a job with hostile files on each expert, a refused one, then a plain job: the plain job's
    frames equal a fresh manager's, bit for bit."""
    used = ModelManager(tiny_weights, device="cpu")
    high = write_header_lora(tmp_path / "high.safetensors", IGNORED["pissa"] | IGNORED["layer_replication"])
    low = write_header_lora(tmp_path / "low.safetensors", IGNORED["olora"] | IGNORED["higher r"])
    run_job(
        used,
        tmp_path / "hostile",
        pose_video,
        loras=[{"path": str(high), "transformer": "high"}, {"path": str(low), "transformer": "low"}],
    )
    with pytest.raises(InputError):
        run_job(
            used,
            tmp_path / "nan",
            pose_video,
            loras=[{"path": str(write_header_lora(tmp_path / "nan.safetensors", REFUSED["nan alpha"]))}],
        )
    after = run_job(used, tmp_path / "after", pose_video)
    np.testing.assert_array_equal(
        after, run_job(ModelManager(tiny_weights, device="cpu"), tmp_path / "fresh", pose_video)
    )


@pytest.fixture()
def file_host(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A loopback server of the files in a folder (changed at will by the test), counting requests."""
    folder = tmp_path / "served"
    folder.mkdir()
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            path = folder / self.path.strip("/")
            if not path.is_file():
                self.send_error(404)
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", folder, hits
    server.shutdown()


def _fetch(base: str, name: str, ctx: JobContext, tiny_weights: Path, workdir: Path) -> str:
    inp = VaceInput(prompt="x", video_url="x", loras=[{"path": f"{base}/{name}"}])
    return fetch_loras(inp, A14B, workdir, ctx, tiny_weights)[0].sha256


def test_the_cache_keeps_only_files_that_pass_the_checks(tiny_weights, file_host, tmp_path):
    base, folder, hits = file_host
    cache = LoraCache(tmp_path / "cache", max_bytes=10**9)
    ctx = JobContext(fetch_allow=("127.0.0.1",), local_paths=False, lora_cache=cache)
    (folder / "garbage.safetensors").write_bytes(os.urandom(4096))
    write_header_lora(folder / "nan.safetensors", REFUSED["nan alpha"])
    wide = {
        "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 48),
        "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.ones(48, 4),
    }
    write_header_lora(folder / "wide.safetensors", tensors=wide)
    for name in ("garbage.safetensors", "nan.safetensors", "wide.safetensors"):
        for attempt in range(2):
            with pytest.raises(InputError) as caught:
                _fetch(base, name, ctx, tiny_weights, tmp_path / f"{name}-{attempt}")
            assert caught.value.type == "lora_load_error", name
    assert len(hits) == 6  # each refused file was downloaded again: none was remembered
    assert not any(path.is_file() for path in (tmp_path / "cache").rglob("*"))


def test_a_url_is_fetched_again_once_its_entry_is_older_than_the_ttl(tiny_weights, file_host, tmp_path):
    base, folder, hits = file_host
    cache = LoraCache(tmp_path / "cache", max_bytes=10**9, url_ttl_s=3600)
    ctx = JobContext(fetch_allow=("127.0.0.1",), local_paths=False, lora_cache=cache)
    first = sha256_file(write_header_lora(folder / "style.safetensors"))
    assert _fetch(base, "style.safetensors", ctx, tiny_weights, tmp_path / "1") == first
    second = sha256_file(write_header_lora(folder / "style.safetensors", {"lora_alpha": 2}))  # replaced at its URL
    assert _fetch(base, "style.safetensors", ctx, tiny_weights, tmp_path / "2") == first  # within the TTL
    assert len(hits) == 1
    (entry,) = (tmp_path / "cache" / "urls").iterdir()
    os.utime(entry, (time.time() - 3601, time.time() - 3601))
    assert _fetch(base, "style.safetensors", ctx, tiny_weights, tmp_path / "3") == second
    assert _fetch(base, "style.safetensors", ctx, tiny_weights, tmp_path / "4") == second
    assert len(hits) == 2
    assert {path.stem for path in (tmp_path / "cache" / "blobs").glob("*.safetensors")} == {first, second}


def test_adapter_names_carry_the_whole_hash(manager, tmp_path):
    path = write_header_lora(tmp_path / "named.safetensors")
    outputs(manager, [job_lora(path, experts=HIGH)])
    assert set(manager.get(A14B).transformer.peft_config) == {f"lora_{sha256_file(path)}"}


@pytest.fixture(scope="module")
def compiled(tiny_weights: Path) -> ModelManager:
    """A server that compiles its transformers and hot-swaps LoRAs into a rank-8 slot (CPU, as in test_loras)."""
    runtime = RuntimeConfig(compile=True, compile_devices=("cpu",), lora_max_rank=8)
    return ModelManager(tiny_weights, device="cpu", runtime=runtime)


def test_the_hotswap_path_takes_nothing_from_headers_either(compiled, cond, fresh, tmp_path, monkeypatch):
    """The compiled server folds each file's scaling into its slot from the same tensor-built config: hostile headers
    swap in exactly the clean file's factors, unreadable strengths are refused, the base weights never change, and a
    swap that fails halfway has the model loaded anew."""
    base, _ = fresh
    plain = frames(compiled, cond, [])  # compiles the blocks
    clean = frames(compiled, cond, [job_lora(write_header_lora(tmp_path / "clean.safetensors"), experts=HIGH)])
    assert np.abs(clean - plain).mean() > 1e-3
    for case in ("pissa", "higher r", "layer_replication"):
        path = write_header_lora(tmp_path / f"{case}.safetensors", IGNORED[case])
        np.testing.assert_array_equal(frames(compiled, cond, [job_lora(path, experts=HIGH)]), clean, err_msg=case)
        assert_base_unchanged(compiled.get(A14B), base, case)
    for case in ("string alpha", "nan alpha"):
        with pytest.raises(InputError) as caught:
            frames(compiled, cond, [job_lora(write_header_lora(tmp_path / "refused.safetensors", REFUSED[case]))])
        assert caught.value.type == "lora_load_error" and not compiled.get(A14B).spoiled, case
    np.testing.assert_array_equal(frames(compiled, cond, []), plain)
    assert_base_unchanged(compiled.get(A14B), base, "after a plain job")

    def wrecks_then_fails(model: torch.nn.Module, **kwargs: object) -> None:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_" not in name:
                    parameter.mul_(1e-6)
        raise RuntimeError("swap failed")

    monkeypatch.setattr(peft.utils.hotswap, "hotswap_adapter_from_state_dict", wrecks_then_fails)
    before = compiled.get(A14B)
    with pytest.raises(RuntimeError):
        frames(compiled, cond, [job_lora(write_header_lora(tmp_path / "x.safetensors"), experts=HIGH)])
    assert before.spoiled and compiled.get(A14B) is not before
    assert_base_unchanged(compiled.get(A14B), base, "reloaded")  # its next job compiles again: not run here
