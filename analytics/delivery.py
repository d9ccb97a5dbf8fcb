"""Alert delivery to utilities: MQTT on ``bems/v1/alerts/{commodity}/{building}`` and signed HTTP webhooks.

Every webhook delivery is a row in the relational state before it is attempted, so a failed one is retried
with backoff and, after the last attempt, kept as ``failed`` and counted: never dropped silently.
Webhook bodies are signed with HMAC-SHA256 over ``<timestamp>.<body>`` (header ``X-Bems-Signature:
sha256=<hex>``, ``X-Bems-Timestamp``), so a receiver can refuse forgeries and replays.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator
from sqlalchemy import select

from bems.errors import ConfigError
from bems.fleet import COMMODITIES, Fleet
from bems.state import Alert, Delivery, StateDB, alert_payload
from bems.validation import load_yaml, parse_model
from bems.wire import alert_topic

log = logging.getLogger("bems.analytics.delivery")
MAX_ATTEMPTS = 8
BACKOFF_S = (10, 30, 60, 300, 900, 1800, 3600)


class Subscription(BaseModel):
    """A utility's interest: which commodities (and optionally cities or buildings), and where to post."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    commodities: tuple[str, ...] = Field(min_length=1)
    cities: tuple[str, ...] = ()
    buildings: tuple[str, ...] = ()
    webhook: HttpUrl
    secret_env: str = Field(description="environment variable that holds the HMAC secret (never in the file)")

    @field_validator("commodities")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in value if c not in COMMODITIES]
        if bad:
            raise ValueError(f"unknown commodity {bad[0]!r}; allowed: {', '.join(COMMODITIES)}")
        return value

    def secret(self) -> bytes:
        value = os.environ.get(self.secret_env, "")
        if len(value) < 16:
            raise ConfigError(f"subscription {self.name}: set {self.secret_env} to a secret of at least 16 "
                              "characters (it signs the webhooks)")
        return value.encode()

    def wants(self, alert: Alert, fleet: Fleet) -> bool:
        building = fleet.building_by_id.get(alert.building)
        return (alert.commodity in self.commodities
                and (not self.cities or (building is not None and building.city in self.cities))
                and (not self.buildings or alert.building in self.buildings))


class Subscriptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subscriptions: list[Subscription] = []


def load_subscriptions(path: Path) -> list[Subscription]:
    subs = parse_model(Subscriptions, load_yaml(path), str(path)).subscriptions
    for s in subs:
        s.secret()  # refuse to start without the secrets
    return subs


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """For receivers (and tests): constant-time check of a webhook signature."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def enqueue(state: StateDB, alert: Alert, subscriptions: list[Subscription], fleet: Fleet) -> int:
    """Queue one webhook delivery per interested subscription; returns how many were queued."""
    now = dt.datetime.now(dt.UTC)
    body = json.dumps(alert_payload(alert), sort_keys=True)
    n = 0
    with state.session() as s:
        for sub in subscriptions:
            if sub.wants(alert, fleet):
                s.add(Delivery(alert_id=alert.id, subscription=sub.name, body=body, status="pending", attempts=0,
                               next_attempt_at=now, created_at=now))
                n += 1
    return n


def send_due(state: StateDB, subscriptions: list[Subscription], client: httpx.Client,
             now: dt.datetime | None = None) -> tuple[int, int]:
    """Attempt every pending delivery that is due; returns (delivered, failed for good) in this round."""
    now = now or dt.datetime.now(dt.UTC)
    by_name = {s.name: s for s in subscriptions}
    delivered = failed = 0
    with state.session() as s:
        due = list(s.scalars(select(Delivery).where(Delivery.status == "pending", Delivery.next_attempt_at <= now)
                             .order_by(Delivery.id).limit(500)))
        for d in due:
            sub = by_name.get(d.subscription)
            if sub is None:
                d.status, d.last_error = "failed", f"subscription {d.subscription!r} no longer configured"
                failed += 1
                continue
            ts = str(int(now.timestamp()))
            body = d.body.encode()
            error = None
            try:
                resp = client.post(str(sub.webhook), content=body, timeout=10, headers={
                    "Content-Type": "application/json", "X-Bems-Timestamp": ts,
                    "X-Bems-Signature": sign(sub.secret(), ts, body), "X-Bems-Delivery": str(d.id)})
                if resp.status_code >= 300:
                    error = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            d.attempts += 1
            if error is None:
                d.status, d.delivered_at, d.last_error = "delivered", now, None
                delivered += 1
            elif d.attempts >= MAX_ATTEMPTS:
                d.status, d.last_error = "failed", error
                failed += 1
                log.error("webhook to %s for alert %s failed for good after %d attempts: %s", sub.name,
                          d.alert_id, d.attempts, error)
            else:
                d.last_error = error
                d.next_attempt_at = now + dt.timedelta(seconds=BACKOFF_S[min(d.attempts - 1, len(BACKOFF_S) - 1)])
                log.warning("webhook to %s for alert %s failed (attempt %d, retrying): %s", sub.name, d.alert_id,
                            d.attempts, error)
    return delivered, failed


def publish_mqtt(client, alert: Alert) -> None:  # type: ignore[no-untyped-def]
    """QoS 1 on the commodity's alert topic; utilities subscribe to what their broker ACL lets them read."""
    client.publish(alert_topic(alert.commodity, alert.building), json.dumps(alert_payload(alert)).encode(), qos=1)
