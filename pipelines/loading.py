"""Loading generation models from the weights directory, with one shared text encoder and VAE.

Every model folder is a complete diffusers ``WanVACEPipeline`` folder, but the 11 GB UMT5-XXL text encoder and the
VAE are the same for every Wan VACE model, so the folders link them to one place and this manager loads each
distinct component once (keyed by its resolved path) and builds pipelines around the shared modules. Models are
loaded on first use and the least recently used transformer is dropped when more than ``max_models`` are resident.
The helpers of optional job stages (annotators, interpolators, the mask tracker, the safety checker, the prompt
expander) are loaded on first use too and kept.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import diffusers
import torch
import transformers
from diffusers import AutoencoderKLWan, ModelMixin, WanVACEPipeline, WanVACETransformer3DModel
from diffusers.hooks import apply_group_offloading
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import AutoTokenizer, UMT5EncoderModel

from preprocessors.base import Preprocessor
from preprocessors.mask_tracking import Sam2Tracker

from .annotators import make_preprocessor
from .codecs import Codecs, choose_codecs
from .errors import InputError
from .interpolation import FrameInterpolator, InterpolatorKind, load_interpolator
from .lora_hotswap import LoraSlots, add_slot
from .loras import JobLora, apply_loras
from .manifest import AUXILIARY, MASK_TRACKERS, MODELS, PROMPT_EXPANDER, SAFETY_CHECKER
from .parallel import GroupMember, enable_context_parallel
from .prompt_expansion import LocalExpander, OpenAIExpander, PromptExpander
from .resume import weights_digest
from .runtime import COMPILABLE_MODES, RuntimeConfig, resolve_attention, resolve_memory_mode
from .safety import SafetyChecker
from .samplers import make_scheduler
from .tracking import MaskTracking, load_tracker

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (what the Wan models are trained and served in), fp32 on CPU where bf16 is slow."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


M = TypeVar("M", bound=torch.nn.Module)


def place_module(module: M, mode: str, device: torch.device, compute_dtype: torch.dtype, *, fp8: bool) -> M:
    """Put one large module (a transformer or the text encoder) on ``device`` the way ``mode`` says.

    ``fp8`` marks modules that support float8 storage (diffusers models); others stay in the compute dtype.
    ``model_offload`` leaves the module on the CPU: the pipeline's offload hooks move it when used.
    """
    if mode == "fp8" and fp8:
        assert isinstance(module, ModelMixin)  # layerwise casting is the diffusers models' own
        module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
        return module.to(device)
    if mode == "group_offload":
        # low_cpu_mem_usage pins each layer when it is copied instead of keeping a pinned copy of every weight
        # beside the original: the A14B would otherwise need ~160 GB of host memory.
        apply_group_offloading(
            module,
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="leaf_level",
            use_stream=device.type == "cuda",
            low_cpu_mem_usage=True,
        )
        return module
    if mode == "model_offload":
        return module
    return module.to(device)


@dataclass
class LoadedModel:
    """The modules of one model, wrapped once in a pipeline that jobs reuse with their own scheduler."""

    key: str
    pipe: WanVACEPipeline
    dtype: torch.dtype
    """The compute dtype (LoRA factors are kept in it)."""
    slots: LoraSlots | None = None
    """The experts' LoRA slots when they are compiled: LoRAs are then hot-swapped into them."""
    version: str = ""
    """The digest of the model's files (``pipelines.resume.weights_digest``): what its jobs' checkpoints are for."""
    spoiled: bool = False
    """Set when putting a job's LoRAs on failed past their checks: the manager then loads the model anew."""

    @property
    def transformer(self) -> WanVACETransformer3DModel:
        return self.pipe.transformer

    @property
    def transformer_2(self) -> WanVACETransformer3DModel | None:
        return self.pipe.transformer_2

    def pipeline(self, scheduler: SchedulerMixin, loras: Sequence[JobLora] = ()) -> WanVACEPipeline:
        """The pipeline with a job's scheduler and exactly the job's LoRAs (none: the plain model, whatever the
        previous job loaded). Jobs on one device run one at a time, so sharing it is safe.

        A refused LoRA (an ``InputError``) is refused before anything on the device changes. Any other failure
        happens halfway through changing the experts (peft wrapping layers, copying factors, running out of
        memory), after which nothing says the base weights are what was loaded from disk: the model is marked
        spoiled, and :meth:`ModelManager.get` loads it anew for the next job rather than trusting an undo."""
        self.pipe.scheduler = scheduler
        try:
            if self.slots is not None:
                self.slots.fill(self.pipe, loras)
            else:
                apply_loras(self.pipe, loras, self.dtype)
        except InputError:
            raise
        except Exception:
            self.spoiled = True
            raise
        return self.pipe


class ModelManager:
    """Loads models from ``weights_dir`` on demand and shares the components they have in common."""

    def __init__(
        self,
        weights_dir: Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_models: int = 2,
        runtime: RuntimeConfig | None = None,
        group: GroupMember | None = None,
    ) -> None:
        """``group``: this process's place in a job group (``pipelines.group``); its transformers are then sharded
        over the group's sequence ranks."""
        self.weights_dir = Path(weights_dir)
        # Jobs report progress through their own hooks; the libraries' per-file bars would only clutter logs.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.runtime = runtime or RuntimeConfig()
        # First, so that a worker that cannot have the encoder it was told to use refuses before loading anything.
        # Ranks past 0 of a job group neither decode nor encode: they try nothing.
        follower = "rank 0 of the job group decodes and encodes"
        self.codecs = (
            choose_codecs(self.runtime.encoder, self.device)
            if group is None or group.rank == 0
            else Codecs(encoder_reason=follower, decoder_reason=follower)
        )
        self.memory_mode = resolve_memory_mode(self.runtime.memory_mode, self.device)
        self.group = group
        self.attention = resolve_attention(
            self.runtime.attention, self.device, context_parallel=group is not None and group.spec.context > 1
        )
        # Offload hooks of one pipeline cover the shared modules: with model offload only one pipeline may live.
        self.max_models = 1 if self.memory_mode == "model_offload" else max_models
        if self.runtime.compile and self.memory_mode not in COMPILABLE_MODES:
            log.warning(
                "--compile is off in memory mode %s: dynamo cannot trace its hooks with fullgraph=True "
                "(compile works in %s)",
                self.memory_mode,
                " and ".join(COMPILABLE_MODES),
            )
        self._components: dict[tuple[str, Path], object] = {}
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._interpolators: dict[str, FrameInterpolator] = {}
        self._preprocessors: dict[tuple[str, str], Preprocessor] = {}
        self._safety_checker: SafetyChecker | None = None
        self._mask_tracker: Sam2Tracker | None = None
        self._prompt_expander: PromptExpander | None = None
        self._lock = threading.Lock()

    def describe(self) -> dict[str, object]:
        """What ``/ready`` and the logs report about the runtime."""
        expander = self._prompt_expander
        stages = {
            "safety_checker": self._safety_checker is not None,
            "prompt_expander": isinstance(expander, LocalExpander) and expander.loaded,  # a remote one has no load
            "mask_tracker": self._mask_tracker is not None,
        }
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "memory_mode": self.memory_mode,
            "attention_backend": self.attention,
            "compile": self.compiles,
            "lora_slot_rank": self.lora_slot_rank,
            **self.codecs.describe(),
            "loaded_models": list(self._models),
            "loaded_stages": [name for name, loaded in stages.items() if loaded],
        }

    @property
    def compiles(self) -> bool:
        """Whether transformers are compiled: ``--compile`` takes effect on CUDA only (unless a test says so) and in
        the memory modes whose hooks dynamo traces; fp8's layerwise casting and group offload's onload hooks make
        the first compiled job fail (checked on CPU), so there the server runs uncompiled instead of failing."""
        return (
            self.runtime.compile
            and self.device.type in self.runtime.compile_devices
            and self.memory_mode in COMPILABLE_MODES
        )

    @property
    def lora_slot_rank(self) -> int:
        """The rank of the LoRA slots compiled transformers carry; 0 when there are none (no LoRAs then)."""
        return self.runtime.lora_max_rank if self.compiles else 0

    def model_dir(self, key: str) -> Path:
        return MODELS[key].path(self.weights_dir)

    def is_present(self, key: str) -> bool:
        """Whether the model's folder has a pipeline index (a full check is ``vace weights check``)."""
        return (self.model_dir(key) / "model_index.json").is_file()

    def loaded(self) -> list[str]:
        return list(self._models)

    def _shared(self, kind: str, path: Path) -> object:
        """Load a component once per distinct folder (symlinked folders resolve to the same key)."""
        cache_key = (kind, path.resolve())
        if cache_key not in self._components:
            log.info("loading %s from %s", kind, path.resolve())
            if kind == "tokenizer":
                module: object = AutoTokenizer.from_pretrained(path)
            elif kind == "text_encoder":
                encoder = UMT5EncoderModel.from_pretrained(path, torch_dtype=self.dtype).eval()
                module = place_module(encoder, self.memory_mode, self.device, self.dtype, fp8=False)
            else:  # the Wan VAE runs in fp32: its decoder is sensitive to reduced precision
                vae = AutoencoderKLWan.from_pretrained(path, torch_dtype=torch.float32).eval()
                tiling = self.runtime.vae_tiling
                if tiling or (tiling is None and self.memory_mode != "full"):
                    vae.enable_tiling()
                module = vae if self.memory_mode == "model_offload" else vae.to(self.device)
            self._components[cache_key] = module
        return self._components[cache_key]

    def _transformer(self, path: Path) -> WanVACETransformer3DModel:
        log.info("loading transformer from %s (%s, attention %s)", path, self.memory_mode, self.attention)
        model = WanVACETransformer3DModel.from_pretrained(path, torch_dtype=self.dtype).eval()
        if self.attention != "native":
            model.set_attention_backend(self.attention)
        model = place_module(model, self.memory_mode, self.device, self.dtype, fp8=True)
        if self.group is not None:
            enable_context_parallel(model, self.group)
        if self.compiles:
            if self.lora_slot_rank:  # before compiling: the compiled blocks then include the (zero) LoRA slot
                add_slot(model, self.lora_slot_rank, self.dtype)
            model.compile_repeated_blocks(fullgraph=True)  # once per loaded model, i.e. once per process
        return model

    def interpolator(self, kind: InterpolatorKind) -> FrameInterpolator:
        """The RIFE or FILM interpolator, loaded once from ``weights_dir/interpolation``."""
        with self._lock:
            if kind not in self._interpolators:
                log.info("loading %s interpolator", kind)
                self._interpolators[kind] = load_interpolator(kind, self.weights_dir, self.device)
            return self._interpolators[kind]

    def preprocessor(self, task: str, annotator: str | None = None) -> Preprocessor:
        """The control-video maker of ``task`` with ``annotator`` (default: the runtime's), loaded once."""
        name = annotator or dict(self.runtime.annotators)[task]
        with self._lock:
            if (task, name) not in self._preprocessors:
                log.info("loading %s annotator %s", task, name)
                self._preprocessors[(task, name)] = make_preprocessor(task, name, self.weights_dir, self.device)
            return self._preprocessors[(task, name)]

    def safety_folder(self) -> Path:
        return AUXILIARY[SAFETY_CHECKER].path(self.weights_dir)

    def has_safety_checker(self) -> bool:
        """Whether the safety classifier's weights are installed (a cheap look, without loading it)."""
        return (self.safety_folder() / "config.json").is_file()

    def safety_checker(self) -> SafetyChecker:
        """The safety classifier, loaded once; FileNotFoundError when its weights are not installed."""
        with self._lock:
            if self._safety_checker is None:
                log.info("loading safety checker from %s", self.safety_folder())
                self._safety_checker = SafetyChecker.load(
                    self.safety_folder(), self.device, self.runtime.safety_threshold
                )
            return self._safety_checker

    def missing_mask_tracker(self) -> str | None:
        """The key of the mask tracker this server tracks mask images with when its weights are not installed (a
        cheap look, without loading it); None when they are, or when mask images are not tracked."""
        rt = self.runtime
        installed = (MASK_TRACKERS[rt.mask_tracker].path(self.weights_dir) / "config.json").is_file()
        return rt.mask_tracker if rt.mask_tracking == "track" and not installed else None

    def mask_tracking(self) -> MaskTracking | None:
        """How a job tracks a mask image through its clip; None when this server applies it to every frame as it
        is (``--mask-tracking static``). The tracker itself loads on a job's first use."""
        rt = self.runtime
        if rt.mask_tracking != "track":
            return None
        return MaskTracking(rt.mask_tracker, self.mask_tracker, rt.mask_expand_ratio, rt.mask_threshold)

    def mask_tracker(self) -> Sam2Tracker:
        """The SAM2.1 mask tracker, loaded once. In the offload memory modes it waits in host memory and takes the
        device only while it tracks (before denoising), leaving the device's memory to the video model."""
        with self._lock:
            if self._mask_tracker is None:
                key = self.runtime.mask_tracker
                log.info("loading mask tracker %s", key)
                offload = self.memory_mode in ("group_offload", "model_offload")
                self._mask_tracker = load_tracker(key, self.weights_dir, self.device, offload=offload)
            return self._mask_tracker

    def expander_folder(self) -> Path:
        """The local expansion LM: ``expander_model`` when set (absolute, or relative to the weights directory),
        else the manifest's folder."""
        return self.weights_dir / (self.runtime.expander_model or AUXILIARY[PROMPT_EXPANDER].folder)

    def prompt_expander(self) -> PromptExpander | None:
        """The configured prompt expander, made once (a local LM loads on its first use); None when there is none."""
        with self._lock:
            if self._prompt_expander is None:
                self._prompt_expander = self._make_expander()
            return self._prompt_expander

    def _make_expander(self) -> PromptExpander | None:
        """A local LM shares the device only in the memory modes that keep everything resident; where VRAM is short
        (the offload modes) it runs on the CPU rather than take room from the video model."""
        rt = self.runtime
        if rt.prompt_expander == "openai":
            assert rt.expander_url and rt.expander_model  # RuntimeConfig checks this
            return OpenAIExpander(
                rt.expander_url, rt.expander_model, rt.expander_api_key, rt.expander_timeout_s, rt.expander_max_tokens
            )
        if rt.prompt_expander == "local":
            device = self.device if self.memory_mode in ("full", "fp8") else torch.device("cpu")
            return LocalExpander(self.expander_folder(), device, default_dtype(device), rt.expander_max_tokens)
        return None

    def describe_stages(self) -> dict[str, dict[str, object]]:
        """What ``/ready`` reports about the safety checker, prompt expansion and mask tracking: configured, weights
        present (which devices loaded them is in ``describe``); never the API key."""
        rt = self.runtime
        expansion: dict[str, object] = {"backend": rt.prompt_expander, "configured": rt.prompt_expander != "none"}
        if rt.prompt_expander == "openai":
            expansion |= {"url": rt.expander_url, "model": rt.expander_model}
        elif rt.prompt_expander == "local":
            expansion |= {
                "model": str(self.expander_folder()),
                "weights_present": (self.expander_folder() / "config.json").is_file(),
            }
        safety: dict[str, object] = {"weights_present": self.has_safety_checker(), "threshold": rt.safety_threshold}
        tracking: dict[str, object] = {"mode": rt.mask_tracking}
        if rt.mask_tracking == "track":
            tracking |= {
                "tracker": rt.mask_tracker,
                "weights_present": self.missing_mask_tracker() is None,
                "expand_ratio": rt.mask_expand_ratio,
                "threshold": rt.mask_threshold,
            }
        return {"safety_checker": safety, "prompt_expansion": expansion, "mask_tracking": tracking}

    def _drop(self, key: str) -> None:
        del self._models[key]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def get(self, key: str) -> LoadedModel:
        """The loaded model ``key``, loading it (and evicting the least recently used) if needed; a spoiled one
        (``LoadedModel.pipeline``) is dropped and loaded anew."""
        with self._lock:
            if key in self._models and self._models[key].spoiled:
                log.warning("loading %s anew: putting LoRAs on it failed halfway, so its weights are not trusted", key)
                self._drop(key)
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            folder = self.model_dir(key)
            index_path = folder / "model_index.json"
            if not index_path.is_file():
                raise FileNotFoundError(
                    f"weights for {key} are missing: no {index_path} (run `vace weights download --models {key}`)"
                )
            index = json.loads(index_path.read_text())
            has_second = bool(index.get("transformer_2") and index["transformer_2"][0] is not None)
            while len(self._models) >= self.max_models:
                evicted = next(iter(self._models))
                log.info("evicting %s", evicted)
                self._drop(evicted)
            pipe = WanVACEPipeline(
                tokenizer=self._shared("tokenizer", folder / "tokenizer"),
                text_encoder=self._shared("text_encoder", folder / "text_encoder"),
                vae=self._shared("vae", folder / "vae"),
                scheduler=make_scheduler("unipc", 5.0),  # replaced by each job's own
                transformer=self._transformer(folder / "transformer"),
                transformer_2=self._transformer(folder / "transformer_2") if has_second else None,
                boundary_ratio=index.get("boundary_ratio"),
            )
            pipe.set_progress_bar_config(disable=True)
            if self.memory_mode == "model_offload":
                pipe.enable_model_cpu_offload(device=self.device)
            slots = LoraSlots(self.lora_slot_rank) if self.lora_slot_rank else None
            model = LoadedModel(key=key, pipe=pipe, dtype=self.dtype, slots=slots, version=weights_digest(folder))
            self._models[key] = model
            return model
