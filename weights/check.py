"""Say what is present, missing or corrupt in a weights directory, per manifest entry and per endpoint.

Generic over anything that follows ``weights/LAYOUT.md``: real downloads and tiny test weights are checked alike.
Models, annotators, interpolators, the safety checker and the prompt-expansion LM are all manifest entries; only the
models decide whether an endpoint is ready, the others are listed per feature (``CheckReport.annotators`` /
``interpolators`` / ``auxiliary``).
Checks, all cheap unless ``deep``:
- required paths (``manifest.required_paths`` / ``required_any``) exist; symlinks resolve;
- every JSON file parses; a model's ``model_index.json`` names only component folders that exist, and a two-expert
  model's has ``transformer_2`` and ``boundary_ratio``;
- every ``*.safetensors`` header parses and covers the file exactly (a truncated download fails here);
- every shard named by a ``*.safetensors.index.json`` exists and holds the tensors the index maps to it;
- annotator / interpolator files (``.onnx``, torch ``.pt``/``.pth``/``.pkl``, ``.zip``) are not empty, and those in
  zip form (every ``.zip``, and torch files saved as zip archives) have a readable central directory, which a
  truncated download lacks;
- against ``.vace-files.json`` (written by the downloader): recorded files exist and have the recorded size,
  and with ``deep`` the recorded sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.manifest import (
    AUXILIARY,
    ENTRIES,
    INTERPOLATORS,
    RECORD_FILE,
    TASK_ANNOTATORS,
    ModelEntry,
    WeightEntry,
    required_any,
    required_paths,
)
from pipelines.registry import APPS

MISSING = "missing"
BROKEN_LINK = "broken_link"
CORRUPT = "corrupt"

_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_NON_EMPTY = (".onnx", ".pt", ".pth", ".pkl", ".ckpt", ".zip")  # opaque weights files: at least not empty
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save (since 1.6) and TorchScript files are zip archives too


# ---------------------------------------------------------------- shared helpers (also used by download.py)


def sha256_file(path: Path, chunk: int = 16 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_records(folder: Path) -> dict[str, dict]:
    """``{relative path: {"size", "sha256", ...}}`` from ``folder/.vace-files.json``; {} when absent."""
    path = folder / RECORD_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("files", {})


def write_records(folder: Path, files: dict[str, dict]) -> None:
    path = folder / RECORD_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": 1, "files": dict(sorted(files.items()))}, indent=1) + "\n")
    os.replace(tmp, path)


def safetensors_header(path: Path) -> dict:
    """Parse and validate a safetensors header; raises ValueError saying what is wrong.

    The file must be exactly 8 + header length + end of the last tensor, like the safetensors loader demands.
    """
    size = path.stat().st_size
    if size < 8:
        raise ValueError(f"{size} bytes, too short for a safetensors file")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _MAX_HEADER or 8 + n > size:
            raise ValueError(f"header length {n} does not fit in a {size}-byte file")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            shape = info["shape"]
            dtype = info["dtype"]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"tensor {name!r}: malformed entry") from None
        if not 0 <= begin <= stop:
            raise ValueError(f"tensor {name!r}: bad data_offsets {info['data_offsets']}")
        if dtype in _DTYPE_BYTES and math.prod(shape) * _DTYPE_BYTES[dtype] != stop - begin:
            raise ValueError(f"tensor {name!r}: {dtype}{shape} does not match {stop - begin} bytes")
        end = max(end, stop)
    expected = 8 + n + end
    if size < expected:
        raise ValueError(f"truncated: {size} bytes, header needs {expected}")
    if size > expected:
        raise ValueError(f"{size - expected} trailing bytes not covered by the header")
    return header


# ---------------------------------------------------------------- report


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

    def problems_of(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]


@dataclass
class CheckReport:
    weights_dir: Path
    deep: bool
    entries: dict[str, EntryReport]

    def ok_for(self, key: str) -> bool:
        """True when entry ``key`` is complete and sound; ``key`` may also be a fal app id (any serving model ok)."""
        if key in self.entries:
            return self.entries[key].ok
        model = APPS.get(key)
        return model in self.entries and self.entries[model].ok

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
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
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
        if auxiliary := self.auxiliary():
            lines.append("Optional stages: " + ", ".join(f"{k} {s}" for k, s in auxiliary.items()))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "weights_dir": str(self.weights_dir),
            "deep": self.deep,
            "entries": {
                k: {"folder": e.folder, "endpoint": e.endpoint, "status": e.status, "files": e.files, "bytes": e.bytes,
                    "problems": [vars(p) for p in e.problems]}  # fmt: skip
                for k, e in self.entries.items()
            },
            "endpoints": self.endpoints(),
            "annotators": self.annotators(),
            "interpolators": self.interpolators(),
            "auxiliary": self.auxiliary(),
        }


def _gb(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------- checking


def check(weights_dir: Path, deep: bool = False, keys: list[str] | None = None) -> CheckReport:
    """Check every manifest entry (or only ``keys``) under ``weights_dir``."""
    weights_dir = Path(weights_dir)
    checker = _Checker(weights_dir, deep)
    selected = list(ENTRIES) if keys is None else keys
    unknown = [k for k in selected if k not in ENTRIES]
    if unknown:
        raise ValueError(f"unknown weight keys {unknown}; known: {list(ENTRIES)}")
    return CheckReport(weights_dir, deep, {k: checker.entry(ENTRIES[k]) for k in selected})


class _Checker:
    """Holds caches shared across entries (the shared folder is reached from every model)."""

    def __init__(self, weights_dir: Path, deep: bool):
        self.weights_dir = weights_dir
        self.top = os.path.realpath(weights_dir)
        self.deep = deep
        self._headers: dict[str, dict | str] = {}  # realpath -> header or error text
        self._sha: dict[str, str] = {}
        self._owners: dict[str, str | None] = {}  # dir realpath -> folder holding the record for it

    def entry(self, entry: WeightEntry) -> EntryReport:
        root = self.weights_dir / entry.folder
        report = EntryReport(
            key=entry.key,
            folder=entry.folder,
            endpoint=getattr(entry, "endpoint", None),
            exists=root.is_dir(),
            approx_size_gb=entry.approx_size_gb,
        )
        if not report.exists:
            return report
        problems = report.problems

        for rel in required_paths(entry):
            if not (root / rel).exists():
                problems.append(self._absent(root, rel, "required"))
        for group in required_any(entry):
            if not any((root / rel).exists() for rel in group):
                problem = self._absent(root, group[0], "")
                if problem.kind != BROKEN_LINK:
                    problem = Problem(MISSING, " | ".join(group), "one of these is required")
                problems.append(problem)

        files, scopes = self._walk(root, problems)
        report.files = len(files)
        for rel, real in files.items():
            report.bytes += os.path.getsize(real)
            problems += self._check_file(root, rel, real)
        if isinstance(entry, ModelEntry):
            problems += self._check_model_index(root, entry)
        problems += self._check_records(files, scopes)
        # A path can be reported twice (e.g. required and recorded); keep the first.
        unique: dict[tuple[str, str], Problem] = {}
        for p in problems:
            unique.setdefault((p.kind, p.path), p)
        report.problems = list(unique.values())
        return report

    def _absent(self, root: Path, rel: str, why: str) -> Problem:
        """MISSING, or BROKEN_LINK when a path component is a dangling symlink."""
        cur = root
        for part in Path(rel).parts:
            cur = cur / part
            if cur.is_symlink() and not cur.exists():
                return Problem(BROKEN_LINK, str(cur.relative_to(root)), f"-> {os.readlink(cur)}")
            if not cur.exists():
                break
        return Problem(MISSING, rel, why)

    def _walk(self, root: Path, problems: list[Problem]) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """Files under root (following symlinks, skipping hidden names) as {relative path: realpath}, and the
        scopes reached as (realpath of directory, relative prefix)."""
        files: dict[str, str] = {}
        scopes: list[tuple[str, str]] = [(os.path.realpath(root), "")]
        visited: set[str] = set()

        def visit(directory: Path, prefix: str) -> None:
            real_dir = os.path.realpath(directory)
            if real_dir in visited:
                return
            visited.add(real_dir)
            for child in sorted(directory.iterdir()):
                if child.name.startswith("."):
                    continue
                rel = f"{prefix}{child.name}"
                if child.is_symlink() and not child.exists():
                    problems.append(Problem(BROKEN_LINK, rel, f"-> {os.readlink(child)}"))
                elif child.is_dir():
                    if child.is_symlink():
                        scopes.append((os.path.realpath(child), rel + "/"))
                    visit(child, rel + "/")
                elif child.is_file():
                    files[rel] = os.path.realpath(child)

        visit(root, "")
        return files, scopes

    def _check_file(self, root: Path, rel: str, real: str) -> list[Problem]:
        if rel.endswith(".safetensors"):
            header = self._header(real)
            return [Problem(CORRUPT, rel, header)] if isinstance(header, str) else []
        if rel.endswith(".json"):
            try:
                data = json.loads(Path(real).read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                return [Problem(CORRUPT, rel, f"invalid JSON ({e})")]
            if rel.endswith(".safetensors.index.json"):
                return self._check_index(root, rel, data)
        if rel.endswith(_NON_EMPTY):
            problem = _opaque_file_problem(Path(real), rel.endswith(".zip"))
            return [Problem(CORRUPT, rel, problem)] if problem else []
        return []

    def _header(self, real: str) -> dict | str:
        if real not in self._headers:
            try:
                self._headers[real] = safetensors_header(Path(real))
            except (OSError, ValueError) as e:
                self._headers[real] = str(e)
        return self._headers[real]

    def _check_index(self, root: Path, rel: str, data: dict) -> list[Problem]:
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            return [Problem(CORRUPT, rel, "index has no weight_map")]
        base = os.path.dirname(rel)
        by_shard: dict[str, list[str]] = {}
        for tensor, shard in weight_map.items():
            by_shard.setdefault(shard, []).append(tensor)
        problems = []
        for shard, tensors in sorted(by_shard.items()):
            shard_rel = f"{base}/{shard}" if base else shard
            path = root / shard_rel
            if not path.exists():
                problems.append(self._absent(root, shard_rel, f"shard listed in {os.path.basename(rel)}"))
                continue
            header = self._header(os.path.realpath(path))
            if isinstance(header, dict):
                lacking = [t for t in tensors if t not in header]
                if lacking:
                    problems.append(Problem(CORRUPT, shard_rel, f"lacks {len(lacking)} tensor(s) of the index, "
                                                                f"e.g. {lacking[0]!r}"))  # fmt: skip
        return problems

    def _check_model_index(self, root: Path, entry: ModelEntry) -> list[Problem]:
        path = root / "model_index.json"
        try:
            index = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return []  # reported as missing / invalid JSON already
        problems = []
        for name, value in index.items():
            if isinstance(value, list) and len(value) == 2 and value[0] and not (root / name).is_dir():
                problems.append(self._absent(root, name, "component named in model_index.json"))
        if entry.two_experts:
            if not (isinstance(index.get("transformer_2"), list) and index["transformer_2"][0]):
                problems.append(Problem(CORRUPT, "model_index.json", "two-expert model without transformer_2"))
            if index.get("boundary_ratio") is None:
                problems.append(Problem(CORRUPT, "model_index.json", "two-expert model without boundary_ratio"))
        return problems

    def _owner(self, real_dir: str) -> str | None:
        """Nearest directory at or above real_dir (within the weights dir) that has a record file."""
        if real_dir not in self._owners:
            owner = None
            if os.path.isfile(os.path.join(real_dir, RECORD_FILE)):
                owner = real_dir
            elif real_dir != self.top and os.path.dirname(real_dir) != real_dir:
                if os.path.commonpath([real_dir, self.top]) == self.top:
                    owner = self._owner(os.path.dirname(real_dir))
            self._owners[real_dir] = owner
        return self._owners[real_dir]

    def _check_records(self, files: dict[str, str], scopes: list[tuple[str, str]]) -> list[Problem]:
        problems = []
        by_real = {real: rel for rel, real in files.items()}
        owners = {self._owner(real) for real, _ in scopes} | {self._owner(os.path.dirname(r)) for r in by_real}
        for owner in sorted(o for o in owners if o):
            for name, rec in read_records(Path(owner)).items():
                real = os.path.normpath(os.path.join(owner, name))
                rel = by_real.get(real) or _display(real, scopes)
                if rel is None:
                    continue  # recorded file outside what this entry uses
                if real not in by_real:
                    if not os.path.lexists(real):
                        problems.append(Problem(MISSING, rel, "recorded at download"))
                    continue
                size = os.path.getsize(real)
                if rec.get("size") is not None and size != rec["size"]:
                    problems.append(Problem(CORRUPT, rel, f"size {size}, recorded {rec['size']}"))
                elif self.deep and rec.get("sha256"):
                    if real not in self._sha:
                        self._sha[real] = sha256_file(Path(real))
                    if self._sha[real] != rec["sha256"]:
                        problems.append(Problem(CORRUPT, rel, "sha256 differs from the recorded one"))
        return problems


def _opaque_file_problem(path: Path, must_be_zip: bool) -> str | None:
    """What is wrong with a weights file whose format we do not parse (ONNX, torch pickles), or None.

    Such files must not be empty; a zip (a torch.save / TorchScript file is one) must have a readable central
    directory at its end, so a truncated download shows up without reading the whole file.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            is_zip = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        if is_zip or must_be_zip:
            with zipfile.ZipFile(path):
                pass
    except zipfile.BadZipFile as e:
        return f"damaged zip archive, truncated? ({e})"
    except OSError as e:
        return f"unreadable ({e})"
    return None


def _display(real: str, scopes: list[tuple[str, str]]) -> str | None:
    """Path of ``real`` relative to the entry folder, via the scope (root or symlinked dir) that contains it."""
    for scope_real, prefix in sorted(scopes, key=lambda s: -len(s[0])):
        if real.startswith(scope_real + os.sep):
            return prefix + os.path.relpath(real, scope_real).replace(os.sep, "/")
    return None
