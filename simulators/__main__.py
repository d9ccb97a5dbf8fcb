"""``python -m simulators --config fleet.yaml [--backfill-days 21 --store sqlite:///x.db] [--scenario f.yaml]``"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bems import stage
from simulators.service import run
from simulators.settings import SimulatorSettings

DESCRIPTION = "Serve simulated Modbus meters for a fleet, optionally after writing their history."


def setup(argv: Sequence[str] | None = None) -> SimulatorSettings:
    return stage.setup(SimulatorSettings, argv, "python -m simulators", DESCRIPTION)


def main(argv: Sequence[str] | None = None) -> int:
    return stage.main(SimulatorSettings, run, argv, "python -m simulators", DESCRIPTION)


if __name__ == "__main__":
    sys.exit(main())
