"""``python -m edge --config fleet.yaml --edge-id edge-moi-hq --broker mqtt://127.0.0.1:1883``

``--check`` validates the configuration and reads every device once instead, printing a table.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from bems import stage
from bems.errors import BemsError
from bems.settings import secret_values
from edge.agent import run
from edge.settings import EdgeSettings

PROG, ABOUT = "python -m edge", "Poll this edge's meters and publish readings."


def setup(argv: Sequence[str] | None = None) -> EdgeSettings:
    return stage.setup(EdgeSettings, argv, PROG, ABOUT)


def use_uvloop() -> None:
    """uvloop (libuv) when installed: the same asyncio API with much cheaper sockets and timers per request."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = setup(argv)
    except BemsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if not settings.check:
        policy = asyncio.get_event_loop_policy()
        use_uvloop()
        try:
            return stage.main(EdgeSettings, run, argv, PROG, ABOUT)
        finally:
            asyncio.set_event_loop_policy(policy)  # main() may run inside another program (tests)
    from edge.check import check

    stage.configure_logging("CRITICAL" if settings.log_level.upper() == "INFO" else settings.log_level,
                            secret_values(settings))
    if settings.log_level.upper() != "DEBUG":
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the table says what failed
    try:
        return asyncio.run(check(settings))
    except BemsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
