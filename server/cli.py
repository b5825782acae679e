"""The ``vace`` command line: weights, local generation and preprocessing, the demo and the server.

``vace generate`` runs the same ``generate()`` as the server, in-process, with a progress bar; every field of the
fal schema is a flag named after it (``--num_frames 33`` or ``--num-frames 33``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import typing
from dataclasses import fields
from pathlib import Path

from pydantic import ValidationError

from pipelines.errors import InputError, JobCancelled
from pipelines.limits import Limits
from pipelines.manifest import DEFAULT_ANNOTATORS, DEFAULT_DOWNLOAD, ENTRIES, MODELS, TASK_ANNOTATORS, canonical_key
from pipelines.registry import DEFAULT_MODEL_FOR_TASK, TASKS
from pipelines.runtime import MEMORY_MODES, PROMPT_EXPANDERS, RuntimeConfig
from pipelines.schema import VaceInput
from server.config import DEFAULT_DATA_DIR

DEFAULT_WEIGHTS_DIR = Path(os.environ.get("VACE_WEIGHTS_DIR", Path.home() / ".cache" / "vace" / "weights"))
# Fields with their own short flag names in the CLI.
FIELD_ALIASES = {"video_url": "--video", "prompt": "--prompt"}


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_field_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per schema field; values are validated by the schema itself, not by argparse."""
    for name, info in VaceInput.model_fields.items():
        flags = [FIELD_ALIASES[name]] if name in FIELD_ALIASES else []
        flags += [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        help_text = info.description or ""
        annotation = info.annotation
        if annotation is bool:
            parser.add_argument(*flags, dest=name, nargs="?", const=True, type=_parse_bool, help=help_text)
        elif any(typing.get_origin(a) is list for a in (annotation, *typing.get_args(annotation))):
            parser.add_argument(*flags, dest=name, nargs="+", help=help_text)
        else:
            parser.add_argument(*flags, dest=name, help=help_text)


def _add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    """How models sit on the device; each flag has an environment variable for container setups."""
    env = os.environ.get
    parser.add_argument("--memory-mode", choices=MEMORY_MODES, default=env("VACE_MEMORY_MODE", "auto"),
                        help="full | fp8 | group_offload | model_offload; auto picks by free VRAM (env VACE_MEMORY_MODE)")
    parser.add_argument("--attention", default=env("VACE_ATTENTION", "auto"),
                        help="diffusers attention backend; auto picks the fastest installed (env VACE_ATTENTION)")
    parser.add_argument("--compile", action="store_true", default=env("VACE_COMPILE", "") == "1",
                        help="torch.compile the repeated transformer blocks on CUDA (env VACE_COMPILE=1)")
    parser.add_argument("--pose-annotator", choices=sorted(TASK_ANNOTATORS["pose"]),
                        default=env("VACE_POSE_ANNOTATOR", DEFAULT_ANNOTATORS["pose"]),
                        help="default pose annotator for preprocess=true (env VACE_POSE_ANNOTATOR)")
    parser.add_argument("--depth-annotator", choices=sorted(TASK_ANNOTATORS["depth"]),
                        default=env("VACE_DEPTH_ANNOTATOR", DEFAULT_ANNOTATORS["depth"]),
                        help="default depth annotator for preprocess=true (env VACE_DEPTH_ANNOTATOR)")
    parser.add_argument("--safety-threshold", type=float, default=env("VACE_SAFETY_THRESHOLD", "0.5"),
                        help="enable_safety_checker flags a job when a frame's unsafe probability exceeds this "
                             "(env VACE_SAFETY_THRESHOLD)")
    parser.add_argument("--prompt-expander", choices=PROMPT_EXPANDERS, default=env("VACE_PROMPT_EXPANDER", "none"),
                        help="what serves enable_prompt_expansion: none, openai (a chat endpoint) or local (the LM "
                             "in the weights dir) (env VACE_PROMPT_EXPANDER)")
    parser.add_argument("--expander-url", default=env("VACE_EXPANDER_URL"),
                        help="OpenAI-compatible API base for --prompt-expander openai, e.g. "
                             "http://127.0.0.1:11434/v1 (env VACE_EXPANDER_URL); the key comes from "
                             "VACE_EXPANDER_API_KEY")
    parser.add_argument("--expander-model", default=env("VACE_EXPANDER_MODEL"),
                        help="openai: the model name to ask for; local: an LM folder (default: the manifest's) "
                             "(env VACE_EXPANDER_MODEL)")
    parser.add_argument("--expander-timeout", type=float, default=env("VACE_EXPANDER_TIMEOUT", "30"),
                        help="seconds to wait for the expander before keeping the prompt (env VACE_EXPANDER_TIMEOUT)")


def _runtime(args: argparse.Namespace) -> RuntimeConfig:
    try:
        return RuntimeConfig(
            memory_mode=args.memory_mode,
            attention=args.attention,
            compile=args.compile,
            annotators=(("pose", args.pose_annotator), ("depth", args.depth_annotator)),
            safety_threshold=args.safety_threshold,
            prompt_expander=args.prompt_expander,
            expander_url=args.expander_url,
            expander_model=args.expander_model,
            expander_api_key=os.environ.get("VACE_EXPANDER_API_KEY") or None,
            expander_timeout_s=args.expander_timeout,
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def _print_input_error(detail: list[dict]) -> None:
    for item in detail:
        loc = ".".join(str(p) for p in item["loc"] if p != "body")
        print(f"error: {loc}: {item['msg']} ({item['type']})", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipelines.generate import JobHooks, generate
    from pipelines.loading import ModelManager

    fields = {name: getattr(args, name) for name in VaceInput.model_fields if getattr(args, name) is not None}
    try:
        inp = VaceInput.model_validate(fields)
    except ValidationError as exc:
        _print_input_error(
            [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        )
        return 2
    model = args.model or DEFAULT_MODEL_FOR_TASK[args.task]
    output = Path(args.output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=inp.num_inference_steps, desc=f"{args.task} ({model})", unit="step", disable=args.quiet)

    def on_step(i: int, total: int) -> None:
        bar.total = total
        bar.n = i
        bar.refresh()

    def publish(path: Path, content_type: str) -> str:
        target = output if content_type == "video/mp4" else output.with_suffix(path.suffix)
        shutil.move(path, target)
        return target.as_uri()

    hooks = JobHooks(log=(lambda m: None) if args.quiet else (lambda m: bar.write(m)), step=on_step)
    models = ModelManager(Path(args.weights_dir), runtime=_runtime(args))
    try:
        with tempfile.TemporaryDirectory(prefix="vace-job-") as workdir:
            result = generate(
                inp, task=args.task, model=model, models=models, workdir=Path(workdir), publish=publish, hooks=hooks
            )
    except InputError as exc:
        bar.close()
        _print_input_error(exc.detail())
        return 2
    except (FileNotFoundError, JobCancelled) as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bar.close()
    print(result.model_dump_json(indent=2, exclude_none=True))
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    """Write the control video only: decode, annotate and encode stream frame batches end to end."""
    from pipelines.encode import encode_video
    from pipelines.context import JobContext
    from pipelines.fetch import fetch_to_file
    from pipelines.loading import ModelManager
    from pipelines.video_io import iter_frames, probe_video

    models = ModelManager(Path(args.weights_dir), runtime=_runtime(args))
    try:
        with tempfile.TemporaryDirectory(prefix="vace-preprocess-") as workdir:
            video = fetch_to_file(args.video, "video_url", Path(workdir), JobContext())
            info = probe_video(video)
            preprocessor = models.preprocessor(args.task, args.annotator)
            encoded = encode_video(preprocessor.process(iter_frames(video)), Path(args.output), info.fps, quality="maximum")
    except InputError as exc:
        _print_input_error(exc.detail())
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.task} control video: {encoded.path} ({encoded.width}x{encoded.height}, "
          f"{encoded.num_frames} frames at {encoded.fps:g} fps)")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    if args.weights_command == "tiny":
        from weights.tiny import build_tiny_weights

        path = build_tiny_weights(Path(args.dir))
        print(f"tiny random-weight models written to {path}")
        return 0
    if args.weights_command == "download":
        from weights.download import download

        download(args.models, Path(args.dir), token=os.environ.get("HF_TOKEN"))
        return 0
    from weights.check import check

    report = check(Path(args.dir), deep=args.deep)
    print(report.render())
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from server.demo import run_demo

    run_demo(Path(args.weights_dir), Path(args.out))
    return 0


def _api_keys(args: argparse.Namespace) -> frozenset[str]:
    """Keys from ``--api-key``, ``--api-keys-file`` (one per line, # comments) and ``VACE_API_KEYS`` (comma-separated)."""
    keys = set(args.api_key or [])
    keys.update(k.strip() for k in os.environ.get("VACE_API_KEYS", "").split(","))
    if args.api_keys_file:
        lines = Path(args.api_keys_file).read_text().splitlines()
        keys.update(line.split("#", 1)[0].strip() for line in lines)
    return frozenset(k for k in keys if k)


def cmd_serve(args: argparse.Namespace) -> int:
    from server.app import serve
    from server.config import ServerConfig, is_loopback
    from server.jobs import StoreLockedError

    keys = _api_keys(args)
    admin_keys = frozenset(args.admin_key or ()) | frozenset(
        k.strip() for k in os.environ.get("VACE_ADMIN_KEYS", "").split(",") if k.strip())
    if not (keys or admin_keys) and not is_loopback(args.host) and not args.insecure_no_auth:
        print(
            f"error: {args.host} is reachable from other machines and no API key is set; pass --api-key KEY "
            "(or VACE_API_KEYS), or --insecure-no-auth to serve without auth anyway",
            file=sys.stderr,
        )
        return 2
    try:
        limits = Limits().with_settings(args.limit)
    except ValueError as exc:
        print(f"error: --limit: {exc}", file=sys.stderr)
        return 2
    config = ServerConfig(
        weights_dir=Path(args.weights_dir),
        data_dir=Path(args.data_dir),
        host=args.host,
        port=args.port,
        tls=args.tls,
        public_url=args.public_url,
        api_keys=keys,
        admin_keys=admin_keys,
        allowed_hosts=tuple(h.strip() for h in args.allowed_host if h.strip()),
        limit_concurrency=args.limit_concurrency,
        timeout_keep_alive_s=args.timeout_keep_alive,
        header_timeout_s=args.header_timeout,
        devices=tuple(args.devices or ()),
        max_models=args.max_models,
        runtime=_runtime(args),
        fetch_allow=tuple(e.strip() for e in args.fetch_allow),
        max_body_bytes=args.max_body_bytes,
        limits=limits,
        retention_s=args.retention_hours * 3600,
    )
    try:
        serve(config, log_level="debug" if args.verbose else "info", access_log=args.verbose or args.access_log)
    except StoreLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vace", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    weights = sub.add_parser("weights", help="build, download or check model weights")
    wsub = weights.add_subparsers(dest="weights_command", required=True)
    tiny = wsub.add_parser("tiny", help="write tiny random-weight models in the real layout")
    tiny.add_argument("dir")
    download = wsub.add_parser("download", help="download real weights from the Hugging Face hub")
    download.add_argument("--models", nargs="+", default=list(DEFAULT_DOWNLOAD), choices=list(ENTRIES), type=canonical_key,
                          help=f"default: {' '.join(DEFAULT_DOWNLOAD)}")
    download.add_argument("--dir", default=str(DEFAULT_WEIGHTS_DIR))
    check = wsub.add_parser("check", help="say which weights are present, missing or corrupt")
    check.add_argument("dir", nargs="?", default=str(DEFAULT_WEIGHTS_DIR))
    check.add_argument("--deep", action="store_true", help="also verify sha256 checksums (slow)")
    weights.set_defaults(func=cmd_weights)

    gen = sub.add_parser("generate", help="run one job locally, no server")
    gen.add_argument("task", choices=TASKS)
    gen.add_argument("--model", choices=list(MODELS),
                     help="default: " + ", ".join(f"{m} for {t}" for t, m in DEFAULT_MODEL_FOR_TASK.items()))
    gen.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS_DIR))
    gen.add_argument("-o", "--output", required=True, help="output .mp4 path")
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress bar or logs")
    _add_runtime_flags(gen)
    _add_field_flags(gen)
    gen.set_defaults(func=cmd_generate)

    pre = sub.add_parser("preprocess", help="write the pose or depth control video of a video")
    pre.add_argument("task", choices=TASKS)
    pre.add_argument("--video", required=True, help="input video: path, http(s) URL or data URI")
    pre.add_argument("--annotator", help="; ".join(f"{t}: {' | '.join(a)}" for t, a in TASK_ANNOTATORS.items()))
    pre.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS_DIR))
    pre.add_argument("-o", "--output", required=True, help="output .mp4 path")
    _add_runtime_flags(pre)
    pre.set_defaults(func=cmd_preprocess)

    srv = sub.add_parser("serve", help="run the fal-compatible HTTP server")
    srv.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS_DIR))
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--tls", action="store_true", help="https with a self-signed certificate made on first start")
    srv.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="job store, files and certificate")
    srv.add_argument("--public-url", help="base URL for the URLs the server hands out (behind a proxy)")
    srv.add_argument("--api-key", action="append", help="accepted 'Authorization: Key ...' value (repeatable)")
    srv.add_argument("--api-keys-file", help="file with one API key per line")
    srv.add_argument("--admin-key", action="append",
                     help="an API key that also sees and cancels every key's jobs (repeatable; env VACE_ADMIN_KEYS, "
                          "comma-separated)")
    srv.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback --host without keys")
    srv.add_argument("--allowed-host", action="append", metavar="NAME",
                     default=[e for e in os.environ.get("VACE_ALLOWED_HOSTS", "").split(",") if e.strip()],
                     help="a Host name to answer besides loopback names, the bound address and --public-url's host "
                          "(repeatable; '*' answers any; env VACE_ALLOWED_HOSTS). Without API keys other hosts are "
                          "refused (DNS rebinding); with keys any host is answered unless this is given")
    srv.add_argument("--limit-concurrency", type=int, default=int(os.environ.get("VACE_LIMIT_CONCURRENCY", 512)),
                     help="connections plus running requests past which new requests get a 503 (default 512)")
    srv.add_argument("--timeout-keep-alive", type=int, default=int(os.environ.get("VACE_TIMEOUT_KEEP_ALIVE", 5)),
                     help="seconds an idle keep-alive connection stays open (default 5)")
    srv.add_argument("--header-timeout", type=float, default=float(os.environ.get("VACE_HEADER_TIMEOUT", 10)),
                     help="seconds a connection may take to send a request's headers before it is closed (default 10)")
    srv.add_argument("--devices", nargs="+", help="one worker per device, e.g. cuda:0 cuda:1 (default: all GPUs or cpu)")
    srv.add_argument("--max-models", type=int, default=2, help="models kept loaded per device")
    srv.add_argument("--access-log", action="store_true", help="log every HTTP request")
    srv.add_argument("--fetch-allow", action="append",
                     default=[e for e in os.environ.get("VACE_FETCH_ALLOW", "").split(",") if e.strip()],
                     help="non-public media source to permit: CIDR, host or host:port (repeatable; env "
                          "VACE_FETCH_ALLOW, comma-separated). By default only public addresses are fetched.")
    srv.add_argument("--max-body-bytes", type=int, default=int(os.environ.get("VACE_MAX_BODY_BYTES", 16 * 1024**2)),
                     help="largest JSON request body (default 16 MiB)")
    srv.add_argument("--limit", action="append", metavar="NAME=VALUE",
                     default=[e for e in os.environ.get("VACE_LIMITS", "").split(",") if e.strip()],
                     help="change an input limit, e.g. max_video_seconds=120 (repeatable; env VACE_LIMITS, "
                          "comma-separated). Limits: " + ", ".join(f.name for f in fields(Limits)))
    srv.add_argument("--retention-hours", type=float, default=float(os.environ.get("VACE_RETENTION_HOURS", 168)),
                     help="delete served files, abandoned uploads and finished jobs older than this (default 168, "
                          "a week; 0 keeps everything; env VACE_RETENTION_HOURS)")
    _add_runtime_flags(srv)
    srv.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="build tiny weights and run one pose and one depth job")
    demo.add_argument("--weights-dir", default="tiny-weights")
    demo.add_argument("--out", default="out")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
