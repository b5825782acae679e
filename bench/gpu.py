"""Denoising speed and memory of Wan VACE at real size with random weights: a plain diffusers
``WanVACEPipeline.__call__`` against this server's path (``ModelManager`` + ``denoise()``), in one run, written to
``docs/BENCHMARKS.md``.

What it measures, how, and how to run it (GPU and CPU): ``docs/GPU_BENCH.md``. This file is the command line and the
run's loop; the parts it drives live in ``bench/gpu_bench/``, whose ``__init__`` names each module's job.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/gpu.py` without the project installed
    sys.path.insert(0, str(ROOT))

import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bench.gpu_bench.child import child_main, execute  # noqa: E402
from bench.gpu_bench.phases import Row, quiet_libraries  # noqa: E402
from bench.gpu_bench.plan import (  # noqa: E402
    JOBS,
    MODEL_KEYS,
    MODEL_NAMES,
    PARTS,
    Settings,
    attention_backends,
    plan_phases,
)
from bench.gpu_bench.report import COMMON_NOTES, notes, read_blocks, text_table, write_doc  # noqa: E402
from bench.gpu_bench.synthetic_weights import (  # noqa: E402
    ARCHITECTURES,
    MARKER_FILE,
    Architecture,
    weight_bytes,
    weights_marker,
)
from pipelines.runtime import GIB  # noqa: E402

DOC = ROOT / "docs" / "BENCHMARKS.md"


def display_command() -> str:
    """This run's command line as the report shows it: the interpreter relative to the repository where it lies."""
    exe = Path(sys.executable)
    try:
        python = str(exe.relative_to(ROOT))
    except ValueError:
        python = exe.name
    return shlex.join([python, *sys.argv])


def prepare_weights(
    root: Path, arch: Architecture, seed: int, settings: Settings, isolate: bool, scratch: Path
) -> tuple[list[dict], bool]:
    """Reuse ``root`` when it holds this script's weights, else build them there (after a disk check).
    Returns the build's records and whether this run created the folder's contents (only those are deleted)."""
    marker = root / MARKER_FILE
    if marker.is_file() and json.loads(marker.read_text()) == weights_marker(arch, seed):
        print(f"reusing the random weights in {root}")
        return [], False
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty and holds no weights of this script: give an empty or new --weights-dir")
    sizes = weight_bytes(arch)
    need = sum(sizes.values())
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    print(
        f"writing {arch.name} random weights to {root}: transformer {sizes['transformer'] / GIB:.1f} GiB (shared by "
        f"both models' folders), text encoder {sizes['text_encoder'] / GIB:.1f} GiB, VAE {sizes['vae'] / GIB:.2f} GiB; "
        f"{free / GIB:.0f} GiB free"
    )
    if free < need * 1.03 + GIB:
        raise SystemExit(f"not enough disk in {root}: need ~{need / GIB:.0f} GiB, {free / GIB:.0f} GiB free")
    records, failure = execute("build", settings, None, seed, isolate, scratch)
    if failure:
        shutil.rmtree(root, ignore_errors=True)
        raise SystemExit(f"building the weights failed: {failure}")
    return records, True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Denoising speed and memory of Wan VACE: plain diffusers vs this server, in one run "
        "(real-size random-weight models on CUDA, tiny ones on CPU; docs/GPU_BENCH.md has the details)."
    )
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="smaller matrix: GPU the 14B at 480p, 4 steps; CPU 9 frames, 3 steps, no warm-up, the A14B only "
        "diffusers and the accelerations",
    )
    add("--size", choices=sorted(ARCHITECTURES), help="model size (default: real on CUDA, tiny on CPU)")
    add("--device", help="torch device (default: cuda if available, else cpu)")
    add("--models", nargs="+", choices=MODEL_KEYS, help="default: both")
    add("--jobs", nargs="+", choices=list(JOBS), help="default: 480p 720p (real); 240p, --quick 240p-short (tiny)")
    add("--steps", type=int, help="denoising steps per job (default: 6 real, 4 tiny; --quick 4 / 3)")
    add("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which comparisons (default: all)")
    add("--backends", nargs="*", help="attention backends to compare with auto's choice (default: the available)")
    add("--budget-gib", type=float, default=24.0, help="the memory cap of the budget rows")
    add("--weights-dir", type=Path, help="where the random weights go (default: a temporary folder)")
    add("--keep-weights", action="store_true", help="keep --weights-dir for a later run")
    add("--doc", type=Path, default=DOC, help="markdown file to write the section into")
    add("--no-doc", action="store_true", help="print only")
    add("--append", action="store_true", help="merge rows into this device kind's block instead of replacing it")
    add("--json", type=Path, help="also write the block's data (rows, loads) as JSON here")
    add("--isolate", choices=("auto", "yes", "no"), default="auto", help="a process per configuration (auto: CUDA)")
    add("--no-warmup", action="store_true")
    add("--seed", type=int, default=0, help="seed of the random weights")
    add("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.keep_weights and args.weights_dir is None:
        raise SystemExit("--keep-weights needs --weights-dir")
    if args.child:
        child_main(args.child)
        return
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    size = args.size or ("real" if cuda else "tiny")
    if size == "real" and not cuda:
        sys.exit("real-size models need a CUDA device; on CPU run the tiny matrix (the default)")
    real = size == "real"
    if real:
        jobs = args.jobs or (["480p"] if args.quick else ["480p", "720p"])
    else:
        jobs = args.jobs or (["240p-short"] if args.quick else ["240p"])
    steps = args.steps or ((4 if args.quick else 6) if real else (3 if args.quick else 4))
    models = args.models or (list(MODEL_KEYS[:1]) if args.quick and real else list(MODEL_KEYS))
    isolate = cuda if args.isolate == "auto" else args.isolate == "yes"
    default_backend, extras = attention_backends(device, args.backends)
    quiet_libraries()

    scratch = Path(tempfile.mkdtemp(prefix="vace-bench-"))
    weights_dir = args.weights_dir.resolve() if args.weights_dir else scratch / "weights"
    warmup = not args.no_warmup and not (args.quick and not real)  # on CPU a warm-up call costs more than it fixes
    settings = Settings(str(weights_dir), str(device), size, jobs, steps, warmup)
    phases = []
    for i, model in enumerate(models):
        # A quick CPU run compares the second model's two experts only through diffusers vs the step cache.
        parts = [p for p in args.parts if p in ("baseline", "accel")] if args.quick and not real and i else args.parts
        phases += plan_phases(model, parts, extras, cuda, args.budget_gib, torch.cuda.device_count() if cuda else 1)
    print(
        f"bench/gpu.py: {size} models on {device}; models {', '.join(models)}; jobs {', '.join(jobs)}; {steps} steps; "
        f"attention auto={default_backend}, also {', '.join(extras) or 'none'}; {len(phases)} configurations"
        + (" (one process each)" if isolate else "")
    )

    existing = read_blocks(args.doc.read_text()) if args.doc.exists() else []
    previous = [b for b in existing if b.get("kind") == device.type]
    data: dict = {
        "kind": device.type,
        "size": size,
        "warmup": warmup,
        "device": str(device),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "commands": [display_command()],
        "rows": [],
        "loads": [],
    }
    if args.append and previous:
        data["commands"] = [*previous[0]["commands"], *data["commands"]]
        data["rows"], data["loads"] = previous[0]["rows"], previous[0]["loads"]

    def absorb(records: list[dict]) -> None:
        for record in records:
            if record["type"] == "device":
                data["device"] = record["name"]
            elif record["type"] == "load":
                data["loads"].append({"what": record["what"], "seconds": record["seconds"]})
            elif record["type"] == "row":
                row = {k: v for k, v in record.items() if k != "type"}
                key = Row(**row).key()
                data["rows"] = [r for r in data["rows"] if Row(**r).key() != key] + [row]

    def save() -> None:
        if not args.no_doc:
            write_doc(args.doc, data)
        if args.json:
            args.json.write_text(json.dumps(data, indent=1))

    started = time.perf_counter()
    built = False
    try:
        records, built = prepare_weights(weights_dir, ARCHITECTURES[size], args.seed, settings, isolate, scratch)
        absorb(records)
        for phase in phases:
            print(f"- {phase.title()}", flush=True)
            records, failure = execute("phase", settings, phase, args.seed, isolate, scratch)
            absorb(records)
            if failure:
                row = Row(MODEL_NAMES[phase.model], "-", phase.pipeline, phase.attention, phase.memory_label())
                row.note = failure
                absorb([row.record()])
            save()
    finally:
        if args.keep_weights:
            print(f"weights kept in {weights_dir} (reuse them: --weights-dir {weights_dir} --keep-weights)")
        elif built and args.weights_dir is not None:
            shutil.rmtree(weights_dir, ignore_errors=True)  # only what this run wrote
        shutil.rmtree(scratch, ignore_errors=True)  # the default weights folder lives here

    print()
    print(text_table(data["rows"]))
    print()
    for note in (*notes(data), *COMMON_NOTES):
        print(f"* {note}")
    where = "" if args.no_doc else f"; written to {args.doc}"
    print(f"\n{len(phases)} configurations in {time.perf_counter() - started:.0f} s{where}")


if __name__ == "__main__":
    main()
