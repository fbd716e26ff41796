"""A real PostgreSQL server for a test: Debian's binaries (`/usr/lib/postgresql/<v>/bin`, installed
by `make deb`), a fresh cluster in a temporary folder, listening on a free loopback port only,
with the user, password and database the compose file gives its `postgres` service.

`initdb` refuses to run as root, so under root every server command runs as the `postgres`
user (`runuser`) in a folder handed to it; otherwise as the current user. Stopped (fast
shutdown) and deleted by `stop()`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def bindir() -> Path:
    """The newest installed PostgreSQL's bin folder; AssertionError saying how to get one."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    assert found, "PostgreSQL is not installed: `make deb` (or apt-get install postgresql) installs it"
    return Path(found[-1]).parent


class Postgres:
    """One throwaway cluster: `start()`, `url(scheme)`, `psql(sql)`, `stop()`."""

    def __init__(self, user: str, password: str, database: str) -> None:
        self.user, self.password, self.database = user, password, database
        self.bin = bindir()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.dir = Path(tempfile.mkdtemp(prefix="lawam-pg-"))
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")

    def _run(self, *cmd: str, env: dict | None = None) -> str:
        argv = [str(self.bin / cmd[0]), *cmd[1:]]
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120,
                             cwd=self.dir)
        assert out.returncode == 0, f"{cmd[0]} failed: {out.stdout[-2000:]}{out.stderr[-2000:]}"
        return out.stdout

    def start(self) -> None:
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_postgres:
            shutil.chown(pwfile, "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-U", self.user, f"--pwfile={pwfile}", "-E", "UTF8",
                  "--auth-local=trust", "--auth-host=scram-sha-256")
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir}"
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-o", opts, "-l", str(self.dir / "server.log"), "-w",
                  "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database,
                  env={"PGPASSWORD": self.password})

    def url(self, scheme: str = "postgresql") -> str:
        return f"{scheme}://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def psql(self, sql: str) -> str:
        """Run `sql` over TCP with the password; its rows, unaligned."""
        return self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", self.database,
                         "-At", "-c", sql, env={"PGPASSWORD": self.password})

    def stop(self) -> None:
        if (self.dir / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
