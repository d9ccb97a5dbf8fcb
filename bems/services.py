"""Start local servers (mosquitto, influxd) on 127.0.0.1 for the demo, the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bems.errors import BemsError


class ServiceError(BemsError):
    """A local server could not be started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise ServiceError(f"nothing answers on {host}:{port} after {timeout:.0f} s")


def find_binary(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}")
                                       if os.access(p, os.X_OK)), None)


class ManagedProcess:
    """A child server process that is stopped (TERM, then KILL) when the context exits."""

    def __init__(self, argv: list[str], workdir: Path, name: str, env: dict[str, str] | None = None) -> None:
        self.argv, self.workdir, self.name, self.env = argv, workdir, name, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{name}.log"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=self.env)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Mosquitto(ManagedProcess):
    """mosquitto on 127.0.0.1 with a generated config; ``extra`` lines are appended (auth, TLS, ACL)."""

    def __init__(self, workdir: Path, port: int | None = None, extra: str = "", anonymous: bool = True) -> None:
        binary = find_binary("mosquitto")
        if binary is None:
            raise ServiceError("mosquitto not found; install it with `apt-get install mosquitto` "
                               "(scripts/install-services does this)")
        self.port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"user {getpass.getuser()}\n"  # as root, mosquitto would drop to 'mosquitto' and lose our files
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            f"persistence true\npersistence_location {workdir}/\n"
            "max_queued_messages 1000000\nmax_inflight_messages 1000\n"
            "log_dest stdout\nlog_type error\nlog_type warning\nlog_type notice\n" + extra)
        self.conf = conf
        super().__init__([binary, "-c", str(conf)], workdir, "mosquitto")

    def start(self) -> None:
        super().start()
        try:
            wait_port(self.port, 10)
        except ServiceError as exc:
            raise ServiceError(f"mosquitto did not start on port {self.port}: {self.tail()}") from exc

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


class Influxd(ManagedProcess):
    """The Debian ``influxd`` 1.x with a throw-away data directory."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = find_binary("influxd")
        if binary is None:
            raise ServiceError("influxd not found; install it with `apt-get install influxdb` "
                               "(scripts/install-services does this)")
        self.port = port or free_port()
        rpc = self.rpc_port = free_port()  # top-level bind-address: influxd backup/restore talk to it
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "influxdb.conf"
        conf.write_text(
            f'bind-address = "127.0.0.1:{rpc}"\nreporting-disabled = true\n'
            f'[meta]\n  dir = "{workdir}/meta"\n'
            f'[data]\n  dir = "{workdir}/data"\n  wal-dir = "{workdir}/wal"\n  query-log-enabled = false\n'
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            '[logging]\n  level = "warn"\n[monitor]\n  store-enabled = false\n'
            "[continuous_queries]\n  enabled = true\n")
        super().__init__([binary, "-config", str(conf)], workdir, "influxd")

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/ping", timeout=0.5).status_code == 204:
                    return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise ServiceError(f"influxd did not answer /ping on port {self.port}: {self.tail()}")

    def url(self, database: str = "bems") -> str:
        return f"influx://127.0.0.1:{self.port}/{database}"

    @property
    def rpc_address(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"


def temp_workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
