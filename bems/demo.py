"""``bems demo``: the whole pipeline on 127.0.0.1 with embedded defaults, stopped cleanly on Ctrl-C.

Every stage runs as its own process (``python -m <stage>``), exactly as in production; this module only
writes their configuration, starts them in order, watches them and stops them in reverse order.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from bems.errors import BemsError
from bems.seal import generate_seal_key
from bems.services import ManagedProcess, Mosquitto, find_binary, port_in_use, wait_port
from bems.signing import generate_key, load_signing_key
from bems.state import StateDB

DEMO_FLEET = Path(__file__).with_name("demo_fleet.yaml")


@dataclass(frozen=True)
class DemoOptions:
    data_dir: Path
    port: int = 8000
    mqtt_port: int = 11883
    modbus_port: int = 15020
    history_days: float = 21
    analytics_interval_s: float = 60
    fresh: bool = False


class DemoError(BemsError):
    pass


def check_ports(opts: DemoOptions) -> None:
    for port, flag in ((opts.port, "--port"), (opts.mqtt_port, "--mqtt-port"), (opts.modbus_port, "--modbus-port")):
        if port_in_use(port):
            raise DemoError(f"port {port} on 127.0.0.1 is in use; choose another with {flag} <port>")


def key_path(opts: DemoOptions, edge_id: str) -> Path:
    return opts.data_dir / "keys" / f"{edge_id}.key"


def write_fleet(opts: DemoOptions) -> Path:
    """The demo fleet with this run's ports and each edge's public key (a key is made once per data directory)."""
    data = yaml.safe_load(DEMO_FLEET.read_text(encoding="utf-8"))
    for meter in data["meters"]:
        meter["device"]["port"] = opts.modbus_port
    for edge in data["edges"]:
        path = key_path(opts, edge["id"])
        signer = load_signing_key(path) if path.exists() else generate_key(path)
        edge["public_keys"] = [signer.public_key]
    path = opts.data_dir / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def write_scenario(opts: DemoOptions) -> Path:
    """Some after-hours waste in the backfilled weeks, so alerts are there from the first minute."""
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    faults = []
    waste = ((2, "tehran-moi-hq.hvac-elec", 0.8), (5, "tehran-edu-office.main-elec", 0.6),
             (9, "mashhad-gov-office.hvac-elec", 0.7), (12, "tehran-moi-hq.lighting-elec", 0.9))
    for days_ago, meter, fraction in waste:
        if days_ago >= opts.history_days:
            continue
        start = today - dt.timedelta(days=days_ago) + dt.timedelta(hours=15, minutes=30)  # 19:00 Tehran
        faults.append({"type": "after_hours_waste", "meter": meter, "start": start.isoformat(),
                       "end": (start + dt.timedelta(hours=5)).isoformat(), "fraction": fraction})
    path = opts.data_dir / "scenario.yaml"
    path.write_text(yaml.safe_dump({"faults": faults}, sort_keys=False), encoding="utf-8")
    return path


class Demo:
    def __init__(self, opts: DemoOptions) -> None:
        self.opts = opts
        self.procs: list[ManagedProcess] = []
        self.stopping = threading.Event()
        self.logs = opts.data_dir / "logs"

    def _stage(self, name: str, module: str, *args: str, env: dict[str, str] | None = None) -> ManagedProcess:
        proc = ManagedProcess([sys.executable, "-m", module, *args], self.logs, name,
                              env={**os.environ, **(env or {})})
        proc.start()
        self.procs.append(proc)
        return proc

    def _broker(self) -> tuple[str, dict[str, str]]:
        """mosquitto with a fresh password when it is installed, else the embedded amqtt broker."""
        o = self.opts
        if find_binary("mosquitto") and find_binary("mosquitto_passwd"):
            password = secrets.token_urlsafe(18)
            pwfile = o.data_dir / "broker" / "passwd"
            pwfile.parent.mkdir(parents=True, exist_ok=True)
            pwfile.unlink(missing_ok=True)
            subprocess.run([find_binary("mosquitto_passwd") or "mosquitto_passwd", "-c", "-b", str(pwfile),
                            "bems-demo", password], check=True, capture_output=True)
            broker = Mosquitto(o.data_dir / "broker", port=o.mqtt_port, anonymous=False,
                               extra=f"password_file {pwfile}\n")
            broker.start()
            self.procs.append(broker)
            kind = "mosquitto"
            creds = {"USERNAME": "bems-demo", "PASSWORD": password}
        else:
            conf = o.data_dir / "broker" / "amqtt.yaml"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(yaml.safe_dump({
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{o.mqtt_port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}))
            amqtt = shutil.which("amqtt") or str(Path(sys.executable).with_name("amqtt"))
            proc = ManagedProcess([amqtt, "-c", str(conf)], self.logs, "amqtt")
            proc.start()
            self.procs.append(proc)
            wait_port(o.mqtt_port, 20)
            kind = "amqtt (embedded; install mosquitto for broker authentication)"
            creds = {}
        print(f"  broker      {kind} on 127.0.0.1:{o.mqtt_port}")
        return f"mqtt://127.0.0.1:{o.mqtt_port}", creds

    def start(self) -> str:
        o = self.opts
        if o.fresh and o.data_dir.exists():
            shutil.rmtree(o.data_dir)
        o.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        check_ports(o)
        fleet = str(write_fleet(o))
        store = f"sqlite:///{(o.data_dir / 'readings.db').resolve()}"
        db = f"sqlite:///{(o.data_dir / 'state.db').resolve()}"
        print(f"bems demo: data in {o.data_dir.resolve()}, logs in {self.logs.resolve()}")
        broker_url, creds = self._broker()
        backfill = [] if (o.data_dir / "readings.db").exists() and not o.fresh else [
            "--backfill-days", str(o.history_days), "--store", store, "--scenario", str(write_scenario(o)),
            "--labels", str(o.data_dir / "labels.csv")]
        print(f"  simulators  10 meters on 127.0.0.1:{o.modbus_port}"
              + (f" (writing {o.history_days:g} days of history first)" if backfill else ""))
        self._stage("simulators", "simulators", "--config", fleet, *backfill)
        self._stage("collector", "collector", "--config", fleet, "--broker", broker_url, "--store", store,
                    "--client-id", "bems-demo-collector", "--state-url", db,
                    *([] if creds else ["--allow-anonymous-broker"]),
                    env={f"BEMS_COLLECTOR_BROKER__{k}": v for k, v in creds.items()})
        wait_port(o.modbus_port, 180)
        for edge in yaml.safe_load(Path(fleet).read_text(encoding="utf-8"))["edges"]:
            self._stage(f"edge-{edge['id']}", "edge", "--config", fleet, "--edge-id", edge["id"],
                        "--broker", broker_url, "--signing-key", str(key_path(o, edge["id"])),
                        env={f"BEMS_EDGE_BROKER__{k}": v for k, v in creds.items()})
        seal_key = o.data_dir / "seal.key"
        if not seal_key.exists():
            generate_seal_key(seal_key)  # seals made with it check only with it: kept across restarts
        self._stage("analytics", "analytics", "--config", fleet, "--store", store, "--db", db,
                    "--interval-s", str(o.analytics_interval_s), "--broker", broker_url,
                    "--seal-key-file", str(seal_key.resolve()),
                    env={f"BEMS_ANALYTICS_BROKER__{k}": v for k, v in creds.items()})
        state = StateDB(db)
        token = state.create_token(f"demo-admin-{secrets.token_hex(3)}", "admin")
        state.close()
        self._stage("api", "api", "--config", fleet, "--store", store, "--db", db, "--port", str(o.port))
        url = f"http://127.0.0.1:{o.port}/"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise DemoError(f"the API did not answer on {url}: see {self.logs / 'api.log'}")
        print(f"\n  dashboard   {url}\n  API docs    {url}docs\n  demo token  {token}\n\nPress Ctrl-C to stop.")
        return token

    def watch(self) -> int:
        """Block until a signal or until a stage dies; returns the exit code."""
        while not self.stopping.wait(0.5):
            for p in self.procs:
                if p.proc is not None and p.proc.poll() is not None:
                    print(f"bems demo: {p.name} exited with {p.proc.returncode}; last lines of its log:\n"
                          f"{p.tail()}", file=sys.stderr)
                    return 1
        return 0

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop(timeout=10)
        self.procs.clear()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_demo(opts: DemoOptions) -> int:
    demo = Demo(opts)
    signal.signal(signal.SIGTERM, _interrupt)  # while starting, a signal aborts the start
    try:
        demo.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: demo.stopping.set())
        code = demo.watch()
    except BemsError as exc:
        print(f"bems demo: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 0
    finally:
        print("bems demo: stopping ...", file=sys.stderr)
        demo.stop()
    return code
