"""Test-only wiring of the egress proxy into today's pip sandbox (``PipRunner``).

The integrator moves this into ``dependencies/pip_sandbox.py``; here it post-processes
the argv ``PipRunner.command`` builds, so the real mounts, seccomp filter, uid switch and
rlimits of the pip sandbox stay exactly as they are, minus the host network:

- bwrap loses ``--share-net`` (pip's sandbox: own network namespace, loopback only);
- the proxy's unix socket is bound read-only at ``PROXY_SOCKET_MOUNT``;
- the sandbox's command becomes the relay, which execs pip;
- pip gets ``--proxy http://127.0.0.1:3128``, ``--only-binary :all:`` unless sdists are
  allowed, and ``--log`` (read back to name a package that has no wheel).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sandbox_executor.config import Settings
from sandbox_executor.dependencies.pip_sandbox import PipJob, PipOutcome, PipRunner
from sandbox_executor.egress_policy import policy_for
from sandbox_executor.egress_proxy import EgressProxy
from sandbox_executor.egress_wiring import PROXY_SOCKET_MOUNT, relay_command, relay_proxy_url
from sandbox_executor.pip_options import MissingWheel, find_missing_wheel, pip_extra_args, read_log_tail

PIP_LOG = "pip-debug.log"  # in the scratch directory (/workspace inside pip's sandbox)


class ProxiedPipRunner(PipRunner):
    """``PipRunner`` whose pip reaches the network only through an :class:`EgressProxy`."""

    def __init__(self, settings: Settings, socket_dir: Path) -> None:
        super().__init__(settings)
        self.socket_dir = socket_dir
        self.proxy: EgressProxy | None = None
        self.socket_path: str | None = None
        self.missing_wheel: MissingWheel | None = None
        self.last_output = ""

    async def run(self, job: PipJob, stop: asyncio.Event | None = None) -> PipOutcome:
        policy = policy_for(
            job.index_url,
            self.settings.dependency_allowed_hosts,
            forbidden_internal_ports=[self.settings.executor_port],
        )
        self.socket_path = str(self.socket_dir / f"egress-{job.scratch.name}.sock")
        async with EgressProxy(policy) as proxy:
            self.proxy = proxy
            await proxy.pin_index()
            await proxy.start_unix(self.socket_path, owner=self.ids())
            outcome = await super().run(job, stop)
        self.last_output = outcome.output_tail
        self.missing_wheel = None
        if outcome.returncode != 0 and not self.settings.dependency_allow_sdist:
            log_text = read_log_tail(str(job.scratch / PIP_LOG))
            self.missing_wheel = find_missing_wheel(outcome.output_tail, log_text)
        return outcome

    def command(self, job: PipJob) -> tuple[list[str], list[int], dict[str, str], str | None]:
        argv, fds, env, cwd = super().command(job)
        assert self.socket_path is not None and not self.settings.disable_bwrap
        split = argv.index("--")  # bwrap's own options end here
        bwrap, pip = argv[:split], argv[split + 1 :]
        bwrap = [arg for arg in bwrap if arg != "--share-net"]
        at = bwrap.index("--proc")
        bwrap[at:at] = ["--ro-bind", self.socket_path, PROXY_SOCKET_MOUNT]
        extra = pip_extra_args(
            allow_sdist=self.settings.dependency_allow_sdist,
            proxy_url=relay_proxy_url(),
            log_path=f"/workspace/{PIP_LOG}",
        )
        requirements_at = pip.index("--")
        pip[requirements_at:requirements_at] = extra
        return [*bwrap, "--", *relay_command(self.settings.python_binary, pip)], fds, env, cwd


def socket_dir(base: Path) -> Path:
    """A directory for the proxy's socket that pip's uid can traverse but not list."""
    path = base / "egress"
    path.mkdir(mode=0o711, exist_ok=True)
    os.chmod(path, 0o711)
    return path
