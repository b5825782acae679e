"""One job on several devices: context parallelism (Ulysses / ring attention) and CFG parallelism for the VACE
transformer, on diffusers' own machinery.

A group of ``cfg * ring * ulysses`` processes forms a device mesh with the dimensions ``("cfg", "ring",
"ulysses")``. The ``("ring", "ulysses")`` sub-mesh is handed to diffusers' ``ContextParallelConfig`` and
``enable_parallelism`` with ``VACE_CP_PLAN``; the ``"cfg"`` dimension carries the two guidance branches.

Why a plan of our own: diffusers ships one for ``WanTransformer3DModel`` but none for ``WanVACETransformer3DModel``,
whose VACE blocks compute control hints from the control sequence and add them to the main sequence between blocks.
The plan splits the rotary embeddings (the ``rope`` outputs), the main sequence where it enters ``vace_blocks.0`` and
``blocks.0``, and the control sequence where it enters ``vace_blocks.0``, all along the token dimension with the same
sharder, so shard ``r`` of every hint lines up with shard ``r`` of the main sequence; ``proj_out`` gathers the
output. Timesteps are one per sample in VACE (not per token as in Wan2.2 TI2V), so nothing else is split.

Token counts that do not divide by the sequence degree are refused before any work (``check_tokens``, naming the
nearest frame count that divides), not padded. diffusers' "anything" sharders split unevenly, but gather the uneven
shards with ``all_gather``, which gloo refuses ("ProcessGroupGloo::allgather: invalid tensor size"), and padding
would need a key mask through every attention backend; the usual sizes divide anyway (480p and 720p latents have
1560 and 3600 tokens per frame, multiples of 8).

CFG parallelism is a hook on each transformer (``cfg_parallel``): the pipeline still makes its cond call then its
uncond call per step; the rank that owns the cond branch computes on the first call, the other rank on the second,
and the two outputs are exchanged (``all_gather``) into the tensors both calls returned, so every rank combines the
same two predictions and ends the step with the same latents.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig, WanVACETransformer3DModel
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

MESH_DIMS = ("cfg", "ring", "ulysses")
CFG_HOOK = "vace_cfg_parallel"

_TOKENS = {"split_dim": 1, "expected_dims": 3}
VACE_CP_PLAN = {
    "rope": {
        0: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
        1: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
    },
    "vace_blocks.0": {
        "hidden_states": ContextParallelInput(**_TOKENS),
        "control_hidden_states": ContextParallelInput(**_TOKENS),
    },
    "blocks.0": {"hidden_states": ContextParallelInput(**_TOKENS)},
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
}
"""Where ``WanVACETransformer3DModel``'s sequences are split and gathered (module name -> diffusers plan entry)."""


@dataclass(frozen=True)
class ParallelSpec:
    """How one job is spread: ``cfg`` guidance branches (1 or 2) times ``ring`` times ``ulysses`` sequence shards."""

    cfg: int = 1
    ulysses: int = 1
    ring: int = 1

    def __post_init__(self) -> None:
        if self.cfg not in (1, 2):
            raise ValueError(f"cfg must be 1 or 2 (a job has two guidance branches), got {self.cfg}")
        if self.ulysses < 1 or self.ring < 1:
            raise ValueError("ulysses and ring must be at least 1")

    @classmethod
    def parse(cls, text: str) -> ParallelSpec:
        """``cfg=2``, ``ulysses=4``, ``ring=2`` or a comma-separated combination such as ``cfg=2,ulysses=4``."""
        values: dict[str, int] = {}
        for part in text.replace(" ", "").split(","):
            match = re.fullmatch(r"(cfg|ulysses|ring)=(\d+)", part)
            if match is None:
                raise ValueError(
                    f"{part!r} in --parallel {text!r}: expected cfg=N, ulysses=N or ring=N, "
                    "comma-separated (e.g. cfg=2,ulysses=4)"
                )
            if match[1] in values:
                raise ValueError(f"--parallel {text!r} names {match[1]} twice")
            values[match[1]] = int(match[2])
        return cls(**values)

    @property
    def world_size(self) -> int:
        return self.cfg * self.ring * self.ulysses

    @property
    def context(self) -> int:
        """The sequence-parallel degree (1: every rank holds the whole sequence)."""
        return self.ring * self.ulysses

    def check_devices(self, count: int) -> None:
        if count != self.world_size:
            raise ValueError(
                f"--parallel {self} needs {self.world_size} devices (the product of its degrees), got {count}"
            )

    def check_device_type(self, device_type: str) -> None:
        """Ring attention merges partial attention outputs by their log-sum-exp; diffusers' only CPU attention
        backend (PyTorch SDPA, "native") does not return it, and aten's flash kernel that does is CUDA-only."""
        if self.ring > 1 and device_type != "cuda":
            raise ValueError(
                f"--parallel {self}: ring attention needs CUDA devices (diffusers' CPU attention "
                "returns no log-sum-exp); use ulysses on CPU"
            )

    def check_heads(self, heads: int) -> None:
        """Ulysses gives each rank ``heads / ulysses`` whole attention heads."""
        if heads % self.ulysses:
            raise ValueError(
                f"--parallel {self}: the model's {heads} attention heads do not divide by ulysses={self.ulysses}"
            )

    def check_tokens(self, num_frames: int, extra_latent_frames: int, tokens_per_frame: int) -> None:
        """Refuse a sequence the group cannot split evenly, naming the nearest frame count that can be split.

        ``num_frames`` video frames make ``(num_frames - 1) // 4 + 1`` latent frames (the VAE's 4x temporal
        compression), to which reference images add ``extra_latent_frames``."""
        degree = self.context
        latents = (num_frames - 1) // 4 + 1 + extra_latent_frames
        if latents * tokens_per_frame % degree == 0:
            return
        fits = [
            f
            for f in range(1, num_frames + 4 * degree + 1)
            if ((f - 1) // 4 + 1 + extra_latent_frames) * tokens_per_frame % degree == 0 and f % 4 == 1
        ]
        nearest = min(fits, key=lambda f: (abs(f - num_frames), f))
        raise ValueError(
            f"the transformer sequence has {latents * tokens_per_frame} tokens ({latents} latent frames of "
            f"{tokens_per_frame}), which does not split evenly over the {degree} sequence shards of --parallel "
            f"{self}; {nearest} frames would"
        )

    def __str__(self) -> str:
        parts = [
            f"{name}={n}" for name, n in (("cfg", self.cfg), ("ulysses", self.ulysses), ("ring", self.ring)) if n > 1
        ]
        return ",".join(parts) or "none"


@dataclass(frozen=True)
class GroupMember:
    """This process's place in a job group: the spec, its rank, the device mesh and, on rank 0, the way to the
    other ranks."""

    spec: ParallelSpec
    mesh: dist.DeviceMesh
    send: Callable[[Any], None] | None = None
    """Rank 0: hands a denoising request (``pipelines.denoise.DenoiseRequest``) to the other ranks, which then run
    the same pipeline call (``pipelines.group.Followers.send``); None on the other ranks, which receive."""

    @property
    def rank(self) -> int:
        return dist.get_rank()

    @property
    def cfg_rank(self) -> int:
        return self.mesh.get_local_rank("cfg")

    @property
    def cfg_group(self) -> dist.ProcessGroup:
        return self.mesh.get_group("cfg")

    def context_config(self) -> ContextParallelConfig:
        """A fresh diffusers config for one transformer (diffusers records per-model state on it)."""
        spec = self.spec
        return ContextParallelConfig(
            ring_degree=spec.ring,
            ulysses_degree=spec.ulysses,
            mesh=self.mesh["ring", "ulysses"],
        )


def init_group(spec: ParallelSpec, device_type: str) -> GroupMember:
    """Build the mesh over an initialised default process group of ``spec.world_size`` processes."""
    if dist.get_world_size() != spec.world_size:
        raise ValueError(f"--parallel {spec} needs {spec.world_size} processes, the group has {dist.get_world_size()}")
    mesh = dist.init_device_mesh(device_type, (spec.cfg, spec.ring, spec.ulysses), mesh_dim_names=MESH_DIMS)
    # diffusers flattens ring x ulysses when a transformer loads, and making that mesh makes process groups, which
    # every rank must do together. Rank 0 loads its models before it sends a follower the request that makes the
    # follower load its own, so a flatten there would wait forever (until the collective timeout). Made here, by all
    # ranks as they join, the mesh is cached on the root mesh and diffusers' flatten returns it.
    mesh["ring", "ulysses"]._flatten()
    return GroupMember(spec, mesh)


def enable_context_parallel(transformer: WanVACETransformer3DModel, group: GroupMember) -> None:
    """Shard ``transformer``'s sequence over the group's ring x ulysses ranks with ``VACE_CP_PLAN``.

    diffusers' ``enable_parallelism`` picks the model's device as ``rank % accelerator count``, which divides by
    zero on a host without an accelerator; the CPU (gloo) group therefore records the same config and hooks through
    the same diffusers pieces that ``enable_parallelism`` calls, with the CPU as device.
    """
    if group.spec.context == 1:
        return
    group.spec.check_heads(transformer.config.num_attention_heads)
    config = group.context_config()
    if torch.accelerator.device_count() > 0:
        transformer.enable_parallelism(config=config, cp_plan=VACE_CP_PLAN)
        return
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.models._modeling_parallel import ParallelConfig
    from diffusers.models.attention import AttentionModuleMixin

    parallel = ParallelConfig(context_parallel_config=config)
    parallel.setup(dist.get_rank(), dist.get_world_size(), torch.device("cpu"), mesh=config.mesh)
    transformer._parallel_config = parallel
    for module in transformer.modules():
        if isinstance(module, AttentionModuleMixin) and hasattr(module.processor, "_parallel_config"):
            module.processor._parallel_config = parallel
    apply_context_parallel(transformer, config, VACE_CP_PLAN)


def context_group(transformer: WanVACETransformer3DModel) -> dist.ProcessGroup | None:
    """The process group ``transformer``'s sequence is sharded over, or None when it is not."""
    parallel = getattr(transformer, "_parallel_config", None)
    if parallel is None or parallel.context_parallel_config is None:
        return None
    return parallel.context_parallel_config._flattened_mesh.get_group()


@contextlib.contextmanager
def outside_context_parallel(transformer: WanVACETransformer3DModel) -> Iterator[None]:
    """Remove the context-parallel hooks while other hooks are attached, then put them back on top.

    diffusers runs the last registered hook outermost; hooks attached for one job (the step cache) must see the
    sharded sequence, so they go under the split hooks, not over them."""
    parallel = getattr(transformer, "_parallel_config", None)
    if parallel is None or parallel.context_parallel_config is None:
        yield
        return
    from diffusers.hooks.context_parallel import apply_context_parallel, remove_context_parallel

    remove_context_parallel(transformer, VACE_CP_PLAN)
    try:
        yield
    finally:
        apply_context_parallel(transformer, parallel.context_parallel_config, VACE_CP_PLAN)


class _CfgHook(ModelHook):
    """On a transformer: compute only this rank's guidance branch and exchange the two predictions."""

    _is_stateful = True

    def __init__(self, group: GroupMember) -> None:
        super().__init__()
        self.group = group
        self.state = StateManager(BaseState)  # only its context is read: the pipeline names each call there
        self.pending: torch.Tensor | None = None

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.pending = None
        return module

    def new_forward(self, module: WanVACETransformer3DModel, *args: Any, **kwargs: Any) -> tuple[torch.Tensor]:
        branch = self.state.context.name
        if branch not in ("cond", "uncond"):
            raise RuntimeError(f"CFG parallelism needs the pipeline's cond/uncond calls, got {branch!r}")
        mine = self.group.cfg_rank == (0 if branch == "cond" else 1)
        if branch == "cond":
            if mine:
                self.pending = self.fn_ref.original_forward(*args, **kwargs)[0]
            else:
                hidden = kwargs["hidden_states"]
                shape = (hidden.shape[0], module.config.out_channels, *hidden.shape[2:])
                self.pending = torch.empty(shape, dtype=hidden.dtype, device=hidden.device)
            return (self.pending,)
        cond = self.pending
        assert cond is not None  # the pipeline calls the cond branch first
        uncond = self.fn_ref.original_forward(*args, **kwargs)[0] if mine else torch.empty_like(cond)
        dist.all_gather([cond, uncond], (uncond if mine else cond).clone(), group=self.group.cfg_group)
        self.pending = None
        return (uncond,)


@contextlib.contextmanager
def cfg_parallel(transformers: list[WanVACETransformer3DModel], group: GroupMember) -> Iterator[None]:
    """Split each step's two guidance branches over the group's ``cfg`` ranks for one job."""
    attached = []
    try:
        for transformer in transformers:
            HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_CfgHook(group), CFG_HOOK)
            attached.append(transformer)
        yield
    finally:
        for transformer in attached:
            HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(CFG_HOOK, recurse=False)
