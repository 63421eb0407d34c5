"""Real servers for the tests: PostgreSQL from Debian's package and `mlflow server`.

Each server lives in a temporary folder, listens on 127.0.0.1 and a free port, and is stopped by
its PID in teardown. PostgreSQL runs from its own binaries (`initdb`, `postgres`) on a temporary
data folder, as the `postgres` user when the tests run as root (PostgreSQL refuses root); no
system cluster is touched. `.ci/run` installs Debian's `postgresql` package when it is missing.

Missing PostgreSQL binaries or the psycopg driver: under CI (`CI=true`) the test FAILS with what
to install; elsewhere it is skipped with that reason (shown by `-ra`, which `make test` uses).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PG_USER = "safecompress"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(why: str) -> None:
    """Fail in CI (the component must be there), skip with the reason elsewhere."""
    if in_ci():
        pytest.fail(f"{why} (CI=true: the integration test must run; .ci/run installs it)")
    pytest.skip(why)


def postgres_bin_dir() -> Path | None:
    """The newest `/usr/lib/postgresql/<version>/bin` (Debian), else the folder of `initdb` on PATH."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", Path(path).parent.parent.name))

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@dataclass
class Postgres:
    """A PostgreSQL server on 127.0.0.1:`port` with one password-protected superuser."""

    proc: subprocess.Popen
    folder: Path
    port: int
    password: str

    def url(self, database: str, driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


def start_postgres() -> Postgres:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        unavailable(
            "PostgreSQL binaries not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): "
            "apt-get install postgresql"
        )
    try:
        import psycopg  # noqa: F401 - the driver of postgresql:// URLs (SQLAlchemy 2.1's default)
    except ImportError:
        unavailable("the psycopg driver is not installed: pip install -e '.[postgres]'")
    user = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(
                "running as root but there is no 'postgres' user to run PostgreSQL as "
                "(Debian's postgresql package creates it)"
            )
    # Not under pytest's tmp_path: that folder is private to root, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="safecompress-pg-"))
    password = "pw-" + secrets.token_hex(12)
    (folder / "pwfile").write_text(password + "\n")
    if user is not None:
        for p in (folder, folder / "pwfile"):
            os.chown(p, user.pw_uid, user.pw_gid)
    as_user = {"user": user.pw_uid, "group": user.pw_gid} if user is not None else {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["HOME"] = str(folder)
    init = subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", PG_USER,
         f"--pwfile={folder / 'pwfile'}", "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"],
        cwd=folder, env=env, capture_output=True, text=True, **as_user,
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(
            f"initdb failed ({init.returncode}):\n{init.stdout[-2000:]}\n{init.stderr[-2000:]}"
        )
    port = free_port()
    log = open(folder / "server.log", "w")
    if user is not None:
        os.chown(folder / "server.log", user.pw_uid, user.pw_gid)
    # The server itself in the foreground (no pg_ctl), so the PID we hold is the postmaster's.
    proc = subprocess.Popen(
        [str(bin_dir / "postgres"), "-D", str(folder / "data"), "-p", str(port),
         "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={folder}",
         "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=100"],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, **as_user,
    )  # fmt: skip
    log.close()
    server = Postgres(proc, folder, port, password)
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            stop_postgres(server)
            pytest.fail(
                f"postgres exited with code {proc.returncode}:\n{tail(folder / 'server.log')}"
            )
        try:
            with psycopg.connect(server.url("postgres"), connect_timeout=2):
                break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                stop_postgres(server)
                pytest.fail(
                    f"postgres not accepting connections after 60 s:\n{tail(folder / 'server.log')}"
                )
            time.sleep(0.3)
    return server


def stop_postgres(server: Postgres) -> None:
    """Fast shutdown by the postmaster's PID (SIGINT), SIGKILL after 30 s; the folder is removed."""
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    shutil.rmtree(server.folder, ignore_errors=True)


@dataclass
class MlflowServer:
    proc: subprocess.Popen
    url: str
    artifacts: Path
    log: Path


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the process group led by `proc` (its PID), SIGKILL what is left after `grace` s."""
    pgid = proc.pid  # started with start_new_session: it leads its own group
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_alive(pgid) and time.monotonic() < deadline:
        if proc.poll() is None:
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(0.2)
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10  # killed children are gone once their parent reaped them
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)


def start_mlflow_server(
    backend_uri: str, folder: Path, port: int | None = None, log_name: str = "mlflow-server.log"
) -> MlflowServer:
    """`mlflow server` on 127.0.0.1 (a free port unless `port`: a restart on the same one) with
    its artifacts in `folder/artifacts` (served by it); stop it with `stop_group(server.proc)`."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log_path = folder / log_name
    cmd = [
        str(Path(sys.executable).with_name("mlflow")), "server",
        "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    # No job runner: its consumer processes (server-side GenAI jobs, unused here) cost seconds of
    # CPU at start on a 2-core machine.
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True
        )
    server = MlflowServer(proc, url, artifacts, log_path)
    deadline = time.monotonic() + 180  # ~30 s on an idle 2-core machine, much longer under load
    while True:
        if proc.poll() is not None:
            stop_group(proc)
            pytest.fail(f"mlflow server exited with code {proc.returncode}:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_group(proc)
            pytest.fail(f"mlflow server not healthy after 180 s:\n{tail(log_path)}")
        time.sleep(0.5)
