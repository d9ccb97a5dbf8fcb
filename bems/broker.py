"""``bems broker config``: a locked-down mosquitto 2.0 configuration generated from the fleet file.

One credential per client (each edge, each collector, analytics, each utility), TLS only, anonymous access off,
and an ACL that gives each credential the least it needs: an edge writes only its own meters' reading topics and
its own status, and reads nothing; collectors read readings and edge status and write only security alerts
(readings they refused: ``bems/v1/alerts/security/{building}``); analytics writes alerts; a utility reads only its
commodities' alerts, and a security desk (``--utility soc=security``) reads the security alerts.

Passwords are random, stored for the broker as mosquitto's own PBKDF2-SHA512 hashes (``$7$``), and in plain
text only in one private file per client (``clients/<name>.env``) holding the environment variables the stage
reads. Nothing secret is printed. Re-running keeps the CA and every password (``--rotate`` issues new ones).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import ipaddress
import os
import pwd
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bems.certs import TlsFiles, check_given, ensure_generated, write_private
from bems.errors import ConfigError
from bems.fleet import COMMODITIES, Fleet, load_fleet
from bems.wire import READING_SUBSCRIPTION, SLUG, TOPIC_ROOT, alert_topic, reading_topic, status_topic

HASH_ITERATIONS = 101  # mosquitto_passwd's own default in 2.0; the passwords are 256-bit random, not guessable
SALT_BYTES = 12
MAX_PACKET_BYTES = 1_048_576  # a reading is at most 16 KiB; this bounds what one stolen credential can push
STATUS_SUBSCRIPTION = status_topic("+", "+")
SECURITY = "security"  # bems/v1/alerts/security/{building}: the collectors' security alerts
ALERT_CHANNELS = (*COMMODITIES, SECURITY)
RESERVED_BUILDINGS = {"alerts"}  # bems/v1/alerts/... belongs to analytics; a building of that name would overlap
_NAME = re.compile(SLUG)
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                   r"[A-Za-z0-9])?)*$")
_ENV_SAFE = re.compile(r"^[A-Za-z0-9_./:@+=,-]*$")


@dataclass(frozen=True)
class Client:
    """One broker credential: its ACL lines and the environment it is handed in."""

    username: str
    role: str  # edge | collector | analytics | utility
    acl: tuple[tuple[str, str], ...]  # (read|write, topic filter)
    prefix: str  # environment prefix of the broker settings, e.g. BEMS_EDGE_BROKER__
    extra_env: tuple[tuple[str, str], ...] = ()


@dataclass
class BrokerOptions:
    fleet: Path
    out: Path
    listen: str = "127.0.0.1"
    port: int = 8883
    hostnames: list[str] = field(default_factory=list)
    collectors: list[str] = field(default_factory=lambda: ["collector"])
    utilities: list[str] = field(default_factory=list)  # NAME=commodity[,commodity]
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    run_as: str | None = None
    rotate: list[str] = field(default_factory=list)  # usernames, or "all"


@dataclass
class BrokerReport:
    conf: Path
    clients: list[Client]
    url: str
    tls: TlsFiles
    run_as: str
    new: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = HASH_ITERATIONS) -> str:
    """The ``$7$`` password-file hash of mosquitto 2.0: PBKDF2-HMAC-SHA512, base64 salt and digest."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def parse_utilities(specs: list[str]) -> dict[str, tuple[str, ...]]:
    """``NAME=commodity[,commodity]`` flags to {name: commodities}, with errors naming the flag and the fix."""
    out: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        name = name.strip()
        if not sep or not rest.strip():
            raise ConfigError(f"--utility {spec!r}: expected NAME=commodity[,commodity], "
                              f"e.g. --utility tavanir=electricity; commodities: {', '.join(ALERT_CHANNELS)}")
        if not _NAME.match(name):
            raise ConfigError(f"--utility {spec!r}: name {name!r} must be lowercase letters, digits and '-' "
                              "(starting with a letter or digit)")
        if name in out:
            raise ConfigError(f"--utility {name!r} is given twice; give each utility once with all its "
                              f"commodities, e.g. --utility {name}=electricity,gas")
        commodities = tuple(dict.fromkeys(c.strip() for c in rest.split(",") if c.strip()))
        if unknown := [c for c in commodities if c not in ALERT_CHANNELS]:
            raise ConfigError(f"--utility {spec!r}: unknown commodity {', '.join(map(repr, unknown))}; "
                              f"allowed: {', '.join(ALERT_CHANNELS)}")
        out[name] = commodities
    return out


def plan_clients(fleet: Fleet, collectors: list[str], utilities: dict[str, tuple[str, ...]],
                 fleet_name: str = "the fleet file") -> list[Client]:
    """Every credential of the fleet with the least access it needs (the ACL is default-deny)."""
    if clash := sorted(RESERVED_BUILDINGS & set(fleet.building_by_id)):
        raise ConfigError(f"{fleet_name}: building id {clash[0]!r} is reserved ({TOPIC_ROOT}/{clash[0]}/... carries "
                          "alerts to utilities, so its edge could forge them); rename the building")
    clients: list[Client] = []
    for edge in fleet.edges:
        meters = fleet.meters_of_edge(edge.id)
        acl = [("write", reading_topic(edge.building, m.id)) for m in meters]
        acl.append(("write", status_topic(edge.building, edge.id)))
        clients.append(Client(edge.id, "edge", tuple(acl), "BEMS_EDGE_BROKER__", (("BEMS_EDGE_EDGE_ID", edge.id),)))
    for name in collectors:
        if not _NAME.match(name):
            raise ConfigError(f"--collector {name!r} must be lowercase letters, digits and '-'")
        clients.append(Client(name, "collector", (("read", READING_SUBSCRIPTION), ("read", STATUS_SUBSCRIPTION),
                                                  ("write", alert_topic(SECURITY, "+"))),
                              "BEMS_COLLECTOR_BROKER__", (("BEMS_COLLECTOR_CLIENT_ID", name),)))
    clients.append(Client("analytics", "analytics", tuple(("write", alert_topic(c, "+")) for c in COMMODITIES),
                          "BEMS_ANALYTICS_BROKER__"))
    for name, commodities in utilities.items():
        clients.append(Client(f"utility-{name}", "utility",
                              tuple(("read", f"{TOPIC_ROOT}/alerts/{c}/#") for c in commodities), "MQTT_"))
    seen: dict[str, Client] = {}
    for c in clients:
        if c.username in seen:
            raise ConfigError(f"credential name {c.username!r} is used twice ({_origin(seen[c.username], fleet_name)} "
                              f"and {_origin(c, fleet_name)}); rename one of them")
        seen[c.username] = c
    return clients


def _origin(c: Client, fleet_name: str) -> str:
    return {"edge": f"edge in {fleet_name}", "collector": "--collector", "analytics": "the analytics credential",
            "utility": "--utility"}[c.role]


def acl_text(clients: list[Client], source: str) -> str:
    lines = [f"# mosquitto ACL for the bems fleet in {source}; written by `bems broker config`, regenerate rather",
             "# than edit. Default deny: a client may publish (write) or receive (read) only what its user lists.",
             "# mosquitto 2.0 checks reads when a message is delivered, not at SUBSCRIBE: a subscription to '#' or",
             "# to $share/<group>/... is granted but delivers only the topics listed as read.", ""]
    for c in clients:
        lines.append(f"# {c.role}")
        lines.append(f"user {c.username}")
        lines.extend(f"topic {access} {topic}" for access, topic in c.acl)
        lines.append("")
    return "\n".join(lines)


def mosquitto_conf(o: BrokerOptions, tls: TlsFiles, run_as: str, out: Path) -> str:
    bind = "" if o.listen in ("0.0.0.0", "::") else f" {o.listen}"
    ca = f"cafile {tls.ca}\n" if tls.ca else ""
    return (
        f"# mosquitto 2.0 configuration for the bems fleet in {o.fleet}; written by `bems broker config`.\n"
        "# Start: mosquitto -c this file. After re-running the generator, `kill -HUP` reloads passwords and ACL.\n"
        f"per_listener_settings false\nuser {run_as}\n"
        f"listener {o.port}{bind}\nprotocol mqtt\n"
        f"certfile {tls.cert}\nkeyfile {tls.key}\n{ca}tls_version tlsv1.2\n"
        "allow_anonymous false\n"
        f"password_file {out / 'passwd'}\nacl_file {out / 'acl'}\n"
        "# the client id is the username: no credential can take over or kick another client's session\n"
        "use_username_as_clientid true\n"
        f"max_packet_size {MAX_PACKET_BYTES}\n"
        f"persistence true\npersistence_location {out / 'data'}/\n"
        "max_queued_messages 1000000\nmax_inflight_messages 1000\n"
        "connection_messages true\nlog_dest stdout\n"
        "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n")


def env_text(c: Client, password: str, url: str, ca: Path | None) -> str:
    env = [*c.extra_env, (f"{c.prefix}URL", url), (f"{c.prefix}USERNAME", c.username),
           (f"{c.prefix}PASSWORD", password)]
    if ca is not None:
        env.append((f"{c.prefix}CA_FILE", str(ca)))
    head = [f"# broker credential {c.username!r} ({c.role}); secret: keep this file 0600 and off shared disks",
            *(f"# may {access}: {topic}" for access, topic in c.acl),
            "# load with: set -a; . ./this.env; set +a   (or systemd EnvironmentFile=)"]
    for key, value in env:
        if not _ENV_SAFE.match(value):
            raise ConfigError(f"{key} value {value!r} has characters an environment file cannot carry unquoted; "
                              "choose an --out directory (and certificate paths) without spaces or quotes")
    return "\n".join([*head, *(f"{k}={v}" for k, v in env)]) + "\n"


def read_env(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def _hostnames(o: BrokerOptions) -> list[str]:
    wildcard = o.listen in ("0.0.0.0", "::")
    for h in [*o.hostnames, o.listen]:
        if not _is_host(h):
            flag = "--listen" if h == o.listen else "--hostname"
            raise ConfigError(f"{flag} {h!r} is neither an IP address nor a DNS name")
    if wildcard and not o.hostnames:
        raise ConfigError(f"--listen {o.listen} needs --hostname NAME: the name or address clients connect to "
                          "(it goes in the server certificate and the clients' broker URL)")
    names = [*o.hostnames, *([] if wildcard else [o.listen]), "localhost"]
    return list(dict.fromkeys(names))


def _is_host(h: str) -> bool:
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        return bool(_HOST.match(h))


def _default_run_as() -> str:
    """Root starts mosquitto, which then drops to ``mosquitto``; anyone else runs it as themselves."""
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("mosquitto")
            return "mosquitto"
        except KeyError:
            return "root"
    return getpass.getuser()


def _check_run_as(run_as: str) -> None:
    if run_as == getpass.getuser():
        return
    try:
        pwd.getpwnam(run_as)
    except KeyError as exc:
        raise ConfigError(f"--run-as {run_as}: no such user on this machine") from exc
    if os.geteuid() != 0:
        raise ConfigError(f"--run-as {run_as}: only root can hand the broker's files to another user; run as "
                          f"root, or leave --run-as out to run mosquitto as {getpass.getuser()}")


def _unreachable(out: Path, run_as: str) -> Path | None:
    """The first directory above ``out`` that ``run_as`` cannot enter (mosquitto then cannot open its files)."""
    if run_as == getpass.getuser():
        return None
    uid = pwd.getpwnam(run_as).pw_uid
    for parent in reversed(out.parents):
        st = parent.stat()
        if not st.st_mode & 0o001 and st.st_uid != uid:
            return parent
    return None


def _hand_over(paths: list[Path], run_as: str) -> None:
    """The broker reads its password file and ACL (and persists) after dropping to ``run_as``."""
    if run_as != getpass.getuser():
        for p in paths:
            shutil.chown(p, user=run_as)


def generate(o: BrokerOptions) -> BrokerReport:
    """Write mosquitto.conf, passwd, acl, tls/ (unless certificates are given) and clients/*.env into ``o.out``."""
    if not 1 <= o.port <= 65535:
        raise ConfigError(f"--port {o.port} must be between 1 and 65535")
    given = [o.certfile, o.keyfile]
    if any(given) and not all(given):
        raise ConfigError("--certfile and --keyfile go together (the broker's certificate and its key); "
                          "give both, or neither to generate a private CA")
    if o.cafile and not o.certfile:
        raise ConfigError("--cafile needs --certfile and --keyfile (the broker certificate it issued)")
    fleet = load_fleet(o.fleet)
    clients = plan_clients(fleet, o.collectors, parse_utilities(o.utilities), str(o.fleet))
    names = {c.username for c in clients}
    if bad := [r for r in o.rotate if r != "all" and r not in names]:
        raise ConfigError(f"--rotate {bad[0]!r}: no such credential; known: {', '.join(sorted(names))}, or 'all'")
    hosts = _hostnames(o)
    run_as = o.run_as or _default_run_as()
    _check_run_as(run_as)
    out = o.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if o.certfile and o.keyfile:
        tls = check_given(o.cafile, o.certfile, o.keyfile, hosts[0])
    else:
        tls = ensure_generated(out / "tls", hosts)
    url = f"mqtts://{f'[{hosts[0]}]' if ':' in hosts[0] else hosts[0]}:{o.port}"
    report = BrokerReport(conf=out / "mosquitto.conf", clients=clients, url=url, tls=tls, run_as=run_as)

    clients_dir = out / "clients"
    clients_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(clients_dir, 0o700)
    hashes, env_files = [], {}
    for c in clients:  # every file's text first: a path an env file cannot carry stops before anything is written
        path = clients_dir / f"{c.username}.env"
        old = read_env(path).get(f"{c.prefix}PASSWORD") if path.exists() else None
        if old and "all" not in o.rotate and c.username not in o.rotate:
            password = old
            report.kept.append(c.username)
        else:
            password = secrets.token_urlsafe(32)
            report.new.append(c.username)
        env_files[path] = env_text(c, password, url, tls.ca)
        hashes.append(f"{c.username}:{mosquitto_hash(password)}")
    for path, text in env_files.items():
        write_private(path, text)
    for stale in sorted(clients_dir.glob("*.env")):
        if stale.stem not in names:
            stale.unlink()
            report.removed.append(stale.stem)
    for edge in fleet.edges:
        if not fleet.meters_of_edge(edge.id):
            report.warnings.append(f"edge {edge.id} has no meters in {o.fleet}; it may publish only its status")

    write_private(out / "passwd", "\n".join(hashes) + "\n")
    write_private(out / "acl", acl_text(clients, str(o.fleet)))
    (out / "data").mkdir(mode=0o700, exist_ok=True)
    os.chmod(out / "data", 0o700)  # the broker's persisted messages are readings
    (out / "mosquitto.conf").write_text(mosquitto_conf(o, tls, run_as, out))
    owned = [out / "passwd", out / "acl", out / "data"]
    if tls.key == out / "tls" / "server.key":
        owned.append(tls.key)
    _hand_over(owned, run_as)
    if blocked := _unreachable(out, run_as):
        report.warnings.append(f"mosquitto runs as {run_as} and cannot enter {blocked}, so it cannot read {out}; "
                               "choose an --out it can reach (e.g. under /etc) or another --run-as")
    return report
