"""CSV and XLSX exports of series and alerts, for utilities that load them into their own systems.

Bounded like the JSON routes: at most ``MAX_EXPORT_METERS`` meters and ``MAX_EXPORT_CELLS`` values per series
export, ``MAX_EXPORT_ALERTS`` alerts per alert export; beyond that a 422 names the limit.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response

from api.auth import CurrentPrincipal, meter_for
from api.deps import FleetDep, StateDep, StoreDep
from api.routes import AlertFilters
from api.series import check_budget, invalid, iso_times, parse_bucket, resolve_range
from bems.store import Agg
from bems.store.base import bucket_axis

router = APIRouter(prefix="/api/v1/exports", tags=["exports"])
MAX_EXPORT_METERS = 50
MAX_EXPORT_CELLS = 200_000
MAX_EXPORT_ALERTS = 10_000
MEDIA = {"csv": "text/csv; charset=utf-8",
         "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
Format = Annotated[Literal["csv", "xlsx"], Query(description="csv (UTF-8) or xlsx (Excel)")]
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"example": "time,tehran-moi-hq.main-elec\n2026-11-21T00:00:00Z,412.5\n"},
                      MEDIA["xlsx"]: {}},
          "description": "a file (Content-Disposition: attachment)"}}


def _cell(v: Any) -> Any:
    """Text that a spreadsheet would run as a formula is quoted (CSV/formula injection)."""
    return "'" + v if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") else v


def _file(rows: Sequence[Sequence[Any]], fmt: str, name: str, sheet: str) -> Response:
    rows = [[_cell(v) for v in row] for row in rows]
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        body = buf.getvalue().encode("utf-8")
    else:
        from openpyxl import Workbook

        wb = Workbook(write_only=True)
        ws = wb.create_sheet(sheet)
        for row in rows:
            ws.append(list(row))
        out = io.BytesIO()
        wb.save(out)
        body = out.getvalue()
    return Response(body, media_type=MEDIA[fmt],
                    headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'})


@router.get("/series", response_class=Response, responses=FILE_RESPONSES)
def export_series(
    who: CurrentPrincipal, fleet: FleetDep, store: StoreDep,
    meters: Annotated[str, Query(max_length=8000, description="comma-separated meter ids",
                                 examples=["tehran-moi-hq.main-elec,tehran-moi-hq.hvac-elec"])],
    field: Annotated[str, Query(max_length=64, examples=["energy_kwh"])] = "energy_kwh",
    start: Annotated[dt.datetime | None, Query(description="ISO 8601 with offset; default end - 24h")] = None,
    end: Annotated[dt.datetime | None, Query(description="ISO 8601 with offset; default now")] = None,
    bucket: Annotated[str, Query(max_length=16, examples=["1h"])] = "1h",
    agg: Annotated[Agg, Query()] = "mean",
    mode: Annotated[Literal["aggregate", "consumption"], Query()] = "consumption",
    format: Format = "csv",
) -> Response:
    """One row per bucket, one column per meter; empty cells where a bucket has no data."""
    ids = [m.strip() for m in meters.split(",") if m.strip()]
    if not ids:
        raise invalid("meters", "name at least one meter id")
    if len(ids) > MAX_EXPORT_METERS:
        raise invalid("meters", f"{len(ids)} meters; at most {MAX_EXPORT_METERS} per export")
    ids = list(dict.fromkeys(ids))
    chosen = [meter_for(who, fleet, i) for i in ids]
    for m in chosen:
        reg = {r.field: r for r in m.profile.registers}.get(field)
        if reg is None:
            raise invalid("field", f"meter {m.id!r} has no field {field!r}")
        if mode == "consumption" and not reg.cumulative:
            raise invalid("mode", f"consumption needs a cumulative field; {field!r} is not")
    width = parse_bucket(bucket)
    t0, t1 = resolve_range(start, end)
    check_budget(t0, t1, width)
    n = bucket_axis(t0, t1, width)[2]
    if n * len(ids) > MAX_EXPORT_CELLS:
        raise invalid("bucket", f"{len(ids)} meters x {n} buckets = {n * len(ids)} values; at most "
                                f"{MAX_EXPORT_CELLS} per export")
    matrix = (store.read_consumption(ids, field, t0, t1, width) if mode == "consumption"
              else store.read_matrix(ids, field, t0, t1, width, agg))
    rows: list[list[Any]] = [["time", *ids]]
    for t, col in zip(iso_times(matrix), matrix.values.T.tolist(), strict=True):
        rows.append([t, *("" if v != v else v for v in col)])  # v != v: NaN
    return _file(rows, format, f"series-{field}", "series")


ALERT_COLUMNS = ("id", "building", "meter", "commodity", "type", "severity", "status", "start", "end", "excess",
                 "unit", "message", "created_at", "updated_at")


@router.get("/alerts", response_class=Response, responses=FILE_RESPONSES)
def export_alerts(
    who: CurrentPrincipal, fleet: FleetDep, state: StateDep, filters: Annotated[AlertFilters, Depends()],
    limit: Annotated[int, Query(ge=1, le=MAX_EXPORT_ALERTS, description=f"at most {MAX_EXPORT_ALERTS}")] = 1000,
    format: Format = "csv",
) -> Response:
    """The alerts the list route would return (same filters and scope), largest excess first."""
    alerts = state.alerts(limit=limit, **filters.query(who, fleet))
    rows: list[list[Any]] = [list(ALERT_COLUMNS)]
    for a in alerts:
        row = []
        for c in ALERT_COLUMNS:
            v = getattr(a, c)
            row.append(v.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if isinstance(v, dt.datetime) else v)
        rows.append(row)
    return _file(rows, format, "alerts", "alerts")
