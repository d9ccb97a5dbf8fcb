"""The publisher against a real mosquitto: it refuses to publish outside its own building, sends in order, and
reports what the broker acknowledged."""

from __future__ import annotations

import asyncio
import time

from bems.services import Mosquitto
from bems.settings import BrokerSettings
from edge.publisher import Publisher
from tests.edge_support import Subscriber


def test_publisher_sends_only_under_its_building(mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto.port, "bems/v1/+/+/reading", "publisher-checker")

    async def scenario() -> tuple[int, list[tuple[int, str]], list[int]]:
        pub = Publisher(BrokerSettings(url=mosquitto.url), "edge-test", "test-hq", window=10)
        task = asyncio.create_task(pub.run())
        for _ in range(100):
            if pub.connected:
                break
            await asyncio.sleep(0.05)
        generation, cursor, room = pub.position()
        assert (cursor, room) == (0, 10)
        rows = [(7, "bems/v1/other-hq/main/reading", b'{"seq": 7}'),
                (8, "bems/v1/test-hq/main/reading", b'{"seq": 8}'),
                (9, "bems/v1/test-hq/water/reading", b'{"seq": 9}')]
        sent, refused = pub.send(rows, generation)
        acked: list[int] = []
        for _ in range(100):
            acked += pub.take_acks()[0]
            if len(acked) >= 2:
                break
            await asyncio.sleep(0.05)
        assert pub.send(rows, generation - 1) == (0, []), "rows fetched before a reconnection are not sent"
        await pub.stop()
        task.cancel()
        return sent, refused, acked

    try:
        sent, refused, acked = asyncio.run(scenario())
        time.sleep(0.3)  # the subscriber's copies
    finally:
        sub.close()
    assert sent == 2
    assert [seq for seq, _ in refused] == [7] and "outside building test-hq" in refused[0][1]
    assert acked == [8, 9]
    assert [r["seq"] for r in sub.all()] == [8, 9]
