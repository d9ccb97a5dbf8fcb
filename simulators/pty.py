"""A pseudo-terminal pair from socat: a virtual RS-485 line for Modbus RTU without hardware.

The simulator opens one end (``server_end``), the edge or a test opens the other (``client_end``)::

    with PtyPair() as line:
        Placement(device_id=1, serial=line.server_end, baudrate=19200)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

from bems.errors import BemsError


class PtyPair:
    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None
        self.server_end = ""
        self.client_end = ""

    def __enter__(self) -> PtyPair:
        socat = shutil.which("socat")
        if socat is None:
            raise BemsError("socat is not installed (apt-get install socat); it makes the pseudo-terminal pair")
        self.proc = subprocess.Popen([socat, "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        ends: list[str] = []
        deadline = time.monotonic() + self.timeout
        assert self.proc.stderr is not None
        while len(ends) < 2 and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            if m := re.search(r"PTY is (\S+)", line):
                ends.append(m.group(1))
        if len(ends) < 2:
            self.__exit__()
            raise BemsError("socat did not report two pseudo-terminals in time")
        self.server_end, self.client_end = ends
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
