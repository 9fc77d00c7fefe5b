"""Drop-in entry point: ``python -m executor.interfaces.http.rest`` runs ``sandbox-executor serve``.

The control plane starts each container as root with a script that mounts the S3 workspace
and then runs ``exec gosu sandbox bash -c '... exec python -m executor.interfaces.http.rest'``
from ``/app``. In the image ``python`` is the executor's own virtualenv, so this module only
hands over to the real entry point; every setting still comes from the environment.
"""

from __future__ import annotations

import os
import shutil
import sys

MODULE = "executor.interfaces.http.rest"


def _reexec_under_init() -> None:
    """When we are PID 1 (the start script ``exec``s us), put tini in front of us.

    PID 1 inherits every orphaned process of the container and must reap it; the daemon
    only waits for its own children, so orphans (e.g. an intermediate bwrap process) would
    stay zombies. tini reaps them, forwards SIGTERM and exits with our exit status (143
    after SIGTERM), so the control plane sees the same container as before.
    """
    if os.getpid() != 1 or os.environ.get("SANDBOX_EXECUTOR_NO_INIT") == "1":
        return
    tini = shutil.which("tini")
    if tini is not None:
        os.execv(tini, [tini, "--", sys.executable, "-m", MODULE])  # noqa: S606


def main() -> int:
    """Start the HTTP service exactly as ``sandbox-executor serve`` would."""
    _reexec_under_init()
    # Imported here so that importing this module (e.g. by a linter) has no side effects.
    from sandbox_executor.cli import main as cli_main

    return cli_main(["serve"])


if __name__ == "__main__":
    raise SystemExit(main())
