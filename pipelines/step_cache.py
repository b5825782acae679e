"""A step-level cache that is correct for VACE: reuse the whole transformer's residual on steps that change little.

Why not diffusers' FirstBlockCache or MagCache: they cache the residual of the blocks *after* the first one and
return it from the first block, but ``WanVACETransformer3DModel`` adds the VACE control hints between blocks in its
own loop, so on a cached step the hints are added again on top of a residual that already holds them.

This cache decides before anything expensive runs. The VACE branch runs first in the transformer's forward, so a
hook on ``vace_blocks[0]`` sees the patch-embedded latents and the timestep projection and computes a
TeaCache-style signal: the timestep-modulated input of the first main block. Its relative L1 change is accumulated
from step to step; while the sum stays under the threshold the step is *reused*: every VACE block returns a zero
hint, the first main block returns its input plus the residual (hidden states before the output head minus hidden
states entering the blocks, hints included) saved on the last computed step, the other blocks pass through, and only
the output head runs with the current timestep. The hints are therefore counted exactly once.

Under context parallelism (``pipelines.parallel``) each rank holds one shard of the sequence: the hooks go under
diffusers' split hooks so they see the shards, and the signal's two sums are all-reduced over the shards (on the
same strided tokens as one process), so every rank of a group takes the same decision for the same call.

State is kept per cache context, which the diffusers pipeline sets per call (``cond`` / ``uncond``), and per
transformer, so each CFG branch and each expert of a two-expert model decides on its own. The first and the last
denoising steps are always computed, and so is each expert's first call. Between two steps that state is what a
checkpoint keeps of the cache (``StepCacheController.snapshot``; ``pipelines.resume``), so that a resumed job reuses
exactly the steps the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, ItemsView, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from diffusers import WanVACETransformer3DModel
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from .parallel import context_group, outside_context_parallel

# acceleration level -> accumulated relative-L1 threshold of the modulated input (None: cache off).
THRESHOLDS: dict[str, float | None] = {"none": None, "low": 0.08, "regular": 0.15}
SIGNAL_STRIDE = 8
HOOK_NAMES = ("vace_step_cache_decide", "vace_step_cache_skip", "vace_step_cache_capture")


@dataclass
class StepCacheController:
    """What one job's hooks share: the threshold, where the denoising loop is, and what was skipped.

    ``force_reuse`` names steps that are reused whenever a residual exists, whatever the signal says; it exists so
    tests can pin the semantics of a reused step.
    """

    threshold: float
    num_steps: int
    step: int = 0
    force_reuse: frozenset[int] = frozenset()
    skipped: dict[str, list[int]] = field(default_factory=dict)
    calls: int = 0
    states: dict[str, _States] = field(default_factory=dict, repr=False)
    """Each attached transformer's per-context state, by label."""
    restored: dict[str, dict[str, _BranchState]] = field(default_factory=dict, repr=False)
    """State from a checkpoint (``restore``) that each transformer takes when the cache is attached to it."""

    def snapshot(self, labels: Collection[str]) -> dict[str, Any]:
        """This rank's cache state between two steps, for a checkpoint: what was reused so far and, for each
        transformer in ``labels`` (those with steps still to run) and each cache context, the last signal, the change
        accumulated since the last computed call and that call's residual, as host copies."""
        branches = {
            label: {
                name: {
                    "previous_signal": _host(state.previous_signal),
                    "accumulated": state.accumulated,
                    "residual": _host(state.residual),
                }
                for name, state in self.states[label].items()
            }
            for label in labels
            if label in self.states
        }
        return {"calls": self.calls, "skipped": {k: list(v) for k, v in self.skipped.items()}, "branches": branches}

    def restore(self, snapshot: dict[str, Any], device: torch.device) -> None:
        """Take the state of a :meth:`snapshot`, before the cache is attached, with its tensors on ``device``."""
        self.calls = snapshot["calls"]
        self.skipped = {k: list(v) for k, v in snapshot["skipped"].items()}
        for label, contexts in snapshot["branches"].items():
            for name, saved in contexts.items():
                branch = _BranchState()
                branch.accumulated = saved["accumulated"]
                for tensor in ("previous_signal", "residual"):
                    setattr(branch, tensor, saved[tensor].to(device) if saved[tensor] is not None else None)
                self.restored.setdefault(label, {})[name] = branch

    def summary(self) -> str:
        total = sum(len(v) for v in self.skipped.values())
        parts = ", ".join(f"{name} {steps}" for name, steps in sorted(self.skipped.items()) if steps)
        return f"step cache reused {total} of {self.calls} transformer calls" + (f" ({parts})" if parts else "")


class _BranchState(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self, *args: object, **kwargs: object) -> None:
        self.previous_signal: torch.Tensor | None = None
        self.accumulated = 0.0
        self.block_input: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.reusing = False


class _States(StateManager):
    """diffusers' per-context state manager, with its states listed and set by context name (for checkpoints)."""

    def items(self) -> ItemsView[str, _BranchState]:
        return self._state_cache.items()

    def put(self, name: str, state: _BranchState) -> None:
        self._state_cache[name] = state


def _host(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().to("cpu", copy=True)


class _StatefulHook(ModelHook):
    """A hook whose per-context state lives in a StateManager shared by all hooks of one transformer."""

    _is_stateful = True

    def __init__(self, state: StateManager) -> None:
        super().__init__()
        self.state = state

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module


class _DecideHook(_StatefulHook):
    """On ``vace_blocks[0]``: decide whether this call reuses the residual; if so, return a zero hint."""

    def __init__(
        self,
        state: StateManager,
        controller: StepCacheController,
        label: str,
        first_block: WanTransformerBlock,
        group: dist.ProcessGroup | None,
    ):
        super().__init__(state)
        self.controller = controller
        self.label = label
        self.first_block = first_block
        self.group = group

    def _signal(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """The first main block's timestep-modulated input, as that block computes it before self-attention, on
        every ``SIGNAL_STRIDE``-th token of the whole sequence: the norm is per token, and a mean over a strided
        subset tracks the full mean closely at a fraction of the memory kept between steps. A shard starts at
        ``rank * shard length``, so it skips to its first token on the global stride."""
        shift, scale = (self.first_block.scale_shift_table.to(temb.device) + temb.float()).chunk(6, dim=1)[:2]
        start = 0 if self.group is None else -dist.get_rank(self.group) * hidden_states.shape[1] % SIGNAL_STRIDE
        tokens = hidden_states[:, start::SIGNAL_STRIDE].float()
        return self.first_block.norm1(tokens) * (1 + scale) + shift

    def _change(self, signal: torch.Tensor, previous: torch.Tensor) -> float:
        """Relative L1 change of the signal over the whole sequence (summed over the shards under parallelism)."""
        sums = torch.stack([(signal - previous).abs().sum(), previous.abs().sum()])
        if self.group is not None:
            dist.all_reduce(sums, group=self.group)
        return (sums[0] / sums[1]).item()

    def new_forward(
        self,
        module: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        control_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: Any,
    ) -> Any:
        state: _BranchState = self.state.get_state()
        ctl = self.controller
        ctl.calls += 1
        signal = self._signal(hidden_states, temb)
        edge = ctl.step == 0 or ctl.step >= ctl.num_steps - 1
        reuse = False
        if state.previous_signal is not None and state.residual is not None and not edge:
            state.accumulated += self._change(signal, state.previous_signal)
            reuse = ctl.step in ctl.force_reuse or state.accumulated < ctl.threshold
        state.previous_signal = signal
        state.reusing = reuse
        if reuse:
            ctl.skipped.setdefault(f"{self.label}/{self.state.context.name}", []).append(ctl.step)
            return hidden_states.new_zeros(()), control_hidden_states
        state.accumulated = 0.0
        state.block_input = hidden_states
        return self.fn_ref.original_forward(
            hidden_states, encoder_hidden_states, control_hidden_states, temb, rotary_emb
        )


class _SkipHook(_StatefulHook):
    """On the other VACE blocks and every main block: do nothing on a reused call (the first main block adds the
    saved residual); run normally otherwise."""

    def __init__(self, state: StateManager, kind: str):
        super().__init__(state)
        self.kind = kind  # "vace", "first" or "block"

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state: _BranchState = self.state.get_state()
        if not state.reusing:
            return self.fn_ref.original_forward(*args, **kwargs)
        if self.kind == "vace":
            return args[0].new_zeros(()), args[2]
        hidden_states = args[0]
        return hidden_states + state.residual if self.kind == "first" else hidden_states


class _CaptureHook(_StatefulHook):
    """On ``norm_out``: remember the residual of a computed call (its input minus the blocks' input)."""

    def new_forward(self, module: torch.nn.Module, hidden_states: torch.Tensor) -> Any:
        state: _BranchState = self.state.get_state()
        if not state.reusing:
            assert state.block_input is not None  # the deciding hook kept it when this call began
            state.residual = hidden_states - state.block_input.float()
            state.block_input = None
        return self.fn_ref.original_forward(hidden_states)


def _attach(transformer: WanVACETransformer3DModel, controller: StepCacheController, label: str) -> None:
    state = _States(_BranchState)
    for name, branch in controller.restored.pop(label, {}).items():
        state.put(name, branch)
    controller.states[label] = state
    first = transformer.blocks[0]
    hooks: list[tuple[torch.nn.Module, ModelHook, str]] = [
        (
            transformer.vace_blocks[0],
            _DecideHook(state, controller, label, first, context_group(transformer)),
            HOOK_NAMES[0],
        ),
        (transformer.norm_out, _CaptureHook(state), HOOK_NAMES[2]),
    ]
    hooks += [(block, _SkipHook(state, "vace"), HOOK_NAMES[1]) for block in transformer.vace_blocks[1:]]
    hooks += [
        (block, _SkipHook(state, "first" if i == 0 else "block"), HOOK_NAMES[1])
        for i, block in enumerate(transformer.blocks)
    ]
    with outside_context_parallel(transformer):
        for module, hook, name in hooks:
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


def _detach(transformer: WanVACETransformer3DModel) -> None:
    with outside_context_parallel(transformer):
        for module in transformer.modules():
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None:
                for name in HOOK_NAMES:
                    if registry.get_hook(name) is not None:
                        registry.remove_hook(name, recurse=False)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


@contextlib.contextmanager
def step_cache(
    transformers: dict[str, WanVACETransformer3DModel], controller: StepCacheController
) -> Iterator[StepCacheController]:
    """Attach the cache to each transformer (keyed by a label for the logs) for the duration of one job."""
    attached = []
    try:
        for label, transformer in transformers.items():
            _attach(transformer, controller, label)
            attached.append(transformer)
        yield controller
    finally:
        for transformer in attached:
            _detach(transformer)
