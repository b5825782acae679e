"""The report: rows as a text table for the terminal and as one markdown block per device kind in the section of
``docs/BENCHMARKS.md`` that ``bench/gpu.py`` owns.

Each block ends with its data as JSON in an HTML comment, so a later run re-reads the blocks it does not replace (the
other device kind's, or with ``--append`` its own) from the file itself and renders them again unchanged."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from .plan import BUDGET_MODE

START, END = "<!-- bench/gpu.py start -->", "<!-- bench/gpu.py end -->"
DATA_PREFIX, DATA_SUFFIX = "<!-- bench/gpu.py data: ", " -->"

COLUMNS = (
    "model",
    "job",
    "pipeline",
    "attention",
    "memory",
    "s/step",
    "end-to-end s",
    "peak GPU GiB",
    "peak RSS GiB",
    "cache reused",
    "note",
)


def _num(value: object, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row_cells(row: dict) -> list[str]:
    """A row (as stored in a block's data) in the order of ``COLUMNS``."""
    return [
        str(row["model"]),
        str(row["job"]),
        str(row["pipeline"]),
        str(row["attention"]),
        str(row["memory"]),
        _num(row["s_per_step"], 3),
        _num(row["e2e_s"]),
        _num(row["peak_gpu_gib"]),
        _num(row["peak_rss_gib"]),
        str(row["reused"]),
        str(row["note"]),
    ]


def text_table(rows: list[dict]) -> str:
    """The rows as aligned plain text, for the terminal at the end of a run."""
    table = [list(COLUMNS)] + [row_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in table)


COMMON_NOTES = (
    "The step cache's decisions depend on how the transformer's input changes from step to step, which random "
    "weights do not reproduce: the acceleration low/regular rows show the mechanism working and what a reused call "
    "saves, not the speed-up real weights give (measure that with real weights).",
    "Wan2.2 VACE-Fun A14B: both experts load the same random transformer files (the A14B folder links to the 14B's; "
    "one copy on disk) as two separate modules, so memory and compute are those of two experts; boundary_ratio 0.875.",
    "The tokenizer is a small word-level stand-in (UMT5's cannot be fetched offline); prompts are padded to 512 "
    "tokens as with the real one, so text encoding costs the same. CFG 5 (two transformer calls per step), UniPC, "
    "shift 5, seed 42, a synthetic pose control video, no mask (pure control).",
    "s/step: mean of steps 2..N (step 1 carries one-time work). End-to-end: one pipeline call (text encoding, VAE "
    "encoding of the control video, denoising, VAE decoding) with the models already loaded; media fetching and MP4 "
    "encoding are not included.",
    "diffusers: `WanVACEPipeline.from_pretrained(folder, vae=<fp32 AutoencoderKLWan>, torch_dtype=...)` moved to the "
    "device, default attention, `UniPCMultistepScheduler(prediction_type='flow_prediction', use_flow_sigmas=True, "
    "flow_shift=5)`. Ours: `ModelManager(weights, runtime=RuntimeConfig(memory_mode, attention)).get(model)"
    ".pipeline(scheduler)` and `denoise()` from `pipelines/denoise.py`; the other attention backends are switched "
    "on the loaded transformers with `set_attention_backend`.",
    "Parallel rows (`ours, ..., SPEC`): one job on a group of GPUs (cuda:0..) through the server's own group; "
    "s/step on rank 0; peak GPU is rank 0's allocator peak, and the note gives every GPU's peak device-wide memory "
    "in use (NVML, sampled every 20 ms: caches and CUDA contexts included).",
    "Peak GPU: `torch.cuda.max_memory_allocated` (tensors; the allocator's cache and the CUDA context come on top). "
    "Peak RSS: the process's resident memory sampled every 20 ms (pinned host copies of offloaded weights count).",
)


def notes(data: dict) -> list[str]:
    """What only this block's run needs said; ``COMMON_NOTES`` hold for every block."""
    if data["size"] == "real":
        out = [
            "Random weights in the real architectures (Wan VACE 14B transformer 17.3 B parameters, UMT5-XXL encoder "
            "5.7 B, Wan VAE): shapes and FLOPs are those of the real models, so time and memory are representative; "
            "the videos are noise."
        ]
    else:
        out = [
            "Tiny models (`weights/tiny/wan.py`): this block shows that the script runs end to end; its numbers say "
            "nothing about GPU speed or memory."
        ]
    out.append(
        "Each configuration was warmed up with one 2-step 320x192x5 call."
        if data.get("warmup", True)
        else "No warm-up call: the first row of each configuration includes first-call costs."
    )
    if data["kind"] == "cuda":
        out.append(
            "GiB cap: `torch.cuda.set_per_process_memory_fraction(cap / total)` before loading, with memory mode "
            f"{BUDGET_MODE} (what `auto` picks with under 40 GiB free); the CUDA context (~0.5 GiB) is outside the "
            "cap, so a real 24 GB card has slightly less."
        )
    else:
        out.append("The 24 GiB-cap rows need CUDA (`torch.cuda.set_per_process_memory_fraction`) and are skipped here.")
    return out


def render_block(data: dict) -> str:
    """One device kind's block: command, device, table, load times, notes, then the data ``read_blocks`` reads."""
    title = "GPU, real-size models" if data["kind"] == "cuda" else "CPU, tiny models (smoke run)"
    lines = [f"### {title}", ""]
    lines += [f"Command (from the repository root): `{cmd}`" for cmd in data["commands"]]
    lines += [
        "",
        f"Device: {data['device']}. torch {data['versions']['torch']}, diffusers {data['versions']['diffusers']}, "
        f"transformers {data['versions']['transformers']}. {data['date']}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row_cells(r)) + " |" for r in data["rows"]]
    if data["loads"]:
        lines += ["", "Loading: " + "; ".join(f"{ld['what']} {ld['seconds']:.1f} s" for ld in data["loads"]) + "."]
    lines += [""] + [f"- {n}" for n in notes(data)]
    payload = json.dumps(data, separators=(",", ":")).replace("--", "-\\u002d")  # no "--" inside an HTML comment
    lines += ["", DATA_PREFIX + payload + DATA_SUFFIX]
    return "\n".join(lines)


def read_blocks(text: str) -> list[dict]:
    """The data of every block in the section (none where the section is missing or a line does not parse)."""
    if START not in text or END not in text:
        return []
    section = text[text.index(START) : text.index(END)]
    blocks = []
    for line in section.splitlines():
        if line.startswith(DATA_PREFIX) and line.endswith(DATA_SUFFIX):
            with contextlib.suppress(json.JSONDecodeError):
                blocks.append(json.loads(line[len(DATA_PREFIX) : -len(DATA_SUFFIX)]))
    return blocks


def write_doc(path: Path, data: dict) -> None:
    """Replace this device kind's block inside the marked section; everything else in the file stays."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    blocks = [b for b in read_blocks(text) if b.get("kind") != data["kind"]] + [data]
    blocks.sort(key=lambda b: b["kind"] != "cuda")  # GPU first
    section = "\n".join(
        [
            START,
            "## Denoising: plain diffusers vs this server (`bench/gpu.py`)",
            "",
            "Written by `bench/gpu.py` (`docs/GPU_BENCH.md` says what is measured and how); do not edit by hand.",
            "",
            *[f"- {n}" for n in COMMON_NOTES],
            "",
            "\n\n".join(render_block(b) for b in blocks),
            END,
        ]
    )
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
