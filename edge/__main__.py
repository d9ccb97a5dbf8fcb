"""``python -m edge --config fleet.yaml --edge-id edge-moi-hq --broker mqtt://127.0.0.1:1883``"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bems import stage
from edge.agent import run
from edge.settings import EdgeSettings


def setup(argv: Sequence[str] | None = None) -> EdgeSettings:
    return stage.setup(EdgeSettings, argv, "python -m edge", "Poll this edge's meters and publish readings.")


def main(argv: Sequence[str] | None = None) -> int:
    return stage.main(EdgeSettings, run, argv, "python -m edge", "Poll this edge's meters and publish readings.")


if __name__ == "__main__":
    sys.exit(main())
