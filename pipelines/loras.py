"""LoRAs per request: checked up front, fetched once, and put on the experts for exactly the job that asked.

A request names LoRAs as fal's Wan 2.2 LoRA endpoints do (``{path, scale, transformer: high|low|both}``). Three
steps, in the order a job takes them:

* :func:`~pipelines.lora_names.check_loras` (part of ``checks.check_inputs``, so the server refuses at submission):
  the count limit, the expert being one the model has, and a named LoRA existing in the weights directory's
  ``loras/`` folder. It and the names of installed LoRAs live in ``lora_names``, which loads no model library.
* :func:`fetch_loras`: each file made local: URLs and data URIs through the vetted fetch (with the LoRA size limit)
  and the download cache (``pipelines.lora_cache``, which keeps only files that pass the checks below), uploads and
  names read in place; each identified by its sha256.
* :func:`apply_loras` (called by ``LoadedModel.pipeline``, so every job goes through it): the pipeline's experts are
  made to carry exactly the job's adapters. Adapters the previous job used stay loaded when this job uses them too
  (only their scales change); the others are deleted, and an expert that needs none is restored to its original
  modules, so a job without LoRAs computes exactly what a never-touched model computes. Compiled transformers
  (``--compile``) take LoRAs another way, without recompiling: ``pipelines.lora_hotswap``.

Every file is read and checked against the expert it goes into before anything on the device changes
(``pipelines.lora_files``): only its safetensors tensors are read, never its header's adapter config, whose options
could rewrite the base weights; the config a LoRA is loaded with is built from its tensors. A refused file is a 422
naming the LoRA. Should a load still fail past the checks, the model is reloaded before its next job
(``LoadedModel.pipeline``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.hooks import CpuOffload
from diffusers import WanVACEPipeline, WanVACETransformer3DModel
from peft.tuners.lora import LoraLayer

from .context import JobContext
from .errors import InputError
from .fetch import fetch_to_file, own_file
from .lora_cache import sha256_file
from .lora_files import LoraFile, architecture_layers, check_fits, linear_layers, read_lora_file
from .lora_names import find_named, lora_at_path
from .manifest import MODELS
from .schema import JobInput, LoraWeight

log = logging.getLogger(__name__)

EXPERTS = {"high": ("transformer",), "low": ("transformer_2",), "both": ("transformer", "transformer_2")}


@dataclass(frozen=True)
class JobLora:
    """One LoRA of a job, its file local and identified by content."""

    index: int
    path: Path
    sha256: str
    scale: float
    experts: tuple[str, ...]
    """The pipeline attributes it goes into: ``transformer`` (high noise) and/or ``transformer_2`` (low noise)."""

    @property
    def field(self) -> tuple[str, int, str]:
        return ("loras", self.index, "path")

    @property
    def adapter(self) -> str:
        """The adapter name on the device: the same bytes are one adapter, whatever URL or name brought them (the
        whole hash: two files must never share a name)."""
        return f"lora_{self.sha256}"


def fetch_loras(inp: JobInput, model: str, workdir: Path, ctx: JobContext, weights_dir: Path) -> list[JobLora]:
    """The request's LoRA files, local and identified by content (downloads through the cache when there is one)."""
    two_experts = MODELS[model].two_experts
    loras = []
    for i, lora in enumerate(inp.loras or []):
        experts = EXPERTS[lora.transformer] if two_experts else ("transformer",)
        folders = [MODELS[model].path(weights_dir, expert) for expert in experts]
        path, digest = _fetch_one(lora, ("loras", i, "path"), workdir, ctx, weights_dir, folders)
        loras.append(JobLora(i, path, digest, lora.scale, experts))
    return loras


def _fetch_one(
    lora: LoraWeight,
    field: tuple[str, int, str],
    workdir: Path,
    ctx: JobContext,
    weights_dir: Path,
    folders: Sequence[Path],
) -> tuple[Path, str]:
    """The local file and sha256 of one LoRA: downloads through the cache when there is one, checked against the
    transformers in ``folders`` before the cache keeps them."""
    limit = ctx.limits.max_lora_bytes
    if lora.is_ref:
        cache = ctx.lora_cache
        own = own_file(lora.path, field, workdir, ctx, limit)  # our own uploads: read from the file store
        if own is not None or cache is None or not lora.path.lower().startswith(("http://", "https://")):
            path = own or fetch_to_file(lora.path, field, workdir, ctx, max_bytes=limit)  # data URIs and the like
            return path, sha256_file(path)
        cached = cache.lookup(lora.path)
        if cached is None:
            downloaded = fetch_to_file(lora.path, field, workdir, ctx, max_bytes=limit)
            check_download(downloaded, field, folders)
            cached = cache.add(lora.path, downloaded)
        return cache.link(cached, workdir), cached.sha256
    named = lora_at_path(lora, ctx) or find_named(weights_dir, lora.path)  # the operator's files: no size limit
    if named is None:  # checked before; the file went away since
        raise InputError(field, f"no LoRA named {lora.path!r}", "lora_not_found")
    return named, sha256_file(named)


def read_lora(lora: JobLora, expert: WanVACETransformer3DModel) -> LoraFile:
    """The LoRA's tensors, ranks and alphas (``pipelines.lora_files``), checked against ``expert``."""
    lora_file = read_lora_file(lora.path, lora.field)
    check_fits(lora_file, linear_layers(expert), lora.field)
    return lora_file


def check_download(path: Path, field: tuple[str, int, str], folders: Sequence[Path]) -> None:
    """Check a downloaded LoRA against the transformers (their folders) it goes into, from their configs alone: a
    file is checked before it is cached, so one that would be refused is never kept."""
    lora_file = read_lora_file(path, field)
    for folder in folders:
        check_fits(lora_file, architecture_layers(folder), field)


def cast_factors(expert: WanVACETransformer3DModel, adapter: str, dtype: torch.dtype) -> None:
    """Keep an adapter's factors in the compute dtype: peft creates them in their base layer's dtype, float8 under
    the fp8 mode, which no matmul takes."""
    for module in expert.modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            module.lora_A[adapter].to(dtype)
            module.lora_B[adapter].to(dtype)


def pipeline_experts(pipe: WanVACEPipeline) -> dict[str, WanVACETransformer3DModel]:
    """The pipeline's experts by attribute name: ``transformer``, and ``transformer_2`` on a two-expert model."""
    return {name: model for name in ("transformer", "transformer_2") if (model := getattr(pipe, name)) is not None}


def _adapters(expert: WanVACETransformer3DModel) -> set[str]:
    return set(getattr(expert, "peft_config", {}) or {})


def _load_adapter(
    pipe: WanVACEPipeline, expert: WanVACETransformer3DModel, adapter: str, lora_file: LoraFile, dtype: torch.dtype
) -> None:
    """Load one adapter with diffusers into ``expert``, in the memory mode the model runs in, with the adapter config
    built from its tensors (``LoraFile.adapter_metadata``), never the file's.

    diffusers takes model offload's hooks off the pipeline for the load and puts them back with
    ``enable_model_cpu_offload()`` on the default device (cuda:0, whichever GPU this worker has; on a CPU-only
    machine it raises), so under model offload the pipeline is not handed over: the hook moves the whole expert,
    adapters included, at each forward anyway. Group offload's hooks it re-applies to cover the new layers, which
    needs the pipeline. The factors are kept in the compute dtype (:func:`cast_factors`).
    """
    model_offload = isinstance(getattr(expert, "_hf_hook", None), CpuOffload)
    pipe.load_lora_into_transformer(
        dict(lora_file.state_dict),
        transformer=expert,
        adapter_name=adapter,
        metadata=lora_file.adapter_metadata(),
        _pipeline=None if model_offload else pipe,
    )
    cast_factors(expert, adapter, dtype)


def apply_loras(pipe: WanVACEPipeline, loras: Sequence[JobLora], dtype: torch.dtype) -> None:
    """Make the pipeline's experts carry exactly ``loras`` at their scales (one file named twice adds its scales),
    the LoRA factors in ``dtype``, the compute dtype.

    Every file that has to be loaded is read and checked before anything changes: a refusal (an ``InputError``)
    leaves the model as it was. Anything that fails later leaves the model to be reloaded (``LoadedModel``).
    """
    experts = pipeline_experts(pipe)
    wanted: dict[str, dict[str, float]] = {name: {} for name in experts}
    for lora in loras:
        for name in lora.experts:
            wanted[name][lora.adapter] = wanted[name].get(lora.adapter, 0.0) + lora.scale
    files: dict[str, LoraFile] = {}
    for lora in loras:
        needed_by = [name for name in lora.experts if lora.adapter not in _adapters(experts[name])]
        if needed_by and lora.adapter not in files:
            files[lora.adapter] = read_lora(lora, experts[needed_by[0]])
    for name, expert in experts.items():
        want, loaded = wanted[name], _adapters(expert)
        if not want:
            if loaded:
                expert.unload_lora()  # back to the original modules: bit for bit the model without LoRAs
            continue
        if loaded - want.keys():
            expert.delete_adapters(sorted(loaded - want.keys()))
        for adapter in sorted(want.keys() - loaded):
            _load_adapter(pipe, expert, adapter, files[adapter], dtype)
        expert.set_adapters(list(want), list(want.values()))
    if loras:
        log.info("LoRAs on %s", {name: want for name, want in wanted.items() if want})
