"""Denoising speed and memory of Wan VACE: a plain diffusers ``WanVACEPipeline.__call__`` against this server's
path (``ModelManager`` + ``denoise()``), in one run, written to ``docs/BENCHMARKS.md``.

Why: the server's claims (step cache, attention backends, memory modes that fit a 24 GB card) need numbers at the
real model size, measured the same way each time, next to what plain diffusers does with the same weights and inputs.
No model hub is reachable where this runs, so the models are the real architectures with random weights: the same
shapes and FLOPs as Wan2.1 VACE 14B / Wan2.2 VACE-Fun A14B, the UMT5-XXL text encoder and the Wan VAE.

What one run measures, for each model and each job (480p = 832x480 and 720p = 1280x720, 81 frames):

* ``diffusers``: ``WanVACEPipeline.from_pretrained(folder, vae=<fp32 VAE>, torch_dtype=bf16).to("cuda")`` (the
  diffusers documentation's recipe), default attention, ``UniPCMultistepScheduler(flow_prediction, flow_shift=5)``;
* ours at acceleration none / low / regular (the step cache of ``pipelines/step_cache.py``), memory mode ``full``
  and the attention backend ``auto`` resolves to;
* ours at acceleration none with every other attention backend available (switched on the loaded transformers
  with diffusers' ``set_attention_backend``, the call ``ModelManager`` makes when it loads);
* ours at acceleration none in memory modes ``fp8``, ``group_offload``, ``model_offload``, and ``group_offload``
  under a 24 GiB cap (``torch.cuda.set_per_process_memory_fraction``, set before loading);
* ``--parts fastpath``: whole jobs of the README's LoRA fast path (4 steps, guidance 1, a random rank-64 stand-in
  for the distillation LoRA on every linear layer of the blocks, one per A14B expert) against the default request
  (30 steps, guidance 5, acceleration regular), in seconds per job (the end-to-end column); these rows take the
  request's own step counts, not ``--steps``.
* ours at acceleration none on a job group (``--parallel SPEC``) of 2, 4 and 8 GPUs as the machine has them, each
  SPEC of ``plan.PARALLEL_SPECS`` (``bench/gpu_bench/multi.py``): the server's own group (rank 0 in the
  configuration's process, the other ranks spawned), s/step on rank 0 and the peak memory of every GPU of the group.

Columns: seconds per denoising step (mean of steps 2..N; step 1 carries one-time work), end-to-end seconds of one
pipeline call (text encoding, VAE encoding of the control video, denoising, VAE decoding; models are loaded and
warmed up before), peak VRAM (``torch.cuda.max_memory_allocated``, reset before each job), peak process RSS
(psutil, sampled every 20 ms) and the transformer calls the step cache reused.

How "ours" is loaded: the random modules are built once and saved with ``save_pretrained`` into a temporary weights
directory in the layout of ``weights/LAYOUT.md``; every configuration then goes through the server's own
``ModelManager(weights_dir, runtime=RuntimeConfig(...)).get(key).pipeline(scheduler)``, so the loading code under test
is the code that serves real weights (``ModelManager`` has no public way to take ready modules). Disk: the A14B
folder's ``transformer`` and ``transformer_2`` are relative symlinks to the 14B's ``transformer`` folder, so both
experts load the same random weights as two separate modules (memory and compute of two experts, one 35 GB copy on
disk). Total on disk: ~35 GB transformer + ~11.4 GB text encoder + 0.5 GB VAE = ~47 GB.

Each configuration (model x pipeline x memory mode) runs in its own child process on CUDA, so memory is returned
between configurations, peaks are not inflated by an earlier one, and a crash (host out of memory, a broken kernel)
costs that configuration's rows only; on CPU they run in this process, where starting Python costs more than a tiny
job (``--isolate yes`` forces children there too). Rows are written to the markdown section after every
configuration, so an interrupted run still leaves what it measured.

Run on a GPU (real size; needs CUDA, ~100 GB of VRAM for the full matrix: the A14B in ``full`` mode holds ~81 GB of
weights; ~50 GB free disk for the weights (``--weights-dir``); ~128 GB host RAM, which the A14B's offload modes need;
and the project's Python dependencies, diffusers 0.42 among them)::

    python bench/gpu.py                     # the whole matrix: both models, 480p and 720p, 6 steps
    python bench/gpu.py --quick             # the 14B at 480p, 4 steps (~10 pipeline calls)
    python bench/gpu.py --models wan-vace-14b --jobs 480p --parts baseline accel --weights-dir /data/w --keep-weights
    python bench/gpu.py --append --models wan-22-vace-fun-a14b --weights-dir /data/w --keep-weights

The whole matrix is ~40 pipeline calls at real size plus ~12 model loads: about two hours on one H200 by the FLOP
count (~7 s per step at 480p, ~30 s at 720p with CFG), more in the offload modes; ``--quick`` about a quarter hour
including writing the weights. Where a command may run only minutes, run slices: keep the weights between calls with
``--weights-dir DIR --keep-weights`` (reused when DIR holds this script's weights) and merge the slices' rows into
one block with ``--append``.

Run on CPU (tiny models of ``weights/tiny/wan.py``; checks the script end to end; its numbers say nothing about GPU
speed). ``--quick`` (416x240, 9 frames, 3 steps, no warm-up, the A14B only for diffusers vs the accelerations) takes
about five minutes on two busy cores; without it (17 frames, 4 steps, the whole matrix) about three times that::

    .venv/bin/python bench/gpu.py --quick

The section between ``<!-- bench/gpu.py start -->`` and ``<!-- bench/gpu.py end -->`` holds one block per device
kind (cuda, cpu): a run replaces its own kind's block and leaves the other, and the rest of the file untouched.

This file is the command line and the run's loop; the parts it drives (the plan, the random weights, the meter, the
two runners, one configuration, the child processes, the report) live in ``bench/gpu_bench/``, whose ``__init__``
names each module's job.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
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
        "(real-size random-weight models on CUDA, tiny ones on CPU; the module docstring has the details)."
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
        phases += plan_phases(model, parts, extras, cuda, args.budget_gib,
                              torch.cuda.device_count() if cuda else 1)
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
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
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
