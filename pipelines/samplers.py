"""The three samplers of the fal schema, each built explicitly for flow matching with the requested shift.

Built by hand rather than with ``from_config``: loading a FlowMatchEuler config into UniPC silently yields an
epsilon-prediction UniPC, which produces noise with the Wan models.
"""

from __future__ import annotations

from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

NUM_TRAIN_TIMESTEPS = 1000


def make_scheduler(sampler: str, shift: float) -> SchedulerMixin:
    """A fresh scheduler for one job (schedulers hold per-run state, so jobs never share one)."""
    if sampler == "unipc":
        return UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            flow_shift=shift,
        )
    if sampler == "dpm++":
        return DPMSolverMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            flow_shift=shift,
            algorithm_type="dpmsolver++",
            solver_order=2,
        )
    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
    raise ValueError(f"unknown sampler {sampler!r}")
