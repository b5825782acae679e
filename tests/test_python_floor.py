"""The Python version the project declares (``requires-python``) is one it can run on, and the README says so.

``server/runtime/webhooks.py`` uses ``asyncio.timeout`` (3.11), which ``>=3.10`` once let a 3.10 install take and then
fail on every webhook delivery. What this checks cheaply: the interpreter running the suite (CI's) meets the floor,
every source file parses with the grammar of the floor version, and the README states the same floor. What it cannot
check: a standard-library name newer than the floor used inside a function, when the suite runs on a newer Python;
run on the floor version itself (the project's venv is 3.11) the suite catches those wherever the tests reach them.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("server", "pipelines", "preprocessors", "weights", "tests", "bench")


def declared_floor() -> tuple[int, int]:
    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=\s*3\.(\d+)", spec)
    assert match, f"requires-python {spec!r}: expected a plain floor, >=3.N"
    return 3, int(match.group(1))


def test_the_suite_runs_on_a_python_the_project_declares():
    assert sys.version_info[:2] >= declared_floor()


def test_every_source_file_parses_with_the_floor_versions_grammar():
    floor = declared_floor()
    files = [path for folder in SOURCES for path in sorted((REPO / folder).rglob("*.py"))]
    assert len(files) > 50
    for path in files:
        try:
            ast.parse(path.read_text(), filename=str(path), feature_version=floor)
        except SyntaxError as exc:
            raise AssertionError(f"{path.relative_to(REPO)} needs a Python newer than {floor}: {exc}") from None


def test_readme_states_the_declared_floor():
    major, minor = declared_floor()
    readme = (REPO / "README.md").read_text()
    assert re.findall(r"Python (3\.\d+)\+", readme) == [f"{major}.{minor}"]
