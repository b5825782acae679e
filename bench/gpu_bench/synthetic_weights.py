"""Random weights for both benchmarked models, at real size on a GPU or tiny on CPU, in the layout of
``weights/LAYOUT.md``.

No model hub is reachable where the benchmark runs, so the models are the real architectures with random weights,
built by the tiny builders of ``weights/tiny/wan.py`` at the size given here: one definition of each architecture,
the real numbers (``REAL``) kept beside the bench that alone needs them. They are saved with ``save_pretrained`` so
that the server's own ``ModelManager`` loads them exactly as it loads downloaded weights."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import WanVACEPipeline

from pipelines.manifest import MODELS, SHARED_FOLDER
from pipelines.samplers import make_scheduler
from weights.shared_links import link_shared
from weights.tiny import wan as tiny

from .plan import MODEL_KEYS, SHIFT

MARKER_FILE = ".bench-gpu.json"
WEIGHTS_FORMAT = 1

# Wan2.1 VACE 14B's transformer (also each expert of Wan2.2 VACE-Fun A14B): 17.3 B parameters; UMT5-XXL's encoder:
# 5.7 B (the stand-in tokenizer's ids all fall inside its vocabulary); the Wan VAE.
REAL = tiny.WanSize(
    vocab_size=256384,
    text_dim=4096,
    text_kv=64,
    text_ff=10240,
    text_layers=24,
    text_heads=64,
    text_buckets=32,
    text_max_distance=128,
    heads=40,
    head_dim=128,
    ffn_dim=13824,
    layers=40,
    vace_layers=(0, 5, 10, 15, 20, 25, 30, 35),
    vae_base_dim=96,
    vae_dim_mult=(1, 2, 4, 4),
    vae_res_blocks=2,
)


@dataclass(frozen=True)
class Architecture:
    """A size of the models and the dtype their transformer and text encoder are saved in (the VAE is always fp32,
    as the server and diffusers' recipe run it)."""

    name: str
    size: tiny.WanSize
    dtype: torch.dtype


ARCHITECTURES = {
    "real": Architecture("real", REAL, torch.bfloat16),
    "tiny": Architecture("tiny", tiny.TINY, torch.float32),
}


@contextlib.contextmanager
def building(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype`` (a 17 B model initialises in seconds on a GPU)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def weight_bytes(arch: Architecture) -> dict[str, int]:
    """Bytes each saved component takes, counted on the meta device (nothing is allocated)."""
    item = torch.tensor([], dtype=arch.dtype).element_size()
    with building("meta", torch.float32):
        sizes = {
            "transformer": _numel(tiny.build_transformer(arch.size)) * item,
            "text_encoder": _numel(tiny.build_text_encoder(len(tiny.build_tokenizer()), arch.size)) * item,
            "vae": _numel(tiny.build_vae(arch.size)) * 4,
        }
    return sizes


def write_weights(root: Path, arch: Architecture, device: torch.device, seed: int) -> None:
    """Random weights for both models in the layout of ``weights/LAYOUT.md``; the A14B's experts link to the 14B's
    transformer folder and every model folder links the shared text encoder, tokenizer and VAE."""
    shared = root / SHARED_FOLDER
    torch.manual_seed(seed)
    tokenizer = tiny.build_tokenizer()  # the UMT5 tokenizer cannot be fetched offline; prompts pad to 512 anyway
    tokenizer.save_pretrained(shared / "tokenizer")
    with building(device, arch.dtype):
        text_encoder = tiny.build_text_encoder(len(tokenizer), arch.size)
    text_encoder.save_pretrained(shared / "text_encoder")
    with building(device, torch.float32):
        vae = tiny.build_vae(arch.size)
    vae.save_pretrained(shared / "vae")
    with building(device, arch.dtype):
        transformer = tiny.build_transformer(arch.size)
    owner = MODELS[MODEL_KEYS[0]].folder
    for key in MODEL_KEYS:
        entry = MODELS[key]
        folder = root / entry.folder
        folder.mkdir(parents=True, exist_ok=True)
        pipe = WanVACEPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            scheduler=make_scheduler("unipc", SHIFT),
            transformer=transformer,
            transformer_2=transformer if entry.two_experts else None,
            boundary_ratio=entry.boundary_ratio,
        )
        pipe.save_config(folder)  # model_index.json, naming each component's class (and boundary_ratio)
        pipe.scheduler.save_pretrained(folder / "scheduler")
        experts = ("transformer", "transformer_2") if entry.two_experts else ("transformer",)
        for name in experts:
            if entry.folder == owner and name == "transformer":
                transformer.save_pretrained(folder / name)
            else:
                os.symlink(Path("..") / owner / "transformer", folder / name)
        link_shared(folder, root)
    (root / MARKER_FILE).write_text(json.dumps(weights_marker(arch, seed)))


def weights_marker(arch: Architecture, seed: int) -> dict[str, object]:
    """What ``MARKER_FILE`` holds: a later run reuses a folder only when this matches (same format, size and seed)."""
    return {"format": WEIGHTS_FORMAT, "size": arch.name, "seed": seed}
