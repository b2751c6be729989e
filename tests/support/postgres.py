"""A throwaway PostgreSQL server from Debian's package, on loopback, for the
stored-responses tests (the Makefile's `postgres` target installs it). As
root, the server runs as the `postgres` user: PostgreSQL refuses root."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lemur.server.live import free_port


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run `make postgres` (Debian's postgresql package)")
    return Path(found[-1]).parent


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_server() -> Iterator[str]:
    """A running server with an empty database; yields its URL. Its files go
    in a folder of its own under /tmp (the postgres user cannot enter
    pytest's), removed afterwards."""
    bindir = _bindir()
    workdir = Path(tempfile.mkdtemp(prefix="lemur-pg-"))
    data, sockets = workdir / "pgdata", workdir / "pgsock"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        shutil.chown(sockets, "postgres")
    initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "lemur", "--no-sync"]
    subprocess.run(_as_owner(initdb), check=True, capture_output=True)
    port = free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(workdir / "postgres.log"), "-w", "-t", "60"]
    subprocess.run(_as_owner([*pg_ctl, "-o", options, "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql://lemur@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_owner([*pg_ctl, "-m", "fast", "stop"]), check=False, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
