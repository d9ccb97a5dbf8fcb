"""Relational state (alerts, API tokens): SQLAlchemy models in one place.

SQLite file by default, PostgreSQL in production; the same tests run on both (tests/test_state.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

from sqlalchemy import (
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from bems.errors import BemsError

AlertStatus = Literal["open", "acknowledged", "resolved"]
Role = Literal["admin", "facility_manager", "utility"]


class AlertTransitionError(BemsError):
    """An alert cannot move to the requested status (a resolved alert stays resolved)."""


class Base(DeclarativeBase):
    pass


class Alert(Base):
    """An anomaly found by analytics; one row per meter, type and start while it lasts."""

    __tablename__ = "alert"
    __table_args__ = (UniqueConstraint("meter", "type", "start", name="uq_alert_meter_type_start"),
                      Index("ix_alert_status_building", "status", "building"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    building: Mapped[str] = mapped_column(String(64))
    meter: Mapped[str] = mapped_column(String(130))
    commodity: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16), default="warning")
    status: Mapped[str] = mapped_column(String(16), default="open")
    start: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    end: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    excess: Mapped[float] = mapped_column(Float, default=0.0)
    unit: Mapped[str] = mapped_column(String(8), default="kWh")  # kWh for electricity, m3 for water and gas
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class ApiToken(Base):
    """A bearer token, stored as its SHA-256 only; the plain token is shown once, when it is created."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(Text, default="")  # comma-separated building ids or commodities
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands datetimes back naive; everything in bems is UTC, so say so."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


@event.listens_for(Alert, "load")
@event.listens_for(ApiToken, "load")
def _aware(target: Base, _context: object) -> None:
    for col in target.__table__.columns:
        if isinstance(col.type, DateTime):
            setattr(target, col.key, _utc(getattr(target, col.key)))


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class StateDB:
    """Sessions on the relational database plus the few operations every stage needs."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def close(self) -> None:
        self.engine.dispose()

    # tokens -----------------------------------------------------------------------------------------
    def create_token(self, name: str, role: Role, scope: Sequence[str] = ()) -> str:
        token = "bems_" + secrets.token_urlsafe(32)
        with self.session() as s:
            s.add(ApiToken(name=name, role=role, token_sha256=_hash(token), scope=",".join(scope),
                           created_at=dt.datetime.now(dt.UTC)))
        return token

    def revoke_token(self, name: str) -> bool:
        with self.session() as s:
            tok = s.scalar(select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None)))
            if tok is None:
                return False
            tok.revoked_at = dt.datetime.now(dt.UTC)
            return True

    def check_token(self, token: str) -> ApiToken | None:
        digest = _hash(token)
        with self.session() as s:
            tok = s.scalar(select(ApiToken).where(ApiToken.token_sha256 == digest))
        if tok is None or tok.revoked_at is not None or not hmac.compare_digest(tok.token_sha256, digest):
            return None
        return tok

    def list_tokens(self) -> list[ApiToken]:
        with self.session() as s:
            return list(s.scalars(select(ApiToken).order_by(ApiToken.name)))

    # alerts -----------------------------------------------------------------------------------------
    def upsert_alert(self, *, building: str, meter: str, commodity: str, type: str, start: dt.datetime,
                     end: dt.datetime, excess: float, unit: str, severity: str,
                     message: str) -> tuple[Alert, bool]:
        """Record an alert once per (meter, type, start); a later pass extends it. Returns (alert, created)."""
        now = dt.datetime.now(dt.UTC)
        with self.session() as s:
            alert = s.scalar(select(Alert).where(Alert.meter == meter, Alert.type == type, Alert.start == start))
            created = alert is None
            if alert is None:
                alert = Alert(building=building, meter=meter, commodity=commodity, type=type, start=start,
                              created_at=now, status="open")
                s.add(alert)
            alert.end, alert.excess, alert.unit = end, excess, unit
            alert.severity, alert.message = severity, message
            alert.updated_at = now
        return alert, created

    def alerts(self, *, building: str | None = None, status: str | None = None,
               buildings: Sequence[str] | None = None, commodities: Sequence[str] | None = None,
               limit: int = 100, offset: int = 0) -> list[Alert]:
        q = select(Alert)
        if building:
            q = q.where(Alert.building == building)
        if status:
            q = q.where(Alert.status == status)
        if buildings is not None:
            q = q.where(Alert.building.in_(list(buildings)))
        if commodities is not None:
            q = q.where(Alert.commodity.in_(list(commodities)))
        q = q.order_by(Alert.excess.desc(), Alert.start.desc()).limit(limit).offset(offset)
        with self.session() as s:
            return list(s.scalars(q))

    def alert(self, alert_id: int) -> Alert | None:
        with self.session() as s:
            return s.get(Alert, alert_id)

    def ping(self) -> None:
        """Raise if the database does not answer (for health checks)."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def set_alert_status(self, alert_id: int, status: AlertStatus) -> Alert | None:
        """Move an alert along open -> acknowledged -> resolved; resolved is final (AlertTransitionError)."""
        with self.session() as s:
            alert = s.get(Alert, alert_id)
            if alert is None:
                return None
            if alert.status == "resolved" and status != "resolved":
                raise AlertTransitionError(f"alert {alert_id} is already resolved")
            alert.status = status
            alert.updated_at = dt.datetime.now(dt.UTC)
            return alert


def _sqlite_pragmas(conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
