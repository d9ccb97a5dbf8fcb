"""The ``bems`` command: the composition root, the one module that knows every stage."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bems.errors import BemsError


def _demo(args: argparse.Namespace) -> int:
    from bems.demo import DemoOptions, run_demo

    return run_demo(DemoOptions(data_dir=Path(args.data_dir), port=args.port, mqtt_port=args.mqtt_port,
                                modbus_port=args.modbus_port, history_days=args.history_days,
                                analytics_interval_s=args.analytics_interval, fresh=args.fresh))


def _schema(args: argparse.Namespace) -> int:
    from bems.wire import schema_text

    text = schema_text()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _split(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def _cli_actor() -> str:
    """Who ran ``bems users``, for the audit log: the operating-system account (tokens have no session here)."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (KeyError, OSError):  # no passwd entry (a container with an arbitrary uid)
        return "cli"


def _users(args: argparse.Namespace) -> int:
    """Tokens are created here, never by the API: the plain token is printed once and only its hash is kept."""
    from bems.state import StateDB

    scope, regions = _split(args.scope), _split(args.regions)
    if args.action == "create":
        if not args.name or not args.role:
            raise BemsError("users create needs --name and --role")
        if args.role == "facility_manager" and args.config:
            from bems.fleet import load_fleet

            known = load_fleet(args.config).building_by_id
            if unknown := [b for b in scope if b not in known]:
                raise BemsError(f"unknown building(s) {', '.join(unknown)} in --scope; known: {', '.join(known)}")
        if args.role != "admin" and not scope:
            print(f"warning: {args.role} {args.name!r} has an empty --scope and will see nothing", file=sys.stderr)
    elif not args.name and args.action == "revoke":
        raise BemsError("users revoke needs --name")
    db = StateDB(args.db)
    try:
        if args.action == "create":
            token = db.create_token(args.name, args.role, scope, regions, actor=_cli_actor())
            print(f"token for {args.name} ({args.role}); shown once, store it now:\n{token}")
        elif args.action == "revoke":
            if not db.revoke_token(args.name, actor=_cli_actor()):
                raise BemsError(f"no active token named {args.name!r}")
            print(f"revoked {args.name}")
        else:
            for t in db.list_tokens():
                state = "revoked" if t.revoked_at else "active"
                where = f"\tregions {t.regions}" if t.regions else ""
                print(f"{t.name}\t{t.role}\t{t.scope or '*'}\t{state}\tcreated {t.created_at:%Y-%m-%d}{where}")
    finally:
        db.close()
    return 0


def _detect(args: argparse.Namespace) -> int:
    from analytics.offline import run

    report = run(Path(args.input), Path(args.output), skip_bad=args.skip_bad)
    print(f"{report.rows} rows in {report.series} series: {report.anomalies} anomalous, {report.skipped} skipped"
          f" -> {args.output}")
    for line in report.skipped_lines:
        print(f"  skipped {line}", file=sys.stderr)
    return 0


def _deliveries(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from bems.state import Delivery, StateDB

    db = StateDB(args.db)
    try:
        with db.session() as s:
            q = select(Delivery).order_by(Delivery.id.desc()).limit(args.limit)
            if args.status:
                q = q.where(Delivery.status == args.status)
            rows = list(s.scalars(q))
        for d in rows:
            print(f"{d.id}\talert {d.alert_id}\t{d.subscription}\t{d.status}\t{d.attempts} attempts\t"
                  f"{d.last_error or ''}")
    finally:
        db.close()
    return 0


def _backup(args: argparse.Namespace) -> int:
    from bems.backup import backup, manifest_sha256

    manifest = backup(Path(args.out), store=args.store, db=args.db, influx_rpc=args.influx_rpc)
    for role, part in manifest["components"].items():  # type: ignore[union-attr]
        size = sum(f["size"] for f in part["files"])
        print(f"{role}: {part['kind']} {part['source']} -> {len(part['files'])} file(s), {size} bytes")
    print(f"backup written to {args.out} ({Path(args.out) / 'manifest.json'} lists every file and its SHA-256)")
    print(f"manifest SHA-256 {manifest_sha256(Path(args.out))}: keep it apart from the backup "
          "and give it to bems restore --manifest-sha256")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from bems.backup import restore, verify_backup

    if args.check:
        manifest = verify_backup(Path(args.source), args.manifest_sha256)
        print(f"{args.source}: every file matches its SHA-256 ({', '.join(manifest['components'])})")
        return 0
    for line in restore(Path(args.source), store=args.store, db=args.db, influx_rpc=args.influx_rpc,
                        force=args.force, expected_manifest_sha256=args.manifest_sha256):
        print(line)
    return 0


def _broker(args: argparse.Namespace) -> int:
    """Prints where things went and who got a credential, never a password: those are only in clients/*.env."""
    from bems.broker import BrokerOptions, generate

    report = generate(BrokerOptions(
        fleet=Path(args.config), out=Path(args.out), listen=args.listen, port=args.port,
        hostnames=args.hostname or [], collectors=args.collector or ["collector"], utilities=args.utility or [],
        cafile=Path(args.cafile) if args.cafile else None, certfile=Path(args.certfile) if args.certfile else None,
        keyfile=Path(args.keyfile) if args.keyfile else None, run_as=args.run_as, rotate=args.rotate or []))
    out = report.conf.parent
    print(f"wrote {report.conf}: TLS listener {args.listen}:{args.port}, anonymous off, runs as {report.run_as}")
    print(f"clients connect to {report.url}" + (f" trusting {report.tls.ca}" if report.tls.ca else ""))
    by_role: dict[str, list[str]] = {}
    for c in report.clients:
        by_role.setdefault(c.role, []).append(c.username)
    for role, names in by_role.items():
        print(f"  {role}: {', '.join(names)}")
    print(f"credentials in {out / 'clients'}/<name>.env (0600): {len(report.new)} new, {len(report.kept)} kept"
          + (f", removed {', '.join(report.removed)}" if report.removed else ""))
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"start: mosquitto -c {report.conf}   (running broker: kill -HUP to reload passwd and acl)")
    return 0


def _deadletter(args: argparse.Namespace) -> int:
    from collector.deadletter import render

    print(render(args.action, args.path, reason=args.reason, limit=args.limit, entry_id=args.id))
    return 0


def _seal_settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Flags over environment (BEMS_FLEET, BEMS_STORE, BEMS_DB, BEMS_SEAL_KEY[_FILE]) over defaults."""
    from pydantic import ValidationError

    from bems.seal import SealSettings
    from bems.validation import format_validation_error

    given = {k: v for k, v in (("fleet", args.config), ("store", args.store), ("db", args.db),
                               ("seal_key_file", args.seal_key_file),
                               ("seal_after_hours", getattr(args, "seal_after_hours", None))) if v is not None}
    try:
        return SealSettings(**given)
    except ValidationError as exc:
        raise BemsError(format_validation_error(f"bems {args.command} settings", exc, given)
                        + ("\n  fleet: give --config or set BEMS_FLEET" if "fleet" not in given else "")) from None


def _when(text: str | None, flag: str):  # type: ignore[no-untyped-def]
    import datetime as dt

    if text is None:
        return None
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BemsError(f"{flag} {text!r}: give an ISO 8601 date or time, e.g. 2026-11-01 or "
                        "2026-11-01T00:00:00Z (UTC when no offset is given)") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _open_seal_targets(settings):  # type: ignore[no-untyped-def]
    from bems.fleet import load_fleet
    from bems.seal import load_seal_key
    from bems.state import StateDB
    from bems.store import open_store

    fleet = load_fleet(settings.fleet)
    key = load_seal_key(settings.seal_key, settings.seal_key_file)
    token = settings.influx_token.get_secret_value() if settings.influx_token else None
    return fleet, key, open_store(settings.store, token=token), StateDB(settings.db)


def _seal(args: argparse.Namespace) -> int:
    import datetime as dt

    from bems.seal import generate_seal_key, seal_pass, seal_until

    if args.keygen:
        key = generate_seal_key(args.keygen)
        print(f"seal key written to {args.keygen} (mode 0600, key id {key.key_id}); give it with --seal-key-file "
              "or BEMS_SEAL_KEY_FILE, and back it up apart from the data")
        return 0
    settings = _seal_settings(args)
    fleet, key, store, state = _open_seal_targets(settings)
    try:
        if key is None:
            raise BemsError("no seal key: set BEMS_SEAL_KEY_FILE or give --seal-key-file (create one with "
                            "bems seal --keygen PATH)")
        if args.building and args.building not in fleet.building_by_id:
            raise BemsError(f"unknown building {args.building!r}; known: {', '.join(fleet.building_by_id)}")
        latest = seal_until(dt.datetime.now(dt.UTC), settings.seal_after_hours)
        until = min(_when(args.until, "--until") or latest, latest)
        report = seal_pass(store, state, fleet, key, until=until, since=_when(args.since, "--from"),
                           building=args.building)
    finally:
        store.close()
        state.close()
    print(f"sealed days before {until:%Y-%m-%d}: {report.sealed} meter-days sealed, {report.resealed} resealed "
          f"(late readings, all signed), {report.unchanged} already sealed")
    for line in report.held:
        print(f"held: {line}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    import datetime as dt

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from bems.store.base import DAY_MS
    from bems.verify import day_range, verify_building

    settings = _seal_settings(args)
    end = _when(args.to, "--to") or dt.datetime.now(dt.UTC)
    start = _when(args.since, "--from") or end - dt.timedelta(days=30)
    if end <= start:
        raise BemsError(f"--to {end.isoformat()} is not after --from {start.isoformat()}")
    fleet, key, store, state = _open_seal_targets(settings)
    try:
        if args.building not in fleet.building_by_id:
            raise BemsError(f"unknown building {args.building!r}; known: {', '.join(fleet.building_by_id)}")
        s, e = day_range(start, end)
        total = len(fleet.meters_of(building=args.building)) * ((e - s) // DAY_MS)
        console = Console(stderr=True)
        with Progress(TextColumn("verify {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("meter-days"), TimeRemainingColumn(), console=console, transient=True,
                      disable=not console.is_terminal) as bar:
            task = bar.add_task(args.building, total=total)
            report = verify_building(store, state, fleet, args.building, start, end, key=key, full=args.full,
                                     progress=lambda k: bar.advance(task, k))
    finally:
        store.close()
        state.close()
    for line in report.lines():
        print(line)
    return report.exit_code


def _keygen(argv: Sequence[str]) -> int:
    """``bems edge keygen``: a new Ed25519 key for an edge; prints only the public half and where it goes."""
    import datetime as dt

    from bems.signing import generate_key

    p = argparse.ArgumentParser(prog="bems edge keygen", description="Create an edge's signing key (Ed25519).")
    p.add_argument("--out", required=True, help="private key file to write (mode 0600), e.g. "
                                                "edge-state/<edge-id>/signing.key; give it to the edge's --signing-key")
    p.add_argument("--force", action="store_true", help="replace an existing key (rotation: see the README)")
    p.add_argument("--edge-id", help="the edge's id, to name it in the instructions")
    args = p.parse_args(argv)
    signer = generate_key(args.out, force=args.force)
    edge = f"edge {args.edge_id!r}" if args.edge_id else "the edge"
    print(f"private key written to {args.out} (0600); it never leaves the edge")
    print(f"public key  {signer.public_key}")
    print(f"key id      {signer.kid}")
    print(f"add this line under public_keys: of {edge} in the fleet file (keep an old key there until the edge's "
          "queue holds no reading signed with it):")
    print(f'      - "{signer.public_key}"  # kid {signer.kid}, created {dt.date.today().isoformat()}')
    return 0


def _stage(module: str):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        import importlib

        if module == "edge" and args.rest[:1] == ["keygen"]:
            return _keygen(args.rest[1:])
        return int(importlib.import_module(f"{module}.__main__").main(args.rest))
    return run


def _sim(args: argparse.Namespace) -> int:
    from simulators.cli import main

    return main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bems", description="Energy monitoring for government buildings.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the whole pipeline on 127.0.0.1 with simulated meters")
    d.add_argument("--data-dir", default="bems-demo", help="where the demo keeps its files (default ./bems-demo)")
    d.add_argument("--port", type=int, default=8000, help="API and dashboard port")
    d.add_argument("--mqtt-port", type=int, default=11883, help="MQTT broker port")
    d.add_argument("--modbus-port", type=int, default=15020, help="Modbus TCP port of the simulated meters")
    d.add_argument("--history-days", type=float, default=21, help="days of history to backfill")
    d.add_argument("--analytics-interval", type=float, default=60, help="seconds between detection passes")
    d.add_argument("--fresh", action="store_true", help="delete the data directory first")
    d.set_defaults(func=_demo)

    s = sub.add_parser("schema", help="print the JSON Schema of the reading payload")
    s.add_argument("--output", help="write to this file instead of stdout")
    s.set_defaults(func=_schema)

    det = sub.add_parser("detect", help="run the detectors on a CSV export (series_id,timestamp,value)")
    det.add_argument("--input", required=True, help="long CSV: series_id,timestamp,value (consumption per interval)")
    det.add_argument("--output", required=True, help="CSV written: series_id,timestamp,score,is_anomaly,type")
    det.add_argument("--skip-bad", action="store_true", help="skip and count bad or irregular rows")
    det.set_defaults(func=_detect)

    dl = sub.add_parser("deliveries", help="list webhook deliveries of alerts (pending, delivered, failed)")
    dl.add_argument("--db", default="sqlite:///bems-data/state.db", help="relational state URL")
    dl.add_argument("--status", choices=["pending", "delivered", "failed"])
    dl.add_argument("--limit", type=int, default=50)
    dl.set_defaults(func=_deliveries)

    u = sub.add_parser("users", help="create, revoke and list API tokens")
    u.add_argument("action", choices=["create", "revoke", "list"])
    u.add_argument("--db", default="sqlite:///bems-data/state.db", help="relational state URL")
    u.add_argument("--name")
    u.add_argument("--role", choices=["admin", "facility_manager", "utility"])
    u.add_argument("--scope", help="comma-separated building ids (facility_manager) or commodities (utility)")
    u.add_argument("--regions", help="utility only: comma-separated cities (regions) it is confined to")
    u.add_argument("--config", help="fleet file, to check facility_manager building ids")
    u.set_defaults(func=_users)

    rpc_help = "influxd RPC address (its top-level bind-address), reachable from here; default 127.0.0.1:8088"
    b = sub.add_parser("backup", help="online, consistent backup of the readings store and the relational state")
    b.add_argument("--out", required=True, help="new directory for the backup files and manifest.json")
    b.add_argument("--store", help="readings store URL: sqlite:///path or influx://host:8086/db")
    b.add_argument("--db", help="relational state URL: sqlite:///path or postgresql+psycopg://user@host/db")
    b.add_argument("--influx-rpc", default="127.0.0.1:8088", help=rpc_help)
    b.set_defaults(func=_backup)

    r = sub.add_parser("restore", help="check a backup's SHA-256 sums and restore it into fresh targets")
    r.add_argument("--from", dest="source", required=True, help="backup directory (with manifest.json)")
    r.add_argument("--store", help="readings store URL to restore into (same engine as the backup)")
    r.add_argument("--db", help="relational state URL to restore into (same engine as the backup)")
    r.add_argument("--influx-rpc", default="127.0.0.1:8088", help=rpc_help)
    r.add_argument("--force", action="store_true", help="overwrite a target that is not empty")
    r.add_argument("--check", action="store_true", help="only check the files against the manifest")
    r.add_argument("--manifest-sha256", help="SHA-256 of manifest.json printed by bems backup, kept elsewhere")
    r.set_defaults(func=_restore)
    br = sub.add_parser("broker", help="broker lock-down: generate a mosquitto configuration for the fleet")
    brs = br.add_subparsers(dest="broker_command", required=True)
    bc = brs.add_parser("config", help="TLS, one credential per client, ACLs; re-running keeps CA and passwords")
    bc.add_argument("--config", required=True, help="the fleet file (YAML)")
    bc.add_argument("--out", required=True, help="directory for mosquitto.conf, passwd, acl, tls/, clients/")
    bc.add_argument("--listen", default="127.0.0.1", help="address the TLS listener binds (default 127.0.0.1)")
    bc.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    bc.add_argument("--hostname", action="append", metavar="NAME",
                    help="name or address clients connect to (certificate SAN; the first goes in their URL); "
                         "repeatable")
    bc.add_argument("--collector", action="append", metavar="NAME",
                    help="one credential per collector instance (default: one named 'collector'); repeatable")
    bc.add_argument("--utility", action="append", metavar="NAME=COMMODITY[,COMMODITY]",
                    help="a utility reading its commodities' alerts, e.g. tavanir=electricity; soc=security for a "
                         "security desk reading the collectors' security alerts; repeatable")
    bc.add_argument("--cafile", help="CA certificate(s) clients trust, when bringing your own certificates")
    bc.add_argument("--certfile", help="the broker's certificate (PEM, intermediates after it)")
    bc.add_argument("--keyfile", help="the broker's private key (PEM, unencrypted)")
    bc.add_argument("--run-as", help="user mosquitto runs as (default: mosquitto when root, else you)")
    bc.add_argument("--rotate", action="append", metavar="NAME",
                    help="issue a new password for this credential ('all' for every one); repeatable")
    bc.set_defaults(func=_broker)

    def seal_targets(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="the fleet file (YAML); env BEMS_FLEET")
        sp.add_argument("--store", help="readings store URL; env BEMS_STORE (default sqlite:///bems-data/readings.db)")
        sp.add_argument("--db", help="relational state URL, where seals are kept; env BEMS_DB")
        sp.add_argument("--seal-key-file", help="file with the server seal key; or env BEMS_SEAL_KEY(_FILE)")

    se = sub.add_parser("seal", help="seal each meter's readings per UTC day (count, SHA-256, HMAC) for bems verify")
    seal_targets(se)
    se.add_argument("--building", help="only this building (default: all)")
    se.add_argument("--from", dest="since", metavar="FROM", help="first day to seal (default: the first stored)")
    se.add_argument("--until", help="seal days ending by then (default and latest: seal-after-hours ago)")
    se.add_argument("--seal-after-hours", type=float, help="seal days ended this long ago (default 26)")
    se.add_argument("--keygen", metavar="PATH", help="write a new seal key to PATH (mode 0600) and exit")
    se.set_defaults(func=_seal)

    ve = sub.add_parser("verify", help="prove a building's stored readings by seals and signatures, or name the "
                                       "first altered one (exit 1; 3 when some cannot be proven)")
    seal_targets(ve)
    ve.add_argument("--building", required=True, help="building id")
    ve.add_argument("--from", dest="since", metavar="FROM", help="start (ISO 8601, UTC; default 30 days before --to)")
    ve.add_argument("--to", help="end (ISO 8601, UTC; default now); whole UTC days are checked")
    ve.add_argument("--full", action="store_true", help="also check every signature on days the seal proves")
    ve.set_defaults(func=_verify)

    sim = sub.add_parser("sim", help="simulated meters: serve, inject a fault, write history", add_help=False)
    sim.add_argument("rest", nargs=argparse.REMAINDER)
    sim.set_defaults(func=_sim)
    dead = sub.add_parser("deadletter", help="count, list and show messages the collector refused")
    dead.add_argument("action", choices=["list", "count", "show"])
    dead.add_argument("id", nargs="?", type=int, help="entry id (for show)")
    dead.add_argument("--path", default="bems-data/deadletter.db",
                    help="the dead-letter store (deadletter.db in the collector's data directory)")
    dead.add_argument("--reason", help="only this reason (json, schema, implausible, ...)")
    dead.add_argument("--limit", type=int, default=20, help="rows to list, newest first")
    dead.set_defaults(func=_deadletter)

    edge_help = "run an edge agent (`bems edge keygen --out FILE` creates its signing key)"
    for name, help_text in (("edge", edge_help), ("collector", "run the collector"),
                            ("analytics", "run the detectors"), ("api", "run the API and dashboard"),
                            ("simulators", "run simulated meters")):
        sp = sub.add_parser(name, help=help_text, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
        sp.set_defaults(func=_stage(name))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not hasattr(args, "rest"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # argparse leaves a pass-through command's leading --flags out of its REMAINDER
        args.rest = [*extra, *args.rest]
    try:
        return int(args.func(args))
    except BemsError as exc:
        print(f"bems: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
