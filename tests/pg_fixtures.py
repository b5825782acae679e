"""A throw-away PostgreSQL cluster for the tests: Debian's own server binaries, ``initdb`` and ``pg_ctl`` in a temp
directory, listening on loopback on a free port.

PostgreSQL refuses to run as root, so when the tests run as root (CI does) the cluster belongs to the ``postgres``
user, or to a system user made for it where Debian's is missing. Without the binaries the tests skip with the reason,
except in CI (``CI=true``), where that fails them: CI installs the ``postgresql`` package.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from server_fixtures import free_port, require

# Debian installs the server outside PATH, one directory per major version.
_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
PG_BIN = next((d for d in _BIN_DIRS if (d / "pg_ctl").exists()), None)
_OWNER = "postgres"  # Debian's account for the server; made (as a system user) when missing
_SUPERUSER = "vace"  # the cluster's superuser, trusted on loopback: the tests connect as it without a password


class PostgresCluster:
    """One ``initdb`` cluster: start, stop, restart, and a fresh database per test."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        # Not under pytest's tmp_path: that is private to root (mode 0700), and the server runs as another user.
        self.root = Path(tempfile.mkdtemp(prefix="vace-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._owner = _server_owner()
        if self._owner is not None:
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
        self._names = itertools.count(1)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            _SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        # Durability is not under test here: no fsync makes each commit cheap on the shared test machine.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """``pg_ctl restart``: every client connection is dropped, and the server is back on the same port."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "restart")

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        name = f"test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if self._owner is not None:
            command = ["runuser", "-u", self._owner.pw_name, "--", *command]
        # The server that pg_ctl starts keeps pg_ctl's stdout and stderr open: files, not pipes, or reading them
        # would wait for the server to exit.
        with tempfile.TemporaryFile("w+") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, text=True, timeout=120)
            out.seek(0)
            output = out.read()
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {output}\n{log}")


def _server_owner() -> pwd.struct_passwd | None:
    """The unprivileged account that runs the server when we are root (None: we are not root, we run it)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_OWNER)
    except KeyError:
        pass
    # Two test workers may both add it: useradd's 9 says the other one did.
    command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _OWNER]
    if (status := subprocess.run(command, check=False).returncode) not in (0, 9):
        raise RuntimeError(f"useradd {_OWNER} failed ({status})")
    return pwd.getpwnam(_OWNER)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """The session's PostgreSQL server (skips without the binaries; fails in CI)."""
    require(
        PG_BIN is not None,
        "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)",
    )
    assert PG_BIN is not None
    cluster = PostgresCluster(PG_BIN)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> str:
    """A fresh, empty database for one test."""
    return pg_cluster.new_database()
