"""The ``vace`` command line: flags in, one call to ``server/commands.py`` (or the weights tools) out.

Flags that set a :class:`~server.config.Settings` field are named after it and have no default of their own: a flag
not given leaves the field to its ``VACE_*`` environment variable, then to the default in ``Settings``. Every field
of an endpoint's fal schema is a flag of ``vace generate TASK`` named after it (``--num_frames 33`` or
``--num-frames 33``): ``pose``, ``depth``, ``inpainting``, ``outpainting``, ``reframe``, and ``base`` (alias
``t2v``) for the base endpoint. ``vace preprocess TASK`` writes what a job of that task conditions the model on.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipelines.limits import Limits
from pipelines.manifest import DEFAULT_DOWNLOAD, ENTRIES, MASK_TRACKERS, MODELS, TASK_ANNOTATORS, canonical_key
from pipelines.registry import DEFAULT_MODEL_FOR_TASK, TASKS, EndpointTask
from pipelines.runtime import ENCODER_SETTINGS, MASK_TRACKING_MODES, MEMORY_MODES, PROMPT_EXPANDERS
from pipelines.schema import JobInput

from . import commands
from .config import Settings

# Fields with their own short flag names in the CLI.
FIELD_ALIASES = {"video_url": "--video", "prompt": "--prompt", "mask_video_url": "--mask",
                 "mask_image_url": "--mask-image"}
# `vace generate NAME`: the endpoint each name runs ("" = the base endpoint; `t2v` is an alias of `base`), and what
# it does.
GENERATE_TASKS: dict[str, EndpointTask] = {"pose": "pose", "depth": "depth", "inpainting": "inpainting",
                                           "outpainting": "outpainting", "reframe": "reframe", "base": ""}
TASK_HELP: dict[EndpointTask, str] = {
    "pose": "pose-controlled video to video: --video is a pose video (or any video, with --preprocess)",
    "depth": "depth-controlled video to video: --video is a depth video (or any video, with --preprocess)",
    "inpainting": "regenerate what --mask (a mask video) or --mask-image marks in white, keep the rest of --video",
    "outpainting": "grow --video's frame on the --expand-* sides by --expand-ratio and generate the new border",
    "reframe": "the same footage in a new frame shape (--aspect-ratio): bars trimmed, the rest of the canvas generated",
    "": "the base endpoint: text, reference (--ref_image_urls) or first/last-frame to video without --video; with a "
        "video, --task says what it is for",
}
EDIT_TASKS: tuple[EndpointTask, ...] = ("inpainting", "outpainting", "reframe")
# The fields that shape a job's conditioning (what `vace preprocess` of an edit task writes), where its task has them.
CONDITIONING_FIELDS = frozenset({
    "video_url", "mask_video_url", "mask_image_url", "num_frames", "frames_per_second", "match_input_num_frames",
    "match_input_frames_per_second", "temporal_downsample_factor", "enable_auto_downsample", "auto_downsample_min_fps",
    "resolution", "aspect_ratio", "expand_left", "expand_right", "expand_top", "expand_bottom", "expand_ratio",
    "trim_borders", "zoom_factor", "first_frame_url", "last_frame_url", "transparency_mode",
})
EXPERT_NAMES = ("high", "low", "both")


class SettingsError(ValueError):
    """Flags or environment variables that make no valid :class:`Settings`."""


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _setting(parser: argparse.ArgumentParser, flag: str, help_text: str, **kwargs: Any) -> None:
    """A flag for the ``Settings`` field of the same name; its help names the environment variable and default."""
    name = flag.lstrip("-").replace("-", "_")
    field = {"api_key": "api_keys", "admin_key": "admin_keys", "allowed_host": "allowed_hosts",
             "cors_origin": "cors_origins", "limit": "limits"}.get(name, name)
    default = Settings.model_fields[field].default
    shown = f"; default {default}" if default not in (None, (), frozenset(), "") and field != "limits" else ""
    parser.add_argument(flag, dest=field, default=argparse.SUPPRESS,
                        help=f"{help_text} (env VACE_{field.upper()}{shown})", **kwargs)


def settings(args: argparse.Namespace) -> Settings:
    """The settings from the flags given, the environment and the defaults, in that order."""
    given = {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise SettingsError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                                      for e in exc.errors())) from None


def parse_lora(text: str) -> dict[str, Any]:
    """``PATH[:SCALE[:high|low|both]]`` as a request's LoRA; read from the right, since URLs and data URIs have
    colons of their own. The schema checks the values."""
    lora: dict[str, Any] = {"path": text}
    head, sep, last = text.rpartition(":")
    if sep and last in EXPERT_NAMES:
        lora |= {"path": head, "transformer": last}
        head, sep, last = head.rpartition(":")
    try:
        scale = float(last) if sep else None
    except ValueError:
        scale = None
    if scale is not None:
        lora |= {"path": head, "scale": scale}
    return lora


def _add_field_flags(parser: argparse.ArgumentParser, model: type[JobInput],
                     only: frozenset[str] | None = None) -> None:
    """One flag per field of ``model`` (or of its fields in ``only``; ``loras``: a repeatable ``--lora``); values are
    validated by the schema itself, not by argparse."""
    if only is None and "loras" in model.model_fields:
        parser.add_argument("--lora", dest="loras", action="append", type=parse_lora,
                            metavar="PATH[:SCALE[:high|low|both]]",
                            help="a LoRA for this job (repeatable): a local .safetensors file, a URL or the name of "
                            "one in the weights directory's loras/ folder; scale defaults to 1, the expert to both")
    for name, info in model.model_fields.items():
        if name == "loras" or (only is not None and name not in only):
            continue
        flags = [FIELD_ALIASES[name]] if name in FIELD_ALIASES else []
        flags += [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        help_text = (info.description or "").replace("%", "%%")  # argparse formats help with %
        annotation = info.annotation
        if annotation is bool:
            parser.add_argument(*flags, dest=name, nargs="?", const=True, type=_parse_bool, help=help_text)
        elif any(typing.get_origin(a) is list for a in (annotation, *typing.get_args(annotation))):
            parser.add_argument(*flags, dest=name, nargs="+", help=help_text)
        else:
            parser.add_argument(*flags, dest=name, help=help_text)


def _add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    """Where the weights are and how models sit on the device (shared by generate, preprocess and serve)."""
    _setting(parser, "--weights-dir", "the weights directory")
    _setting(parser, "--memory-mode", "full | fp8 | group_offload | model_offload; auto picks by free VRAM",
             choices=MEMORY_MODES)
    _setting(parser, "--attention", "diffusers attention backend; auto picks the fastest installed")
    _setting(parser, "--compile", "torch.compile the repeated transformer blocks on CUDA", nargs="?", const=True,
             type=_parse_bool)
    _setting(parser, "--lora-max-rank", "with --compile: the most a job's LoRAs may add up to in rank on one "
             "layer (the size of the LoRA slot compiled into every job); 0 refuses LoRAs", type=int)
    _setting(parser, "--pose-annotator", "default pose annotator for preprocess=true",
             choices=sorted(TASK_ANNOTATORS["pose"]))
    _setting(parser, "--depth-annotator", "default depth annotator for preprocess=true",
             choices=sorted(TASK_ANNOTATORS["depth"]))
    _add_mask_tracking_flags(parser)
    _setting(parser, "--safety-threshold", "enable_safety_checker flags a job when a frame's unsafe probability "
             "exceeds this", type=float)
    _setting(parser, "--prompt-expander", "what serves enable_prompt_expansion: none, openai (a chat endpoint) or "
             "local (the LM in the weights dir)", choices=PROMPT_EXPANDERS)
    _setting(parser, "--expander-url", "OpenAI-compatible API base for --prompt-expander openai, e.g. "
             "http://127.0.0.1:11434/v1; its key comes from VACE_EXPANDER_API_KEY")
    _setting(parser, "--expander-model", "openai: the model name to ask for; local: an LM folder (default: the "
             "manifest's)")
    _setting(parser, "--expander-timeout", "seconds to wait for the expander before keeping the prompt", type=float)
    _setting(parser, "--encoder", "H.264 encoder of the outputs: auto (NVENC on the worker's GPU where a trial encode "
             "passes, else libx264), libx264, or nvenc (refuse to start where NVENC cannot run)",
             choices=ENCODER_SETTINGS)
    _setting(parser, "--lora-cache-dir", "where downloaded LoRA files are kept between jobs (default: "
             "<data-dir>/lora-cache)")
    _setting(parser, "--lora-cache-gb", "size past which the least recently used cached LoRAs are deleted",
             type=float)
    _setting(parser, "--lora-cache-url-hours", "how long a LoRA URL's download is reused before the URL is fetched "
             "again (0: every job)", type=float)


def _add_mask_tracking_flags(parser: argparse.ArgumentParser) -> None:
    """How an inpainting mask image becomes a mask per frame (shared by generate, preprocess and serve)."""
    _setting(parser, "--mask-tracking", "track: SAM2.1 follows an inpainting mask image through the clip; static: "
             "the image applies to every frame as it is", choices=MASK_TRACKING_MODES)
    _setting(parser, "--mask-tracker", "the SAM2.1 size that tracks masks", choices=list(MASK_TRACKERS))
    _setting(parser, "--mask-expand-ratio", "tracked masks grow on each side by this share of their box (VACE's "
             "original_expand); 0 keeps them as tracked", type=float)
    _setting(parser, "--mask-threshold", "a pixel belongs to the tracked object where SAM2's probability is above "
             "this", type=float)


def _add_node_flags(parser: argparse.ArgumentParser) -> None:
    """Where a node keeps jobs and files (shared by the API and worker nodes of a fleet)."""
    _setting(parser, "--data-dir", "the node's own data: the SQLite store, files, certificate, secrets")
    _setting(parser, "--store", "the job store: sqlite:///ABS/PATH (default: the data directory's jobs.sqlite3) or "
             "postgresql://user:pass@host:port/db, shared by many processes")
    _setting(parser, "--files", "a directory for files/ and uploads/ (default: the data directory; a shared mount "
             "for a fleet) or s3://bucket/prefix (connection from the standard AWS_* variables)")
    _setting(parser, "--files-url-ttl", "S3 files: seconds a presigned output URL stays valid (at most 604800, 7 days)",
             type=int)
    _setting(parser, "--files-public-url", "S3 files: a public base URL serving the bucket's objects (a CDN); output "
             "URLs become this + '/' + the object key instead of presigned URLs")
    _setting(parser, "--lease-seconds", "how long a running job may go without a sign of life from its worker "
             "before another node takes it back", type=float)
    _setting(parser, "--switch-after-s", "seconds a queued job may be passed over for newer ones of a model a worker "
             "has loaded (or of a runner hint it ran lately) before it goes first regardless; 0: plain FIFO",
             type=float)
    _setting(parser, "--devices", "one worker per device, e.g. cuda:0 cuda:1 (default: all GPUs or cpu)", nargs="+")
    _setting(parser, "--parallel", "with --devices: the devices form one group serving one job at a time, split as "
             "SPEC: cfg=2, ulysses=N, ring=N or a combination (cfg=2,ulysses=4); the product equals the number of "
             "devices", metavar="SPEC")
    _setting(parser, "--worker-threads", "run the workers as threads of this process instead of one process per "
             "device (or per --parallel group): for debugging", nargs="?", const=True, type=_parse_bool)
    _setting(parser, "--max-models", "models kept loaded per device", type=int)
    _setting(parser, "--fetch-allow", "non-public media or LoRA source to permit: CIDR, host or host:port "
             "(repeatable). By default only public addresses are fetched", action="append")
    _setting(parser, "--webhook-allow", "non-public webhook target to permit: CIDR, host or host:port (repeatable; "
             "give every node the same). By default webhooks go to public addresses only", action="append")
    _setting(parser, "--checkpoint-every-steps", "a running job checkpoints its denoising after this many steps "
             "(0: by time only); a job handed back resumes from its newest checkpoint", type=int)
    _setting(parser, "--checkpoint-every-s", "... or after the first step that ends this many seconds after the last "
             "checkpoint (0: by steps only; both 0: no checkpoints)", type=float)
    _setting(parser, "--preview-every-steps", "a running job publishes a live preview after every this many steps "
             "(0: none)", type=int)
    _setting(parser, "--limit", "change an input limit, e.g. max_video_seconds=120 (repeatable). Limits: "
             + ", ".join(f.name for f in fields(Limits)), action="append", metavar="NAME=VALUE")


def _add_serve_flags(srv: argparse.ArgumentParser) -> None:
    _setting(srv, "--host", "address to bind (loopback only by default)")
    _setting(srv, "--port", "port", type=int)
    _setting(srv, "--tls", "https with a self-signed certificate made on first start", nargs="?", const=True,
             type=_parse_bool)
    _setting(srv, "--public-url", "base URL for the URLs the server hands out (behind a proxy)")
    _setting(srv, "--api-key", "accepted 'Authorization: Key ...' value (repeatable)", action="append")
    _setting(srv, "--api-keys-file", "file with one API key per line")
    _setting(srv, "--admin-key", "an API key that also sees and cancels every key's jobs (repeatable)",
             action="append")
    _setting(srv, "--secrets-dir", "where the node secret and webhook signing key are (default: the data directory, "
             "made there on first start); a fleet's API nodes share one, made with `vace secrets DIR`")
    srv.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback --host without keys")
    _setting(srv, "--allowed-host", "a Host name to answer besides loopback names, the bound address and "
             "--public-url's host (repeatable; '*' answers any). Without API keys other hosts are refused (DNS "
             "rebinding); with keys any host is answered unless this is given", action="append", metavar="NAME")
    _setting(srv, "--cors-origin", "a browser origin allowed to call the API directly, e.g. https://app.example.com "
             "(repeatable; '*' any origin; default none)", action="append", metavar="ORIGIN")
    _setting(srv, "--limit-concurrency", "connections plus running requests past which new requests get a 503",
             type=int)
    _setting(srv, "--timeout-keep-alive", "seconds an idle keep-alive connection stays open", type=int)
    _setting(srv, "--header-timeout-s", "seconds a connection may take to send a request's headers", type=float)
    _setting(srv, "--read-timeout-s", "seconds a client may stay silent while the server waits for its bytes (or "
             "for it to take the response's)", type=float)
    _setting(srv, "--unread-body-timeout-s", "seconds the rest of a refused, unread request body is read and "
             "dropped before the connection is closed", type=float)
    _setting(srv, "--no-workers", "an API node: HTTP only, no workers (workers elsewhere pull from --store)",
             nargs="?", const=True, type=_parse_bool)
    srv.add_argument("--access-log", action="store_true", help="log every HTTP request")
    _setting(srv, "--max-body-bytes", "largest JSON request body", type=int)
    _setting(srv, "--retention-hours", "delete served files, abandoned uploads and finished jobs older than this "
             "(0 keeps everything)", type=float)


def _examples(*lines: str) -> dict[str, Any]:
    """``add_parser`` keywords for a help text that ends with these command lines, kept as written.
    ``tests/test_documented_commands.py`` runs every one of them, so each must work as typed."""
    return {"epilog": "examples:\n" + "\n".join(f"  {line}" for line in lines),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vace", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    weights = sub.add_parser("weights", help="build, download or check model weights")
    wsub = weights.add_subparsers(dest="weights_command", required=True)
    tiny = wsub.add_parser("tiny", help="write tiny random-weight models in the real layout",
                           **_examples("vace weights tiny ./tiny-weights   # then: vace serve --weights-dir "
                                       "./tiny-weights"))
    tiny.add_argument("dir")
    download = wsub.add_parser("download", help="download real weights from the Hugging Face hub", **_examples(
        "vace weights download --dir /models/vace                  # both endpoints, annotators, interpolators",
        "vace weights download --dir /models/vace --models wan-vace-1.3b safety-checker"))
    download.add_argument("--models", nargs="+", default=list(DEFAULT_DOWNLOAD), choices=list(ENTRIES),
                          type=canonical_key, help=f"default: {' '.join(DEFAULT_DOWNLOAD)}")
    download.add_argument("--dir", dest="weights_dir", default=argparse.SUPPRESS,
                          help="default: VACE_WEIGHTS_DIR or ~/.cache/vace/weights")
    check = wsub.add_parser("check", help="say which weights are present, missing or corrupt",
                            **_examples("vace weights check /models/vace --deep"))
    check.add_argument("weights_dir", nargs="?", default=argparse.SUPPRESS,
                       help="default: VACE_WEIGHTS_DIR or ~/.cache/vace/weights")
    check.add_argument("--deep", action="store_true", help="also verify sha256 checksums (slow)")

    gen = sub.add_parser("generate", help="run one job locally, no server", **_examples(
        'vace generate pose --video dance.mp4 --prompt "a dancer in a red dress on a beach" -o out.mp4',
        'vace generate pose --video dance.mp4 --prompt "a dancer" --parallel cfg=2 -o out.mp4   # CPU: 2 processes'))
    gen_tasks = gen.add_subparsers(dest="task", required=True, metavar="TASK",
                                   help=" | ".join(GENERATE_TASKS) + " (t2v: the base endpoint, as base)")
    for name, task in GENERATE_TASKS.items():
        one = gen_tasks.add_parser(name, aliases=["t2v"] if name == "base" else [], help=TASK_HELP[task],
                                   description=TASK_HELP[task])
        one.set_defaults(endpoint=task)
        one.add_argument("--model", choices=list(MODELS), default=DEFAULT_MODEL_FOR_TASK[task],
                         help="the model (default: %(default)s, whose fal app offers this endpoint)")
        one.add_argument("-o", "--output", required=True, help="output .mp4 path")
        one.add_argument("-q", "--quiet", action="store_true", help="no progress bar or logs")
        one.add_argument("--preview", metavar="FILE", help="write a live preview of the video while it is denoised "
                         "to FILE: an animated WebP, replaced after every step")
        # Not the serve/worker setting of that name (a group over --devices): this job's own local group, so its
        # dest is no Settings field and settings() leaves it alone.
        one.add_argument("--parallel", dest="job_parallel", metavar="SPEC", help="one job on several devices: "
                         "cfg=2, ulysses=N, ring=N or a combination (cfg=2,ulysses=4); on CPU as that many local "
                         "processes, on CUDA one GPU each")
        _add_runtime_flags(one)
        _add_field_flags(one, commands.cli_input_model(task))

    pre = sub.add_parser("preprocess", help="write what a job conditions the model on: the pose or depth control "
                         "video, or an edit's conditioning video and mask video", **_examples(
                             "vace preprocess depth --video dance.mp4 --annotator depth_anything_v2 -o depth.mp4"))
    pre_tasks = pre.add_subparsers(dest="task", required=True, metavar="TASK",
                                   help=" | ".join((*TASKS, *EDIT_TASKS)))
    for task in TASKS:
        one = pre_tasks.add_parser(task, help=f"write the {task} control video of a video")
        one.add_argument("--video", required=True, help="input video: path, http(s) URL or data URI")
        one.add_argument("--annotator", help=" | ".join(TASK_ANNOTATORS[task]))
        one.add_argument("-o", "--output", required=True, help="output .mp4 path")
        _add_runtime_flags(one)
    for task in EDIT_TASKS:
        what = (f"write the conditioning video (src_video.mp4: the source with what is generated in grey) and the "
                f"mask video (src_mask.mp4: white = generated) of a {task} job, as VACE's vace_preproccess.py "
                "writes src_video/src_mask, with the job's own frame plan and size")
        one = pre_tasks.add_parser(task, help=what, description=what)
        one.add_argument("-o", "--output", required=True, help="output folder")
        _add_field_flags(one, commands.cli_input_model(task), CONDITIONING_FIELDS)
        if task == "inpainting":  # a mask image is tracked through the clip as the job tracks it
            _setting(one, "--weights-dir", "the weights directory (its mask tracker)")
            _add_mask_tracking_flags(one)

    srv = sub.add_parser("serve", help="run the fal-compatible HTTP server", **_examples(
        "vace serve                     # http://127.0.0.1:8000, weights from ~/.cache/vace/weights, auth off",
        "VACE_API_KEYS=change-me vace serve --host 0.0.0.0 --tls --public-url https://vace.example.com"))
    _add_runtime_flags(srv)
    _add_node_flags(srv)
    _add_serve_flags(srv)

    wrk = sub.add_parser("worker", help="a worker node: run jobs from a shared --store, no public HTTP", **_examples(
        "vace worker --store postgresql://vace:secret@db:5432/vace --files /shared/vace --metrics-port 9100",
        "vace worker --store postgresql://vace:secret@db:5432/vace --files /shared/vace --devices cuda:0 cuda:1 "
        "--parallel ulysses=2"))
    _add_runtime_flags(wrk)
    _add_node_flags(wrk)
    _setting(wrk, "--models", "the models to take jobs for (default: every model with weights present)", nargs="+")
    wrk.add_argument("--metrics-port", type=int, help="serve Prometheus metrics (and a health check) on this port")

    keys = sub.add_parser("secrets", help="make a fleet's node secret and webhook signing key for its API nodes",
                          **_examples("vace secrets ./fleet-secrets   # then on every API node: vace serve --store "
                                      "URL --secrets-dir ./fleet-secrets"))
    keys.add_argument("dir", help="the folder to write them to (owner-only files; existing ones are kept)")

    demo = sub.add_parser("demo", help="build tiny weights and run one job of every endpoint (pose, depth, "
                          "inpainting, outpainting, reframe, text-to-video)")
    demo.add_argument("--weights-dir", default="tiny-weights")
    demo.add_argument("--out", default="out")
    return parser


def run(args: argparse.Namespace) -> int:
    """Dispatch the parsed command."""
    if args.command == "generate":
        return commands.generate_to_file(settings(args), args.endpoint, _fields(args), Path(args.output),
                                         model=args.model, quiet=args.quiet, parallel=args.job_parallel,
                                         preview=Path(args.preview) if args.preview else None)
    if args.command == "preprocess" and args.task in EDIT_TASKS:
        return commands.preprocess_edit_to_dir(settings(args), args.task, _fields(args), Path(args.output))
    if args.command == "preprocess":
        return commands.preprocess_to_file(settings(args), args.task, args.video, Path(args.output), args.annotator)
    if args.command == "serve":
        return commands.serve(settings(args), insecure_no_auth=args.insecure_no_auth,
                              log_level="debug" if args.verbose else "info",
                              access_log=args.verbose or args.access_log)
    if args.command == "worker":
        return commands.worker(settings(args), metrics_port=args.metrics_port)
    if args.command == "secrets":
        return commands.make_secrets(Path(args.dir))
    if args.command == "demo":
        from server.demo import run_demo

        run_demo(Path(args.weights_dir), Path(args.out))
        return 0
    if args.weights_command == "tiny":
        from weights.tiny import build_tiny_weights

        print(f"tiny random-weight models written to {build_tiny_weights(Path(args.dir))}")
        return 0
    weights_dir = settings(args).weights_dir
    if args.weights_command == "download":
        from weights.download import download

        download(args.models, weights_dir, token=os.environ.get("HF_TOKEN"))
        return 0
    from weights.check import check

    report = check(weights_dir, deep=args.deep)
    print(report.render())
    return 0 if report.ok else 1


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields given as flags (the schema validates them)."""
    model = commands.cli_input_model(args.endpoint if args.command == "generate" else args.task)
    return {name: getattr(args, name) for name in model.model_fields if getattr(args, name, None) is not None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return run(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
