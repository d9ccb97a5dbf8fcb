"""Signed readings at the collector: verify every reading against the fleet's keys, refuse replays, raise alerts.

Order: a message is first checked against the wire contract and the fleet (``collector.validate``), then its
signature is verified with the key ring built from the fleet file (``bems.signing``). A reading refused here is
dead-lettered as ``security:<kind>`` (unsigned, unknown_key, wrong_edge, wrong_building, bad_signature, replay),
acknowledged, and raises a security alert for the meter it claims. A forged reading that also breaks a fleet or
plausibility rule is refused under that rule instead: refused either way, but without a security alert.

An edge signs its readings in batches (one Ed25519 signature over a Merkle root, each reading with its proof), and
the key ring remembers the roots it verified: a reading costs its proof's few hashes (~13 us of CPU), the costly
signature check (~40 us) is made once per batch (bench/integrity.py prints the CPU per reading).

Replays. A signature proves who made a reading, not that it is new: a captured message sent again still verifies.
What a replay can do is bounded: the signature covers every stored field, so a replayed reading is byte for byte
one the edge made, and the store's (meter, time) key makes it a duplicate of what is stored. The harm left is a
reading that is no longer in the store (past the raw retention: refused as ``too_old`` anyway, or deleted) coming
back, and the load and noise of a flood. So the rule only has to catch what is clearly old, never a legitimate
late copy:

* per edge, the highest sequence number verified so far (the high-water) is kept, per collector client id, in
  ``replay.db`` in the data directory (written once per batch; a crash may lose the last update, which only makes
  the check more lenient);
* a reading whose ``seq`` is below ``high_water - replay_window`` is refused as ``security:replay``; anything
  within the window goes on and the store's idempotent key treats it as the duplicate it is.

Why legitimate traffic never falls that far behind: an edge numbers its readings in a strictly increasing
sequence that survives restarts (its queue) and sends its queue in sequence order, so after a broker outage or a
restart it resends from its oldest unacknowledged reading, at most ``inflight`` (<= 20,000) below the newest it
sent. The broker delivers one publisher's messages to one session in order; what the collector did not
acknowledge before a crash comes again, at most ``receive_maximum`` messages (the settings refuse a window smaller
than that). With two collectors in a ``$share`` group each sees an ordered subset: the high-water is per collector,
so a member that was away and drains its queued share starts below its peer without being refused. A new edge
queue starts its sequence at the clock in microseconds, above anything it sent before. What is not covered: a
collector that lost its data directory starts with no high-water (lenient until it sees fresh readings), and an
edge whose queue was recreated with its clock far behind would be refused (and alerted on, and dead-lettered: the
readings can be published again once the clock is right).

Alerts go to the relational state (one open alert per meter and kind while refusals go on, like the analytics'
alerts) from a thread of their own, so a slow or absent database never holds up ingest; a new alert is also
published on ``bems/v1/alerts/security/{building}``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from bems.errors import ConfigError
from bems.fleet import Fleet
from bems.signing import SignatureRejected
from bems.sqlite_file import open_wal
from bems.state import Alert, StateDB, alert_payload
from bems.wire import Reading, alert_topic

log = logging.getLogger("bems.collector")

KINDS = {
    "security:unsigned": "reading without kid/sig while signatures are required",
    "security:unknown_key": "signed with a key no edge in the fleet file registers",
    "security:wrong_edge": "signed with another edge's key than the edge it names",
    "security:wrong_building": "edge's key used for a building the edge does not serve",
    "security:bad_signature": "signature does not match the reading (forged or altered)",
    "security:replay": "sequence number far below the edge's high-water (a replayed message)",
}
ALERT_TOPIC_COMMODITY = "security"  # bems/v1/alerts/security/{building}
ALERT_GAP = dt.timedelta(hours=1)  # refusals this close to an open alert extend it

_SCHEMA = """
CREATE TABLE IF NOT EXISTS high_water (collector TEXT NOT NULL, edge TEXT NOT NULL, seq INTEGER NOT NULL,
                                       PRIMARY KEY (collector, edge)) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Refusal:
    index: int  # into the screened batch
    kind: str  # security:<kind>
    message: str


class HighWater:
    """The highest verified sequence number of each edge, as seen by this collector; survives restarts."""

    def __init__(self, path: Path, collector: str) -> None:
        try:
            self.db = open_wal(path, _SCHEMA, synchronous="NORMAL")
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"data_dir: cannot open the replay high-water file {path} ({exc}); choose a writable "
                              "directory with --data-dir") from exc
        self.path, self.collector = path, collector
        self.seq: dict[str, int] = dict(self.db.execute("SELECT edge, seq FROM high_water WHERE collector = ?",
                                                        (collector,)))

    def save(self, edges: Sequence[str]) -> None:
        try:
            self.db.executemany("INSERT INTO high_water (collector, edge, seq) VALUES (?, ?, ?) ON CONFLICT "
                                "(collector, edge) DO UPDATE SET seq = max(seq, excluded.seq)",
                                [(self.collector, e, self.seq[e]) for e in edges])
        except sqlite3.Error as exc:  # kept in memory; the check goes on
            log.warning("cannot record replay high-water marks in %s: %s", self.path, exc)

    def close(self) -> None:
        self.db.close()


class Screen:
    """Verifies a batch of readings and applies the replay rule; refusals also raise security alerts."""

    def __init__(self, fleet: Fleet, high_water: HighWater, window: int, alerts: SecurityAlerts | None = None) -> None:
        self.keyring = fleet.keyring()
        self.high_water = high_water
        self.window = window
        self.alerts = alerts
        if not len(self.keyring):
            log.warning("the fleet file registers no public key: every reading will be refused while signatures "
                        "are required; create keys with `bems edge keygen` and list them under each edge's "
                        "public_keys")

    def _verify(self, readings: Sequence[Reading]) -> list[Refusal]:
        verify, out = self.keyring.verify, []
        for i, r in enumerate(readings):
            try:
                verify(r.kid, r.sig, proof=r.proof, building=r.building, meter=r.meter, edge=r.edge,
                       ts_ms=r.ts_ms, seq=r.seq, values=r.values)
            except SignatureRejected as exc:
                out.append(Refusal(i, f"security:{exc.kind}", str(exc)))
        return out

    def screen(self, readings: Sequence[Reading]) -> list[Refusal]:
        """Refusals in batch order; every other reading verified and within the replay window."""
        refused = self._verify(readings)
        refused += self._replays(readings, {r.index for r in refused})
        refused.sort(key=lambda r: r.index)
        if self.alerts is not None:
            for r in refused:
                self.alerts.report(readings[r.index], r.kind, r.message)
        return refused

    def _replays(self, readings: Sequence[Reading], skip: set[int]) -> list[Refusal]:
        """In arrival order: refuse what is far below its edge's high-water, raise the high-water."""
        seen, out, changed = self.high_water.seq, [], set()
        for i, r in enumerate(readings):
            if i in skip:
                continue
            top = seen.get(r.edge, -1)
            if r.seq > top:
                seen[r.edge] = r.seq
                changed.add(r.edge)
            elif r.seq < top - self.window:
                out.append(Refusal(i, "security:replay", f"reading of {r.meter} from edge {r.edge!r} has seq "
                                                         f"{r.seq}, more than {self.window} below the highest "
                                                         f"seq {top} seen from that edge: a replayed message"))
        if changed:
            self.high_water.save(sorted(changed))
        return out

    def close(self) -> None:
        if self.alerts is not None:
            self.alerts.stop()
        self.high_water.close()


@dataclass
class _Pending:
    building: str
    commodity: str
    first: dt.datetime
    last: dt.datetime
    count: int
    message: str


class SecurityAlerts:
    """Security alerts in the relational state, written by a thread of their own; new ones also on MQTT.

    Not analytics' ``record``: that one merges re-detections of the same window (the largest excess wins), while
    each refusal here is a new event, so the alert's count grows by every refusal; and stages share no code but
    ``bems``."""

    def __init__(self, state_url: str, fleet: Fleet, publish: Callable[[str, bytes], object] | None = None,
                 flush_s: float = 1.0) -> None:
        self.state_url = state_url
        self.commodity = {m.id: m.commodity for m in fleet.meters}
        self.publish = publish
        self.flush_s = flush_s
        self.inbox: queue.SimpleQueue[tuple[Reading, str, str, dt.datetime]] = queue.SimpleQueue()
        self.pending: dict[tuple[str, str], _Pending] = {}  # (type, meter) -> refusals not yet recorded
        self.recorded = 0  # alerts created or extended, for tests and metrics
        self._state: StateDB | None = None
        self._stop = threading.Event()
        self._failing: str | None = None
        self._thread = threading.Thread(target=self._run, name="collector-security-alerts", daemon=True)

    def report(self, reading: Reading, kind: str, message: str) -> None:
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()  # on the first refusal: a collector that refuses nothing opens no database
        self.inbox.put((reading, kind, message, dt.datetime.now(dt.UTC)))

    def _collect(self) -> None:
        while True:
            try:
                r, kind, message, at = self.inbox.get_nowait()
            except queue.Empty:
                return
            key = ("security_" + kind.removeprefix("security:"), r.meter)
            p = self.pending.get(key)
            if p is None:
                self.pending[key] = _Pending(r.building, self.commodity.get(r.meter, "electricity"), at, at, 1,
                                             message)
            else:
                p.last, p.count, p.message = at, p.count + 1, message

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()
        self.flush()

    def flush(self) -> None:
        self._collect()
        if not self.pending:
            return
        try:
            if self._state is None:
                self._state = StateDB(self.state_url)
            for key in list(self.pending):
                self._record(key, self.pending[key])
                del self.pending[key]
        except Exception as exc:  # a database that is down must not stop the collector
            level = logging.DEBUG if self._failing == str(exc) else logging.ERROR
            self._failing = str(exc)
            log.log(level, "cannot record %d security alert(s) in %s (%s); will retry", len(self.pending),
                    self.state_url.split("@")[-1], exc)
            return
        self._failing = None

    def _record(self, key: tuple[str, str], p: _Pending) -> None:
        kind, meter = key
        now = dt.datetime.now(dt.UTC)
        assert self._state is not None
        with self._state.session() as s:
            alert = s.scalars(select(Alert).where(Alert.meter == meter, Alert.type == kind,
                                                  Alert.status != "resolved", Alert.end >= p.first - ALERT_GAP)
                              .order_by(Alert.end.desc()).limit(1)).first()
            created = alert is None
            if alert is None:
                alert = Alert(building=p.building, meter=meter, commodity=p.commodity, type=kind, severity="critical",
                              status="open", start=p.first, end=p.last, excess=0.0, unit="readings",
                              created_at=now)
                s.add(alert)
            alert.end = max(alert.end, p.last)
            alert.excess = (alert.excess or 0.0) + p.count
            alert.message = (f"{alert.excess:.0f} reading(s) claiming {meter} refused by the collector "
                             f"({kind}); latest: {p.message}")
            alert.updated_at = now
            s.flush()
            payload = alert_payload(alert)
        self.recorded += 1
        log.log(logging.ERROR if created else logging.DEBUG, "security alert %s for %s: %d reading(s) refused (%s)",
                kind, meter, p.count, p.message)
        if created and self.publish is not None:
            self.publish(alert_topic(ALERT_TOPIC_COMMODITY, p.building), json.dumps(payload).encode())

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        else:
            self.flush()
        if self._state is not None:
            self._state.close()
