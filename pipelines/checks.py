"""Every check of a job beyond the schema's field ranges, in the order a job meets them.

* ``check_inputs``, before any download: the server runs it when a job is submitted (refused with a 422 before it
  is queued, on an API node too) and ``generate()`` runs it again first (the CLI's only check). This module and
  what it imports load no model library (no diffusers, onnxruntime or annotator), so the HTTP layer validates a
  request without them.
* ``limits.check_video_limits``, as soon as an input video is probed, before any frame is decoded (in
  ``pipelines.tasks.prepare``).
* ``check_plan``, the late checks: once the frames are planned and the job's parts are resolved, before the first
  expensive stage, whatever needs the plan and those parts (the interpolator, the job group).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .context import JobContext
from .errors import InputError
from .fetch import check_ref_scheme
from .frame_plan import TemporalPlan
from .lora_names import check_loras
from .manifest import TASK_ANNOTATORS
from .registry import EndpointTask
from .schema import EndpointInput
from .tasks import TaskJob, resolve

if TYPE_CHECKING:  # types only: importing these would load torch's distributed stack and the interpolators
    from .interpolation import FrameInterpolator
    from .parallel import GroupMember


class Host(Protocol):
    """What the up-front checks ask of the machine that runs the job (its ``ModelManager``): the installed weights,
    how its transformers are compiled and whether it tracks mask images with a tracker it lacks."""

    @property
    def weights_dir(self) -> Path: ...

    @property
    def compiles(self) -> bool: ...

    @property
    def lora_slot_rank(self) -> int: ...

    def has_safety_checker(self) -> bool: ...

    def missing_mask_tracker(self) -> str | None: ...


def check_inputs(inp: EndpointInput, task: EndpointTask, ctx: JobContext, host: Host | None, *, model: str) -> TaskJob:
    """Every check of a request that needs no download, in one place.

    Field ranges and types are the schema's; this adds what the endpoint's task makes of the request
    (``pipelines.tasks.resolve``, whose answer it returns: a 422 for one that cannot run, e.g. outpainting with no
    side) and the host's rules: input limits, media schemes, the
    annotator matching the task, the LoRAs fitting ``model`` (count, expert, installed names, a LoRA slot when
    compiled), the safety checker being installed when asked for (running unchecked would return what the
    caller asked us to screen), and the mask tracker being installed for a mask image on a server that tracks them
    (applying it unchanged instead would be another job than the one asked for). ``host`` is None on a node without
    workers: what only the weights directory can tell (installed LoRA names, the safety checker, the mask tracker,
    compilation) is then checked by the worker that runs the job.
    """
    job = resolve(inp, task)
    limits = ctx.limits
    if len(inp.prompt) > limits.max_prompt_chars:
        raise InputError(
            "prompt",
            f"the prompt is {len(inp.prompt)} characters, over the {limits.max_prompt_chars}-character limit",
            "prompt_too_long",
        )
    if inp.negative_prompt and len(inp.negative_prompt) > limits.max_prompt_chars:
        raise InputError(
            "negative_prompt",
            f"the negative prompt is over the {limits.max_prompt_chars}-character limit",
            "prompt_too_long",
        )
    refs = getattr(inp, "ref_image_urls", None)  # reframe has none
    if refs and len(refs) > limits.max_ref_images:
        raise InputError(
            "ref_image_urls",
            f"{len(refs)} reference images, over the limit of {limits.max_ref_images}",
            "too_many_reference_images",
        )
    for loc, ref in inp.media_refs():
        check_ref_scheme(ref, loc, ctx)
    control = job.control_task
    annotator = getattr(inp, "annotator", None) if getattr(inp, "preprocess", False) else None
    if control is not None and annotator is not None and annotator not in TASK_ANNOTATORS[control]:
        raise InputError(
            "annotator", f"{annotator} is not a {control} annotator; use one of {sorted(TASK_ANNOTATORS[control])}"
        )
    check_loras(inp, model, ctx, host.weights_dir if host is not None else None)
    if host is None:
        return job
    if inp.loras and host.compiles and not host.lora_slot_rank:
        raise InputError(
            "loras",
            "this server compiles its transformers (--compile) without a LoRA slot "
            "(--lora-max-rank 0), and a LoRA would recompile them",
            "not_supported",
        )
    if inp.enable_safety_checker and not host.has_safety_checker():
        raise InputError(
            "enable_safety_checker", "the safety checker's weights are not installed on this server", "not_supported"
        )
    if job.mask is not None and not job.mask.is_video and (tracker := host.missing_mask_tracker()):
        raise InputError(
            job.mask.field,
            f"this server tracks a mask image through the clip, but its mask tracker "
            f"{tracker} is not installed: `vace weights download --models {tracker}` fetches it (or the "
            "server runs with --mask-tracking static, applying the image to every frame)",
            "not_supported",
        )
    return job


def check_plan(
    timing: TemporalPlan,
    *,
    width: int,
    height: int,
    extra_latent_frames: int,
    interpolator: FrameInterpolator | None,
    group: GroupMember | None,
    window_lengths: Iterable[int],
) -> None:
    """The late checks, before minutes of denoising: the interpolator can make the planned number of frames between
    each pair (FILM's v1.0.0 file makes midpoints only), and the job group can split the transformer sequence of
    each window (``window_lengths``: their frame counts) evenly (``extra_latent_frames``: one per reference
    image)."""
    if interpolator is not None and timing.interpolates:
        try:
            interpolator.check_between(timing.n_between)
        except ValueError as e:
            raise InputError("interpolator_model", str(e)) from e
    if group is not None:
        try:
            for frames in sorted(set(window_lengths)):
                group.spec.check_tokens(frames, extra_latent_frames, (height // 16) * (width // 16))
        except ValueError as e:
            raise InputError("num_frames", str(e), "not_supported") from e
