"""Relational state (alerts and their comments, API tokens, the audit log): SQLAlchemy models in one place.

SQLite file by default, PostgreSQL in production; the same tests run on both (tests/test_state.py).
A column added to an existing table is added to old databases at open (``_add_missing_columns``), so a
``bems-demo`` directory from an earlier version keeps working.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from bems.errors import BemsError

AlertStatus = Literal["open", "acknowledged", "resolved"]
Role = Literal["admin", "facility_manager", "utility"]
ROLES: tuple[Role, ...] = ("admin", "facility_manager", "utility")
COMMODITIES = ("electricity", "gas", "water")


class AlertTransitionError(BemsError):
    """An alert cannot move to the requested status (a resolved alert stays resolved)."""


class UserError(BemsError):
    """A token cannot be created as asked (unknown role, bad scope, name taken); the message says the fix."""


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
    cost_rial: Mapped[float | None] = mapped_column(Float, nullable=True)  # excess electricity at its TOU price


class Delivery(Base):
    """One webhook delivery of an alert to a utility's subscription; kept after success and after failure."""

    __tablename__ = "delivery"
    __table_args__ = (Index("ix_delivery_status_next", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(Integer, index=True)
    subscription: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class ApiToken(Base):
    """A bearer token, stored as its SHA-256 only; the plain token is shown once, when it is created."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(Text, default="")  # comma-separated building ids or commodities
    regions: Mapped[str | None] = mapped_column(Text, nullable=True, default="")  # utility: comma-separated cities
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AlertComment(Base):
    """A note on an alert by whoever works on it (\"valve left open, fixed 10:20\")."""

    __tablename__ = "alert_comment"
    __table_args__ = (Index("ix_alert_comment_alert", "alert_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(Integer, ForeignKey("alert.id", ondelete="CASCADE"))
    author: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """Who changed what, for every write action (alert ack/resolve/comment, token create/revoke)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(160))
    detail: Mapped[str] = mapped_column(Text, default="")


class Seal(Base):
    """A meter's readings of one UTC day, sealed: their number, a SHA-256 over them in time order, and an HMAC of
    the seal with the server's seal key (bems.seal), so an altered, added or deleted reading shows."""

    __tablename__ = "seal"
    __table_args__ = (UniqueConstraint("meter", "day", name="uq_seal_meter_day"), Index("ix_seal_building_day",
                                                                                         "building", "day"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    building: Mapped[str] = mapped_column(String(64))
    meter: Mapped[str] = mapped_column(String(130))
    day: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD (UTC)
    count: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(16))
    sealed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands datetimes back naive; everything in bems is UTC, so say so."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


class TariffOverride(Base):
    """A tariff book set by an admin through the API, replacing the file until reset; each change is a row."""

    __tablename__ = "tariff_override"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(64))
    document: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON; NULL: back to the file


@event.listens_for(Alert, "load")
@event.listens_for(ApiToken, "load")
@event.listens_for(AlertComment, "load")
@event.listens_for(AuditEntry, "load")
@event.listens_for(TariffOverride, "load")
@event.listens_for(Delivery, "load")
@event.listens_for(Seal, "load")
def _aware(target: Base, _context: object) -> None:
    for col in target.__table__.columns:
        if isinstance(col.type, DateTime):
            setattr(target, col.key, _utc(getattr(target, col.key)))


def alert_payload(alert: Alert) -> dict:
    """An alert as published on MQTT and sent to webhooks (analytics' alerts and the collector's security alerts)."""
    return {"v": 1, "id": alert.id, "building": alert.building, "meter": alert.meter, "commodity": alert.commodity,
            "type": alert.type, "severity": alert.severity, "status": alert.status,
            "start": alert.start.isoformat(), "end": alert.end.isoformat(), "excess": alert.excess,
            "unit": alert.unit, "message": alert.message}


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
        _add_missing_columns(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def close(self) -> None:
        self.engine.dispose()

    # tokens -----------------------------------------------------------------------------------------
    def create_token(self, name: str, role: Role, scope: Sequence[str] = (), regions: Sequence[str] = (),
                     actor: str = "cli") -> str:
        """A new random token for ``name``; only its SHA-256 is kept, so the caller shows it once."""
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; allowed: {', '.join(ROLES)}")
        if not name or len(name) > 64:
            raise UserError("a token needs a name of 1 to 64 characters")
        scope = [s.strip() for s in scope if s.strip()]
        regions = [r.strip() for r in regions if r.strip()]
        if role == "utility" and (bad := [s for s in scope if s not in COMMODITIES]):
            raise UserError(f"utility scope takes commodities ({', '.join(COMMODITIES)}), not {', '.join(bad)}")
        if regions and role != "utility":
            raise UserError("regions (cities) apply to the utility role only")
        if role == "admin" and scope:
            raise UserError("an admin token sees everything; leave its scope empty")
        token = "bems_" + secrets.token_urlsafe(32)
        with self.session() as s:
            if s.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
                raise UserError(f"a token named {name!r} exists (active or revoked); choose another name")
            s.add(ApiToken(name=name, role=role, token_sha256=_hash(token), scope=",".join(scope),
                           regions=",".join(regions), created_at=dt.datetime.now(dt.UTC)))
            _audit(s, actor, "token.create", name, f"role={role} scope={','.join(scope) or '*'}"
                   + (f" regions={','.join(regions)}" if regions else ""))
        return token

    def revoke_token(self, name: str, actor: str = "cli") -> bool:
        with self.session() as s:
            tok = s.scalar(select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None)))
            if tok is None:
                return False
            tok.revoked_at = dt.datetime.now(dt.UTC)
            _audit(s, actor, "token.revoke", name, "")
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

    def _alert_query(self, *, building: str | None = None, status: str | None = None,
                     buildings: Sequence[str] | None = None, commodities: Sequence[str] | None = None,
                     meter: str | None = None,
                     commodity: str | None = None, type: str | None = None, severity: str | None = None,
                     since: dt.datetime | None = None, until: dt.datetime | None = None,
                     updated_since: dt.datetime | None = None):  # type: ignore[no-untyped-def]
        """``buildings`` and ``commodities`` confine to a scope (None: no limit; empty: nothing)."""
        conditions = []
        for column, value in ((Alert.building, building), (Alert.status, status), (Alert.meter, meter),
                              (Alert.commodity, commodity), (Alert.type, type), (Alert.severity, severity)):
            if value:
                conditions.append(column == value)
        if buildings is not None:
            conditions.append(Alert.building.in_(list(buildings)))
        if commodities is not None:
            conditions.append(Alert.commodity.in_(list(commodities)))
        if since is not None:
            conditions.append(Alert.end > since)
        if until is not None:
            conditions.append(Alert.start < until)
        if updated_since is not None:
            conditions.append(Alert.updated_at > updated_since)
        return conditions

    def alerts(self, *, limit: int = 100, offset: int = 0, order: Literal["excess", "updated"] = "excess",
               **filters: object) -> list[Alert]:
        """Alerts matching ``filters`` (see ``_alert_query``), largest excess first or last updated first."""
        q = select(Alert).where(*self._alert_query(**filters))  # type: ignore[arg-type]
        if order == "updated":
            q = q.order_by(Alert.updated_at.asc(), Alert.id.asc())
        else:
            q = q.order_by(Alert.cost_rial.desc().nulls_last(), Alert.excess.desc(), Alert.start.desc(), Alert.id.asc())
        with self.session() as s:
            return list(s.scalars(q.limit(limit).offset(offset)))

    def count_alerts(self, **filters: object) -> int:
        q = select(func.count(Alert.id)).where(*self._alert_query(**filters))  # type: ignore[arg-type]
        with self.session() as s:
            return int(s.scalar(q) or 0)

    def open_alert_counts(self, buildings: Sequence[str] | None = None,
                          commodities: Sequence[str] | None = None) -> dict[str, int]:
        """Open (not acknowledged, not resolved) alerts per building, within a scope."""
        q = select(Alert.building, func.count(Alert.id)).where(
            *self._alert_query(status="open", buildings=buildings, commodities=commodities)).group_by(Alert.building)
        with self.session() as s:
            return {b: int(n) for b, n in s.execute(q)}

    def alert(self, alert_id: int) -> Alert | None:
        with self.session() as s:
            return s.get(Alert, alert_id)

    def ping(self) -> None:
        """Raise if the database does not answer (for health checks)."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def set_alert_status(self, alert_id: int, status: AlertStatus, *, actor: str) -> Alert | None:
        """Move an alert along open -> acknowledged -> resolved; resolved is final (AlertTransitionError).

        The change is written to the audit log, naming ``actor``, in the same transaction.
        """
        with self.session() as s:
            alert = s.get(Alert, alert_id)
            if alert is None:
                return None
            if alert.status == "resolved" and status != "resolved":
                raise AlertTransitionError(f"alert {alert_id} is already resolved")
            before = alert.status
            alert.status = status
            alert.updated_at = dt.datetime.now(dt.UTC)
            _audit(s, actor, f"alert.{status}", f"alert:{alert_id}", f"{before} -> {status}")
            return alert

    # comments and audit ----------------------------------------------------------------------------
    def add_comment(self, alert_id: int, author: str, body: str) -> AlertComment | None:
        """Add a comment (None if the alert does not exist); touches the alert so live streams see it."""
        now = dt.datetime.now(dt.UTC)
        with self.session() as s:
            alert = s.get(Alert, alert_id)
            if alert is None:
                return None
            comment = AlertComment(alert_id=alert_id, author=author, text=body, created_at=now)
            s.add(comment)
            alert.updated_at = now
            _audit(s, author, "alert.comment", f"alert:{alert_id}", body[:200])
        return comment

    def comments(self, alert_id: int, limit: int = 100, offset: int = 0) -> list[AlertComment]:
        q = (select(AlertComment).where(AlertComment.alert_id == alert_id)
             .order_by(AlertComment.created_at, AlertComment.id).limit(limit).offset(offset))
        with self.session() as s:
            return list(s.scalars(q))

    def audit_log(self, limit: int = 100, offset: int = 0, action: str | None = None) -> list[AuditEntry]:
        q = select(AuditEntry)
        if action:
            q = q.where(AuditEntry.action == action)
        q = q.order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit).offset(offset)
        with self.session() as s:
            return list(s.scalars(q))

    def count_audit(self, action: str | None = None) -> int:
        q = select(func.count(AuditEntry.id))
        if action:
            q = q.where(AuditEntry.action == action)
        with self.session() as s:
            return int(s.scalar(q) or 0)


    # tariff override ---------------------------------------------------------------------------------
    def set_tariff_override(self, document: str | None, actor: str) -> TariffOverride:
        """Record a new tariff book (JSON) or, with None, a return to the file; both are audited."""
        with self.session() as s:
            row = TariffOverride(created_at=dt.datetime.now(dt.UTC), actor=actor, document=document)
            s.add(row)
            _audit(s, actor, "tariffs.update" if document is not None else "tariffs.reset", "tariffs",
                   "" if document is None else f"{len(document)} bytes")
        return row

    def tariff_override(self) -> TariffOverride | None:
        """The latest change (its ``document`` is None after a reset), or None if never changed."""
        with self.session() as s:
            return s.scalar(select(TariffOverride).order_by(TariffOverride.id.desc()).limit(1))


TOKEN_TEXT = re.compile(r"bems_[A-Za-z0-9_-]{20,}")


def _audit(s: Session, actor: str, action: str, target: str, detail: str) -> None:
    """One audit row; anything shaped like an API token (a comment quoting one) is masked before it is kept."""
    target, detail = TOKEN_TEXT.sub("bems_***", target), TOKEN_TEXT.sub("bems_***", detail)
    s.add(AuditEntry(at=dt.datetime.now(dt.UTC), actor=actor, action=action, target=target, detail=detail))


def _add_missing_columns(engine: Engine) -> None:
    """Add nullable columns that a newer version declares to tables an older version created."""
    insp = inspect(engine)
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            if not insp.has_table(table.name):
                continue
            have = {c["name"] for c in insp.get_columns(table.name)}
            for col in table.columns:
                if col.name not in have and col.nullable:
                    conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN {col.name} '
                                      f'{col.type.compile(engine.dialect)}'))


def _sqlite_pragmas(conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
