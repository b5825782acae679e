"""What each ``vace`` command does, as plain functions of typed arguments (``server/cli.py`` only parses flags).

``generate_to_file`` runs the same ``generate()`` as the server, in-process, with a progress bar (and, when asked,
a live preview file replaced after every step);
``preprocess_to_file`` writes a control video with the same writer the server uses for the control video a
``preprocess=true`` job keeps; ``preprocess_edit_to_dir`` writes what an inpainting, outpainting or reframe job
conditions the model on (the same ``pipelines.tasks`` steps as the job), as VACE's preprocessing writes it. Each
returns the process's exit status: 0 done, 1 a failure of the machine (missing weights, a cancelled job), 2 a
problem with what the user asked for (printed one line per field).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec

from pydantic import ValidationError

from pipelines.errors import InputError, JobCancelled
from pipelines.registry import APPS_APP, DEFAULT_MODEL_FOR_TASK, EndpointTask, Task, input_model
from pipelines.schema import EndpointInput

from .config import Settings

P = ParamSpec("P")


def cli_input_model(task: EndpointTask) -> type[EndpointInput]:
    """The request model whose fields are ``vace generate TASK``'s flags: the 2.2-Fun app's, which is the 14B app's
    but for 14B inpainting's requirement that the ``mask_video_url`` key be present (even null), which means
    nothing for a flag left out. Either model runs it. Long-reframe's is its own app's."""
    return input_model(APPS_APP if task == "long-reframe" else "fal-ai/wan-22-vace-fun-a14b", task)


def _validated(task: EndpointTask, fields: dict[str, Any]) -> EndpointInput | None:
    """``fields`` as ``task``'s request, or None after printing why not (one line per field)."""
    try:
        return cli_input_model(task).model_validate(fields)
    except ValidationError as exc:
        print_input_error([{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()])
        return None


def print_input_error(detail: list[dict[str, Any]]) -> None:
    """fal's 422 ``detail`` items as one ``error: field: message (type)`` line each."""
    for item in detail:
        loc = ".".join(str(p) for p in item["loc"] if p != "body")
        print(f"error: {loc}: {item['msg']} ({item['type']})", file=sys.stderr)


def _exit_status(command: Callable[P, int]) -> Callable[P, int]:
    """A command that reports a job's refusal (2, per field) or failure (1, one line) instead of a traceback."""

    @functools.wraps(command)
    def reporting(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return command(*args, **kwargs)
        except InputError as exc:
            print_input_error(exc.detail())
            return 2
        except (FileNotFoundError, JobCancelled, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return reporting


@_exit_status
def generate_to_file(
    settings: Settings,
    task: EndpointTask,
    fields: dict[str, Any],
    output: Path,
    *,
    model: str | None = None,
    quiet: bool = False,
    parallel: str | None = None,
    preview: Path | None = None,
) -> int:
    """Run one job of the endpoint ``task`` ("" = the base endpoint) from request ``fields`` and write its video to
    ``output`` (beside it: a frames zip, if asked for, and the video of a tracked mask); prints the output JSON.
    ``parallel``: a ``--parallel`` spec; the job then runs on a local group, this process being rank 0 (CUDA: one
    GPU per rank, in device order; else CPU processes). ``preview``: an animated WebP of the video being denoised,
    written after every step (each one written beside it and renamed over it, so a viewer never reads half a
    file)."""
    import torch
    from tqdm import tqdm

    from pipelines.context import JobContext
    from pipelines.generate import MASK_VIDEO_FILE, generate
    from pipelines.group import job_group
    from pipelines.hooks import JobHooks, PreviewSink
    from pipelines.loading import ModelManager
    from pipelines.parallel import ParallelSpec
    from pipelines.tasks import resolve

    inp = _validated(task, fields)
    if inp is None:
        return 2
    resolve(inp, task)  # what the task refuses outright (e.g. outpainting with no side) comes before the progress bar
    model = model or DEFAULT_MODEL_FOR_TASK[task]
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    desc = f"{task or 'base'} ({model})"
    bar = tqdm(total=inp.num_inference_steps, desc=desc, unit="step", disable=quiet)
    before = 0  # the steps of the windows before the current one: the bar covers the whole job

    def on_window(i: int, n: int) -> None:
        nonlocal before
        before = (i - 1) * inp.num_inference_steps
        bar.total = n * inp.num_inference_steps
        bar.set_description(f"{desc} window {i}/{n}")

    def on_step(i: int, total: int) -> None:
        bar.n = before + i
        bar.refresh()

    def publish(path: Path, content_type: str) -> str:
        if path.name == MASK_VIDEO_FILE:  # OUT.mask.mp4
            target = output.with_suffix(f".{path.stem}{path.suffix}")
        else:  # the video itself, or OUT.zip
            target = output if content_type == "video/mp4" else output.with_suffix(path.suffix)
        shutil.move(path, target)
        return target.as_uri()

    # Logs go with the progress bar to stderr: stdout carries only the output JSON, so `> result.json` works.
    hooks = JobHooks(
        log=(lambda m: None) if quiet else (lambda m: bar.write(m, file=sys.stderr)), step=on_step, window=on_window
    )
    if preview is not None:
        preview_file = preview.resolve()
        preview_file.parent.mkdir(parents=True, exist_ok=True)

        def show_preview(path: Path, _step: int) -> None:
            path.replace(preview_file)

        hooks.preview = PreviewSink(every_steps=1, folder=preview_file.parent, publish=show_preview)
    try:
        with contextlib.ExitStack() as stack:
            group = None
            if parallel:
                spec = ParallelSpec.parse(parallel)
                devices = (
                    [f"cuda:{i}" for i in range(spec.world_size)]
                    if torch.cuda.is_available()
                    else ["cpu"] * spec.world_size
                )
                group = stack.enter_context(job_group(spec, settings.weights_dir, settings.runtime, devices))
            models = ModelManager(
                settings.weights_dir, device=devices[0] if group else None, runtime=settings.runtime, group=group
            )
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="vace-job-"))
            ctx = JobContext(lora_cache=settings.lora_cache(), windows=settings.windows)
            result = generate(
                inp,
                task=task,
                model=model,
                manager=models,
                workdir=Path(workdir),
                publish=publish,
                hooks=hooks,
                ctx=ctx,
            )
    finally:
        bar.close()
    print(result.model_dump_json(indent=2, exclude_none=True))
    return 0


@_exit_status
def preprocess_to_file(settings: Settings, task: Task, video: str, output: Path, annotator: str | None = None) -> int:
    """Write the control video of ``video`` only: decode, annotate and encode stream frame batches end to end."""
    from pipelines.context import JobContext
    from pipelines.encode import write_control_video
    from pipelines.fetch import fetch_to_file
    from pipelines.loading import ModelManager
    from pipelines.video_io import iter_frames, probe_video

    models = ModelManager(settings.weights_dir, runtime=settings.runtime)
    with tempfile.TemporaryDirectory(prefix="vace-preprocess-") as workdir:
        path = fetch_to_file(video, "video_url", Path(workdir), JobContext())
        info = probe_video(path)
        preprocessor = models.preprocessor(task, annotator)
        frames = preprocessor.process(iter_frames(path, nvdec_gpu=models.codecs.decode_gpu(info)))
        encoded = write_control_video(frames, output, info.fps, quality="maximum", encoder=models.codecs.encoder)
    print(
        f"{task} control video: {encoded.path} ({encoded.width}x{encoded.height}, "
        f"{encoded.num_frames} frames at {encoded.fps:g} fps)"
    )
    return 0


@_exit_status
def preprocess_edit_to_dir(settings: Settings, task: EndpointTask, fields: dict[str, Any], out_dir: Path) -> int:
    """Write ``src_video.mp4`` (the conditioning frames: the source where it is kept, grey where the model generates)
    and ``src_mask.mp4`` (white = generated) of a ``task`` job with request ``fields`` into ``out_dir``: the same
    frame plan, size, masks and canvas as the job (``pipelines.tasks``), at the frame rate the model generates at,
    made and written a window at a time as a long job reads its video. A mask image is tracked through the clip with
    the mask tracker of ``settings`` (the only model loaded), as the job tracks it, so ``src_mask.mp4`` is then the
    tracked mask video."""
    from collections.abc import Iterator

    import numpy as np

    from pipelines.checks import check_inputs
    from pipelines.context import JobContext
    from pipelines.encode import write_control_video, write_mask_video
    from pipelines.schema import LongReframeInput
    from pipelines.streams import FrameSink
    from pipelines.tasks import PLACEHOLDER_PROMPT, conditioning, frame_images, prepare, resolve
    from pipelines.windows import DEFAULT_FRAMES

    inp = _validated(task, {"prompt": PLACEHOLDER_PROMPT, **fields})
    if inp is None:
        return 2
    assert not isinstance(inp, LongReframeInput)  # an edit task's request
    job = resolve(inp, task)
    ctx = JobContext()
    tracking = None
    if job.mask is not None and not job.mask.is_video:
        from pipelines.loading import ModelManager

        models = ModelManager(settings.weights_dir, runtime=settings.runtime)
        check_inputs(inp, task, ctx, models, model=DEFAULT_MODEL_FOR_TASK[task])  # its tracker is installed
        tracking = models.mask_tracking()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vace-preprocess-") as workdir:
        first, last = frame_images(inp, Path(workdir), ctx)
        source = prepare(inp, job, Path(workdir), ctx, first or last, tracking=tracking)
        fps, total = source.timing.generate_fps, source.timing.generate_frames
        masks = FrameSink(lambda frames: write_mask_video(frames, out_dir / "src_mask.mp4", fps, "maximum"))

        def video_frames() -> Iterator[np.ndarray]:
            for start in range(0, total, DEFAULT_FRAMES):
                cond = conditioning(
                    inp, source, *source.take(min(DEFAULT_FRAMES, total - start)), first, last, start=start
                )
                for frame, mask in zip(cond.video, cond.mask, strict=True):
                    masks.put(np.asarray(mask))
                    yield np.asarray(frame)

        try:
            video = write_control_video(video_frames(), out_dir / "src_video.mp4", fps, "maximum")
            mask = masks.close()
        except BaseException:
            masks.abort()
            raise
        finally:
            source.close()
    for note in (*job.notes, *source.notes):
        print(note)
    print(
        f"{task} conditioning: {video.path} and {mask.path} ({video.width}x{video.height}, {video.num_frames} "
        f"frames at {fps:g} fps)"
    )
    return 0


def exposure_refusal(settings: Settings, insecure_no_auth: bool = False) -> str | None:
    """Why ``serve`` will not start with these settings: a host other machines reach, and no API key (None: it
    starts). Apart from :func:`serve` so that a check of a documented command line asks the same question."""
    from server.config import is_loopback

    if settings.auth_enabled or is_loopback(settings.host) or insecure_no_auth:
        return None
    return (
        f"{settings.host} is reachable from other machines and no API key is set; pass --api-keys KEY "
        "(or VACE_API_KEYS), or --insecure-no-auth to serve without auth anyway"
    )


def serve(
    settings: Settings, *, insecure_no_auth: bool = False, log_level: str = "info", access_log: bool = False
) -> int:
    """Run the server in the foreground; refuses to serve other machines without keys unless told to."""
    from pipelines.codecs import EncoderUnavailable
    from server.api.node_secrets import SecretsError
    from server.app import serve as run_server
    from server.store.jobs import StoreLockedError

    refusal = exposure_refusal(settings, insecure_no_auth)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:
        run_server(settings, log_level=log_level, access_log=access_log)
    except (StoreLockedError, SecretsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except EncoderUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C is how this foreground server is stopped: uvicorn shuts down gracefully, then raises the signal it
        # caught again, which Python turns into KeyboardInterrupt: a stop asked for, not a crash with a traceback.
        pass
    return 0


def make_secrets(folder: Path) -> int:
    """Write a fleet's node secret and webhook signing key into ``folder`` (the missing ones), for the operator to
    hand to every API node."""
    from server.api.node_secrets import make_secrets as make

    written = make(folder)
    print(
        f"{folder}: {'wrote ' + ' and '.join(written) if written else 'both files exist already; kept them'}. "
        "Give this folder (the same files) to every API node as --secrets-dir; never to worker nodes."
    )
    return 0


def worker(settings: Settings, *, metrics_port: int | None = None) -> int:
    """A worker node: no public HTTP, its workers pull jobs from the shared store (``--store``) until SIGTERM or
    SIGINT, which hands the running job back at once. ``metrics_port`` serves Prometheus metrics (and so a health
    check) on that port."""
    import asyncio
    import signal

    from prometheus_client import start_http_server

    from pipelines.codecs import EncoderUnavailable
    from server.app import Node
    from server.backends import resolve_devices

    async def run() -> None:
        node = Node.build(settings, signer=None)  # a worker node signs nothing (server/api/node_secrets.py)
        await node.start()
        if metrics_port is not None:
            start_http_server(metrics_port, registry=node.metrics.registry)
        stopped = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stopped.set)
        where = (
            f"{' '.join(settings.devices)} as one job group ({settings.parallel})"
            if settings.parallel
            else ", ".join(str(device) for device in resolve_devices(settings.devices))
        )
        print(f"vace worker on {where} (store: {'shared' if settings.shared_store else 'sqlite'})", flush=True)
        await stopped.wait()
        await node.stop()

    try:
        asyncio.run(run())
    except EncoderUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
