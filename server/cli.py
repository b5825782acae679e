"""The ``vace`` command line: weights, local generation and the demo.

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
from pathlib import Path

from pydantic import ValidationError

from pipelines.errors import InputError, JobCancelled
from pipelines.registry import MODELS, TASKS
from pipelines.schema import VaceInput

DEFAULT_WEIGHTS_DIR = Path(os.environ.get("VACE_WEIGHTS_DIR", Path.home() / ".cache" / "vace" / "weights"))
DEFAULT_MODEL_FOR_TASK = {"pose": "wan-vace-14b", "depth": "wan-22-vace-fun-a14b"}
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
    models = ModelManager(Path(args.weights_dir))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vace", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    weights = sub.add_parser("weights", help="build, download or check model weights")
    wsub = weights.add_subparsers(dest="weights_command", required=True)
    tiny = wsub.add_parser("tiny", help="write tiny random-weight models in the real layout")
    tiny.add_argument("dir")
    download = wsub.add_parser("download", help="download real weights from the Hugging Face hub")
    download.add_argument("--models", nargs="+", default=list(DEFAULT_MODEL_FOR_TASK.values()), choices=list(MODELS))
    download.add_argument("--dir", default=str(DEFAULT_WEIGHTS_DIR))
    check = wsub.add_parser("check", help="say which weights are present, missing or corrupt")
    check.add_argument("dir", nargs="?", default=str(DEFAULT_WEIGHTS_DIR))
    check.add_argument("--deep", action="store_true", help="also verify sha256 checksums (slow)")
    weights.set_defaults(func=cmd_weights)

    gen = sub.add_parser("generate", help="run one job locally, no server")
    gen.add_argument("task", choices=TASKS)
    gen.add_argument("--model", choices=list(MODELS), help="default: wan-vace-14b for pose, wan-22-vace-fun-a14b for depth")
    gen.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS_DIR))
    gen.add_argument("-o", "--output", required=True, help="output .mp4 path")
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress bar or logs")
    _add_field_flags(gen)
    gen.set_defaults(func=cmd_generate)

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
