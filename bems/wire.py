"""The wire contract between edge and collector: MQTT topics and the versioned reading payload.

One model class serves both sides, so the edge cannot publish what the collector would refuse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bems.errors import PayloadError
from bems.signing import BATCH_MAX, KID_PATTERN, PROOF_PATTERN, SIG_PATTERN, Signer, canonical

WIRE_VERSION = 1
TOPIC_ROOT = "bems/v1"
SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"
METER_ID = r"^[a-z0-9][a-z0-9-]{0,62}\.[a-z0-9][a-z0-9-]{0,62}$"
FIELD = r"^[a-z][a-z0-9_]{0,40}_(w|kw|kwh|wh|v|a|hz|m3|l|c|pf|var|kvarh|count)$"
MAX_PAYLOAD_BYTES = 16_384
MAX_VALUES = 64

Quality = Literal["good", "uncertain", "bad"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)


def reading_topic(building: str, meter: str) -> str:
    """``bems/v1/{building}/{meter}/reading``; the meter part is the meter id without its building prefix."""
    return f"{TOPIC_ROOT}/{building}/{meter_suffix(meter)}/reading"


def status_topic(building: str, edge_id: str) -> str:
    return f"{TOPIC_ROOT}/{building}/edge/{edge_id}/status"


def alert_topic(commodity: str, building: str) -> str:
    return f"{TOPIC_ROOT}/alerts/{commodity}/{building}"


READING_SUBSCRIPTION = f"{TOPIC_ROOT}/+/+/reading"
_READING_TOPIC = re.compile(r"^bems/v1/([^/]+)/([^/]+)/reading$")


def meter_suffix(meter_id: str) -> str:
    return meter_id.split(".", 1)[1]


def parse_reading_topic(topic: str) -> tuple[str, str]:
    """Return (building, meter id) from a reading topic, or raise PayloadError."""
    m = _READING_TOPIC.match(topic)
    if not m:
        raise PayloadError(f"topic {topic!r} is not a reading topic ({TOPIC_ROOT}/<building>/<meter>/reading)")
    return m.group(1), f"{m.group(1)}.{m.group(2)}"


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]  # checked in pydantic-core, not per value in Python


class Reading(BaseModel):
    """One read of one meter, as taken by an edge."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={
        "examples": [{"v": 1, "meter": "tehran-moi-hq.main-elec", "building": "tehran-moi-hq",
                      "edge": "edge-moi-hq", "ts": "2026-11-25T08:30:00.120Z", "seq": 1042,
                      "values": {"power_w": 41250.0, "energy_kwh": 182733.4}, "quality": "good"}]})

    v: Literal[1] = Field(WIRE_VERSION, description="payload version")
    meter: str = Field(pattern=METER_ID, description="meter id: <building>.<meter>")
    building: str = Field(pattern=SLUG)
    edge: str = Field(pattern=SLUG, description="id of the edge that took the reading")
    ts: datetime = Field(description="UTC time of the read, ISO 8601")
    seq: int = Field(ge=0, lt=2**63, description="per-edge sequence number, strictly increasing")
    values: dict[Annotated[str, Field(pattern=FIELD)], FiniteFloat] = Field(
        min_length=1, max_length=MAX_VALUES, description="canonical field names with the unit in the name")
    quality: Quality = "good"
    kid: str | None = Field(None, pattern=KID_PATTERN, description="id of the edge key that signed the reading")
    sig: str | None = Field(None, pattern=SIG_PATTERN,
                            description="Ed25519 signature (base64) of the reading's batch: the Merkle root over "
                                        "the batch's canonical readings and its size (bems.signing)")
    proof: str | None = Field(None, pattern=PROOF_PATTERN, max_length=1024,
                              description="index/size/base64 sibling hashes: the reading's place in its signed "
                                          "batch; absent when it was signed alone")

    @field_validator("ts")
    @classmethod
    def _utc(cls, ts: datetime) -> datetime:
        if ts.tzinfo is None:
            raise ValueError("timestamp must carry a UTC offset (e.g. 'Z')")
        return ts.astimezone(UTC)

    @model_validator(mode="after")
    def _meter_in_building(self) -> Reading:
        if not self.meter.startswith(self.building + "."):
            raise ValueError(f"meter {self.meter!r} does not belong to building {self.building!r}")
        return self

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @property
    def topic(self) -> str:
        return reading_topic(self.building, self.meter)

    @property
    def ts_ms(self) -> int:
        return (self.ts - EPOCH) // MILLISECOND

    def signed_bytes(self) -> bytes:
        return canonical(self.building, self.meter, self.edge, self.ts_ms, self.seq, self.values)

    def signed(self, signer: Signer) -> Reading:
        """A copy signed alone (a batch of one); ``sign_readings`` signs many at the cost of one."""
        return sign_readings([self], signer)[0]


def sign_readings(readings: Sequence[Reading], signer: Signer, batch: int = BATCH_MAX) -> list[Reading]:
    """Copies carrying the signer's key id, their batch's signature and each one's proof; ``batch`` at a time."""
    out: list[Reading] = []
    for k in range(0, len(readings), batch):
        chunk = readings[k:k + batch]
        sig, proofs = signer.sign_batch([r.signed_bytes() for r in chunk])
        out += [r.model_copy(update={"kid": signer.kid, "sig": sig, "proof": p})
                for r, p in zip(chunk, proofs, strict=True)]
    return out


def decode_reading(payload: bytes, topic: str | None = None) -> Reading:
    """Parse and validate a payload; every failure is a PayloadError whose message is the reason.

    Strict: JSON types must be the schema's (``"seq": "7"`` or ``true`` for a value are refused, not coerced),
    as an edge built on this model never sends them.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        reading = Reading.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise PayloadError(f"{where}: {first['msg']}" + (f" (+{exc.error_count() - 1} more)"
                                                          if exc.error_count() > 1 else "")) from exc
    if topic is not None:
        building, meter = parse_reading_topic(topic)
        if (building, meter) != (reading.building, reading.meter):
            raise PayloadError(f"topic {topic!r} does not match payload meter {reading.meter!r}")
    return reading


def reading_json_schema() -> dict:
    schema = Reading.model_json_schema()
    schema["$id"] = "https://bems.example/schema/reading-v1.json"
    return schema


def schema_text() -> str:
    return json.dumps(reading_json_schema(), indent=2, ensure_ascii=False) + "\n"


def utcnow() -> datetime:
    return datetime.now(UTC)
