"""Say what is present, missing or corrupt in a weights directory, per manifest entry and per endpoint.

Generic over anything that follows ``weights/LAYOUT.md``: real downloads and tiny test weights are checked alike.
Models, annotators, interpolators, the safety checker and the prompt-expansion LM are all manifest entries; what the
findings mean per endpoint and feature is ``report.py``, the download records compared against are ``records.py``.
Checks, all cheap unless ``deep``:
- required paths (``manifest.required_paths`` / ``required_any``) exist; symlinks resolve;
- every JSON file parses; a model's ``model_index.json`` names only component folders that exist, and a two-expert
  model's has ``transformer_2`` and ``boundary_ratio``;
- every ``*.safetensors`` file opens with safetensors' own reader, which checks that its header parses and covers
  the file exactly (a truncated download fails here);
- every shard named by a ``*.safetensors.index.json`` exists and holds the tensors the index maps to it;
- annotator / interpolator files (``.onnx``, torch ``.pt``/``.pth``/``.pkl``, ``.zip``) are not empty, and those in
  zip form (every ``.zip``, and torch files saved as zip archives) have a readable central directory, which a
  truncated download lacks;
- against ``.vace-files.json`` (written by the downloader): recorded files exist and have the recorded size,
  and with ``deep`` the recorded sha256;
- FILM's TorchScript file loads as film_net, and its note says which of the port's layouts it is (the port has
  published three, with different ``dt`` handling; see ``pipelines/interpolation/film.py``): about a second.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from safetensors import SafetensorError, safe_open

from pipelines.interpolation.film import load_film
from pipelines.manifest import (
    ENTRIES,
    FILM,
    FILM_FILE,
    RECORD_FILE,
    ModelEntry,
    WeightEntry,
    required_any,
    required_paths,
)
from weights.records import read_records, sha256_file
from weights.report import BROKEN_LINK, CORRUPT, MISSING, CheckReport, EntryReport, Problem

_NON_EMPTY = (".onnx", ".pt", ".pth", ".pkl", ".ckpt", ".zip")  # opaque weights files: at least not empty
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save (since 1.6) and TorchScript files are zip archives too


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
        self._headers: dict[str, set[str] | str] = {}  # realpath -> tensor names or error text
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
        if entry.key == FILM.key and not problems:
            problems += _film_layout(root / FILM_FILE, report.notes)
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

    def _header(self, real: str) -> set[str] | str:
        """The tensor names of a safetensors file, or what is wrong with it; read once per file."""
        if real not in self._headers:
            try:
                with safe_open(real, framework="numpy") as f:  # checks the header covers the file exactly
                    self._headers[real] = set(f.keys())
            except SafetensorError as e:
                self._headers[real] = f"damaged or truncated safetensors file ({e})"
            except OSError as e:
                self._headers[real] = f"unreadable ({e})"
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
            if isinstance(header, set):
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
            elif (
                real_dir != self.top
                and os.path.dirname(real_dir) != real_dir
                and os.path.commonpath([real_dir, self.top]) == self.top
            ):
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


def _film_layout(path: Path, notes: list[str]) -> list[Problem]:
    """Note which layout FILM's file is; a CORRUPT problem when it does not load as film_net at all."""
    try:
        layout = load_film(path).layout
    except ValueError as e:
        return [Problem(CORRUPT, path.name, str(e).replace(f"{path}: ", ""))]
    limits = " (always t = 0.5: 1 or 3 frames between two, other counts refused)" if layout == "v1.0.0" else ""
    notes.append(f"{path.name}: dajes/frame-interpolation-pytorch layout {layout}{limits}")
    return []


def _display(real: str, scopes: list[tuple[str, str]]) -> str | None:
    """Path of ``real`` relative to the entry folder, via the scope (root or symlinked dir) that contains it."""
    for scope_real, prefix in sorted(scopes, key=lambda s: -len(s[0])):
        if real.startswith(scope_real + os.sep):
            return prefix + os.path.relpath(real, scope_real).replace(os.sep, "/")
    return None
