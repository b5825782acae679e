"""LoRAs on compiled transformers: one adapter slot per expert, refilled for each job by diffusers' hot-swapping.

``--compile`` compiles the repeated transformer blocks once per process. The uncompiled way of putting LoRAs on
(:func:`pipelines.loras.apply_loras`) wraps linear layers in new peft modules, deletes them again and sets scales as
Python floats, and the compiled blocks are specialised on all three: every new LoRA, set of LoRAs or scale would
recompile (minutes on a 14B model) until torch gives up and runs uncompiled. diffusers' hot-swapping
(``enable_lora_hotswap`` before the first adapter, then ``load_lora_adapter(..., hotswap=True)``, which is peft's
``hotswap_adapter_from_state_dict``) instead copies a LoRA's factors into the tensors of an adapter already in
place, zero-padded up to a fixed rank, with the adapter's scaling held in a tensor. Built on that:

* Before compiling, each expert gets one adapter, the *slot*: rank ``lora_max_rank`` on every linear layer (its B
  factor with a bias, which LoRAs with ``diff_b`` keys fill), all zeros. A zero slot adds exactly zero to every
  layer, so a compiled server computes the same for a job without LoRAs whatever ran before.
* A job's LoRAs for one expert become one state dict for its slot: their factors stacked along the rank (several
  LoRAs share one slot; one file named twice counts once with its scales added), each one's scale and peft scaling
  (alpha / rank per layer, as ``apply_loras`` loads it: ``pipelines.lora_files``, never the file's own adapter
  config) folded into its B factor, so the slot's own scaling stays 1. The swap copies tensors in place: nothing
  the compiled code is specialised on changes.
* A job without LoRAs zeroes the slots; consecutive jobs with the same LoRAs and scales leave them as they are.

Not possible without a recompile, and so refused with a 422 naming the LoRA: a set of LoRAs whose ranks on one layer
add up to more than the slot's rank. Every layer has a slot, so any LoRA that fits the transformer fits the slot.
The slot costs memory and compute on every job of a compiled server (README, "LoRAs and the fast path").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from diffusers import WanVACEPipeline, WanVACETransformer3DModel
from peft.tuners.lora import LoraLayer

from .errors import InputError
from .lora_files import LORA_KEY, PREFIX, LoraFile, adapter_metadata, linear_layers
from .loras import JobLora, cast_factors, pipeline_experts, read_lora

log = logging.getLogger(__name__)

SLOT = "lora_slot"
RANK_ERROR = "lora_rank_too_high"


def _slot_metadata(rank: int, modules: Sequence[str]) -> dict[str, object]:
    """The slot's adapter config: rank ``rank`` on ``modules`` at scaling alpha / r = 1, with B biases."""
    return adapter_metadata(dict.fromkeys(modules, rank), dict.fromkeys(modules, rank), bias=True)


def add_slot(expert: WanVACETransformer3DModel, rank: int, dtype: torch.dtype) -> None:
    """Give ``expert`` its zero slot on every linear layer; call before the expert's blocks are compiled."""
    layers = linear_layers(expert)
    zeros: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        zeros[f"{PREFIX}{name}.lora_A.weight"] = torch.zeros(rank, layer.in_features, dtype=dtype)
        zeros[f"{PREFIX}{name}.lora_B.weight"] = torch.zeros(layer.out_features, rank, dtype=dtype)
        zeros[f"{PREFIX}{name}.lora_B.bias"] = torch.zeros(layer.out_features, dtype=dtype)
    # Converts the adapter's scalings to tensors once it is loaded, so a swap never changes a Python number.
    expert.enable_lora_hotswap(target_rank=rank)
    WanVACEPipeline.load_lora_into_transformer(
        zeros, transformer=expert, adapter_name=SLOT, metadata=_slot_metadata(rank, list(layers))
    )
    cast_factors(expert, SLOT, dtype)


@torch.no_grad()
def clear_slot(expert: WanVACETransformer3DModel) -> None:
    """Zero every factor of the slot: the layers then add exactly nothing."""
    for module in expert.modules():
        if isinstance(module, LoraLayer) and SLOT in module.lora_A:
            for factor in (module.lora_A[SLOT], module.lora_B[SLOT]):
                for tensor in factor.parameters():  # A's weight, B's weight and bias
                    tensor.zero_()


def stack_loras(parts: Sequence[tuple[JobLora, float, LoraFile]], rank: int) -> dict[str, torch.Tensor]:
    """One state dict for a slot of ``rank`` from (LoRA, scale, its file) parts: per layer the A factors stacked,
    the B factors side by side with each part's scale x scaling folded in, the B biases added. The sum of
    B_i A_i x s_i is then B A x, which is what the slot computes at scaling 1."""
    factors: dict[str, dict[str, list[torch.Tensor]]] = {}
    used: dict[str, int] = {}
    for lora, scale, lora_file in parts:
        for key, tensor in lora_file.state_dict.items():
            match = LORA_KEY.fullmatch(key)
            assert match is not None  # read_lora checked every key
            layer, part = match["module"], match["part"]
            factor = scale * lora_file.scaling(layer)
            if part == "A.weight":
                used[layer] = used.get(layer, 0) + tensor.shape[0]
                if used[layer] > rank:
                    raise InputError(
                        lora.field,
                        f"rank {tensor.shape[0]} on {layer!r} brings this job's LoRAs to "
                        f"rank {used[layer]} there, over this server's --lora-max-rank {rank} (it "
                        "compiles its transformers, whose LoRA slot has that rank)",
                        RANK_ERROR,
                    )
                factors.setdefault(layer, {}).setdefault("A", []).append(tensor.float())
            elif part == "B.weight":
                factors.setdefault(layer, {}).setdefault("B", []).append(tensor.float() * factor)
            else:
                factors.setdefault(layer, {}).setdefault("bias", []).append(tensor.float() * factor)
    state: dict[str, torch.Tensor] = {}
    for layer, parts_of in factors.items():
        if "A" in parts_of:
            state[f"{PREFIX}{layer}.lora_A.weight"] = torch.cat(parts_of["A"], dim=0)
            state[f"{PREFIX}{layer}.lora_B.weight"] = torch.cat(parts_of["B"], dim=1)
        if "bias" in parts_of:
            state[f"{PREFIX}{layer}.lora_B.bias"] = torch.stack(parts_of["bias"]).sum(dim=0)
    return state


class LoraSlots:
    """The slots of one loaded model's experts and what each holds now."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self._holding: dict[str, tuple[tuple[str, float], ...]] = {}

    def fill(self, pipe: WanVACEPipeline, loras: Sequence[JobLora]) -> None:
        """Put exactly ``loras`` at their scales into the experts' slots, without changing anything compiled code
        depends on. Every file is read and checked (and the ranks added up) before any slot changes: a refusal (an
        ``InputError``) leaves the slots as they were. A swap that fails later leaves the model to be reloaded
        (``LoadedModel``)."""
        experts = pipeline_experts(pipe)
        files: dict[str, LoraFile] = {}
        states: dict[str, tuple[tuple[tuple[str, float], ...], dict[str, torch.Tensor]]] = {}
        for name, expert in experts.items():
            scales: dict[str, tuple[JobLora, float]] = {}
            for lora in loras:
                if name in lora.experts:
                    first, total = scales.get(lora.adapter, (lora, 0.0))
                    scales[lora.adapter] = (first, total + lora.scale)
            wanted = tuple(sorted((adapter, scale) for adapter, (_, scale) in scales.items() if scale != 0.0))
            if self._holding.get(name, ()) == wanted:  # a new slot is empty
                continue
            parts = []
            for adapter, (lora, scale) in scales.items():
                if scale != 0.0:
                    if adapter not in files:
                        files[adapter] = read_lora(lora, expert)
                    parts.append((lora, scale, files[adapter]))
            states[name] = (wanted, stack_loras(parts, self.rank))
        for name, (wanted, state) in states.items():
            self._holding.pop(name, None)
            if state:
                layers = {key.removeprefix(PREFIX).rsplit(".lora_", 1)[0] for key in state}
                pipe.load_lora_into_transformer(
                    state,
                    transformer=experts[name],
                    adapter_name=SLOT,
                    metadata=_slot_metadata(self.rank, sorted(layers)),
                    hotswap=True,
                )
            else:
                clear_slot(experts[name])
            self._holding[name] = wanted
        if loras:
            log.info("LoRA slots hold %s", {name: dict(held) for name, held in self._holding.items() if held})
