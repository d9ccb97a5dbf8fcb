"""``python -m edge --check``: validate the configuration and read every device once, printing what each answered.

Touches neither the broker nor the reading queue, so it is safe to run beside a running edge.
"""

from __future__ import annotations

import asyncio
import math
import time

from rich.console import Console
from rich.table import Table

from bems.fleet import load_fleet
from edge.agent import load_signer, make_buses, plan_devices
from edge.modbus import Bus, ReadError
from edge.poller import DeviceState, read_device
from edge.settings import EdgeSettings


def fmt_values(values: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.6g}" if math.isfinite(v) else f"{k}={v}" for k, v in values.items())


async def check(settings: EdgeSettings, console: Console | None = None) -> int:
    """Returns 0 when every device answered, 1 otherwise."""
    fleet = load_fleet(settings.fleet)
    devices, groups = plan_devices(settings, fleet)
    signer = load_signer(settings, fleet)
    buses = make_buses(groups)
    results: dict[str, tuple[bool, float, str]] = {}

    async def one_bus(bus: Bus, devs: list[DeviceState]) -> None:
        for d in devs:  # one request at a time on a bus, as when polling
            t0 = time.perf_counter()
            try:
                values, quality = await read_device(bus, d)
            except ReadError as exc:
                results[d.id] = (False, (time.perf_counter() - t0) * 1000, f"{exc.kind}: {exc}")
            else:
                note = "" if quality == "good" else f" [{quality}]"
                results[d.id] = (True, (time.perf_counter() - t0) * 1000, fmt_values(values) + note)

    try:
        await asyncio.gather(*(one_bus(buses[k], devs) for k, devs in groups.items()))
    finally:
        for b in buses.values():
            b.close()
    ok = sum(r[0] for r in results.values())
    table = Table(title=f"edge {settings.edge_id}: {ok} of {len(devices)} devices answered", title_justify="left")
    for col in ("meter", "connection", "profile", "result", "ms", "values / error"):
        table.add_column(col, overflow="fold", justify="right" if col == "ms" else "left")
    for d in devices:
        good, ms, text = results[d.id]
        table.add_row(d.id, d.describe(), d.meter.device.profile.rsplit("/", 1)[-1],
                      "[green]ok[/]" if good else "[red]failed[/]", f"{ms:.0f}", text)
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)  # a log file or pipe: do not fold the values
    console.print(table)
    console.print(f"signing key {settings.signing_key_path()}: key id {signer.kid}", soft_wrap=True)
    return 0 if ok == len(devices) else 1
