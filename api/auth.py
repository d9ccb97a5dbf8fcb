"""Bearer-token auth and scope checks; every route asks here, so a new route cannot forget scoping.

Roles: ``admin`` sees everything; ``facility_manager`` sees the buildings in its scope; ``utility`` sees
the commodities in its scope, in every building or, with regions, in the buildings of those cities.
An unknown role sees nothing. A client address that sends too many invalid tokens gets 429 for a while
(api.ratelimit); a missing token is not counted, a valid one is never refused for another address's failures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.ratelimit import FailedAuthLimiter
from bems.fleet import Building, Fleet, Meter
from bems.state import StateDB

bearer = HTTPBearer(auto_error=False, description="an API token: Authorization: Bearer <token>")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    scope: frozenset[str]
    region_buildings: frozenset[str] | None = None  # utility with regions: the buildings in those cities

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def key(self) -> tuple[str, frozenset[str], frozenset[str] | None]:
        """What decides what this principal sees (for caches shared between principals)."""
        return self.role, self.scope, self.region_buildings

    def _in_region(self, building: str) -> bool:
        return self.region_buildings is None or building in self.region_buildings

    def sees_building(self, building: str, fleet: Fleet) -> bool:
        if self.role == "admin":
            return True
        if self.role == "facility_manager":
            return building in self.scope
        if self.role == "utility":
            return self._in_region(building) and any(m.commodity in self.scope
                                                     for m in fleet.meters_of(building=building))
        return False

    def sees_meter(self, meter: Meter) -> bool:
        if self.role == "admin":
            return True
        if self.role == "facility_manager":
            return meter.building in self.scope
        if self.role == "utility":
            return meter.commodity in self.scope and self._in_region(meter.building)
        return False

    def alert_filter(self) -> dict[str, list[str]]:
        """Keyword arguments for ``StateDB.alerts`` that confine the query to this principal's scope."""
        if self.role == "admin":
            return {}
        if self.role == "facility_manager":
            return {"buildings": sorted(self.scope)}
        if self.role == "utility":
            out = {"commodities": sorted(self.scope)}
            if self.region_buildings is not None:
                out["buildings"] = sorted(self.region_buildings)
            return out
        return {"buildings": []}


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _too_many(seconds: int) -> HTTPException:
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": str(seconds)},
                         detail=f"too many invalid tokens from this address; retry in {seconds} s")


def forbidden(what: str) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, detail=f"{what} is outside this token's scope")


def principal(request: Request,
              creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise _unauthorized("missing bearer token: send Authorization: Bearer <token>")
    limiter: FailedAuthLimiter = request.app.state.bems_auth_limiter
    client = request.client.host if request.client else "unknown"
    if (wait := limiter.retry_after(client)) is not None:
        raise _too_many(wait)  # before the check, so a locked-out address learns nothing from its guesses
    state: StateDB = request.app.state.bems_state
    token = state.check_token(creds.credentials)
    if token is None:
        limiter.failed(client)
        raise _unauthorized("invalid or revoked token")
    scope = frozenset(s.strip() for s in token.scope.split(",") if s.strip())
    regions = {r.strip().casefold() for r in (token.regions or "").split(",") if r.strip()}
    region_buildings = None
    if regions and token.role == "utility":
        fleet: Fleet = request.app.state.bems_fleet
        region_buildings = frozenset(b.id for b in fleet.buildings if b.city.casefold() in regions)
    return Principal(name=token.name, role=token.role, scope=scope, region_buildings=region_buildings)


CurrentPrincipal = Annotated[Principal, Depends(principal)]


def admin(who: CurrentPrincipal) -> Principal:
    if not who.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this route needs an admin token")
    return who


AdminPrincipal = Annotated[Principal, Depends(admin)]


def building_for(who: Principal, fleet: Fleet, building_id: str) -> Building:
    """Scope first, existence second: a scoped token cannot probe which ids exist."""
    if not who.sees_building(building_id, fleet):
        raise forbidden(f"building {building_id!r}")
    building = fleet.building_by_id.get(building_id)
    if building is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"unknown building {building_id!r}")
    return building


def meter_for(who: Principal, fleet: Fleet, meter_id: str) -> Meter:
    meter = fleet.meter_by_id.get(meter_id)
    if meter is None:
        building = meter_id.split(".", 1)[0]
        if who.role == "admin" or (who.role == "facility_manager" and building in who.scope):
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"unknown meter {meter_id!r}")
        raise forbidden(f"meter {meter_id!r}")
    if not who.sees_meter(meter):
        raise forbidden(f"meter {meter_id!r}")
    return meter
