"""Every command line the README's shell blocks and the ``vace ... --help`` examples show, run as a user types it.

The lines are *extracted*, not copied: a new example in README.md (a ```bash block) or in a subcommand's help
(``examples:`` in its epilog) is run by this file without touching it. A block is run like a script pasted into a shell:
its lines in order, in one fresh working directory that holds the files the examples name (``dance.mp4``, ``depth.mp4``,
``in.mp4``: tiny control videos; ``street.mp4``, ``car-mask.mp4``, ``letterboxed.mp4``: a clip, an inpainting mask for
it and a letterboxed clip; ``car-mask.png``: the mask's first frame; ``cat.png``: an image; ``style.safetensors``: a
tiny LoRA), with ``$HOME`` a fresh directory whose default weights directory (``~/.cache/vace/weights``) holds the
session's tiny weights, as after ``vace weights download``. ``NAME=value`` and ``export NAME=value`` lines set the
block's variables, ``$NAME`` is expanded from them and from :data:`USER_SHELL` (also inside single quotes, which no
example uses), and a leading ``NAME=value`` is that command's environment. A test's id is the block's source: the README
line of its fence, or the ``--help`` it comes from.

- ``vace ...`` and ``.venv/bin/vace ...`` run the installed console script (this interpreter's ``bin/vace``);
  ``make ...`` runs the Makefile's target with ``VENV`` set to this interpreter's virtual environment, its install
  step taken as done (``-o``: it is what put this suite's interpreter there; it would need the package index).
- Before a line runs, its ``vace`` argv (for ``make``, the one its recipe runs, from ``make -n``) goes through the
  real parser and ``Settings`` in-process, under the line's environment (for ``generate`` also the request schema,
  for ``serve`` its refusal of an exposed host without a key), so an example the CLI refuses fails with its message.
- One-shot commands must exit 0, and what they wrote must be there: every ``-o`` video decodes (``generate``
  prints the output JSON naming it; ``preprocess`` of an edit task writes ``src_video.mp4`` and ``src_mask.mp4``
  into its ``-o`` folder), the demo's videos too. ``vace serve`` / ``make serve`` must answer
  ``/health`` and ``vace worker`` print its start line; then they get Ctrl-C (SIGINT) and must exit 0.
- :data:`SUBSTITUTE` replaces the few tokens that name things only the user's machine has (weights path, database,
  shared mount, ports); :data:`LOOPBACK` binds ``127.0.0.1`` where an example binds every interface, after the
  in-process check above passed the documented host.
- Cost bound: every ``generate`` line runs with :data:`COST_BOUND` appended (argparse takes the last value; the
  fields its endpoint has: long-reframe has no ``num_frames``, and its input clips are 17 frames), so a
  job is 17 frames at 240p with 2 steps whatever the example asks for; the example's own values are still checked
  by the schema before the run. The subprocesses run one torch thread each (``OMP_NUM_THREADS=1``), as the server
  tests do on the shared cores.
- :data:`SKIPPED` lists the lines that cannot run here, each with its reason; for those the ``vace`` argv (also the
  one inside a ``docker`` line) is still parsed with the real parser and ``Settings``, a ``make`` target is dry-run
  (``make -n``) and a bench script answers ``--help``. A line that is neither runnable nor skipped fails the test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import httpx
import pytest
from PIL import Image
from server_fixtures import free_port, wait_until
from test_deploy import image_entrypoint

from pipelines.registry import DEFAULT_MODEL_FOR_TASK
from pipelines.video_io import probe_video
from server import cli, commands
from server.config import Settings
from server.demo import JOBS
from weights.tiny.samples import SAMPLES, write_sample

REPO = Path(__file__).resolve().parents[1]
VACE = Path(sys.executable).with_name("vace")
"""The installed console script, as ``make install`` (``pip install -e .``) made it."""

USER_SHELL = {"KEY": "documented-example-key"}
"""Variables the examples expect the user's shell to have."""
SUBSTITUTE = {
    "/models/vace": "{weights}",  # the README's real weights directory
    "W": "{weights}",  # "--weights-dir W"
    "postgresql://vace:secret@db:5432/vace": "{pg_url}",  # the fleet's database host "db"
    "/shared/vace": "{files}",  # the fleet's shared mount
    "8000": "{port}",  # fixed ports: other tests and helpers share this machine
    "8443": "{port}",
    "9100": "{port}",
}
"""Documented token (or the value of a ``NAME=value`` token) -> the one run here (``{...}``: filled per line). The
default port comes from ``VACE_PORT``, set to the same free port."""
LOOPBACK = {"0.0.0.0": "127.0.0.1"}
"""Substituted for the run only: the suite opens no port beyond loopback. A server line with such a host is first
asked, in-process and as documented, whether ``vace serve`` would refuse it (no API key)."""
COST_BOUND = {"num_frames": "17", "num_inference_steps": "2", "resolution": "240p"}
SKIPPED: dict[str, str] = {
    r"^make test\b": "the suite itself: run from inside the suite it would recurse",
    r"^make (lint|format)\b": "CI runs `make lint` before the suite (.ci/run); `make format` rewrites the tree",
    r"\bpip install\b": "installs from the package index; the suite has no network beyond loopback",
    r"\bvace weights download\b": "downloads from the Hugging Face hub; the suite has no network beyond loopback",
    r"^docker\b": "Docker cannot run on the machines this project is built on (deploy/: tests/test_deploy.py)",
    r"^cd deploy\b": "prepares deploy/.env for Docker Compose (tests/test_deploy.py checks example.env)",
    r"\bcuda:\d": "needs CUDA devices (two for a group); the CPU group runs in tests/test_parallel.py",
    r"/python bench/": "a benchmark: minutes of load on purpose (its numbers are in docs/BENCHMARKS.md)",
    r"^(mkdir|psql|chmod)\b": "saves the secrets of a database made before schema step 7 (its table secrets), which "
    "no database made here has",
}
"""Regular expression on the documented line -> why it is not run here."""
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class Block:
    """Command lines documented together, run in order like a pasted script."""

    source: str
    lines: tuple[str, ...]


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined, blank and comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if shlex.split(line, comments=True)]


def readme_blocks() -> list[Block]:
    """The README's ```bash (sh, shell, console) blocks, also those indented in a list item."""
    text = (REPO / "README.md").read_text()
    fence = re.compile(r"^( *)```(?:bash|sh|shell|console)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
    blocks = []
    for match in fence.finditer(text):
        body = "\n".join(line.removeprefix(match.group(1)) for line in match.group(2).splitlines())
        blocks.append(Block(f"README.md:{text.count(chr(10), 0, match.start()) + 1}", tuple(logical_lines(body))))
    return blocks


def help_blocks() -> list[Block]:
    """The ``examples:`` section of every (sub)command's ``--help``: the text ``vace ... --help`` prints, taken
    from the real parser, so a new subcommand's examples are found too."""
    blocks = []

    def visit(parser: argparse.ArgumentParser) -> None:
        _, sep, examples = parser.format_help().partition("\nexamples:\n")
        if sep:
            blocks.append(Block(f"{parser.prog} --help", tuple(logical_lines(examples))))
        for action in parser._actions:  # argparse keeps its subcommands only here
            if isinstance(action, argparse._SubParsersAction):
                for sub in dict.fromkeys(action.choices.values()):
                    visit(sub)

    visit(cli.build_parser())
    return blocks


BLOCKS = [block for block in readme_blocks() + help_blocks() if block.lines]


def test_examples_are_found_in_readme_and_help() -> None:
    """The extraction itself: a README or help edit that hides the examples from it fails here."""
    sources = {block.source.split(":")[0] for block in BLOCKS}
    assert {"README.md", "vace generate --help", "vace serve --help", "vace worker --help"} <= sources
    lines = [line for block in BLOCKS for line in block.lines]
    assert any("--parallel cfg=2" in line for line in lines)  # issue 23: the CLI's own help example
    assert sum(line.startswith((".venv/bin/vace generate", "vace generate")) for line in lines) >= 4


def on_loopback(token: str) -> str:
    name, eq, value = token.rpartition("=")
    return name + eq + LOOPBACK.get(value, value)


@dataclass
class Command:
    """A documented line with its substitutions made: its environment prefix and argv as documented (only
    :data:`LOOPBACK` left out) and as run."""

    line: str
    documented_env: dict[str, str]
    documented: list[str]
    port: int

    @property
    def env(self) -> dict[str, str]:
        return {name: on_loopback(value) for name, value in self.documented_env.items()}

    @property
    def argv(self) -> list[str]:
        return [on_loopback(token) for token in self.documented]


@dataclass
class Shell:
    """One block's shell: its working directory, home, variables and exported environment."""

    cwd: Path
    weights: Path
    pg_url: Callable[[], str]
    variables: dict[str, str] = field(default_factory=lambda: dict(USER_SHELL))
    exported: dict[str, str] = field(default_factory=dict)

    def environment(self, extra: dict[str, str]) -> dict[str, str]:
        """What a command sees: this process's environment without ``VACE_*``, the block's home and exports."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("VACE_")}
        return {
            **env,
            "HOME": str(self.cwd / "home"),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            **self.exported,
            **extra,
        }

    def expand(self, token: str, strict: bool) -> str:
        """``$NAME`` expanded; unknown names fail a line that runs, and stay as written in one that is skipped."""

        def value(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            if strict:
                assert name in self.variables, f"the example uses ${name}, which neither its block nor USER_SHELL sets"
            return self.variables.get(name, match.group(0))

        return VARIABLE.sub(value, token)

    def substitute(self, token: str, port: int) -> str:
        name, eq, value = token.partition("=") if ASSIGNMENT.match(token) else ("", "", token)
        if token in SUBSTITUTE:
            name, eq, value = "", "", SUBSTITUTE[token]
        elif value in SUBSTITUTE:
            value = SUBSTITUTE[value]
        if "{" not in value:
            return name + eq + value
        fill = {"weights": self.weights, "files": self.cwd / "shared", "port": port}
        if "{pg_url}" in value:
            fill["pg_url"] = self.pg_url()
        return name + eq + value.format(**fill)

    def parse(self, line: str, strict: bool = True) -> Command | None:
        """Split, expand and substitute a line; a line of assignments only sets variables (and returns None)."""
        tokens = shlex.split(line, comments=True)
        exported = tokens[0] == "export"
        tokens = tokens[1:] if exported else tokens
        port = free_port()
        env = {}
        while tokens and ASSIGNMENT.match(tokens[0]):
            name, _, value = self.substitute(self.expand(tokens.pop(0), strict), port).partition("=")
            env[name] = value
        if not tokens:
            self.variables |= env
            if exported:
                self.exported |= env
            return None
        argv = [self.substitute(self.expand(token, strict), port) for token in tokens]
        return Command(line, {"VACE_PORT": str(port), **env}, argv, port)


def check_vace_argv(argv: list[str], env: dict[str, str]) -> tuple[argparse.Namespace, Settings]:
    """What ``vace`` does with an argv before any work, in-process under the command's environment: the parser,
    then ``Settings`` (where the ``--parallel`` of issue 23 failed), then for ``generate`` the request schema and
    for ``serve`` its refusal of a host other machines reach without a key."""
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"vace refuses {shlex.join(argv)} (argparse, exit {exc.code})")
    with mock.patch.dict(os.environ, env, clear=True):
        try:
            settings = cli.settings(args)
        except cli.SettingsError as exc:
            pytest.fail(f"vace {shlex.join(argv)}: {exc}")
    if args.command == "generate":
        commands.cli_input_model(args.endpoint).model_validate(cli._fields(args))
    if args.command == "serve":
        refusal = commands.exposure_refusal(settings, args.insecure_no_auth)
        assert refusal is None, f"vace {shlex.join(argv)}: {refusal}"
    return args, settings


def make_argv(argv: list[str]) -> list[str]:
    stamp = Path(sys.prefix) / ".installed"
    return ["make", "-s", "-f", str(REPO / "Makefile"), f"VENV={sys.prefix}", "-o", str(stamp), *argv[1:]]


def make_recipe_vace_argv(argv: list[str], shell: Shell, env: dict[str, str]) -> list[str]:
    """The ``vace`` argv a make target runs (``make -n``), for the in-process checks."""
    recipe = run_to_end(" ".join(argv), shell, [*make_argv(argv), "-n"], env, timeout_s=60)
    script = str(Path(sys.prefix) / "bin" / "vace")
    (line,) = [line for line in recipe.splitlines() if line.startswith(script + " ")]
    return shlex.split(line)[1:]


CONTAINERS = {"vace-server", "api", "worker"}
"""What a ``docker`` line starts: the README's image tag, or a vace service of deploy/compose.yaml."""


def docker_vace_argv(argv: list[str]) -> tuple[list[str], dict[str, str]] | None:
    """The ``vace`` argv and the ``-e NAME=value`` environment a ``docker run`` / ``docker compose run`` line
    gives its container: what follows the image (or service), after the Dockerfile's entry point unless the line
    sets ``--entrypoint vace``; None for lines that start no container (build, up)."""
    if argv[:2] not in (["docker", "run"], ["docker", "compose"]) or not CONTAINERS & set(argv):
        return None
    env = dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv[:-1]) if arg == "-e" and "=" in argv[i + 1])
    at = next(i for i, arg in enumerate(argv) if arg in CONTAINERS and argv[i - 1] not in ("--name", "-v", "-e"))
    own_entrypoint = "--entrypoint" in argv and argv[argv.index("--entrypoint") + 1] == "vace"
    return (argv[at + 1 :] if own_entrypoint else image_entrypoint()[1:] + argv[at + 1 :]), env


def check_skipped(command: Command, shell: Shell) -> None:
    """The part of a skipped line that can be checked here."""
    argv, env = command.documented, shell.environment(command.documented_env)
    if argv[0] == "docker":
        container = docker_vace_argv(argv)
        if container is not None:
            check_vace_argv(container[0], {**env, **container[1]})
    elif argv[0] in ("vace", ".venv/bin/vace"):
        check_vace_argv(argv[1:], env)
    elif argv[0] == "make":
        run_to_end(command.line, shell, [*make_argv(argv), "-n"], env, timeout_s=60)
    elif argv[0].endswith("python") and argv[1].startswith("bench/"):
        run_to_end(command.line, shell, [sys.executable, str(REPO / argv[1]), "--help"], env, timeout_s=300)


def run_to_end(line: str, shell: Shell, argv: list[str], env: dict[str, str], timeout_s: float) -> str:
    """Run a command to its end; it must exit 0. Returns what it printed on stdout."""
    done = subprocess.run(argv, cwd=shell.cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    assert done.returncode == 0, (
        f"`{line}` (run as {shlex.join(argv)}) exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}"
    )
    return done.stdout


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc: the field of ``stat`` after the state)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue  # gone meanwhile
    return found


class LongRunning:
    """A server or worker started in its own session, its output collected by a thread."""

    def __init__(self, line: str, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.line, self.argv = line, argv
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout or ():
            self.output.append(line)

    def tail(self) -> str:
        self.reader.join(5)
        return "".join(self.output)[-4000:]

    def running(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"`{self.line}` exited {self.proc.returncode} before it was up:\n{self.tail()}")

    def healthy(self, url: str) -> bool:
        self.running()
        try:
            return httpx.get(url, verify=False, timeout=5).is_success
        except httpx.HTTPError:
            return False

    def printed(self, text: str) -> bool:
        self.running()
        return any(text in line for line in self.output)

    def interrupt(self) -> int:
        """Ctrl-C for the server itself; under ``make``, that is make's child, and make reports how it ended."""
        for pid in children(self.proc.pid) if self.argv[0] == "make" else [self.proc.pid]:
            os.kill(pid, signal.SIGINT)
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


def check_outputs(line: str, args: argparse.Namespace, cwd: Path, printed: str) -> None:
    """The videos a finished command wrote are there, decode and are the ones it printed: ``-o`` (a bounded job's
    17 frames, or the input's for a control video and an edit's conditioning; ``generate`` prints the fal output
    JSON) and the demo's jobs (33 frames for pose and depth, 17 for the others)."""
    if args.command == "preprocess" and args.task in cli.EDIT_TASKS:
        for name in ("src_video.mp4", "src_mask.mp4"):
            assert probe_video(cwd / args.output / name).num_frames == 17, f"`{line}`: {args.output}/{name}"
    elif args.command in ("generate", "preprocess"):
        output = (cwd / args.output).resolve()
        assert probe_video(output).num_frames == 17, f"`{line}`: {args.output}"
        if args.command == "generate":
            assert json.loads(printed)["video"]["url"] == output.as_uri(), f"`{line}` printed {printed}"
    if args.command == "demo":
        for name, (task, _media, fields) in JOBS.items():
            video = (cwd / args.out / f"{name}-{DEFAULT_MODEL_FOR_TASK[task]}.mp4").resolve()
            frames = probe_video(video).num_frames
            assert frames == fields.get("num_frames", 17) and str(video) in printed, f"`{line}`: {name}"


def cost_bound(endpoint: str) -> list[str]:
    """The :data:`COST_BOUND` flags of the fields the endpoint has."""
    fields = commands.cli_input_model(endpoint).model_fields  # type: ignore[arg-type]
    return [arg for name, value in COST_BOUND.items() if name in fields for arg in (f"--{name}", value)]


def run_command(command: Command, shell: Shell) -> None:
    """Run one documented command line to its end, or for a server or worker up and (Ctrl-C) down."""
    argv, env = command.argv, shell.environment(command.env)
    if argv[0] in ("vace", ".venv/bin/vace"):
        args, settings = check_vace_argv(command.documented[1:], shell.environment(command.documented_env))
        run_argv = [str(VACE), *argv[1:], *(cost_bound(args.endpoint) if args.command == "generate" else [])]
        kind = args.command
    elif argv[0] == "make":
        run_argv = make_argv(argv)
        args, settings = check_vace_argv(
            make_recipe_vace_argv(command.documented, shell, env), shell.environment(command.documented_env)
        )
        kind = args.command
    else:
        pytest.fail(f"`{command.line}` is neither run here (vace, make) nor in SKIPPED")
    if kind not in ("serve", "worker"):
        printed = run_to_end(command.line, shell, run_argv, env, timeout_s=900)
        check_outputs(command.line, args, shell.cwd, printed)
        return
    process = LongRunning(command.line, run_argv, shell.cwd, env)
    try:
        if kind == "serve":
            url = f"{'https' if settings.tls else 'http'}://127.0.0.1:{command.port}/health"
            wait_until(lambda: process.healthy(url), 240, f"`{command.line}` to answer /health", interval_s=0.5)
        else:
            wait_until(lambda: process.printed("vace worker on"), 240, f"`{command.line}` to start")
        code = process.interrupt()
        assert code == 0, f"`{command.line}` exited {code} on Ctrl-C:\n{process.tail()}"
    finally:
        process.kill()


@pytest.fixture
def shell(tmp_path: Path, tiny_weights: Path, request: pytest.FixtureRequest) -> Shell:
    """A fresh working directory with the files the examples name, and a home whose default weights directory
    holds the tiny weights."""
    for name, kind in (
        ("dance.mp4", "pose"),
        ("in.mp4", "pose"),
        ("depth.mp4", "depth"),
        ("street.mp4", "depth"),
        ("car-mask.mp4", "mask"),
        ("letterboxed.mp4", "letterbox"),
    ):
        write_sample(kind, tmp_path / name, num_frames=17)
    Image.fromarray(SAMPLES["depth"](416, 240, 1, 16)[0]).save(tmp_path / "cat.png")
    Image.fromarray(SAMPLES["mask"](416, 240, 1, 16)[0]).save(tmp_path / "car-mask.png")
    (tmp_path / "style.safetensors").symlink_to(tiny_weights / "loras" / "tiny-wan21.safetensors")
    (tmp_path / "home" / ".cache" / "vace").mkdir(parents=True)
    (tmp_path / "home" / ".cache" / "vace" / "weights").symlink_to(tiny_weights)
    return Shell(
        cwd=tmp_path,
        weights=tiny_weights,
        pg_url=lambda: request.getfixturevalue("pg_url"),
        variables={**USER_SHELL, "PWD": str(tmp_path)},
    )


@pytest.mark.parametrize("block", BLOCKS, ids=[block.source for block in BLOCKS])
def test_documented_command_lines_run(block: Block, shell: Shell) -> None:
    for line in block.lines:
        skipped = any(re.search(pattern, line) for pattern in SKIPPED)
        command = shell.parse(line, strict=not skipped)
        if command is None:
            continue
        if skipped:
            check_skipped(command, shell)
        else:
            run_command(command, shell)
