"""Online, consistent backups of the readings store and the relational state, and their restore.

Each backup is a directory with one file (or folder) per component and a ``manifest.json`` written last, so a
directory without a manifest is an unfinished backup. The manifest records the source URLs (without
credentials), the time, the size and SHA-256 of every file and the row counts per table; restore checks every
hash before it touches anything, and refuses to overwrite a non-empty target unless forced.

- SQLite (store and state): the SQLite online backup API copies a consistent snapshot in one step while the
  collector keeps writing (WAL mode: readers never block the writer). It copies any schema, so this module
  does not depend on the store's table layout.
- InfluxDB 1.x: ``influxd backup -portable`` / ``influxd restore -portable`` over influxd's RPC address (the
  top-level ``bind-address``, 127.0.0.1:8088 by default), which must be reachable from where bems runs.
- PostgreSQL (state): ``pg_dump --format=custom`` inside an exported snapshot, so the row counts in the manifest
  are those of the dump; ``pg_restore`` into an existing, empty database.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from bems import __version__
from bems.errors import BemsError
from bems.services import find_binary

MANIFEST = "manifest.json"
FORMAT = 1
STORE_SCHEMES = ("sqlite:///<path>", "influx://host:port/<database>", "influx+https://host:port/<database>")
STATE_SCHEMES = ("sqlite:///<path>", "postgresql+psycopg://user@host:port/<database>")
DEFAULT_INFLUX_RPC = "127.0.0.1:8088"
_SECRET_PARAMS = {"password", "pass", "pwd", "token", "secret", "sslpassword"}


class BackupError(BemsError):
    """A backup or restore cannot go on; the message names the file, server or setting and the fix."""


@dataclass(frozen=True)
class Target:
    """One component to back up or restore: ``role`` is ``readings`` or ``state``, ``kind`` the engine."""

    role: str
    kind: str  # sqlite | influxdb | postgresql
    url: str


def store_target(url: str) -> Target:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return Target("readings", "sqlite", url)
    if scheme in ("influx", "influx+http", "influx+https"):
        return Target("readings", "influxdb", url)
    raise BackupError(f"--store {redact(url)!r}: unknown scheme {scheme!r}; allowed: {', '.join(STORE_SCHEMES)}")


def state_target(url: str) -> Target:
    scheme = urlsplit(url).scheme
    if scheme.split("+")[0] == "sqlite":
        return Target("state", "sqlite", url)
    if scheme.split("+")[0] in ("postgresql", "postgres"):
        return Target("state", "postgresql", url)
    raise BackupError(f"--db {redact(url)!r}: unknown scheme {scheme!r}; allowed: {', '.join(STATE_SCHEMES)}")


def redact(url: str) -> str:
    """The URL without its password or secret query parameters, fit for a manifest or a message."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k.lower() not in _SECRET_PARAMS])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _file_entries(root: Path, paths: list[Path]) -> list[dict[str, object]]:
    out = []
    for p in sorted(paths):
        p.chmod(0o600)  # backups hold token hashes and the whole history: owner only
        out.append({"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": _sha256(p)})
    return out


def _run(argv: list[str], what: str, env: dict[str, str] | None = None, timeout: float = 3600) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BackupError(f"{what} did not finish in {timeout:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr + done.stdout).strip().splitlines()[-8:])
        raise BackupError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout + done.stderr


def _binary(name: str, package: str) -> str:
    path = find_binary(name)
    if path is None:
        raise BackupError(f"{name} not found on PATH; install the Debian package {package} "
                          f"(apt-get install {package}; scripts/install-services does it)")
    return path


# SQLite ---------------------------------------------------------------------------------------------------------
def sqlite_path(url: str) -> Path:
    """``sqlite:///relative`` or ``sqlite:////absolute`` (SQLAlchemy's convention, also the store's)."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    if not rest.startswith("/") or len(rest) < 2:
        raise BackupError(f"{url!r}: use sqlite:///relative/path or sqlite:////absolute/path")
    return Path(rest[1:].split("?", 1)[0])


def _sqlite_tables(db: sqlite3.Connection) -> dict[str, int]:
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                      "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {n: db.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


def _sqlite_backup(target: Target, out: Path, filename: str) -> dict[str, object]:
    src_path = sqlite_path(target.url)
    if not src_path.is_file():
        flag = "--store" if target.role == "readings" else "--db"
        raise BackupError(f"{target.role} database {src_path} does not exist; check {flag}")
    dest = out / filename
    started = _now()
    try:
        src = sqlite3.connect(f"file:{src_path}?mode=rw", uri=True, timeout=30)  # never creates a file
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)  # pages=-1: one step, one read transaction, so one consistent snapshot
            dst.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file, whatever the source uses
            check = dst.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"{target.role} database {src_path} is damaged (quick_check: {check}); "
                                  "the copy in the backup would be too")
            tables = _sqlite_tables(dst)
        finally:
            dst.close()
            src.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up SQLite {src_path}: {exc}") from exc
    return {"kind": "sqlite", "source": redact(target.url), "started_at": started, "finished_at": _now(),
            "tables": tables, "files": _file_entries(out, [dest])}


def _sqlite_nonempty(path: Path) -> bool:
    return any(p.exists() and p.stat().st_size > 0 for p in (path, Path(f"{path}-wal")))


def _sqlite_restore(target: Target, src_dir: Path, part: dict, force: bool) -> str:
    dest = sqlite_path(target.url)
    flag = "--store" if target.role == "readings" else "--db"
    if _sqlite_nonempty(dest) and not force:
        raise BackupError(f"{dest} exists and is not empty; restore into a new path with {flag}, or pass --force "
                          "to overwrite it (stop the stages that use it first)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = src_dir / part["files"][0]["path"]
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        dst = sqlite3.connect(dest, timeout=30)
        try:
            src.backup(dst)  # also safe over a live database: other connections see the new content
            tables = _sqlite_tables(dst)
        finally:
            dst.close()
            src.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot restore into SQLite {dest}: {exc}") from exc
    if tables != part["tables"]:
        raise BackupError(f"restored {dest} has row counts {tables}, the backup recorded {part['tables']}")
    return f"{target.role}: {sum(tables.values())} rows in {len(tables)} tables -> {dest}"


# InfluxDB 1.x ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Influx:
    base: str
    database: str
    auth: tuple[str, str] | None

    @classmethod
    def parse(cls, url: str) -> _Influx:
        parts = urlsplit(url)
        database = parts.path.strip("/")
        if not database or not database.replace("_", "").replace("-", "").isalnum():
            raise BackupError(f"--store {redact(url)!r}: name the database, e.g. influx://host:8086/bems")
        scheme = "https" if parts.scheme.endswith("+https") else "http"
        auth = (parts.username, parts.password or "") if parts.username else None
        return cls(f"{scheme}://{parts.hostname}:{parts.port or 8086}", database, auth)

    def query(self, q: str, db: str | None = None) -> list[dict]:
        try:
            resp = httpx.post(f"{self.base}/query", data={"q": q, **({"db": db} if db else {})},
                              auth=self.auth, timeout=30)
        except httpx.HTTPError as exc:
            raise BackupError(f"InfluxDB at {self.base} unreachable ({exc}); is influxd running?") from exc
        if resp.status_code >= 300:
            raise BackupError(f"InfluxDB at {self.base} answered {resp.status_code} to {q!r}: {resp.text[:200]}")
        results = resp.json().get("results", [])
        if err := next((r["error"] for r in results if "error" in r), None):
            raise BackupError(f"InfluxDB at {self.base}: {q!r} failed: {err}")
        return [s for r in results for s in r.get("series", [])]

    def databases(self) -> set[str]:
        return {v[0] for s in self.query("SHOW DATABASES") for v in s.get("values", [])}

    def point_counts(self) -> dict[str, int]:
        """Points per measurement (the largest field count: every point of bems has its seq field)."""
        out: dict[str, int] = {}
        for s in self.query("SELECT count(*) FROM /.*/", db=self.database):
            out[s["name"]] = max(int(v) for v in s["values"][0][1:] if v is not None)
        return out


def _check_rpc(address: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
            return
    except (OSError, ValueError) as exc:
        raise BackupError(
            f"influxd RPC address {address} not reachable ({exc}); backup and restore go through influxd's "
            "top-level bind-address (default 127.0.0.1:8088, local only): run bems on the InfluxDB host or "
            "pass the right --influx-rpc host:port") from exc


def _influx_backup(target: Target, out: Path, rpc: str) -> dict[str, object]:
    binary = _binary("influxd", "influxdb")
    server = _Influx.parse(target.url)
    if server.database not in server.databases():
        raise BackupError(f"InfluxDB at {server.base} has no database {server.database!r}; check --store")
    _check_rpc(rpc)
    folder = out / "influx"
    started = _now()
    log = _run([binary, "backup", "-portable", "-db", server.database, "-host", rpc, str(folder)],
               f"influxd backup of {server.database!r} from {rpc}")
    files = [p for p in folder.rglob("*") if p.is_file()]
    if not files:
        raise BackupError(f"influxd backup wrote nothing to {folder}:\n{log[-500:]}")
    return {"kind": "influxdb", "source": redact(target.url), "database": server.database, "rpc": rpc,
            "started_at": started, "finished_at": _now(),
            "points_after_backup": server.point_counts(),  # a live server may have taken more points since
            "files": _file_entries(out, files)}


def _influx_restore(target: Target, src_dir: Path, part: dict, rpc: str, force: bool) -> str:
    binary = _binary("influxd", "influxdb")
    server = _Influx.parse(target.url)
    if server.database in server.databases():
        if not force:
            raise BackupError(f"InfluxDB at {server.base} already has a database {server.database!r}; influxd "
                              "restores only into a new database: name another in --store, or pass --force to "
                              "drop it first")
        server.query(f'DROP DATABASE "{server.database}"')
    _check_rpc(rpc)
    _run([binary, "restore", "-portable", "-db", part["database"], "-newdb", server.database, "-host", rpc,
          str(src_dir / "influx")], f"influxd restore of {part['database']!r} into {server.database!r} at {rpc}")
    counts = server.point_counts()
    return (f"readings: {sum(counts.values())} points in {server.database!r} at {server.base} "
            f"(backup counted {sum(part['points_after_backup'].values())} just after it was taken)")


# PostgreSQL -----------------------------------------------------------------------------------------------------
def _pg(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URI without the password, and an environment carrying it (never on a command line)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    env = dict(os.environ)
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    return u.set(drivername="postgresql", password=None).render_as_string(hide_password=False), env


@contextlib.contextmanager
def _pg_connection(url: str) -> Iterator[object]:
    try:
        import sqlalchemy
    except ImportError as exc:  # pragma: no cover - sqlalchemy is a core dependency
        raise BackupError(str(exc)) from exc
    try:
        engine = sqlalchemy.create_engine(url)
    except ModuleNotFoundError as exc:
        raise BackupError(f"no PostgreSQL driver ({exc}); install it with pip install -e '.[postgres]'") from exc
    try:
        with engine.connect() as conn:
            yield conn
    except sqlalchemy.exc.OperationalError as exc:
        raise BackupError(f"PostgreSQL at {redact(url)} unreachable or refused: {exc.orig}; check --db, and that "
                          "the database exists (createdb) and the server accepts this user") from exc
    finally:
        engine.dispose()


def _pg_tables(conn) -> dict[str, int]:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    rows = conn.execute(text(
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
        "AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2")).all()
    return {f"{s}.{t}": conn.execute(text(f'SELECT count(*) FROM "{s}"."{t}"')).scalar_one() for s, t in rows}


def _pg_backup(target: Target, out: Path) -> dict[str, object]:
    from sqlalchemy import text

    binary = _binary("pg_dump", "postgresql-client")
    uri, env = _pg(target.url)
    dest = out / "state.dump"
    started = _now()
    with _pg_connection(target.url) as conn:
        conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))  # type: ignore[attr-defined]
        snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()  # type: ignore[attr-defined]
        tables = _pg_tables(conn)  # counted in the very snapshot pg_dump copies
        _run([binary, "--format=custom", f"--snapshot={snapshot}", f"--file={dest}", f"--dbname={uri}"],
             f"pg_dump of {redact(target.url)}", env=env)
        version = _run([binary, "--version"], "pg_dump --version").strip()
    return {"kind": "postgresql", "source": redact(target.url), "started_at": started, "finished_at": _now(),
            "tool": version, "tables": tables, "files": _file_entries(out, [dest])}


def _pg_restore(target: Target, src_dir: Path, part: dict, force: bool) -> str:
    binary = _binary("pg_restore", "postgresql-client")
    uri, env = _pg(target.url)
    with _pg_connection(target.url) as conn:
        existing = _pg_tables(conn)
    if existing and not force:
        raise BackupError(f"PostgreSQL database {redact(target.url)} already has {len(existing)} tables; restore "
                          "into a new empty database (createdb), or pass --force to replace what the backup holds")
    argv = [binary, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
            f"--dbname={uri}", str(src_dir / part["files"][0]["path"])]
    if existing:
        argv[1:1] = ["--clean", "--if-exists"]
    _run(argv, f"pg_restore into {redact(target.url)}", env=env)
    with _pg_connection(target.url) as conn:
        tables = _pg_tables(conn)
    missing = {k: v for k, v in part["tables"].items() if tables.get(k) != v}
    if missing:
        raise BackupError(f"restored {redact(target.url)} differs from the backup in {missing} "
                          f"(now {[tables.get(k) for k in missing]})")
    return f"state: {sum(tables.values())} rows in {len(tables)} tables -> {redact(target.url)}"


# entry points ---------------------------------------------------------------------------------------------------
def backup(out: Path, *, store: str | None = None, db: str | None = None,
           influx_rpc: str = DEFAULT_INFLUX_RPC) -> dict[str, object]:
    """Back up the readings store and/or the relational state into the new directory ``out``."""
    targets = ([store_target(store)] if store else []) + ([state_target(db)] if db else [])
    if not targets:
        raise BackupError("nothing to back up: give --store (readings) and/or --db (relational state)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"{out} exists and is not an empty directory; back up into a new one, "
                          "e.g. --out backups/$(date -u +%Y%m%dT%H%M%SZ)")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    manifest: dict[str, object] = {"format": FORMAT, "bems_version": __version__, "started_at": _now()}
    parts: dict[str, object] = {}
    for t in targets:
        if t.kind == "sqlite":
            parts[t.role] = _sqlite_backup(t, out, "readings.db" if t.role == "readings" else "state.db")
        elif t.kind == "influxdb":
            parts[t.role] = _influx_backup(t, out, influx_rpc)
        else:
            parts[t.role] = _pg_backup(t, out)
    manifest["finished_at"] = _now()
    manifest["components"] = parts
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(out / MANIFEST)  # written last: a directory without a manifest is not a finished backup
    return manifest


def manifest_sha256(src: Path) -> str:
    """Recorded away from the backup (printed by ``bems backup``), it makes a rewritten manifest detectable too."""
    return _sha256(src / MANIFEST)


def verify_backup(src: Path, expected_manifest_sha256: str | None = None) -> dict:
    """The manifest, once every file it lists has its recorded size and SHA-256 and nothing else was slipped in."""
    path = src / MANIFEST
    if not path.is_file():
        raise BackupError(f"no {MANIFEST} in {src}: not a backup directory, or a backup that did not finish")
    if expected_manifest_sha256 and manifest_sha256(src) != expected_manifest_sha256.strip().lower():
        raise BackupError(f"{path} does not match the SHA-256 given with --manifest-sha256: the manifest was "
                          "altered after the backup; restore from another backup")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        parts = manifest["components"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{path} is not a bems backup manifest ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: backup format {manifest.get('format')!r}, this bems reads format {FORMAT}")
    listed: set[str] = set()
    for role, part in parts.items():
        for f in part["files"]:
            rel = Path(f["path"])
            if rel.is_absolute() or ".." in rel.parts:
                raise BackupError(f"{path} lists {f['path']!r}, outside the backup directory; not a bems manifest")
            listed.add(f["path"])
            file = src / rel
            if not file.is_file():
                raise BackupError(f"backup file {file} ({role}) is missing; the backup is incomplete")
            if file.stat().st_size != f["size"] or _sha256(file) != f["sha256"]:
                raise BackupError(f"backup file {file} ({role}) does not match the SHA-256 in {MANIFEST}: it was "
                                  "altered or damaged after the backup; restore from another backup")
        if part["kind"] == "influxdb":  # influxd restore reads every file in the folder, not just the listed ones
            extra = sorted(p.relative_to(src).as_posix() for p in (src / "influx").rglob("*")
                           if p.is_file() and p.relative_to(src).as_posix() not in listed)
            if extra:
                raise BackupError(f"backup folder {src / 'influx'} holds files not in {MANIFEST}: "
                                  f"{', '.join(extra)}; remove them or restore from another backup")
    return manifest


def restore(src: Path, *, store: str | None = None, db: str | None = None, influx_rpc: str = DEFAULT_INFLUX_RPC,
            force: bool = False, expected_manifest_sha256: str | None = None) -> list[str]:
    """Restore what ``src`` holds into the given targets, after checking every file of the backup."""
    manifest = verify_backup(src, expected_manifest_sha256)
    parts = manifest["components"]
    targets = ([store_target(store)] if store else []) + ([state_target(db)] if db else [])
    if not targets:
        raise BackupError(f"nothing to restore into: give --store and/or --db; {src} holds {', '.join(parts)}")
    for t in targets:
        flag = "--store" if t.role == "readings" else "--db"
        part = parts.get(t.role)
        if part is None:
            raise BackupError(f"{src} holds no {t.role} backup (it holds {', '.join(parts) or 'nothing'}); "
                              f"drop {flag}")
        if part["kind"] != t.kind:
            raise BackupError(f"{src} holds a {part['kind']} {t.role} backup, {flag} is {t.kind}; restore into "
                              f"a {part['kind']} URL (moving between engines is not a restore)")
    done = []
    for t in targets:
        part = parts[t.role]
        if t.kind == "sqlite":
            done.append(_sqlite_restore(t, src, part, force))
        elif t.kind == "influxdb":
            done.append(_influx_restore(t, src, part, influx_rpc, force))
        else:
            done.append(_pg_restore(t, src, part, force))
    return done
