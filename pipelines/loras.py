"""LoRAs per request: checked up front, fetched once, and put on the experts for exactly the job that asked.

A request names LoRAs as fal's Wan 2.2 LoRA endpoints do (``{path, scale, transformer: high|low|both}``). Three
steps, in the order a job takes them:

* :func:`check_loras` (part of ``generate.check_inputs``, so the server refuses at submission): the count limit, the
  expert being one the model has, and a named LoRA existing in the weights directory's ``loras/`` folder.
* :func:`fetch_loras`: each file made local: URLs and data URIs through the vetted fetch (with the LoRA size limit)
  and the download cache (``pipelines.lora_cache``), uploads and names read in place; each identified by its sha256.
* :func:`apply_loras` (called by ``LoadedModel.pipeline``, so every job goes through it): the pipeline's experts are
  made to carry exactly the job's adapters. Adapters the previous job used stay loaded when this job uses them too
  (only their scales change); the others are deleted, and an expert that needs none is restored to its original
  modules, so a job without LoRAs computes exactly what a never-touched model computes. Compiled transformers
  (``--compile``) take LoRAs another way, without recompiling: ``pipelines.lora_hotswap``.

Only safetensors content is read (a pickle is never unpickled), and every file is checked against the expert it goes
into before anything on the device changes: keys must name linear layers of the Wan transformer with matching shapes.
diffusers would skip unmatched keys with a warning and fail on wrong shapes halfway through loading; a caller gets
a 422 naming the LoRA instead. The original Wan, ComfyUI and musubi-tuner key layouts are converted by diffusers'
``WanLoraLoaderMixin.lora_state_dict`` before the check.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.hooks import CpuOffload
from diffusers import WanVACEPipeline, WanVACETransformer3DModel
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError, safe_open

from .context import JobContext
from .errors import InputError
from .fetch import fetch_to_file, own_file
from .lora_cache import sha256_file
from .manifest import LORAS_FOLDER, MODELS
from .schema import LoraWeight, VaceInput

log = logging.getLogger(__name__)

LOAD_ERROR = "lora_load_error"
SUFFIX = ".safetensors"
# A LoRA name: folders and a file name under loras/, none starting with a dot (so no "..", no hidden files).
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*")
EXPERTS = {"high": ("transformer",), "low": ("transformer_2",), "both": ("transformer", "transformer_2")}
LORA_KEY = re.compile(r"transformer\.(?P<module>.+)\.lora_(?P<part>A\.weight|B\.weight|B\.bias)")


def lora_folder(weights_dir: Path) -> Path:
    return Path(weights_dir, LORAS_FOLDER)


def installed_loras(weights_dir: Path) -> dict[str, Path]:
    """Every LoRA in the weights directory's ``loras/`` folder by the name requests use (its path there without
    ``.safetensors``); hidden folders (the hub's download cache) are skipped."""
    folder = lora_folder(weights_dir)
    found = {}
    for path in sorted(folder.rglob(f"*{SUFFIX}")):
        name = path.relative_to(folder).as_posix().removesuffix(SUFFIX)
        if NAME.fullmatch(name) and path.is_file():
            found[name] = path
    return found


def find_named(weights_dir: Path, name: str) -> Path | None:
    """The file of the installed LoRA ``name`` (with or without ``.safetensors``), or None."""
    if not NAME.fullmatch(name):
        return None
    path = lora_folder(weights_dir) / (name if name.endswith(SUFFIX) else name + SUFFIX)
    return path if path.is_file() else None


def _local_path(lora: LoraWeight, ctx: JobContext) -> Path | None:
    """A CLI caller's local file (``--lora ./style.safetensors``); servers take names and URLs only."""
    if not ctx.local_paths or lora.is_ref:
        return None
    path = Path(lora.path).expanduser()
    return path if path.is_file() else None


def check_loras(inp: VaceInput, model: str, ctx: JobContext, weights_dir: Path | None) -> None:
    """The up-front checks of a request's LoRAs (their URL schemes are checked with the other media refs); without
    a ``weights_dir`` (a node without workers) installed names are left to the worker."""
    loras = inp.loras or []
    if len(loras) > ctx.limits.max_loras:
        raise InputError("loras", f"{len(loras)} LoRAs, over the limit of {ctx.limits.max_loras}", "too_many_loras")
    two_experts = MODELS[model].two_experts
    for i, lora in enumerate(loras):
        if lora.transformer == "low" and not two_experts:
            raise InputError(("loras", i, "transformer"), f"{model} has one transformer: use both or high, low is "
                             "only for the low-noise expert of wan-22-vace-fun-a14b", "not_supported")
        if lora.is_ref or _local_path(lora, ctx) is not None or weights_dir is None:
            continue
        if find_named(weights_dir, lora.path) is None:
            where = "a local file, " if ctx.local_paths else ""
            raise InputError(("loras", i, "path"), f"{lora.path!r} is not {where}an http(s) URL, a data URI or the "
                             f"name of an installed LoRA (GET /loras lists them)", "lora_not_found")


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
        """The adapter name on the device: the same bytes are one adapter, whatever URL or name brought them."""
        return f"lora_{self.sha256[:20]}"


def fetch_loras(inp: VaceInput, model: str, workdir: Path, ctx: JobContext, weights_dir: Path) -> list[JobLora]:
    """The request's LoRA files, local and identified by content (downloads through the cache when there is one)."""
    two_experts = MODELS[model].two_experts
    loras = []
    for i, lora in enumerate(inp.loras or []):
        path, digest = _fetch_one(lora, ("loras", i, "path"), workdir, ctx, weights_dir)
        experts = EXPERTS[lora.transformer] if two_experts else ("transformer",)
        loras.append(JobLora(i, path, digest, lora.scale, experts))
    return loras


def _fetch_one(lora: LoraWeight, field: tuple[str, int, str], workdir: Path, ctx: JobContext,
               weights_dir: Path) -> tuple[Path, str]:
    """The local file and sha256 of one LoRA: downloads through the cache when there is one."""
    limit = ctx.limits.max_lora_bytes
    if lora.is_ref:
        cache = ctx.lora_cache
        own = own_file(lora.path, field, workdir, ctx, limit)  # our own uploads: read from the file store
        if own is not None or cache is None or not lora.path.lower().startswith(("http://", "https://")):
            path = own or fetch_to_file(lora.path, field, workdir, ctx, max_bytes=limit)  # data URIs and the like
            return path, sha256_file(path)
        cached = cache.lookup(lora.path)
        if cached is None:
            cached = cache.add(lora.path, fetch_to_file(lora.path, field, workdir, ctx, max_bytes=limit))
        return cache.link(cached, workdir), cached.sha256
    path = _local_path(lora, ctx) or find_named(weights_dir, lora.path)  # the operator's files: no size limit
    if path is None:  # checked before; the file went away since
        raise InputError(field, f"no LoRA named {lora.path!r}", "lora_not_found")
    return path, sha256_file(path)


def read_lora(pipe: WanVACEPipeline, lora: JobLora, expert: WanVACETransformer3DModel
              ) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The LoRA's state dict in diffusers' layout (and its adapter metadata), checked against ``expert``."""
    try:
        with safe_open(lora.path, framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(lora.field, f"not a .safetensors file ({str(exc)[:80]}); LoRAs are only read from "
                         "safetensors, never unpickled: convert a .pt/.ckpt file first", LOAD_ERROR) from None
    try:
        state_dict, metadata = pipe.lora_state_dict(str(lora.path), use_safetensors=True, return_lora_metadata=True)
    except Exception as exc:  # diffusers' key converters raise anything from KeyError to ValueError on odd layouts
        raise InputError(lora.field, f"not a Wan LoRA diffusers can read ({type(exc).__name__}: "
                         f"{str(exc)[:160]})", LOAD_ERROR) from None
    check_fits(state_dict, expert, lora.field)
    return state_dict, metadata


def check_fits(state_dict: dict[str, torch.Tensor], expert: WanVACETransformer3DModel,
               field: tuple[str, int, str]) -> None:
    """Refuse a LoRA whose keys do not all name linear layers of ``expert`` with the shapes it has: a LoRA for
    another model (another base, another size) would otherwise half load or load nothing."""
    modules = linear_layers(expert)
    ranks: dict[str, int] = {}
    factors: dict[str, set[str]] = {}
    for key, tensor in state_dict.items():
        match = LORA_KEY.fullmatch(key)
        if match is None:
            raise InputError(field, f"key {key!r} is not a LoRA weight of a Wan transformer: a LoRA for another "
                             "architecture?", LOAD_ERROR)
        name, part = match["module"], match["part"]
        factors.setdefault(name, set()).add(part)
        layer = modules.get(name)
        if layer is None:
            raise InputError(field, f"the LoRA adapts {name!r}, which is not a linear layer of the Wan VACE "
                             "transformer: a LoRA for another architecture?", LOAD_ERROR)
        if part == "A.weight":
            ok, rank = tensor.ndim == 2 and tensor.shape[1] == layer.in_features, tensor.shape[0]
        elif part == "B.weight":
            ok, rank = tensor.ndim == 2 and tensor.shape[0] == layer.out_features, tensor.shape[-1]
        else:
            ok, rank = tensor.shape == (layer.out_features,), ranks.get(name)
        if rank is not None and ranks.setdefault(name, rank) != rank:
            ok = False
        if not ok:
            raise InputError(field, f"shape {tuple(tensor.shape)} of {key!r} does not fit the layer "
                             f"({layer.in_features} -> {layer.out_features}): a LoRA for another model size?",
                             LOAD_ERROR)
    if not ranks:
        raise InputError(field, "the file holds no LoRA weights for a Wan transformer", LOAD_ERROR)
    for name, parts in factors.items():
        if ("A.weight" in parts) != ("B.weight" in parts):
            raise InputError(field, f"the LoRA has only one of the two factors (lora_A, lora_B) of {name!r}",
                             LOAD_ERROR)


def linear_layers(expert: WanVACETransformer3DModel) -> dict[str, torch.nn.Linear]:
    """The layers a LoRA may adapt: every linear layer of the transformer by name, an adapted one (a peft
    ``LoraLayer``, from an earlier job or a compiled server's slot) as its base layer; the LoRA factors inside an
    adapted layer are linear layers too, but not ones a LoRA may name."""
    layers: dict[str, torch.nn.Linear] = {}
    adapted: tuple[str, ...] = ()
    for name, module in expert.named_modules():
        if name.startswith(adapted):  # named_modules goes depth first: an adapted layer's parts come right after it
            continue
        if isinstance(module, LoraLayer):
            layers[name], adapted = module.get_base_layer(), (f"{name}.",)
        elif isinstance(module, torch.nn.Linear):
            layers[name] = module
    return layers


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


def _load_adapter(pipe: WanVACEPipeline, expert: WanVACETransformer3DModel, adapter: str,
                  state_dict: dict[str, torch.Tensor], metadata: dict | None, dtype: torch.dtype) -> None:
    """Load one adapter with diffusers into ``expert``, in the memory mode the model runs in.

    diffusers takes model offload's hooks off the pipeline for the load and puts them back with
    ``enable_model_cpu_offload()`` on the default device (cuda:0, whichever GPU this worker has; on a CPU-only
    machine it raises), so under model offload the pipeline is not handed over: the hook moves the whole expert,
    adapters included, at each forward anyway. Group offload's hooks it re-applies to cover the new layers, which
    needs the pipeline. The factors are kept in the compute dtype (:func:`cast_factors`).
    """
    model_offload = isinstance(getattr(expert, "_hf_hook", None), CpuOffload)
    pipe.load_lora_into_transformer(dict(state_dict), transformer=expert, adapter_name=adapter, metadata=metadata,
                                    _pipeline=None if model_offload else pipe)
    cast_factors(expert, adapter, dtype)


def apply_loras(pipe: WanVACEPipeline, loras: Sequence[JobLora], dtype: torch.dtype) -> None:
    """Make the pipeline's experts carry exactly ``loras`` at their scales (one file named twice adds its scales),
    the LoRA factors in ``dtype``, the compute dtype.

    Every file that has to be loaded is read and checked before anything changes; should loading still fail, every
    LoRA is unloaded so the next job starts from the plain model.
    """
    experts = pipeline_experts(pipe)
    wanted: dict[str, dict[str, float]] = {name: {} for name in experts}
    for lora in loras:
        for name in lora.experts:
            wanted[name][lora.adapter] = wanted[name].get(lora.adapter, 0.0) + lora.scale
    files: dict[str, tuple[dict[str, torch.Tensor], dict | None]] = {}
    for lora in loras:
        needed_by = [name for name in lora.experts if lora.adapter not in _adapters(experts[name])]
        if needed_by and lora.adapter not in files:
            files[lora.adapter] = read_lora(pipe, lora, experts[needed_by[0]])
    try:
        for name, expert in experts.items():
            want, loaded = wanted[name], _adapters(expert)
            if not want:
                if loaded:
                    expert.unload_lora()  # back to the original modules: bit for bit the model without LoRAs
                continue
            if loaded - want.keys():
                expert.delete_adapters(sorted(loaded - want.keys()))
            for adapter in sorted(want.keys() - loaded):
                _load_adapter(pipe, expert, adapter, *files[adapter], dtype)
            expert.set_adapters(list(want), list(want.values()))
    except Exception:
        pipe.unload_lora_weights()
        raise
    if loras:
        log.info("LoRAs on %s", {name: want for name, want in wanted.items() if want})
