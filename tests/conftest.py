"""Fixtures that start real servers on 127.0.0.1, each test on its own ports.

A test that needs a server skips when the server's binary is missing, unless BEMS_REQUIRE_SERVICES is set
(CI sets it), in which case the missing server is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bems.services import Influxd, Mosquitto, find_binary

REQUIRE = bool(os.environ.get("BEMS_REQUIRE_SERVICES"))


def need(binary: str, package: str) -> None:
    if find_binary(binary) is None:
        msg = f"{binary} not installed (apt-get install {package}; scripts/install-services does it)"
        if REQUIRE:
            pytest.fail(msg + " and BEMS_REQUIRE_SERVICES is set")
        pytest.skip(msg)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    need("mosquitto", "mosquitto")
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[Influxd]:
    need("influxd", "influxdb")
    server = Influxd(tmp_path / "influxd")
    server.start()
    yield server
    server.stop()
