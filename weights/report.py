"""What ``vace weights check`` found: problems per entry, entry statuses, and what they mean per endpoint and feature.

Only the models decide whether an endpoint is ready; annotators, interpolators, mask trackers, the safety checker and
the prompt-expansion LM are reported per feature (``CheckReport.annotators`` / ``interpolators`` / ``mask_trackers`` /
``auxiliary``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.manifest import AUXILIARY, DEFAULT_MASK_TRACKER, INTERPOLATORS, MASK_TRACKERS, TASK_ANNOTATORS
from pipelines.registry import APPS

MISSING = "missing"
BROKEN_LINK = "broken_link"
CORRUPT = "corrupt"


@dataclass
class Problem:
    kind: str  # MISSING | BROKEN_LINK | CORRUPT
    path: str  # relative to the entry's folder
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class EntryReport:
    key: str
    folder: str
    endpoint: str | None
    exists: bool
    files: int = 0
    bytes: int = 0
    approx_size_gb: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a sound entry holds, e.g. which FILM layout

    @property
    def status(self) -> str:
        """'ok', 'absent' (folder not there), 'missing' (incomplete or broken links) or 'corrupt'."""
        if not self.exists:
            return "absent"
        kinds = {p.kind for p in self.problems}
        if CORRUPT in kinds:
            return "corrupt"
        if kinds:
            return "missing"
        return "ok"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class CheckReport:
    weights_dir: Path
    deep: bool
    entries: dict[str, EntryReport]

    def ok_for(self, key: str) -> bool:
        """True when entry ``key`` was checked and is complete and sound."""
        return key in self.entries and self.entries[key].ok

    def endpoints(self) -> dict[str, list[str]]:
        """fal app id -> keys of the models that could serve it right now (empty list: not servable)."""
        return {app: [model] if self.ok_for(model) else [] for app, model in APPS.items()}

    def annotators(self) -> dict[str, dict[str, str]]:
        """task -> {annotator key: status}, the task's default first; only what was checked. Informational:
        annotators are needed only for preprocess=true, and an absent alternative is not a problem."""
        out = {task: {k: self.entries[k].status for k in keys if k in self.entries}
               for task, keys in TASK_ANNOTATORS.items()}  # fmt: skip
        return {task: statuses for task, statuses in out.items() if statuses}

    def interpolators(self) -> dict[str, str]:
        """interpolator key -> status, for those checked."""
        return {k: self.entries[k].status for k in INTERPOLATORS if k in self.entries}

    def mask_trackers(self) -> dict[str, str]:
        """mask tracker key -> status, for those checked; informational like the annotators (a mask image is
        tracked with the server's ``--mask-tracker``, the default one unless told otherwise)."""
        return {k: self.entries[k].status for k in MASK_TRACKERS if k in self.entries}

    def auxiliary(self) -> dict[str, str]:
        """safety checker / prompt expander key -> status, for those checked. Informational like the annotators:
        each serves an optional job stage."""
        return {k: self.entries[k].status for k in AUXILIARY if k in self.entries}

    @property
    def ok(self) -> bool:
        """Nothing corrupt or half-there (absent entries are fine: they were never downloaded)."""
        return all(e.status in ("ok", "absent") for e in self.entries.values())

    def render(self) -> str:
        """Human-readable table, then each problem, then the endpoints."""
        rows = [("KEY", "FOLDER", "ENDPOINT", "STATUS", "FILES", "ON DISK", "EXPECTED")]
        for e in self.entries.values():
            rows.append((e.key, e.folder, e.endpoint or "-", e.status, str(e.files), _gb(e.bytes),
                         f"~{e.approx_size_gb:g} GB"))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"Weights in {self.weights_dir}" + (" (deep check: sha256)" if self.deep else "")]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        for e in self.entries.values():
            if e.problems:
                lines.append(f"\n{e.key} ({e.folder}): {len(e.problems)} problem(s)")
                lines += [f"  {p}" for p in e.problems[:50]]
                if len(e.problems) > 50:
                    lines.append(f"  ... and {len(e.problems) - 50} more")
        lines.append("\nEndpoints:")
        for app, keys in self.endpoints().items():
            lines.append(f"  {app}: " + (f"ready ({', '.join(keys)})" if keys else "NOT READY"))
        if annotators := self.annotators():
            lines.append("Annotators (for preprocess=true; the first is the default):")
            for task, statuses in annotators.items():
                lines.append(f"  {task}: " + ", ".join(f"{k} {s}" for k, s in statuses.items()))
        if interpolators := self.interpolators():
            lines.append("Interpolators: " + ", ".join(f"{k} {s}" for k, s in interpolators.items()))
            lines += [f"  {k}: {note}" for k in interpolators for note in self.entries[k].notes]
        if trackers := self.mask_trackers():
            lines.append(
                f"Mask trackers (for mask_image_url; the default is {DEFAULT_MASK_TRACKER}): "
                + ", ".join(f"{k} {s}" for k, s in trackers.items())
            )
        if auxiliary := self.auxiliary():
            lines.append("Optional stages: " + ", ".join(f"{k} {s}" for k, s in auxiliary.items()))
        return "\n".join(lines)


def _gb(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
