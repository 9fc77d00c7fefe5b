"""Drop-in entry point: ``python -m executor.interfaces.http.rest`` runs ``sandbox-executor serve``.

The control plane starts each container as root with a script that mounts the S3 workspace
and then runs ``exec gosu sandbox bash -c '... exec python -m executor.interfaces.http.rest'``
from ``/app``. In the image ``python`` is the executor's own virtualenv, so this module only
hands over to the real entry point; every setting still comes from the environment.
"""

from __future__ import annotations


def main() -> int:
    """Start the HTTP service exactly as ``sandbox-executor serve`` would."""
    # Imported here so that importing this module (e.g. by a linter) has no side effects.
    from sandbox_executor.cli import main as cli_main

    return cli_main(["serve"])


if __name__ == "__main__":
    raise SystemExit(main())
