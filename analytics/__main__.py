"""``python -m analytics --config fleet.yaml --store sqlite:///readings.db --db sqlite:///state.db``"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analytics.service import run
from analytics.settings import AnalyticsSettings
from bems import stage

DESCRIPTION = "Run the anomaly detectors on a timer and record alerts."


def setup(argv: Sequence[str] | None = None) -> AnalyticsSettings:
    return stage.setup(AnalyticsSettings, argv, "python -m analytics", DESCRIPTION)


def main(argv: Sequence[str] | None = None) -> int:
    return stage.main(AnalyticsSettings, run, argv, "python -m analytics", DESCRIPTION)


if __name__ == "__main__":
    sys.exit(main())
