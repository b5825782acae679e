"""One build or configuration run in this process or in a child process, its records collected through a file.

Why children: on CUDA each configuration gets a fresh process, so memory is returned between configurations, peaks
are not inflated by an earlier one, and a crash (host out of memory, a broken kernel) costs that configuration's rows
only. The child is ``bench/gpu.py --child SPEC``; it appends one JSON record a line to the file SPEC names, so the
parent still reads what a child measured before it died."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from .meter import release
from .multi import run_group_phase
from .phases import run_build, run_phase, short_error
from .plan import Phase, Settings
from .report import row_cells

ENTRY = Path(__file__).resolve().parent.parent / "gpu.py"  # the script whose hidden --child option calls child_main


def child_main(spec_json: str) -> None:
    """Run the build or phase ``spec_json`` describes, appending its records to the spec's file."""
    spec = json.loads(spec_json)
    settings = Settings(**spec["settings"])
    out = Path(spec["out"])

    def emit(record: dict[str, object]) -> None:
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if record["type"] == "row":
            print("  " + " | ".join(row_cells(record)), flush=True)

    if spec["kind"] == "build":
        run_build(settings, spec["seed"], emit)
    else:
        phase = Phase(**spec["phase"])
        (run_group_phase if phase.parallel else run_phase)(settings, phase, emit)


def execute(
    kind: str, settings: Settings, phase: Phase | None, seed: int, isolate: bool, scratch: Path
) -> tuple[list[dict], str]:
    """Run one build or phase (in a child process when ``isolate``); returns its records and a failure note."""
    handle, name = tempfile.mkstemp(prefix=f"{kind}-", suffix=".jsonl", dir=scratch)
    os.close(handle)
    out = Path(name)
    spec = {
        "kind": kind,
        "settings": asdict(settings),
        "phase": asdict(phase) if phase else None,
        "seed": seed,
        "out": str(out),
    }
    failure = ""
    if isolate:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, str(ENTRY), "--child", json.dumps(spec)]
        code = subprocess.run(command, env=env).returncode
        if code != 0:
            killed = " (killed: host out of memory?)" if code in (-9, 137) else ""
            failure = f"process ended with code {code}{killed}"
    else:
        try:
            child_main(json.dumps(spec))
        except Exception as exc:  # noqa: BLE001
            failure = short_error(exc)
        finally:
            release(torch.device(settings.device))
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    out.unlink()
    return records, failure
