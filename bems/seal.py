"""Seals: tamper evidence for readings at rest, one seal per meter and UTC day.

A seal records how many readings a meter has on a day, a SHA-256 over them in time order (each reading's signed
bytes, bems.signing.canonical, then its batch signature and proof, each length-prefixed: one running hash commits
to the whole ordered sequence, as a per-point chain would, at the cost of one hash object per day), and an
HMAC-SHA256 of (meter, day, count, digest) with the server's seal key. Signatures prove each reading came from its
edge; seals add what signatures cannot: that no reading was deleted, and, for a fleet that does not sign, that none
was altered.
The seal rows live in the relational state, apart from the readings, and cannot be forged without the key.

A day is sealed once it ended more than ``seal_after_hours`` (26 by default: a day's readings buffered by an edge
for a whole day still arrive first). Signed readings are checked before their day is sealed, so a reading altered
between its arrival and the seal is not sealed in: the day stays unsealed and ``bems verify`` names the reading.

A reading that arrives after its day was sealed (an edge back from a long outage) changes the count. The day is
resealed only if the count grew and every reading of the day verifies by its signature: then nothing unproven
enters the seal, and the late reading is as trustworthy as the others. Otherwise the seal stays as it was (an
unsigned late reading, a missing reading, a bad signature) and ``bems verify`` reports the difference: a seal that
quietly followed whatever the store holds would prove nothing. Sealing is deterministic (the same readings give
the same seal), so running it twice, or from two places, is harmless.

The seal key: ``BEMS_SEAL_KEY`` or a file named by ``BEMS_SEAL_KEY_FILE`` / ``--seal-key-file`` (`bems seal
--keygen PATH` writes one), at least 32 characters, never logged; placeholders are refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict
from sqlalchemy import select

from bems.certs import write_private
from bems.errors import ConfigError
from bems.fleet import Fleet
from bems.settings import StageSettings, is_placeholder
from bems.signing import KeyRing, SignatureRejected, canonical
from bems.state import Seal, StateDB
from bems.store import SignedPoints, Store
from bems.store.base import DAY_MS, from_ms, to_ms

log = logging.getLogger("bems.seal")

SEAL_DOMAIN = "bems-seal-v1"
DEFAULT_SEAL_AFTER_HOURS = 26.0
RECHECK_DAYS = 35  # the periodic pass looks this far back for unsealed days and late readings
MIN_KEY_CHARS = 32
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class SealSettings(StageSettings):
    """``bems seal`` and ``bems verify``: the same store and state URLs the stages use (``BEMS_STORE``, ...)."""

    model_config = SettingsConfigDict(env_prefix="BEMS_", env_nested_delimiter="__", extra="forbid")

    store: str = Field("sqlite:///bems-data/readings.db", description="readings store URL")
    db: str = Field("sqlite:///bems-data/state.db", description="relational state URL (where seals are kept)")
    seal_key: SecretStr | None = Field(None, description="server seal key (environment only)")
    seal_key_file: Path | None = Field(None, description="file holding the server seal key")
    seal_after_hours: float = Field(DEFAULT_SEAL_AFTER_HOURS, gt=0, description="seal days ended this long ago")
    influx_token: SecretStr | None = Field(None, description="InfluxDB 2.x API token (environment only)")


@dataclass(frozen=True)
class SealKey:
    """The server's HMAC key; its repr shows only the key id (a fingerprint), never the key."""

    secret: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"bems-seal-key-id\n" + self.secret).hexdigest()[:16]

    def mac(self, meter: str, day: str, count: int, digest: str) -> str:
        return hmac.new(self.secret, f"{SEAL_DOMAIN}\n{meter}\n{day}\n{count}\n{digest}".encode(),
                        hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"SealKey(key_id={self.key_id!r})"


def load_seal_key(key: SecretStr | str | None, key_file: Path | None) -> SealKey | None:
    """The seal key from its setting or its file (the setting wins); None when neither is given."""
    if isinstance(key, SecretStr):
        key = key.get_secret_value()
    where = "BEMS_SEAL_KEY"
    if not key and key_file is not None:
        try:
            key = Path(key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"seal key file {key_file}: {exc.strerror}; create one with "
                              f"`bems seal --keygen {key_file}`") from None
        where = f"seal key file {key_file}"
    if key is None:
        return None
    text = key.strip()
    if is_placeholder(text) or len(text) < MIN_KEY_CHARS:
        raise ConfigError(f"{where}: a placeholder or shorter than {MIN_KEY_CHARS} characters; generate a key "
                          "with `bems seal --keygen PATH` and give its path with --seal-key-file")
    return SealKey(text.encode())


def generate_seal_key(path: str | Path) -> SealKey:
    """A new random key in ``path`` (mode 0600); an existing key is kept: seals made with it check only with it."""
    path = Path(path)
    if path.exists():
        raise ConfigError(f"{path} already exists; keep it (its seals check only with it), or move it away first")
    text = secrets.token_urlsafe(32)
    write_private(path, text + "\n")
    return SealKey(text.encode())


# ------------------------------------------------------------------------------------------------ digests
def fmt_ts(ms: int) -> str:
    """UTC ISO 8601 with a Z, milliseconds only when there are some."""
    t = from_ms(ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms % 1000:03d}" if ms % 1000 else "") + "Z"


def day_name(day_ms: int) -> str:
    return from_ms(day_ms).strftime("%Y-%m-%d")


def day_start(name: str) -> int:
    return to_ms(dt.datetime.strptime(name, "%Y-%m-%d").replace(tzinfo=dt.UTC))


def point_bytes(building: str, meter: str, pts: SignedPoints, i: int) -> bytes:
    return canonical(building, meter, pts.edge[i], int(pts.ts_ms[i]), int(pts.seq[i]), pts.values[i])


def day_digest(building: str, meter: str, day: str, pts: SignedPoints) -> str:
    """SHA-256 over the day's readings in time order: each one's signed bytes, then its signature and proof."""
    h = hashlib.sha256(f"{SEAL_DOMAIN}\n{meter}\n{day}\n".encode())
    pack = struct.Struct(">I").pack
    ts, seq, edge, values = pts.ts_ms.tolist(), pts.seq.tolist(), pts.edge, pts.values
    for i in range(len(ts)):
        data = canonical(building, meter, edge[i], ts[i], seq[i], values[i])
        s, p = (pts.sig[i] or "").encode(), (pts.proof[i] or "").encode()
        h.update(pack(len(data)) + data + pack(len(s)) + s + pack(len(p)) + p)
    return h.hexdigest()


def bad_signatures(keyring: KeyRing, building: str, meter: str, pts: SignedPoints) -> list[tuple[int, str]]:
    """(index, reason) of each signed reading whose signature does not verify; unsigned readings are skipped."""
    out = []
    for i in range(len(pts)):
        if pts.sig[i] is None and pts.kid[i] is None:
            continue
        try:
            keyring.verify(pts.kid[i], pts.sig[i], proof=pts.proof[i], building=building, meter=meter,
                           edge=pts.edge[i], ts_ms=int(pts.ts_ms[i]), seq=int(pts.seq[i]), values=pts.values[i])
        except SignatureRejected as exc:
            out.append((i, str(exc)))
    return out


# ------------------------------------------------------------------------------------------------ state
def load_seals(state: StateDB, meters: Sequence[str], first_day: str, end_day: str) -> dict[tuple[str, str], Seal]:
    """Seals of ``meters`` for days in [first_day, end_day)."""
    out: dict[tuple[str, str], Seal] = {}
    with state.session() as s:
        for i in range(0, len(meters), 500):
            q = select(Seal).where(Seal.meter.in_(list(meters[i:i + 500])), Seal.day >= first_day,
                                   Seal.day < end_day)
            for seal in s.scalars(q):
                out[(seal.meter, seal.day)] = seal
    return out


def _put_seal(state: StateDB, key: SealKey, building: str, meter: str, day: str, count: int, digest: str) -> None:
    with state.session() as s:
        seal = s.scalar(select(Seal).where(Seal.meter == meter, Seal.day == day))
        if seal is None:
            seal = Seal(building=building, meter=meter, day=day)
            s.add(seal)
        seal.count, seal.digest, seal.key_id = count, digest, key.key_id
        seal.mac = key.mac(meter, day, count, digest)
        seal.sealed_at = dt.datetime.now(dt.UTC)


# ------------------------------------------------------------------------------------------------ sealing pass
@dataclass
class SealReport:
    sealed: int = 0
    resealed: int = 0
    unchanged: int = 0
    held: list[str] = field(default_factory=list)  # days left unsealed or kept as they were, and why


def seal_until(now: dt.datetime, after_hours: float) -> dt.datetime:
    """Days that ended before the returned midnight (UTC) may be sealed."""
    t = now - dt.timedelta(hours=after_hours)
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def seal_pass(store: Store, state: StateDB, fleet: Fleet, key: SealKey, *, until: dt.datetime,
              since: dt.datetime | None = None, building: str | None = None) -> SealReport:
    """Seal every meter-day with readings in [since, until) (whole UTC days); see the module docstring."""
    report = SealReport()
    end_ms = (to_ms(until) // DAY_MS) * DAY_MS
    start_ms = 0 if since is None else (to_ms(since) // DAY_MS) * DAY_MS
    if end_ms <= start_ms:
        return report
    keyring = fleet.keyring()
    buildings = [building] if building else list(fleet.building_by_id)
    for b in buildings:
        meters = [m.id for m in fleet.meters_of(building=b)]
        if not meters:
            continue
        counts = store.day_counts(meters, from_ms(start_ms), from_ms(end_ms))
        seals = load_seals(state, meters, day_name(start_ms), day_name(end_ms))
        # day by day, each day's meters in turn: an edge signs its meters' readings of one poll round together,
        # so a batch's signature is checked once (the key ring remembers it) rather than once per meter
        for day_ms, meter, n in sorted((d, m, n) for m in meters for d, n in counts.get(m, {}).items()):
            day = day_name(day_ms)
            seal = seals.get((meter, day))
            if seal is not None and seal.count == n:
                report.unchanged += 1  # altered values with the same count are for bems verify to find
                continue
            _seal_day(store, state, key, keyring, b, meter, day, day_ms, seal, report)
    return report


def _seal_day(store: Store, state: StateDB, key: SealKey, keyring: KeyRing, building: str, meter: str, day: str,
              day_ms: int, seal: Seal | None, report: SealReport) -> None:
    pts = store.signed_points(meter, from_ms(day_ms), from_ms(day_ms + DAY_MS))
    bad = bad_signatures(keyring, building, meter, pts)
    if bad:
        i, why = bad[0]
        report.held.append(f"{meter} {day}: not sealed, {len(bad)} reading(s) fail their signature, the first at "
                           f"{fmt_ts(int(pts.ts_ms[i]))} ({why})")
        return
    if seal is not None and (seal.key_id != key.key_id or seal.mac != key.mac(meter, day, seal.count, seal.digest)):
        report.held.append(f"{meter} {day}: seal kept: it does not check with this seal key (altered, or made with "
                           f"key {seal.key_id}); bems verify reports it")
        return
    if seal is not None:
        unsigned = sum(1 for s in pts.sig if s is None)
        if len(pts) < seal.count or unsigned:
            why = (f"{seal.count - len(pts)} reading(s) missing" if len(pts) < seal.count else
                   f"{len(pts) - seal.count} more reading(s), and {unsigned} reading(s) of the day carry no "
                   "signature")
            report.held.append(f"{meter} {day}: seal kept ({seal.count} sealed, {len(pts)} stored: {why}); "
                               "bems verify reports it")
            return
    _put_seal(state, key, building, meter, day, len(pts), day_digest(building, meter, day, pts))
    if seal is None:
        report.sealed += 1
    else:
        report.resealed += 1
        log.info("%s %s resealed: %d late reading(s), every reading of the day verified by its signature",
                 meter, day, len(pts) - seal.count)
