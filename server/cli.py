"""The ``vace`` command line: flags in, one call to ``server/commands.py`` (or the weights tools) out.

The settings flags are made from the settings classes (``server/config.py``), as the request flags are from the
request schema: each field is the flag ``--FIELD`` (dashes for underscores), its help the field's docstring with its
``VACE_*`` variable and default, and it has no default of its own: a flag not given leaves the field to its
environment variable, then to the class's default. ``generate`` and ``preprocess`` take the job settings,
``worker`` the node's, ``serve`` all of them. Every field of an endpoint's fal schema is a flag of
``vace generate TASK`` named after it (``--num_frames 33`` or ``--num-frames 33``): ``pose``, ``depth``,
``inpainting``, ``outpainting``, ``reframe``, ``base`` (alias ``t2v``) for the base endpoint, and ``long-reframe``
(fal's ``fal-ai/wan-vace-apps/long-reframe``). ``vace preprocess TASK`` writes what a job of that task conditions the
model on.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from pipelines.limits import Limits
from pipelines.manifest import DEFAULT_DOWNLOAD, ENTRIES, MODELS, TASK_ANNOTATORS, canonical_key
from pipelines.registry import DEFAULT_MODEL_FOR_TASK, TASKS, EndpointTask
from pipelines.runtime import RuntimeSettings
from pipelines.schema import EndpointInput

from . import commands
from .config import RENAMED, JobSettings, NodeSettings, Settings, renamed_value

log = logging.getLogger(__name__)

# Fields with their own short flag names in the CLI.
FIELD_ALIASES = {
    "video_url": "--video",
    "prompt": "--prompt",
    "mask_video_url": "--mask",
    "mask_image_url": "--mask-image",
}
# `vace generate NAME`: the endpoint each name runs ("" = the base endpoint; `t2v` is an alias of `base`), and what
# it does.
GENERATE_TASKS: dict[str, EndpointTask] = {
    "pose": "pose",
    "depth": "depth",
    "inpainting": "inpainting",
    "outpainting": "outpainting",
    "reframe": "reframe",
    "base": "",
    "long-reframe": "long-reframe",
}
TASK_HELP: dict[EndpointTask, str] = {
    "pose": "pose-controlled video to video: --video is a pose video (or any video, with --preprocess)",
    "depth": "depth-controlled video to video: --video is a depth video (or any video, with --preprocess)",
    "inpainting": "regenerate what --mask (a mask video) or --mask-image marks in white, keep the rest of --video",
    "outpainting": "grow --video's frame on the --expand-* sides by --expand-ratio and generate the new border",
    "reframe": "the same footage in a new frame shape (--aspect-ratio): bars trimmed, the rest of the canvas generated",
    "": "the base endpoint: text, reference (--ref_image_urls) or first/last-frame to video without --video; with a "
    "video, --task says what it is for",
    "long-reframe": "a long --video reframed scene by scene (fal-ai/wan-vace-apps/long-reframe): scene cuts found, "
    "each scene reframed with its own framing, the whole length and the sound kept",
}
EDIT_TASKS: tuple[EndpointTask, ...] = ("inpainting", "outpainting", "reframe")
# The fields that shape a job's conditioning (what `vace preprocess` of an edit task writes), where its task has them.
CONDITIONING_FIELDS = frozenset(
    {
        "video_url",
        "mask_video_url",
        "mask_image_url",
        "num_frames",
        "frames_per_second",
        "match_input_num_frames",
        "match_input_frames_per_second",
        "temporal_downsample_factor",
        "enable_auto_downsample",
        "auto_downsample_min_fps",
        "resolution",
        "aspect_ratio",
        "expand_left",
        "expand_right",
        "expand_top",
        "expand_bottom",
        "expand_ratio",
        "trim_borders",
        "zoom_factor",
        "first_frame_url",
        "last_frame_url",
        "transparency_mode",
    }
)
EXPERT_NAMES = ("high", "low", "both")
LAYERS: tuple[type[RuntimeSettings], ...] = (RuntimeSettings, JobSettings, NodeSettings, Settings)
"""The settings classes, each a layer over the one before: their fields are the flags of generate and preprocess
(JobSettings), worker (NodeSettings) and serve (Settings)."""
SINGULAR_FLAGS = {
    "api_key": "api_keys",
    "admin_key": "admin_keys",
    "allowed_host": "allowed_hosts",
    "cors_origin": "cors_origins",
    "limit": "limits",
}
"""Flags of list settings that were singular before every flag took its setting's name: still accepted."""
ENV_ONLY = frozenset({"expander_api_key"})
"""Settings without a flag: secrets that a command line would show to every user of the machine (``ps``). The
server's own API keys keep their flag for compatibility; its help says to prefer the variable."""


class SettingsError(ValueError):
    """Flags or environment variables that make no valid :class:`Settings`."""


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _shown(default: Any) -> str:
    """A setting's default as ``--help`` shows it ("" for none: the help says what unset means)."""
    if default is None or default in ((), frozenset(), ""):
        return ""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, (tuple, frozenset)):
        return " ".join(sorted(default) if isinstance(default, frozenset) else default)
    if isinstance(default, Path):
        return str(default).replace(str(Path.home()), "~", 1)
    if is_dataclass(default):
        return ", ".join(f"{f.name}={getattr(default, f.name)}" for f in fields(default))
    return str(default)


def _add_setting(group: argparse._ArgumentGroup, name: str, info: FieldInfo) -> None:
    """The flag ``--NAME`` of the setting ``name``: its help is the field's docstring, the environment variable and
    the default. Argparse only splits lists and reads numbers; ``Settings`` checks every value (one set of rules)."""
    shown = _shown(info.default)
    kinds = (info.annotation, *typing.get_args(info.annotation))
    kwargs: dict[str, Any] = {}
    if bool in kinds:
        kwargs = {"nargs": "?", "const": True, "metavar": "true|false"}
    elif any(typing.get_origin(kind) in (tuple, frozenset) for kind in kinds) or info.annotation is Limits:
        singular = name.upper().removesuffix("S") if info.annotation is not Limits else "NAME=VALUE"
        kwargs = {"nargs": "+", "action": "extend", "metavar": singular}
    elif typing.get_origin(info.annotation) is typing.Literal:
        kwargs = {"choices": typing.get_args(info.annotation)}
    elif info.annotation in (int, float):
        kwargs = {"type": info.annotation}
    help_text = f"{info.description or ''} (env VACE_{name.upper()}{'; default ' + shown if shown else ''})"
    group.add_argument(
        f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"), **kwargs
    )


class _OldFlag(argparse.Action):
    """A setting's flag from before its rename (:data:`server.config.RENAMED`, :data:`SINGULAR_FLAGS`): its value,
    in the new unit, goes to the new setting, with a warning that names it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        old = (option_string or "").lstrip("-").replace("-", "_")
        if old in RENAMED:
            setattr(namespace, self.dest, renamed_value(old, values)[1])
            return
        log.warning(
            "--%s is renamed --%s; the old name still works for now", old.replace("_", "-"), self.dest.replace("_", "-")
        )
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), *values])


def _add_settings(parser: argparse.ArgumentParser, layer: type[RuntimeSettings]) -> None:
    """A flag for every field of the settings class ``layer`` (``server/config.py``), a group of them per layer
    below it, and the old flags of renamed ones, hidden. A flag has no default of its own: one not given leaves the
    field to its ``VACE_*`` environment variable, then to the class's default."""
    named: set[str] = set()
    for cls in LAYERS[: LAYERS.index(layer) + 1]:
        own = {name: info for name, info in cls.model_fields.items() if name not in named}
        named |= own.keys()
        env_only = [
            f"VACE_{name.upper()} (environment only): {own[name].description}" for name in ENV_ONLY & own.keys()
        ]
        group = parser.add_argument_group(
            f"settings: {(cls.__doc__ or '').splitlines()[0].rstrip('.')}",
            " ".join(env_only).replace("%", "%%") or None,
        )
        for name, info in own.items():
            if name not in ENV_ONLY:
                _add_setting(group, name, info)
    for old, new in {**{old: new for old, (new, _) in RENAMED.items()}, **SINGULAR_FLAGS}.items():
        if new in named:
            parser.add_argument(
                f"--{old.replace('_', '-')}",
                dest=new,
                action=_OldFlag,
                default=argparse.SUPPRESS,
                nargs="+" if old in SINGULAR_FLAGS else None,
                help=argparse.SUPPRESS,
            )


def settings(args: argparse.Namespace) -> Settings:
    """The settings from the flags given, the environment and the defaults, in that order."""
    given = {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise SettingsError(
            "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        ) from None


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


def _add_field_flags(
    parser: argparse.ArgumentParser, model: type[EndpointInput], only: frozenset[str] | None = None
) -> None:
    """One flag per field of ``model`` (or of its fields in ``only``; ``loras``: a repeatable ``--lora``); values are
    validated by the schema itself, not by argparse."""
    if only is None and "loras" in model.model_fields:
        parser.add_argument(
            "--lora",
            dest="loras",
            action="append",
            type=parse_lora,
            metavar="PATH[:SCALE[:high|low|both]]",
            help="a LoRA for this job (repeatable): a local .safetensors file, a URL or the name of "
            "one in the weights directory's loras/ folder; scale defaults to 1, the expert to both",
        )
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


def _examples(*lines: str) -> dict[str, Any]:
    """``add_parser`` keywords for a help text that ends with these command lines, kept as written.
    ``tests/test_documented_commands.py`` runs every one of them, so each must work as typed."""
    return {
        "epilog": "examples:\n" + "\n".join(f"  {line}" for line in lines),
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vace", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    weights = sub.add_parser("weights", help="build, download or check model weights")
    wsub = weights.add_subparsers(dest="weights_command", required=True)
    tiny = wsub.add_parser(
        "tiny",
        help="write tiny random-weight models in the real layout",
        **_examples("vace weights tiny ./tiny-weights   # then: vace serve --weights-dir ./tiny-weights"),
    )
    tiny.add_argument("dir")
    download = wsub.add_parser(
        "download",
        help="download real weights from the Hugging Face hub",
        **_examples(
            "vace weights download --dir /models/vace                  # both endpoints, annotators, interpolators",
            "vace weights download --dir /models/vace --models wan-vace-1.3b safety-checker",
        ),
    )
    download.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_DOWNLOAD),
        choices=list(ENTRIES),
        type=canonical_key,
        help=f"default: {' '.join(DEFAULT_DOWNLOAD)}",
    )
    download.add_argument(
        "--dir",
        dest="weights_dir",
        default=argparse.SUPPRESS,
        help="default: VACE_WEIGHTS_DIR or ~/.cache/vace/weights",
    )
    check = wsub.add_parser(
        "check",
        help="say which weights are present, missing or corrupt",
        **_examples("vace weights check /models/vace --deep"),
    )
    check.add_argument(
        "weights_dir", nargs="?", default=argparse.SUPPRESS, help="default: VACE_WEIGHTS_DIR or ~/.cache/vace/weights"
    )
    check.add_argument("--deep", action="store_true", help="also verify sha256 checksums (slow)")

    gen = sub.add_parser(
        "generate",
        help="run one job locally, no server",
        **_examples(
            'vace generate pose --video dance.mp4 --prompt "a dancer in a red dress on a beach" -o out.mp4',
            'vace generate pose --video dance.mp4 --prompt "a dancer" --parallel cfg=2 -o out.mp4   # CPU: 2 processes',
        ),
    )
    gen_tasks = gen.add_subparsers(
        dest="task",
        required=True,
        metavar="TASK",
        help=" | ".join(GENERATE_TASKS) + " (t2v: the base endpoint, as base)",
    )
    for name, task in GENERATE_TASKS.items():
        one = gen_tasks.add_parser(
            name, aliases=["t2v"] if name == "base" else [], help=TASK_HELP[task], description=TASK_HELP[task]
        )
        one.set_defaults(endpoint=task)
        one.add_argument(
            "--model",
            choices=list(MODELS),
            default=DEFAULT_MODEL_FOR_TASK[task],
            help="the model (default: %(default)s, whose fal app offers this endpoint)",
        )
        one.add_argument("-o", "--output", required=True, help="output .mp4 path")
        one.add_argument("-q", "--quiet", action="store_true", help="no progress bar or logs")
        one.add_argument(
            "--preview",
            metavar="FILE",
            help="write a live preview of the video while it is denoised "
            "to FILE: an animated WebP, replaced after every step",
        )
        # Not the serve/worker setting of that name (a group over --devices): this job's own local group, so its
        # dest is no Settings field and settings() leaves it alone.
        one.add_argument(
            "--parallel",
            dest="job_parallel",
            metavar="SPEC",
            help="one job on several devices: "
            "cfg=2, ulysses=N, ring=N or a combination (cfg=2,ulysses=4); on CPU as that many local "
            "processes, on CUDA one GPU each",
        )
        _add_settings(one, JobSettings)
        _add_field_flags(one, commands.cli_input_model(task))

    pre = sub.add_parser(
        "preprocess",
        help="write what a job conditions the model on: the pose or depth control "
        "video, or an edit's conditioning video and mask video",
        **_examples("vace preprocess depth --video dance.mp4 --annotator depth_anything_v2 -o depth.mp4"),
    )
    pre_tasks = pre.add_subparsers(dest="task", required=True, metavar="TASK", help=" | ".join((*TASKS, *EDIT_TASKS)))
    for task in TASKS:
        one = pre_tasks.add_parser(task, help=f"write the {task} control video of a video")
        one.add_argument("--video", required=True, help="input video: path, http(s) URL or data URI")
        one.add_argument("--annotator", help=" | ".join(TASK_ANNOTATORS[task]))
        one.add_argument("-o", "--output", required=True, help="output .mp4 path")
        _add_settings(one, JobSettings)
    for task in EDIT_TASKS:
        what = (
            f"write the conditioning video (src_video.mp4: the source with what is generated in grey) and the "
            f"mask video (src_mask.mp4: white = generated) of a {task} job, as VACE's vace_preproccess.py "
            "writes src_video/src_mask, with the job's own frame plan and size"
        )
        one = pre_tasks.add_parser(task, help=what, description=what)
        one.add_argument("-o", "--output", required=True, help="output folder")
        _add_field_flags(one, commands.cli_input_model(task), CONDITIONING_FIELDS)
        if task == "inpainting":  # a mask image is tracked through the clip as the job tracks it
            _add_settings(one, JobSettings)

    srv = sub.add_parser(
        "serve",
        help="run the fal-compatible HTTP server",
        **_examples(
            "vace serve                     # http://127.0.0.1:8000, weights from ~/.cache/vace/weights, auth off",
            "VACE_API_KEYS=change-me vace serve --host 0.0.0.0 --tls --public-url https://vace.example.com",
        ),
    )
    srv.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback --host without keys")
    srv.add_argument("--access-log", action="store_true", help="log every HTTP request")
    _add_settings(srv, Settings)

    wrk = sub.add_parser(
        "worker",
        help="a worker node: run jobs from a shared --store, no public HTTP",
        **_examples(
            "vace worker --store postgresql://vace:secret@db:5432/vace --files /shared/vace --metrics-port 9100",
            "vace worker --store postgresql://vace:secret@db:5432/vace --files /shared/vace --devices cuda:0 cuda:1 "
            "--parallel ulysses=2",
        ),
    )
    wrk.add_argument("--metrics-port", type=int, help="serve Prometheus metrics (and a health check) on this port")
    _add_settings(wrk, NodeSettings)

    keys = sub.add_parser(
        "secrets",
        help="make a fleet's node secret and webhook signing key for its API nodes",
        **_examples(
            "vace secrets ./fleet-secrets   # then on every API node: vace serve --store "
            "URL --secrets-dir ./fleet-secrets"
        ),
    )
    keys.add_argument("dir", help="the folder to write them to (owner-only files; existing ones are kept)")

    demo = sub.add_parser(
        "demo",
        help="build tiny weights and run one job of every endpoint (pose, depth, "
        "inpainting, outpainting, reframe, text-to-video)",
    )
    demo.add_argument("--weights-dir", default="tiny-weights")
    demo.add_argument("--out", default="out")
    return parser


def run(args: argparse.Namespace) -> int:
    """Dispatch the parsed command."""
    if args.command == "generate":
        return commands.generate_to_file(
            settings(args),
            args.endpoint,
            _fields(args),
            Path(args.output),
            model=args.model,
            quiet=args.quiet,
            parallel=args.job_parallel,
            preview=Path(args.preview) if args.preview else None,
        )
    if args.command == "preprocess" and args.task in EDIT_TASKS:
        return commands.preprocess_edit_to_dir(settings(args), args.task, _fields(args), Path(args.output))
    if args.command == "preprocess":
        return commands.preprocess_to_file(settings(args), args.task, args.video, Path(args.output), args.annotator)
    if args.command == "serve":
        return commands.serve(
            settings(args),
            insecure_no_auth=args.insecure_no_auth,
            log_level="debug" if args.verbose else "info",
            access_log=args.verbose or args.access_log,
        )
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
