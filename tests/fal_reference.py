"""fal's published VACE schemas, read from ``../shared/reference/fal-vace-family.md`` (the shared folder is a sibling
of the repository, in CI as here), and a field-by-field comparison of a JSON schema against them.

The file lists the shared fields once (section 1, the pose/depth endpoints), then per endpoint only what differs
from pose (sections 2-8: rows marked NEW or CHANGED, and "`field`: **absent** here" notes), and long-reframe's
fields in full (section 9). Cells escape ``|`` as ``\\|``. Section 0 says which fields fal makes nullable.

Parsing the file itself, rather than copying its tables into the test, means a correction there reaches the test.
The comparison takes a JSON schema so the same check runs on a pydantic model's schema and on ``/openapi.json``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared/reference/fal-vace-family.md"
HEADER = ["field", "type", "req", "default", "range (OpenAPI)", "meaning (fal text)"]
POSE_DEPTH = [
    f"{app}/{task}" for app in ("fal-ai/wan-vace-14b", "fal-ai/wan-22-vace-fun-a14b") for task in ("pose", "depth")
]


@dataclass(frozen=True)
class Row:
    """One field of one endpoint as fal publishes it (cells as written, markup stripped)."""

    field: str
    type: str
    required: bool
    default: str  # "—" when fal gives none
    range: str  # "—", "int", "lo..hi" or "lo..hi int"
    nullable: bool


def _cells(line: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [p.strip().replace("\\|", "|") for p in parts]


def _tables(lines: list[str]) -> list[list[list[str]]]:
    """The tables with fal's six-column field header in ``lines`` (other tables, e.g. outputs, are skipped)."""
    tables, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|") and _cells(lines[i]) == HEADER:
            rows, i = [], i + 2  # skip the |---| line
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, body lines) for every ``##``/``###`` heading."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith(("## ", "### ")):
            out.append((line, []))
        elif out:
            out[-1][1].append(line)
    return out


def _nullable(text: str) -> tuple[set[str], set[str]]:
    """Fields fal makes nullable everywhere, and those nullable on the base endpoint only (section 0)."""
    line = next(ln for ln in text.splitlines() if ln.startswith("Nullable fields"))
    listed = line.split(":", 1)[1]
    everywhere, base_only = set(), set()
    for name, note in re.findall(r"`(\w+)`( \(base only\))?", listed):
        (base_only if note else everywhere).add(name)
    return everywhere, base_only


def negative_prompt_default(text: str) -> str:
    """The full default negative prompt the tables abbreviate as "(long Wan default list, see shared)"."""
    return re.search(r'Full negative_prompt default: `"([^`]*)"`', text).group(1)


def load_reference(path: Path = REFERENCE) -> dict[str, dict[str, Row]]:
    """fal endpoint id -> field -> Row, for every endpoint the file describes."""
    text = path.read_text()
    nullable, base_only = _nullable(text)

    def rows(table: list[list[str]], endpoint: str) -> dict[str, Row]:
        out = {}
        for field, type_, req, default, range_, _meaning in table:
            name = re.match(r"`(\w+)`", field).group(1)
            is_base = endpoint == "fal-ai/wan-vace-14b"
            out[name] = Row(
                name,
                type_,
                req == "**required**",
                default.strip("`"),
                range_,
                name in nullable or (is_base and name in base_only),
            )
        return out

    shared: dict[str, Row] | None = None
    endpoints: dict[str, dict[str, Row]] = {}
    for heading, body in _sections(text):
        tables = _tables(body)
        if heading.startswith("## 1."):
            shared = rows(tables[0], "")
            endpoints.update({e: dict(shared) for e in POSE_DEPTH})
            continue
        ids = re.findall(r"`(fal-ai/[\w./-]+)`", heading)
        if not ids or not tables:
            continue
        endpoint = ids[0]
        if heading.startswith("### "):  # section 9: full tables
            endpoints[endpoint] = rows(tables[0], endpoint)
            continue
        assert shared is not None, "section 1 must come first"
        fields = {
            name: Row(
                r.field,
                r.type,
                r.required,
                r.default,
                r.range,
                r.nullable or (endpoint == "fal-ai/wan-vace-14b" and name in base_only),
            )
            for name, r in shared.items()
        }
        for line in body:
            absent = re.match(r"- `(\w+)`: \*\*absent\*\* here", line)
            if absent:
                fields.pop(absent.group(1))
        fields.update(rows(tables[-1], endpoint))
        endpoints[endpoint] = fields
    return endpoints


def _core(prop: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A property's non-null schema and whether null is accepted."""
    if "anyOf" not in prop:
        return prop, False
    branches = [b for b in prop["anyOf"] if b != {"type": "null"}]
    assert len(branches) == 1, prop
    return branches[0], len(branches) < len(prop["anyOf"])


def _number(text: str) -> float:
    return float(text)


def compare(
    endpoint: str, schema: dict[str, Any], rows: dict[str, Row], negative_prompt: str, allowed: dict[str, str]
) -> list[str]:
    """Every difference between fal's ``rows`` and the JSON ``schema`` of our request model (empty when they match
    field for field). ``allowed`` names our deliberate differences (field -> reason): those fields' ranges are not
    compared. Fields of ours that fal lacks are the caller's to check."""
    problems: list[str] = []
    props, required = schema["properties"], set(schema.get("required", []))

    def say(field: str, what: str) -> None:
        problems.append(f"{endpoint} {field}: {what}")

    for name, row in rows.items():
        if name not in props:
            say(name, "missing")
            continue
        core, nullable = _core(props[name])
        kind = core.get("type")
        if row.type.startswith("'"):
            values = {v.strip().strip("'") for v in row.type.split("|")}
            if set(core.get("enum", [])) != values:
                say(name, f"values {core.get('enum')} != fal's {sorted(values)}")
        elif row.type == "string[]":
            if kind != "array" or core.get("items", {}).get("type") != "string":
                say(name, f"type {core} is not a list of strings")
        elif row.type == "number":
            want = "integer" if "int" in row.range.split() else "number"
            if kind != want:
                say(name, f"type {kind} != {want}")
        elif kind != row.type:
            say(name, f"type {kind} != {row.type}")
        if (name in required) != row.required:
            say(name, f"required={name in required}, fal: {row.required}")
        if row.nullable and not nullable:
            say(name, "fal accepts null, we do not")
        default = props[name].get("default")
        if row.default == "—":
            if default is not None:
                say(name, f"default {default!r}, fal has none")
        elif row.default.startswith("(long Wan default list"):
            if default != negative_prompt:
                say(name, "default is not fal's negative prompt")
        elif row.default in ("true", "false"):
            if default is not (row.default == "true"):
                say(name, f"default {default!r} != {row.default}")
        elif row.default == '""':
            if default != "":
                say(name, f"default {default!r} != ''")
        elif re.fullmatch(r"-?[\d.]+", row.default):
            if not isinstance(default, (int, float)) or default != _number(row.default):
                say(name, f"default {default!r} != {row.default}")
        elif default != row.default:
            say(name, f"default {default!r} != {row.default!r}")
        if name in allowed:
            continue
        bounds = re.match(r"(-?[\d.]+)\.\.(-?[\d.]+)", row.range)
        ours = (core.get("minimum"), core.get("maximum"))
        theirs = (_number(bounds.group(1)), _number(bounds.group(2))) if bounds else (None, None)
        if ours != theirs:
            say(name, f"range {ours} != fal's {theirs}")
    return problems
