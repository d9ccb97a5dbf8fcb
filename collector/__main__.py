"""``python -m collector --config fleet.yaml --broker mqtt://127.0.0.1:1883 --store sqlite:///readings.db``"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bems import stage
from collector.settings import CollectorSettings
from collector.workers import launch

DESCRIPTION = "Subscribe to readings, validate them and write them to the store."


def setup(argv: Sequence[str] | None = None) -> CollectorSettings:
    return stage.setup(CollectorSettings, argv, "python -m collector", DESCRIPTION)


def main(argv: Sequence[str] | None = None) -> int:
    return stage.main(CollectorSettings, launch, argv, "python -m collector", DESCRIPTION)


if __name__ == "__main__":
    sys.exit(main())
