"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb into a temp dir, run it on
127.0.0.1 with a free port and a unix socket inside the temp dir, stop with ``-m immediate``, delete.

initdb refuses to run as root, so as root the server runs as the ``postgres`` user (created by
Debian's packages; ``scripts/deps/postgres.sh`` installs them).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

SUPERUSER = "lossproof_admin"
USER = "lossproof"
PASSWORD = "lp-test-password"
DATABASE = "lossproof_test"


def pg_bindir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's /usr/lib/postgresql/N/bin (newest)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    dirs = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    return Path(dirs[-1]).parent if dirs else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    def __init__(self, settings: dict[str, str] | None = None) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found: run scripts/deps/postgres.sh")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="lossproof-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.logfile = self.root / "server.log"
        self.port = free_port()
        self.settings = settings or {}
        self._run_as: str | None = "postgres" if os.geteuid() == 0 else None
        self._lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------------------

    def _cmd(self, name: str, *args: str) -> list[str]:
        argv = [str(self.bindir / name), *args]
        return ["runuser", "-u", self._run_as, "--", *argv] if self._run_as else argv

    def _run(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._cmd(name, *args), capture_output=True, text=True, check=check, cwd="/")

    def init(self) -> PgCluster:
        self.sock.mkdir()
        if self._run_as:
            pw = pwd.getpwnam(self._run_as)
            os.chmod(self.root, 0o755)
            for p in (self.root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sock}'",
            "max_connections": "100",
            "shared_buffers": "256MB",
            "max_wal_size": "2GB",
            "logging_collector": "off",
            "log_min_messages": "warning",
            **self.settings,
        }
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n# lossproof tests\n")
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        # Local (socket) connections are trusted for setup; TCP needs the password, so tests can
        # check what a wrong one does.
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        return self

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-m", mode, "-w", "-t", "60", "restart"
        )

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # --- SQL as the superuser over the socket ------------------------------------------------------

    def psql(self, sql: str, db: str = "postgres") -> str:
        out = self._run(
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.sock), "-p", str(self.port), "-U", SUPERUSER, "-d", db, "-c", sql,
        )  # fmt: skip
        return out.stdout.strip()

    def setup_database(self) -> PgCluster:
        self.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        self.psql(f"CREATE DATABASE {DATABASE} OWNER {USER}")
        return self

    def dsn(self, database: str = DATABASE, password: str = PASSWORD, user: str = USER) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    @property
    def admin_dsn(self) -> str:
        return f"host={self.sock} port={self.port} user={SUPERUSER} dbname={DATABASE}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self._run("pg_isready", "-h", str(self.sock), "-p", str(self.port), check=False)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres not ready: {self.logfile.read_text()[-2000:]}")


def new_cluster(settings: dict[str, str] | None = None) -> PgCluster:
    c = PgCluster(settings).init()
    try:
        c.start()
        c.setup_database()
    except BaseException:
        c.destroy()
        raise
    return c


_shared: PgCluster | None = None
_shared_lock = threading.Lock()


def shared_cluster() -> PgCluster:
    """One cluster per test process, started on first use and removed at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = new_cluster()
            atexit.register(_shared.destroy)
        return _shared


def available() -> bool:
    return pg_bindir() is not None and (os.geteuid() != 0 or _has_user("postgres"))


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
