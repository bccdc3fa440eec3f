"""A throwaway PostgreSQL cluster that a test creates, crashes, restarts and removes by itself.

Tests that stop, crash or restart a server, or kill server processes other than their own
connection's, run against one of these and never against the machine's shared server
(``tests/_pg.py``), whose other clients must not notice the test suite. The cluster lives in a
temporary directory, listens on its own free port on 127.0.0.1 only, requires a password
(``scram-sha-256``), and is stopped and deleted when the ``with`` block ends, also on failure.

``initdb`` refuses to run as root, so when the tests run as root (common in containers) every
server command runs as the ``postgres`` operating-system user, on a directory it owns. When no
cluster can be made, the test is skipped with the reason, except under ``CI``, where that is a
failure, as for the shared server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PASSWORD", "Cluster", "bin_dir", "throwaway_cluster", "unavailable_reason"]

PASSWORD = "throwaway-secret"
_SERVER_USER = "postgres"


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` directory (with ``initdb`` and ``pg_ctl``), if any."""
    found = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    on_path = shutil.which("initdb")
    if on_path:
        found.append(Path(on_path).parent)
    return max(found, key=_major_version, default=None)


def _major_version(directory: Path) -> int:
    try:
        return int(directory.parent.name)
    except ValueError:
        return 0


def _as_server_user() -> list[str]:
    """The prefix that runs a command as the ``postgres`` user when we are root (``initdb`` refuses root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root, and `runuser` is missing to run initdb as the postgres user")
    return [runuser, "-u", _SERVER_USER, "--"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """One throwaway cluster: ``url`` connects to it as the superuser ``postgres`` with :data:`PASSWORD`."""

    def __init__(self, bin_directory: Path, directory: Path) -> None:
        self._bin = bin_directory
        self.directory = directory
        self.data = directory / "data"
        self.port = 0
        self._prefix = _as_server_user()

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run(
            [*self._prefix, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=self.directory
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip() or done.stdout}")

    def create(self) -> None:
        """``initdb`` into the directory, with password authentication for every connection."""
        password_file = self.directory / "password"
        password_file.write_text(PASSWORD + "\n")
        if self._prefix:
            shutil.chown(self.directory, _SERVER_USER)
            shutil.chown(password_file, _SERVER_USER)
        self._run(
            str(self._bin / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "scram-sha-256",
            "--pwfile",
            str(password_file),
            "--no-sync",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
        )

    def start(self) -> None:
        """Start the server on a free port on 127.0.0.1 (a new port if the last one was taken meanwhile)."""
        last: Exception | None = None
        for _ in range(3):
            self.port = self.port or _free_port()
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} "
                "-c max_connections=30 -c shared_buffers=16MB"
            )
            try:
                self._run(
                    str(self._bin / "pg_ctl"), "start", "--pgdata", str(self.data), "--wait", "--timeout", "30",
                    "--log", str(self.directory / "server.log"), "-o", options,
                )  # fmt: skip
                return
            except RuntimeError as exc:
                last = exc
                self.port = 0
        raise RuntimeError(f"the throwaway cluster did not start: {last}; log: {self.log()}")

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server: ``mode="immediate"`` is a crash (no checkpoint; recovery runs at the next start)."""
        self._run(str(self._bin / "pg_ctl"), "stop", "--pgdata", str(self.data), "--wait", "--mode", mode)

    def crash_and_restart(self) -> None:
        """An immediate shutdown (every connection cut, as in a crash), then a start with recovery."""
        self.stop(mode="immediate")
        self.start()

    def remove(self) -> None:
        """Stop the server if it runs (by its own postmaster pid if ``pg_ctl`` fails) and delete everything."""
        try:
            self.stop(mode="immediate")
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGQUIT)  # our own cluster's postmaster: an immediate shutdown
        shutil.rmtree(self.directory, ignore_errors=True)

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"


def unavailable_reason() -> str | None:
    """Why a throwaway cluster cannot be made here, or ``None`` if it can be tried."""
    directory = bin_dir()
    if directory is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) are installed"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without `runuser` to run initdb as the postgres user"
        try:
            import pwd

            pwd.getpwnam(_SERVER_USER)
        except KeyError:
            return "running as root and there is no `postgres` user to run initdb as"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the throwaway-cluster tests", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A started cluster of our own, stopped and deleted when the block ends, whatever happens in it."""
    reason = unavailable_reason()
    if reason is not None:
        _skip_or_fail(f"cannot make a throwaway PostgreSQL cluster: {reason}")
    directory = bin_dir()
    assert directory is not None
    root = Path(tempfile.mkdtemp(prefix="kern-pg-"))
    os.chmod(root, 0o755)  # the server user reaches its directory even when /tmp paths are private
    cluster = Cluster(directory, root)
    try:
        try:
            cluster.create()
            cluster.start()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            _skip_or_fail(f"cannot make a throwaway PostgreSQL cluster: {exc}")
        yield cluster
    finally:
        cluster.remove()
