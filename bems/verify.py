"""``bems verify``: prove that a building's stored readings are those its edges sent, or name the first that is not.

Per meter and UTC day: a sealed day is proven when its seal is authentic (HMAC with the seal key) and the stored
readings give the sealed count and digest (bems.seal). A day whose seal does not match, a day with no seal, and
every day with ``--full`` go through the signature path: each reading's batch signature and Merkle proof are
checked with the fleet's public keys. A reading with no signature (a fleet that does not sign) is proven by its
day's seal only.

Exit status: 0 every reading proven; 1 something was altered, added or deleted (the first finding is named);
3 nothing found wrong, but some readings are unproven (unsigned, on days without a seal).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bems.fleet import Fleet
from bems.seal import SealKey, bad_signatures, day_digest, day_name, fmt_ts, load_seals
from bems.signing import KeyRing
from bems.state import Seal, StateDB
from bems.store import SignedPoints, Store
from bems.store.base import DAY_MS, from_ms, to_ms

EXIT_OK, EXIT_ALTERED, EXIT_UNPROVEN = 0, 1, 3


@dataclass(frozen=True)
class Finding:
    meter: str
    ts_ms: int  # the reading named (for a missing reading: where it is missing)
    why: str  # bad signature | missing point | extra point | seal mismatch
    detail: str
    values: dict[str, float] | None = None

    def line(self) -> str:
        vals = "" if not self.values else " " + ", ".join(f"{k}={v!r}" for k, v in sorted(self.values.items()))
        return f"{self.meter} {fmt_ts(self.ts_ms)}{vals}: {self.why}: {self.detail}"


@dataclass
class VerifyReport:
    building: str
    start_ms: int
    end_ms: int
    meters: int = 0
    points: int = 0
    by_seal: int = 0
    by_signature: int = 0
    unproven: int = 0
    unsigned: int = 0
    days_sealed: int = 0
    days_unsealed: int = 0
    seconds: float = 0.0
    seals_checked: bool = True
    findings: list[Finding] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.findings:
            return EXIT_ALTERED
        return EXIT_UNPROVEN if self.unproven else EXIT_OK

    @property
    def rate(self) -> float:
        return self.points / self.seconds if self.seconds > 0 else 0.0

    def lines(self, limit: int = 20) -> list[str]:
        out: list[str] = []
        if self.findings:
            first = min(self.findings, key=lambda f: (f.ts_ms, f.meter))
            out.append(f"ALTERED first: {first.line()}")
            out += [f"  also: {f.line()}" for f in self.findings if f is not first][:limit]
            if len(self.findings) > limit + 1:
                out.append(f"  ... and {len(self.findings) - limit - 1} more findings")
        span = f"{day_name(self.start_ms)} to {day_name(self.end_ms - DAY_MS)} (whole UTC days)"
        out.append(f"{self.building}: {self.meters} meters, {span}: {self.points} points checked "
                   f"({self.by_seal} proven by seal, {self.by_signature} by signature, {self.unproven} unproven); "
                   f"{self.days_sealed} meter-days sealed, {self.days_unsealed} unsealed; "
                   f"{self.seconds:.2f} s, {self.rate:,.0f} readings/s")
        if not self.seals_checked:
            out.append("no seal key given: seals were not checked, every reading went through its signature")
        if self.unsigned:
            out.append(f"{self.unsigned} points carry no signature: only their day's seal can prove them"
                       + (f"; {self.unproven} of them are on days without a valid seal and stay unproven"
                          if self.unproven else ""))
        out.append({EXIT_OK: "OK: every reading is proven",
                    EXIT_ALTERED: f"FAILED: {len(self.findings)} finding(s)",
                    EXIT_UNPROVEN: "UNPROVEN: nothing found altered, but not every reading could be proven"}
                   [self.exit_code])
        return out


def day_range(start: dt.datetime, end: dt.datetime) -> tuple[int, int]:
    """[start, end) widened to whole UTC days: seals cover whole days."""
    s = (to_ms(start) // DAY_MS) * DAY_MS
    e = -(-to_ms(end) // DAY_MS) * DAY_MS
    return s, max(e, s + DAY_MS)


def verify_building(store: Store, state: StateDB, fleet: Fleet, building: str, start: dt.datetime,
                    end: dt.datetime, *, key: SealKey | None, full: bool = False,
                    progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check every meter of ``building`` on every UTC day touching [start, end); ``progress(meter-days done)``."""
    t0 = time.perf_counter()
    s, e = day_range(start, end)
    meters = [m.id for m in fleet.meters_of(building=building)]
    report = VerifyReport(building, s, e, meters=len(meters), seals_checked=key is not None)
    keyring = fleet.keyring()
    seals = load_seals(state, meters, day_name(s), day_name(e))
    for day_ms in range(s, e, DAY_MS):  # day by day: a batch signed across meters is checked once (bems.signing)
        for meter in meters:
            _verify_day(store, keyring, key, building, meter, day_ms, seals.get((meter, day_name(day_ms))), full,
                        report)
            if progress is not None:
                progress(1)
    report.seconds = time.perf_counter() - t0
    return report


def _verify_day(store: Store, keyring: KeyRing, key: SealKey | None, building: str, meter: str, day_ms: int,
                seal: Seal | None, full: bool, report: VerifyReport) -> None:
    day = day_name(day_ms)
    pts = store.signed_points(meter, from_ms(day_ms), from_ms(day_ms + DAY_MS))
    n = len(pts)
    if not n and seal is None:
        return
    report.points += n
    unsigned = sum(1 for sig in pts.sig if sig is None)
    report.unsigned += unsigned
    seal_ok = matches = False
    if seal is not None and key is not None:
        report.days_sealed += 1
        if seal.key_id != key.key_id:
            report.findings.append(Finding(meter, day_ms, "seal mismatch", f"the seal of {day} was made with seal "
                                           f"key {seal.key_id}, not the key given ({key.key_id})"))
        elif seal.mac != key.mac(meter, day, seal.count, seal.digest):
            report.findings.append(Finding(meter, day_ms, "seal mismatch", f"the seal row of {day} itself was "
                                           "altered: its HMAC does not match"))
        else:
            seal_ok = True
            matches = seal.count == n and seal.digest == day_digest(building, meter, day, pts)
    else:
        report.days_unsealed += 1
    if matches and not full:
        report.by_seal += n
        return
    bad = bad_signatures(keyring, building, meter, pts)
    for i, why in bad:
        report.findings.append(Finding(meter, int(pts.ts_ms[i]), "bad signature", why, pts.values[i]))
    signed_ok = n - unsigned - len(bad)
    if matches:  # --full on a sealed, matching day: the seal proves the unsigned readings
        report.by_seal += unsigned
        report.by_signature += signed_ok
        return
    report.by_signature += signed_ok
    report.unproven += unsigned
    if seal_ok and not bad:
        report.findings.append(_locate(meter, day, day_ms, seal, pts, unsigned))


def _locate(meter: str, day: str, day_ms: int, seal: Seal, pts: SignedPoints, unsigned: int) -> Finding:
    """Where a day differs from its seal when no signature says: a gap, a crowded spot, or changed values."""
    n = len(pts)
    counts = f"{seal.count} sealed, {n} stored"
    ts = pts.ts_ms
    step = float(np.median(np.diff(ts))) if n > 2 else 0.0
    if n < seal.count:
        gaps = np.flatnonzero(np.diff(ts) > 1.5 * step) if step else np.array([], dtype=np.intp)
        if gaps.size:
            i = int(gaps[0])
            return Finding(meter, int(ts[i]) + int(step), "missing point",
                           f"{counts}; gap between {fmt_ts(int(ts[i]))} and {fmt_ts(int(ts[i + 1]))} where readings "
                           f"are {step / 1000:g} s apart")
        where = int(ts[0]) if n else day_ms
        return Finding(meter, where, "missing point", f"{counts}; no gap inside the day: missing at its start or end "
                                                      f"(stored from {fmt_ts(int(ts[0]))} to {fmt_ts(int(ts[-1]))})"
                       if n else f"{counts}: every reading of {day} is gone")
    if n > seal.count:
        crowded = np.flatnonzero(np.diff(ts) < 0.75 * step) if step else np.array([], dtype=np.intp)
        lone = [k for k in range(n) if pts.sig[k] is None] if unsigned < n else []  # unsigned among signed
        i = lone[0] if lone else int(crowded[0]) + 1 if crowded.size else n - 1
        return Finding(meter, int(ts[i]), "extra point", f"{counts}; {n - seal.count} reading(s) added since the "
                       "seal, this one the likeliest", pts.values[i])
    what = ("its readings carry no signature, so the altered one cannot be named" if unsigned else
            "every signature verifies: readings were replaced by other validly signed ones")
    return Finding(meter, day_ms, "seal mismatch", f"{counts}, but the digest differs: values on {day} were "
                   f"changed; {what}")
