"""How the models sit on the device: memory mode, attention backend and compilation.

The 14B transformers are ~28 GB each in bf16 (two of them for Wan2.2 A14B) next to an ~11 GB text encoder, so what
fits depends on the card. The memory modes, all built from diffusers' own mechanisms:

* ``full``: every module on the device in the compute dtype. Fastest; needs ~50 GB (14B) or ~80 GB (A14B).
* ``fp8``: transformer weights stored in float8 (e4m3) and cast to the compute dtype layer by layer
  (``enable_layerwise_casting``): half the transformer memory for a small accuracy cost.
* ``group_offload``: transformer and text encoder live in CPU memory and each layer is copied to the GPU just before
  it runs, on a side CUDA stream so copies overlap compute (``apply_group_offloading``, leaf level). Only the
  running layers (so only the active expert of a two-expert model) occupy the GPU: fits 24 GB cards.
* ``model_offload``: whole components move to the GPU when used (``enable_model_cpu_offload``): fits when the
  largest single component does, slower than full, simpler than group offload.

``auto`` picks by free device memory (CPU runs are always ``full``). VAE tiling decodes large frames in overlapping
tiles; it is switched on for the offload and fp8 modes, where memory is short and 720p decoding would peak highest.
Attention: on CUDA the fastest installed backend (FlashAttention 3, FlashAttention 2, SageAttention, else cuDNN
SDPA) through diffusers' ``set_attention_backend``; PyTorch SDPA elsewhere.

The same config carries the server-wide settings of the optional job stages: the safety checker's threshold, the
prompt expander (none, an OpenAI-compatible chat endpoint, or a local causal LM from the weights directory) and how
an inpainting mask image becomes a mask per frame (tracked by SAM2.1 or applied as it is: ``pipelines.tracking``),
and the video encoder (``pipelines/codecs.py`` resolves it per worker).

This module holds the settings and how ``auto`` resolves; it imports torch but no diffusers, because the server's
config (an API node's too) reads it. Putting a module in place is ``loading.place_module``.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal, Self, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .manifest import DEFAULT_ANNOTATORS, DEFAULT_MASK_TRACKER, MASK_TRACKERS, TASK_ANNOTATORS

log = logging.getLogger(__name__)

MemoryMode = Literal["auto", "full", "fp8", "group_offload", "model_offload"]
EncoderSetting = Literal["auto", "libx264", "nvenc"]
ENCODER_SETTINGS: tuple[str, ...] = get_args(EncoderSetting)  # pipelines/codecs.py resolves one per worker
COMPILABLE_MODES = ("full", "model_offload")  # modes whose hooks torch.compile(fullgraph=True) traces
PromptExpander = Literal["none", "openai", "local"]
MaskTrackingMode = Literal["track", "static"]
DEFAULT_MASK_EXPAND_RATIO = 0.25
"""VACE's own inpainting example (``run_vace_pipeline.sh``: ``salientmasktrack`` with ``original_expand`` 0.5) grows
each side of the mask by a random share of 0.5 of its box, 0.25 on average; we grow every side of every frame's
mask by that average."""
GIB = 1024**3
# Free device memory needed for each mode without offloading, for the largest model (A14B, two experts).
FULL_MIN_FREE = 90 * GIB  # the A14B in bf16 needs ~85 GB: an 80 GB card takes fp8
FP8_MIN_FREE = 40 * GIB
# (diffusers backend name, module that provides it), fastest first.
CUDA_ATTENTION = (("_flash_3", "flash_attn_interface"), ("flash", "flash_attn"), ("sage", "sageattention"))


class RuntimeSettings(BaseModel):
    """How the models sit on the device, and the optional job stages.

    The fields are settings of every command that loads a model: ``server.config.Settings`` inherits them, so each
    is a ``VACE_*`` variable and a flag of ``vace generate``, ``preprocess``, ``serve`` and ``worker``, whose help
    is the docstring below it (written for ``--help``: plain text)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    memory_mode: MemoryMode = "auto"
    """full | fp8 | group_offload | model_offload; auto picks by free device memory (CPU: full)."""
    attention: str = "auto"
    """The diffusers attention backend; auto picks the fastest installed (CUDA), PyTorch SDPA elsewhere."""
    compile: bool = False
    """torch.compile the repeated transformer blocks (CUDA; memory modes full and model_offload)."""
    lora_max_rank: int = Field(64, ge=0)
    """With compile: the rank of each expert's LoRA slot compiled into every job, the most a job's LoRAs may add up
    to on one layer; 0: no slot, and a compiled server refuses LoRAs."""
    vae_tiling: bool | None = None
    """Decode frames in overlapping VAE tiles; unset: on for the memory-saving modes (offload, fp8), where memory is
    short and 720p decoding would peak highest."""
    pose_annotator: str = Field(
        DEFAULT_ANNOTATORS["pose"],
        description="The pose annotator of preprocess=true when "
        f"a request names none: {' | '.join(TASK_ANNOTATORS['pose'])}.",
    )
    depth_annotator: str = Field(
        DEFAULT_ANNOTATORS["depth"],
        description="The depth annotator of preprocess=true "
        f"when a request names none: {' | '.join(TASK_ANNOTATORS['depth'])}.",
    )
    safety_threshold: float = Field(0.5, ge=0, le=1)
    """enable_safety_checker flags a job when a frame's unsafe probability exceeds this."""
    prompt_expander: PromptExpander = "none"
    """What serves enable_prompt_expansion: none, openai (an OpenAI-compatible chat endpoint) or local (the causal LM
    in the weights directory)."""
    expander_url: str | None = None
    """openai: the API base, e.g. http://127.0.0.1:11434/v1 (Ollama)."""
    expander_model: str | None = None
    """openai: the model name to ask for; local: an LM folder in the weights directory (default: the manifest's)."""
    expander_api_key: str | None = Field(None, repr=False)
    """openai: the endpoint's API key, sent as a bearer token and kept out of logs."""
    expander_timeout_s: float = Field(30.0, gt=0)
    """Seconds to wait for the expander before keeping the prompt as written."""
    expander_max_tokens: int = Field(256, ge=1)
    """Bounds the expanded prompt (UMT5 reads at most 512 tokens of it anyway)."""
    encoder: EncoderSetting = "auto"
    """The H.264 encoder of every worker's outputs: auto (NVENC on the worker's own GPU where a trial encode
    passes, else libx264), libx264, or nvenc (a worker where NVENC cannot run refuses to start)."""
    mask_tracking: MaskTrackingMode = "track"
    """How an inpainting mask image becomes a mask per frame: track follows it through the clip with SAM2.1
    (mask-tracker), static applies it to every frame as it is."""
    mask_tracker: str = Field(
        DEFAULT_MASK_TRACKER, description=f"The SAM2.1 size that tracks masks: {' | '.join(MASK_TRACKERS)}."
    )
    mask_expand_ratio: float = Field(DEFAULT_MASK_EXPAND_RATIO, ge=0, le=1)
    """Tracked masks grow on each side by this share of their box (VACE's original_expand); 0 keeps them."""
    mask_threshold: float = Field(0.5, gt=0, lt=1)
    """A pixel belongs to the tracked object where SAM2's probability is above this."""

    @field_validator("mask_tracker")
    @classmethod
    def _known_tracker(cls, name: str) -> str:
        if name not in MASK_TRACKERS:
            raise ValueError(f"{name!r} is no mask tracker; known: {', '.join(MASK_TRACKERS)}")
        return name

    @field_validator("pose_annotator", "depth_annotator")
    @classmethod
    def _known_annotator(cls, name: str, info: ValidationInfo) -> str:
        task = (info.field_name or "").removesuffix("_annotator")
        if name not in TASK_ANNOTATORS[task]:
            raise ValueError(f"{name!r} is no {task} annotator; known: {', '.join(TASK_ANNOTATORS[task])}")
        return name

    @model_validator(mode="after")
    def _expander_reachable(self) -> Self:
        """An openai expander without its endpoint is refused at start, not at a job's first expansion."""
        if self.prompt_expander == "openai" and not (self.expander_url and self.expander_model):
            raise ValueError("the openai prompt expander needs an expander URL and model name")
        return self

    @property
    def annotators(self) -> dict[str, str]:
        """Task -> the annotator a ``preprocess=true`` job of that task runs when its request names none."""
        return {"pose": self.pose_annotator, "depth": self.depth_annotator}


class RuntimeConfig(RuntimeSettings):
    """What a model manager is built with: the settings, and what only tests set."""

    compile_devices: tuple[str, ...] = ("cuda",)
    """Device types ``compile`` takes effect on: CUDA, where it pays; the tests add ``cpu`` to compile the tiny
    models through the same path."""


def resolve_memory_mode(requested: str, device: torch.device) -> str:
    """The concrete memory mode for ``device``: ``auto`` looks at the free memory."""
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "full"
    free, _total = torch.cuda.mem_get_info(device)
    mode = "full" if free >= FULL_MIN_FREE else "fp8" if free >= FP8_MIN_FREE else "group_offload"
    log.info("memory mode auto: %.1f GiB free on %s -> %s", free / GIB, device, mode)
    return mode


def resolve_attention(requested: str, device: torch.device, *, context_parallel: bool = False) -> str:
    """The attention backend name for diffusers: the fastest installed one on CUDA, PyTorch SDPA elsewhere.

    Under context parallelism only backends diffusers can split over devices qualify (FlashAttention 3's local
    build cannot, as of diffusers 0.42)."""
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "native"
    for name, module in CUDA_ATTENTION:
        if context_parallel and name == "_flash_3":
            continue
        if importlib.util.find_spec(module) is not None:
            return name
    return "_native_cudnn"
