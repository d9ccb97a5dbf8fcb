"""Relational state on SQLite and PostgreSQL: the same tests on both."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator

import pytest

from bems.state import AlertTransitionError, StateDB

PG_URL = os.environ.get("BEMS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path) -> Iterator[StateDB]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        state = StateDB(f"sqlite:///{tmp_path}/state.db")
        yield state
        state.close()
        return
    import sqlalchemy

    schema = "t_" + uuid.uuid4().hex[:10]
    admin = sqlalchemy.create_engine(PG_URL)
    try:
        with admin.begin() as c:
            c.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    except sqlalchemy.exc.OperationalError as exc:
        if os.environ.get("BEMS_REQUIRE_SERVICES"):
            pytest.fail(f"PostgreSQL at {PG_URL} unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    state = StateDB(f"{PG_URL}?options=-csearch_path%3D{schema}")
    yield state
    state.close()
    with admin.begin() as c:
        c.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def test_token_roundtrip_hashed_and_revocable(db: StateDB) -> None:
    token = db.create_token("fm-1", "facility_manager", ["tehran-moi-hq"])
    stored = db.list_tokens()[0]
    assert token not in stored.token_sha256 and len(stored.token_sha256) == 64
    ok = db.check_token(token)
    assert ok is not None and ok.role == "facility_manager" and ok.scope == "tehran-moi-hq"
    assert db.check_token(token + "x") is None
    assert db.revoke_token("fm-1")
    assert db.check_token(token) is None


def test_alert_dedupe_and_lifecycle(db: StateDB) -> None:
    start = dt.datetime(2026, 11, 21, 18, tzinfo=dt.UTC)
    a, created = db.upsert_alert(building="b", meter="b.m", commodity="electricity", type="after_hours",
                                 start=start, end=start + dt.timedelta(hours=1), excess=5, unit="kWh",
                                 severity="warning", message="x")
    b, created2 = db.upsert_alert(building="b", meter="b.m", commodity="electricity", type="after_hours",
                                  start=start, end=start + dt.timedelta(hours=3), excess=12, unit="kWh",
                                  severity="warning", message="y")
    assert created and not created2 and a.id == b.id
    [only] = db.alerts(building="b")
    assert only.end == start + dt.timedelta(hours=3) and only.excess == 12 and only.start == start
    assert db.set_alert_status(only.id, "acknowledged", actor="tester").status == "acknowledged"
    assert db.alerts(status="open") == []
    assert db.set_alert_status(9999, "resolved", actor="tester") is None
    assert db.set_alert_status(only.id, "resolved", actor="tester").status == "resolved"
    with pytest.raises(AlertTransitionError, match="already resolved"):
        db.set_alert_status(only.id, "acknowledged", actor="tester")
    assert db.alert(only.id).status == "resolved"
