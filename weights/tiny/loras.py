"""Tiny random LoRAs for the tiny Wan models, in the diffusers LoRA format (``transformer.<layer>.lora_A/B.weight``
plus the adapter metadata in the safetensors header), written where requests name them: ``DIR/loras/``.

Each adapts every linear layer of the transformer blocks (self- and cross-attention, feed-forward), as the style
and distillation LoRAs of the real models do, with weights large enough that a job's frames visibly change.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import WanVACEPipeline

from pipelines.lora_names import lora_folder
from pipelines.manifest import DISTILL_LORAS

from .wan import build_transformer

RANK = 4
# One per tiny model family (the tiny Wan2.1 and Wan2.2 transformers share a shape, so each fits both).
TINY_LORAS = {"tiny-wan21": 1, "tiny-wan22": 2}


def lora_weights(
    transformer: torch.nn.Module, seed: int, rank: int = RANK, std: float = 0.3
) -> dict[str, torch.Tensor]:
    """Random LoRA factors for every linear layer of ``transformer``'s blocks, keyed without the ``transformer.``
    prefix (as ``save_lora_weights`` takes them)."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, module in transformer.named_modules():
        if name.startswith("blocks.") and isinstance(module, torch.nn.Linear):
            weights[f"{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator) * std
            weights[f"{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * std
    return weights


def write_lora(path: Path, weights: dict[str, torch.Tensor], rank: int = RANK) -> Path:
    """Save ``weights`` as a diffusers LoRA file with its adapter metadata (rank, alpha, target modules)."""
    targets = sorted({key.rsplit(".lora_", 1)[0] for key in weights})
    WanVACEPipeline.save_lora_weights(
        path.parent,
        transformer_lora_layers=weights,
        weight_name=path.name,
        transformer_lora_adapter_metadata={"r": rank, "lora_alpha": rank, "target_modules": targets},
    )
    return path


def build_tiny_loras(weights_dir: Path) -> list[Path]:
    """Write one tiny LoRA per model family into ``weights_dir/loras``, and tiny stand-ins for the manifest's
    distillation LoRAs under their real names (so the fast path's requests run on tiny weights as written)."""
    transformer = build_transformer()
    targets = [(lora_folder(weights_dir) / f"{name}.safetensors", seed) for name, seed in TINY_LORAS.items()]
    distill = [entry.path(weights_dir, file) for entry in DISTILL_LORAS.values() for file in entry.required]
    targets += [(path, 10 + i) for i, path in enumerate(distill)]
    for path, _seed in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
    return [write_lora(path, lora_weights(transformer, seed)) for path, seed in targets]
