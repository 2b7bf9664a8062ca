"""The benches' loaded condition: one process per core spinning in ``while True: pass``."""

from __future__ import annotations

import os
import subprocess
import sys
import time


class Burners:
    """One process per core spinning in ``while True: pass`` while the context is open."""

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
        time.sleep(2)
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            proc.kill()
            proc.wait()
