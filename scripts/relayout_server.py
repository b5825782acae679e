"""Move ``server/``'s flat modules into one subpackage per layer, and rewrite every reference to them.

``server/`` grew to ~30 flat modules; this gives its layers folders (issue 23, item 7). Each layer imports only the
layers listed after it, and the modules left at the top (the app, the CLI and its commands, the settings and what
they open) import any of them:

- ``api/``: the HTTP side: fal routes, uploads, the playground's routes, auth, the request guard, dependencies,
  connections, TLS, the node's secrets;
- ``runtime/``: what runs jobs and keeps the queue: workers (threads or processes), queue upkeep, webhooks,
  retention, metrics;
- ``fal/``: fal's wire shapes both of them speak: status bodies and the failure mapping;
- ``store/``: the job store (SQLite, PostgreSQL, the one table definition and its migrations);
- ``files/``: the file store (its rules and the directory store, S3).

``server/worker_group.py`` imports nothing from ``server/``: it moves to ``pipelines/``, beside the job group it keeps
serving. The map is :data:`MOVES`, read from each module's imports (``tests/import_graph.py``).

What the script does, with ``git mv`` so history follows the files: every import of a moved module is written
again for where it and its importer now live (a relative one resolved against the importer's old place, and kept
relative where it stays inside its top package; ``from server import OLD`` split by the new packages); every
``server.OLD`` dotted name and ``server/OLD.py`` path in prose (the docs, the README, deploy files, and the strings
and comments of Python files, such as ``python -m server.worker_process``) becomes the new one, but never a name in
code, where ``server.files`` may be an attribute of a variable; each new package gets an ``__init__.py`` that says
what its layer is; prose lines the longer names pushed past 120 characters are rewrapped; and ``ruff`` puts the
rewritten imports in order and formats the rewritten files, where it is installed. A move whose source is gone is done
already, so running the script again changes nothing. It refuses a tree with uncommitted changes, so its own
changes can be reviewed as one diff.

Run from the repository root: ``python scripts/relayout_server.py`` (``--dry-run`` prints the moves only).
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MOVES: dict[str, str] = {
    "server.jobs": "server.store.jobs",
    "server.pg_store": "server.store.postgres",
    "server.schema": "server.store.schema",
    "server.files": "server.files.store",
    "server.s3_files": "server.files.s3",
    "server.protocol": "server.fal.protocol",
    "server.failures": "server.fal.failures",
    "server.routes": "server.api.routes",
    "server.guard": "server.api.guard",
    "server.deps": "server.api.deps",
    "server.auth": "server.api.auth",
    "server.uploads": "server.api.uploads",
    "server.preview": "server.api.preview",
    "server.service": "server.api.service",
    "server.request_id": "server.api.request_id",
    "server.events": "server.api.events",
    "server.connections": "server.api.connections",
    "server.tls": "server.api.tls",
    "server.node_secrets": "server.api.node_secrets",
    "server.worker": "server.runtime.worker",
    "server.worker_process": "server.runtime.worker_process",
    "server.upkeep": "server.runtime.upkeep",
    "server.webhooks": "server.runtime.webhooks",
    "server.retention": "server.runtime.retention",
    "server.signing": "server.runtime.signing",
    "server.metrics": "server.runtime.metrics",
    "server.worker_group": "pipelines.worker_group",
}
"""Old module -> new module."""
TOP = frozenset(
    {
        "server.app",
        "server.cli",
        "server.commands",
        "server.config",
        "server.backends",
        "server.demo",
        "server.falclient",
    }
)
"""The modules that stay at the top of ``server/``: a node, the command line, the settings and what they open, the
demo and the fal-client helper (a documented import path). A flat module in neither map stops the script: its
layer is a decision, not a default."""
PACKAGES: dict[str, str] = {
    "server.api": "The HTTP side of a node: fal's routes, uploads, the playground's routes, auth, the request guard,\n"
    "the routes' dependencies, connection deadlines, TLS and the node's secrets. Imports the runtime, fal, store and\n"
    "files layers, never the reverse.",
    "server.runtime": "What runs jobs and keeps the queue on every node: the workers (threads or processes of their\n"
    "own), queue upkeep, webhook delivery, retention and metrics. Imports the fal, store and files layers.",
    "server.fal": "fal's wire shapes that the HTTP side and the workers both speak: the queue's status bodies and\n"
    "the one mapping from an exception to how a request fails. Imports the store layer only.",
    "server.store": "The job store: one table definition and its numbered migrations, SQLite (embedded) and\n"
    "PostgreSQL (a fleet). Imports no other layer of the server.",
    "server.files": "The file store: how files and uploads are named and served, in a directory or an S3 bucket.\n"
    "Imports no other layer of the server.",
}
"""New package -> the docstring of its ``__init__.py``."""
FIXUPS: dict[str, tuple[str, str]] = {
    "server.service": ('Path(__file__).parent / "static"', 'Path(__file__).parents[1] / "static"'),
}
"""Moved module -> (text, replacement) for its paths relative to its own file: the playground's ``static/`` stays
in ``server/`` (package data of ``server``). A moved module that uses ``__file__`` and is not listed here stops
the script, since its paths would break silently."""
LINE_LENGTH = 120
"""The code's line length (``pyproject.toml``'s ruff setting): prose that a longer name pushes past it is rewrapped."""
TEXT_SUFFIXES = (".py", ".md", ".toml", ".txt", ".yaml", ".yml", ".cfg", ".ini", ".sh", ".env", ".js", ".html")
TEXT_NAMES = ("Dockerfile", "Makefile", "run")


def path_of(module: str) -> Path:
    return Path(*module.split(".")).with_suffix(".py")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def pending() -> dict[str, str]:
    """The moves not done yet (their source module is still there)."""
    return {old: new for old, new in MOVES.items() if (ROOT / path_of(old)).is_file()}


def rewrite_names(text: str, moves: dict[str, str]) -> str:
    """Dotted module names (``server.jobs``, ``server.jobs.JobStore``) and paths (``server/jobs.py``) in prose."""
    for old, new in sorted(moves.items(), key=lambda item: -len(item[0])):
        text = re.sub(rf"(?<![\w.]){re.escape(old)}(?!\w)", new, text)
        text = re.sub(rf"(?<!\w){re.escape(path_of(old).as_posix())}", path_of(new).as_posix(), text)
    return text


def rewrite_python_prose(source: str, moves: dict[str, str]) -> str:
    """:func:`rewrite_names` in a Python file's strings and comments only: in code, ``server.files`` may be the
    attribute of a variable named ``server`` (imports are :func:`rewrite_imports`' job)."""
    prose = {tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    spans = [
        (starts[t.start[0] - 1] + t.start[1], starts[t.end[0] - 1] + t.end[1])
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type in prose
    ]
    for start, end in reversed(spans):
        source = source[:start] + rewrite_names(source[start:end], moves) + source[end:]
    return source


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name an ``ImportFrom`` of ``module`` starts from."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[: len(package) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _written(target: str, importer: str, importer_is_package: bool, relative: bool) -> str:
    """``target`` as the ``from`` part of an import in module ``importer``: relative when the original was and both
    lie in the same top package, else absolute."""
    if not relative or target.split(".")[0] != importer.split(".")[0]:
        return target
    package = importer.split(".") if importer_is_package else importer.split(".")[:-1]
    parts = target.split(".")
    common = 0
    while common < min(len(package), len(parts)) and package[common] == parts[common]:
        common += 1
    return "." * (len(package) - common + 1) + ".".join(parts[common:])


def rewrite_imports(source: str, old_module: str, is_package: bool, moves: dict[str, str]) -> str:
    """The imports of ``old_module`` written for where it and what it imports now live: relative ones resolved
    against its old place, ``from server import OLD`` split by the new packages, ``import server.OLD`` renamed."""
    new_module = moves.get(old_module, old_module)
    crossed = new_module.split(".")[0] != old_module.split(".")[0]  # moved to another top package
    parents = {old.rpartition(".")[0] for old in moves}
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, int, int, str]] = []  # (line, col, end line, end col, text), 1-based lines
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.end_lineno is None or node.end_col_offset is None:
            continue
        end_line = node.end_lineno
        col, end_col = _chars(lines[node.lineno - 1], node.col_offset), _chars(lines[end_line - 1], node.end_col_offset)
        if isinstance(node, ast.Import):
            if any(_renamed(alias.name, moves) != alias.name for alias in node.names):
                names = [_renamed(a.name, moves) + (f" as {a.asname}" if a.asname else "") for a in node.names]
                edits.append((node.lineno, col, end_line, end_col, f"import {', '.join(names)}"))
            continue
        base = _absolute(old_module, is_package, node)
        if not (node.level or crossed or base in parents or _renamed(base, moves) != base):
            continue
        groups: dict[str, list[str]] = {}  # new "from" module -> the names imported from it, as written
        for alias in node.names:
            name = alias.name + (f" as {alias.asname}" if alias.asname else "")
            submodule = f"{base}.{alias.name}"
            if submodule in moves:  # ``from . import routes``: the module itself, now in its new package
                parent, _, leaf = moves[submodule].rpartition(".")
                groups.setdefault(parent, []).append(leaf + (f" as {alias.asname}" if alias.asname else ""))
            else:
                groups.setdefault(_renamed(base, moves), []).append(name)
        relative = bool(node.level) or (crossed and base.split(".")[0] == new_module.split(".")[0])
        heads = {target: _written(target, new_module, is_package, relative) for target in groups}
        original = "".join(lines[node.lineno - 1 : end_line])[col:]
        original = original[: len(original) - (len(lines[end_line - 1]) - end_col)]
        as_written = [alias.name + (f" as {alias.asname}" if alias.asname else "") for alias in node.names]
        if len(groups) == 1 and next(iter(groups.values())) == as_written:
            # the same names from one place: change the "from" part only, comments and wrapping kept
            head = re.match(r"from\s+[\w.]+\s+import", original)
            assert head, original
            text = f"from {heads[next(iter(groups))]} import" + original[head.end() :]
        else:  # ``from . import a, b`` whose modules went to different packages: one import per package
            text = f"\n{' ' * col}".join(
                f"from {heads[target]} import {', '.join(names)}" for target, names in groups.items()
            )
        if text != original:
            edits.append((node.lineno, col, end_line, end_col, text))
    for line, col, end_line, end_col, text in sorted(edits, reverse=True):
        before, after = lines[line - 1][:col], lines[end_line - 1][end_col:]
        lines[line - 1 : end_line] = [before + text + after]
    return "".join(lines)


def _renamed(module: str, moves: dict[str, str]) -> str:
    """``module``'s new name: a moved module, or a name inside one (``server.jobs.JobStore``), follows it."""
    for old, new in moves.items():
        if module == old or module.startswith(f"{old}."):
            return new + module[len(old) :]
    return module


def _chars(line: str, byte_offset: int) -> int:
    """``ast``'s column (a UTF-8 byte offset) as an index into the line's characters."""
    return len(line.encode()[:byte_offset].decode())


def text_files() -> list[Path]:
    """The tracked text files whose references are rewritten: all but this script, whose map must stay."""
    return [
        ROOT / name
        for name in git("ls-files").splitlines()
        if (name.endswith(TEXT_SUFFIXES) or Path(name).name in TEXT_NAMES) and ROOT / name != Path(__file__)
    ]


def python_modules() -> dict[Path, tuple[str, bool]]:
    """Every tracked ``.py`` file -> (its module name from the repository root, whether it is an ``__init__``)."""
    found = {}
    for path in text_files():
        if path.suffix == ".py":
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[path] = (".".join(parts[:-1] if parts[-1] == "__init__" else parts), parts[-1] == "__init__")
    return found


def _prose_lines(source: str) -> set[int]:
    """The numbers (1-based) of the lines that are all prose: inside a triple-quoted string, or a comment alone."""
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING and token.string.lstrip("rbuRBU").startswith(('"""', "'''")):
            lines.update(range(token.start[0], token.end[0] + 1))
        elif token.type == tokenize.COMMENT and not token.line[: token.start[1]].strip():
            lines.add(token.start[0])
    return lines


def rewrap(source: str, keep: set[str]) -> str:
    """``source`` with the prose lines that the longer names pushed past :data:`LINE_LENGTH` (those not in
    ``keep``, the file's old lines) broken at a space: the rest goes to the front of the next line where that one
    continues the paragraph (same indentation or comment, not a new list item), else onto a line of its own."""
    lines = source.splitlines(keepends=True)
    while True:
        prose = _prose_lines("".join(lines))
        todo = [
            i
            for i, line in enumerate(lines)
            if len(line.rstrip("\n")) > LINE_LENGTH
            and line.rstrip("\n") not in keep
            and i + 1 in prose
            and " " in line.strip()
        ]
        todo = [i for i in todo if lines[i].rfind(" ", 0, LINE_LENGTH + 1) > len(lines[i]) - len(lines[i].lstrip())]
        if not todo:
            return "".join(lines)
        i = todo[0]
        line = lines[i].rstrip("\n")
        cut = line.rfind(" ", 0, LINE_LENGTH + 1)
        head, tail = line[:cut].rstrip(), line[cut + 1 :]
        body = line.lstrip()
        marker = "# " if body.startswith("#") else ""
        indent = len(line) - len(body) + (2 if body.lstrip("# ").startswith(("- ", "* ")) else 0)
        prefix = " " * indent + marker
        following = lines[i + 1].rstrip("\n") if i + 1 < len(lines) else ""
        continues = (
            i + 2 in prose
            and following.startswith(prefix)
            and following[len(prefix) :].strip()
            and not following[len(prefix)].isspace()
            and not following[len(prefix) :].startswith(("- ", "* ", "..", ":", '"""'))
        )
        if continues:
            lines[i : i + 2] = [head + "\n", f"{prefix}{tail} {following[len(prefix) :]}\n"]
        else:
            lines[i : i + 1] = [head + "\n", f"{prefix}{tail}\n"]


def rewritten(moves: dict[str, str]) -> tuple[dict[Path, str], dict[Path, set[str]]]:
    """The new text of every tracked text file the moves change (by its path before the moves), and its old lines.
    Stops (SystemExit) at a moved module whose paths relative to its own file are not in :data:`FIXUPS`."""
    modules = python_modules()
    contents, originals = {}, {}
    for path in text_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        new = rewrite_python_prose(text, moves) if path in modules else rewrite_names(text, moves)
        if path in modules:
            module = modules[path][0]
            if module in moves and "__file__" in new:
                if module not in FIXUPS or FIXUPS[module][0] not in new:
                    raise SystemExit(f"error: {path_of(module)} uses __file__ and moves; add its paths to FIXUPS")
                new = new.replace(*FIXUPS[module])
            new = rewrap(rewrite_imports(new, *modules[path], moves), set(text.splitlines()))
        if new != text:
            contents[path], originals[path] = new, set(text.splitlines())
    return contents, originals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the moves, change nothing")
    args = parser.parse_args(argv)
    unplaced = sorted(
        f"server/{path.name}"
        for path in (ROOT / "server").glob("*.py")
        if f"server.{path.stem}" not in MOVES.keys() | TOP and path.stem != "__init__"
    )
    if unplaced:
        print(f"error: {', '.join(unplaced)}: in no layer; add to MOVES (or TOP)", file=sys.stderr)
        return 1
    moves = pending()
    if not moves:
        print("server/ is laid out already: nothing to move")
        return 0
    for old, new in moves.items():
        print(f"{path_of(old)} -> {path_of(new)}")
    if args.dry_run:
        return 0
    if git("status", "--porcelain", "--untracked-files=no").strip():
        print("error: the tree has uncommitted changes; commit or stash them first", file=sys.stderr)
        return 1
    contents, originals = rewritten(moves)
    for package, doc in PACKAGES.items():
        init = ROOT / path_of(package).with_suffix("") / "__init__.py"
        if not init.exists():
            init.parent.mkdir(parents=True, exist_ok=True)
            init.write_text(f'"""{doc}\n"""\n')
            git("add", str(init.relative_to(ROOT)))
    moved = {}
    for old, new in moves.items():
        source, target = ROOT / path_of(old), ROOT / path_of(new)
        target.parent.mkdir(parents=True, exist_ok=True)
        git("mv", str(source.relative_to(ROOT)), str(target.relative_to(ROOT)))
        moved[source] = target
    for path, text in contents.items():
        moved.get(path, path).write_text(text)
    python = [str(moved.get(p, p).relative_to(ROOT)) for p in contents if p.suffix == ".py"]
    python += [str((ROOT / path_of(package).with_suffix("") / "__init__.py").relative_to(ROOT)) for package in PACKAGES]
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff and python:  # the rewritten imports in isort's order, and the project's format
        subprocess.run([ruff, "check", "--quiet", "--select", "I", "--fix", *python], cwd=ROOT, check=False)
        subprocess.run([ruff, "format", "--quiet", *python], cwd=ROOT, check=False)
    long_lines = [
        f"{moved.get(path, path).relative_to(ROOT)}:{number}"
        for path in contents
        if path.suffix == ".py"
        for number, line in enumerate(moved.get(path, path).read_text().splitlines(), 1)
        if len(line) > LINE_LENGTH and line not in originals[path]
    ]
    if long_lines:  # code, or prose without a space to break at: rare enough for a person
        print(f"{len(long_lines)} lines now exceed {LINE_LENGTH} characters; rewrap them:", *long_lines, sep="\n  ")
    print(
        f"moved {len(moves)} modules, rewrote {len(contents)} files; review with `git diff --cached -M` and "
        "`git diff`, then run the tests"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
