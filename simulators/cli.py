"""``bems sim ...``: serve simulated meters, inject a fault into a running simulator, write history."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from bems.errors import BemsError, ConfigError
from simulators.faults import FAULT_TYPES, PARAMS


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _inject(args: argparse.Namespace) -> int:
    body: dict[str, object] = {"type": args.type, "meter": args.meter}
    if args.start:
        body["start"] = args.start
    if args.end:
        body["end"] = args.end
    elif args.duration is not None:
        body["duration_s"] = args.duration
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--param {item!r}: write KEY=VALUE; parameters of {args.type}: "
                              f"{', '.join(PARAMS[args.type].model_fields) or '(none)'}")
        body[key] = _value(value)
    try:
        resp = httpx.post(f"{args.control.rstrip('/')}/faults", json=body, timeout=10)
    except httpx.HTTPError as exc:
        raise BemsError(f"cannot reach the simulator control API at {args.control}: {exc}; start the simulator "
                        "with --control-port") from exc
    data = resp.json()
    if resp.status_code != 201:
        raise BemsError(data.get("error", resp.text))
    print(json.dumps(data["fault"]))
    return 0


def _history(args: argparse.Namespace) -> int:
    from bems.fleet import load_fleet
    from bems.store import open_store
    from simulators.history import STEP, backfill, floor_time
    from simulators.model import fleet_model
    from simulators.scenario import load_scenario

    model = fleet_model(load_fleet(args.config), args.seed)
    if args.scenario:
        model.faults.extend(load_scenario(Path(args.scenario), model))
    end = dt.datetime.fromisoformat(args.end) if args.end else floor_time(dt.datetime.now(dt.UTC), STEP)
    if end.tzinfo is None:
        raise ConfigError(f"--end {args.end!r}: give a time zone, e.g. {args.end}Z or {args.end}+03:30")
    start = end - dt.timedelta(days=args.days)
    with open_store(args.store) as store:
        frame = backfill(model, store, start, end, dt.timedelta(minutes=args.step_min),
                         Path(args.labels) if args.labels else None)
    print(f"wrote {frame.count} readings of {len(frame.meters)} meters from {start.isoformat()} to "
          f"{end.isoformat()}; {len(frame.faults)} faults labelled")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bems sim", description="Simulated Modbus meters with faults.")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("serve", help="serve the fleet's meters (the flags of python -m simulators)", add_help=False)

    i = sub.add_parser("inject", help="inject a fault into a running simulator (its --control-port)")
    i.add_argument("--control", required=True, help="control API URL, e.g. http://127.0.0.1:15080")
    i.add_argument("--type", required=True, choices=FAULT_TYPES)
    i.add_argument("--meter", required=True)
    i.add_argument("--start", help="ISO 8601 with a zone (default: now on the simulator's clock)")
    i.add_argument("--end", help="ISO 8601 with a zone")
    i.add_argument("--duration", type=float, default=300.0, help="seconds, when --end is not given (default 300)")
    i.add_argument("--param", action="append", help="KEY=VALUE, repeatable (e.g. factor=8)")
    i.set_defaults(func=_inject)

    h = sub.add_parser("history", help="write days of simulated history into a store, with fault labels")
    h.add_argument("--config", required=True, help="fleet file")
    h.add_argument("--store", required=True, help="store URL (sqlite:///path or influx://host:port/db)")
    h.add_argument("--days", type=float, default=7.0)
    h.add_argument("--end", help="ISO 8601 with a zone (default: now, floored to the step)")
    h.add_argument("--step-min", type=float, default=15.0)
    h.add_argument("--scenario", help="fault scenario file (YAML)")
    h.add_argument("--labels", help="append the faults in range to this CSV")
    h.add_argument("--seed", type=int, default=0)
    h.set_defaults(func=_history)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # every flag belongs to python -m simulators, --help included
        from simulators.__main__ import main as serve

        return serve(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))
