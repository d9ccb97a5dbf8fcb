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


def _users(args: argparse.Namespace) -> int:
    from bems.state import StateDB

    db = StateDB(args.db)
    try:
        if args.action == "create":
            if not args.name or not args.role:
                raise BemsError("users create needs --name and --role")
            token = db.create_token(args.name, args.role, [s for s in (args.scope or "").split(",") if s])
            print(f"token for {args.name} ({args.role}); shown once, store it now:\n{token}")
        elif args.action == "revoke":
            if not db.revoke_token(args.name or ""):
                raise BemsError(f"no active token named {args.name!r}")
            print(f"revoked {args.name}")
        else:
            for t in db.list_tokens():
                state = "revoked" if t.revoked_at else "active"
                print(f"{t.name}\t{t.role}\t{t.scope or '*'}\t{state}\tcreated {t.created_at:%Y-%m-%d}")
    finally:
        db.close()
    return 0


def _deadletter(args: argparse.Namespace) -> int:
    from collector.deadletter import render

    print(render(args.action, args.path, reason=args.reason, limit=args.limit, entry_id=args.id))
    return 0


def _stage(module: str):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(importlib.import_module(f"{module}.__main__").main(args.rest))
    return run


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

    u = sub.add_parser("users", help="create, revoke and list API tokens")
    u.add_argument("action", choices=["create", "revoke", "list"])
    u.add_argument("--db", default="sqlite:///bems-data/state.db", help="relational state URL")
    u.add_argument("--name")
    u.add_argument("--role", choices=["admin", "facility_manager", "utility"])
    u.add_argument("--scope", help="comma-separated building ids (facility_manager) or commodities (utility)")
    u.set_defaults(func=_users)

    dl = sub.add_parser("deadletter", help="count, list and show messages the collector refused")
    dl.add_argument("action", choices=["list", "count", "show"])
    dl.add_argument("id", nargs="?", type=int, help="entry id (for show)")
    dl.add_argument("--path", default="bems-data/deadletter.db",
                    help="the dead-letter store (deadletter.db in the collector's data directory)")
    dl.add_argument("--reason", help="only this reason (json, schema, implausible, ...)")
    dl.add_argument("--limit", type=int, default=20, help="rows to list, newest first")
    dl.set_defaults(func=_deadletter)

    for name, help_text in (("edge", "run an edge agent"), ("collector", "run the collector"),
                            ("analytics", "run the detectors"), ("api", "run the API and dashboard"),
                            ("simulators", "run simulated meters")):
        sp = sub.add_parser(name, help=help_text, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
        sp.set_defaults(func=_stage(name))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BemsError as exc:
        print(f"bems: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
