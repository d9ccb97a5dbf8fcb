"""Dependencies shared by the route modules: the app's fleet, store, state, settings and list paging."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request, Response

from api.cache import PayloadCache
from api.settings import ApiSettings
from bems.calendar import OfficeCalendar
from bems.fleet import Fleet
from bems.state import StateDB
from bems.store import Store
from bems.tariff import TariffBook

log = logging.getLogger(__name__)
MAX_PAGE = 1000
MAX_OFFSET = 1_000_000


def _fleet(request: Request) -> Fleet:
    return request.app.state.bems_fleet


def _store(request: Request) -> Store:
    return request.app.state.bems_store


def _state(request: Request) -> StateDB:
    return request.app.state.bems_state


def _calendar(request: Request) -> OfficeCalendar:
    return request.app.state.bems_calendar


TARIFF_RECHECK_S = 5.0


def _tariffs(request: Request) -> TariffBook:
    """The tariff book in force: an admin's override from the state database if one is set, else the file.

    Re-read at most every few seconds, so every API instance behind a load balancer follows a change.
    """
    app = request.app
    now = time.monotonic()
    cached = getattr(app.state, "bems_tariff_override", None)
    if cached is not None and cached[0] > now:
        return cached[1]
    book = app.state.bems_tariffs
    row = app.state.bems_state.tariff_override()
    if row is not None and row.document is not None:
        try:
            book = TariffBook.model_validate_json(row.document)
        except ValueError:
            log.exception("tariff override %s is invalid; using the file", row.id)
    app.state.bems_tariff_override = (now + TARIFF_RECHECK_S, book, row)
    return book


def _cache(request: Request) -> PayloadCache:
    return request.app.state.bems_cache


def _settings(request: Request) -> ApiSettings:
    return request.app.state.bems_settings


FleetDep = Annotated[Fleet, Depends(_fleet)]
StoreDep = Annotated[Store, Depends(_store)]
StateDep = Annotated[StateDB, Depends(_state)]
CalendarDep = Annotated[OfficeCalendar, Depends(_calendar)]
TariffsDep = Annotated[TariffBook, Depends(_tariffs)]
CacheDep = Annotated[PayloadCache, Depends(_cache)]
SettingsDep = Annotated[ApiSettings, Depends(_settings)]


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int
    response: Response

    def apply(self, items: list, total: int | None = None) -> list:  # type: ignore[type-arg]
        """Slice a list held in memory; the total goes to ``X-Total-Count`` so the body stays a plain list."""
        self.response.headers["X-Total-Count"] = str(len(items) if total is None else total)
        return items[self.offset:self.offset + self.limit]


def _paging(response: Response,
            limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"page size, at most {MAX_PAGE}")] = 100,
            offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")] = 0) -> Paging:
    return Paging(limit, offset, response)


PagingDep = Annotated[Paging, Depends(_paging)]
