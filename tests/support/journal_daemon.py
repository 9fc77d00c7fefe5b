"""A stand-in daemon for the journal crash test: accepts executions, finishes one, says
READY and waits to be SIGKILLed. ``python -m tests.support.journal_daemon RESULTS_DIR``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sandbox_executor.journal import Journal


def main() -> None:
    journal = Journal.open(Path(sys.argv[1]))
    journal.accept("exec_1", "sess-a", "python", 30, accepted_at=1000.0)
    journal.accept("exec_2", "sess-a", "shell", 5, accepted_at=1001.0)
    journal.accept("exec_3", None, "javascript", 3600, accepted_at=1002.0)
    journal.complete("exec_2")
    print("READY", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
