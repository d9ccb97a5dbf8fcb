"""``python -m api --config fleet.yaml --store sqlite:///bems-data/readings.db --db sqlite:///bems-data/state.db``"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from api.app import run
from api.settings import ApiSettings
from bems import stage

DESCRIPTION = "Serve the HTTP API (/api/v1, OpenAPI at /docs) and the dashboard (/)."


def setup(argv: Sequence[str] | None = None) -> ApiSettings:
    return stage.setup(ApiSettings, argv, "python -m api", DESCRIPTION)


def main(argv: Sequence[str] | None = None) -> int:
    return stage.main(ApiSettings, run, argv, "python -m api", DESCRIPTION)


if __name__ == "__main__":
    sys.exit(main())
