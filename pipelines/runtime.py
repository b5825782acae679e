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
from dataclasses import dataclass, field

import torch

from .manifest import DEFAULT_ANNOTATORS, DEFAULT_MASK_TRACKER, MASK_TRACKERS

log = logging.getLogger(__name__)

MEMORY_MODES = ("auto", "full", "fp8", "group_offload", "model_offload")
ENCODER_SETTINGS = ("auto", "libx264", "nvenc")  # --encoder; pipelines/codecs.py resolves it per worker
COMPILABLE_MODES = ("full", "model_offload")  # modes whose hooks torch.compile(fullgraph=True) traces
PROMPT_EXPANDERS = ("none", "openai", "local")
MASK_TRACKING_MODES = ("track", "static")
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


@dataclass(frozen=True)
class RuntimeConfig:
    """Server-wide settings for placing models; every field has a working automatic default."""

    memory_mode: str = "auto"
    attention: str = "auto"
    compile: bool = False
    compile_devices: tuple[str, ...] = ("cuda",)
    """Device types ``compile`` takes effect on: CUDA, where it pays; the tests add ``cpu`` to compile the tiny
    models through the same path."""
    lora_max_rank: int = 64
    """With ``compile``: the rank of each expert's LoRA slot (``pipelines.lora_hotswap``), the most a job's LoRAs
    may add up to on one layer; 0: no slot, and a compiled server refuses LoRAs."""
    vae_tiling: bool | None = None  # None: on for the memory-saving modes
    annotators: tuple[tuple[str, str], ...] = tuple(DEFAULT_ANNOTATORS.items())  # task -> default annotator
    safety_threshold: float = 0.5  # a frame is flagged when the classifier's unsafe probability exceeds this
    prompt_expander: str = "none"  # none | openai (a chat endpoint) | local (a causal LM in the weights dir)
    expander_url: str | None = None  # OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1 (Ollama)
    expander_model: str | None = None  # openai: the model name to ask for; local: a folder (default: the manifest's)
    expander_api_key: str | None = field(default=None, repr=False)  # sent as a bearer token; kept out of logs
    expander_timeout_s: float = 30.0
    expander_max_tokens: int = 256  # bounds the expanded prompt (UMT5 reads at most 512 tokens of it anyway)
    encoder: str = "auto"  # auto (NVENC on the worker's GPU where its trial encode passes) | libx264 | nvenc
    mask_tracking: str = "track"  # track: SAM2 follows a mask image through the clip; static: every frame as it is
    mask_tracker: str = DEFAULT_MASK_TRACKER  # which SAM2.1 size (a MASK_TRACKERS key)
    mask_expand_ratio: float = DEFAULT_MASK_EXPAND_RATIO  # tracked masks grow by this share of their box per side
    mask_threshold: float = 0.5  # a pixel is the tracked object where SAM2's probability exceeds this

    def __post_init__(self) -> None:
        if self.memory_mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {MEMORY_MODES}, got {self.memory_mode!r}")
        if self.encoder not in ENCODER_SETTINGS:
            raise ValueError(f"encoder must be one of {ENCODER_SETTINGS}, got {self.encoder!r}")
        if not 0.0 <= self.safety_threshold <= 1.0:
            raise ValueError(f"safety_threshold must be between 0 and 1, got {self.safety_threshold}")
        if self.prompt_expander not in PROMPT_EXPANDERS:
            raise ValueError(f"prompt_expander must be one of {PROMPT_EXPANDERS}, got {self.prompt_expander!r}")
        if self.prompt_expander == "openai" and not (self.expander_url and self.expander_model):
            raise ValueError("the openai prompt expander needs an expander URL and model name")
        if self.lora_max_rank < 0:
            raise ValueError(f"lora_max_rank must be 0 or more, got {self.lora_max_rank}")
        if self.expander_timeout_s <= 0 or self.expander_max_tokens < 1:
            raise ValueError("the expander timeout and max tokens must be positive")
        if self.mask_tracking not in MASK_TRACKING_MODES:
            raise ValueError(f"mask_tracking must be one of {MASK_TRACKING_MODES}, got {self.mask_tracking!r}")
        if self.mask_tracker not in MASK_TRACKERS:
            raise ValueError(f"mask_tracker must be one of {sorted(MASK_TRACKERS)}, got {self.mask_tracker!r}")
        if not 0.0 <= self.mask_expand_ratio <= 1.0:
            raise ValueError(f"mask_expand_ratio must be between 0 and 1, got {self.mask_expand_ratio}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be between 0 and 1 (exclusive), got {self.mask_threshold}")


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
