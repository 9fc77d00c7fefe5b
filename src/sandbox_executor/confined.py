"""Launches without bwrap: confined by the spawner's child (landlock), or bare (none).

At the landlock level no namespace can be had, so the spawner's forked child builds the
sandbox itself (bootstrap/spawner_child.py): it becomes the sandbox's supervisor
(subreaper, non-dumpable, outside the Landlock domain) and its child applies
no_new_privs, the Landlock policy and the level's seccomp filter, then execs. Both the
execution sandboxes (sandbox.py) and pip's (dependencies/pip_sandbox.py) start this way;
pip adds its own policy (writable target and cache, TCP ports it may connect to, its own
seccomp program).

Without a user namespace RLIMIT_NPROC counts every process of the uid: the rlimit table's
process cap becomes headroom over what the uid runs when the sandbox starts (the spawner
counts), so a fork bomb gets that many processes and no more, and never starves the
daemon (whose own rlimit is not lowered).
"""

from __future__ import annotations

import resource
from collections.abc import Mapping, Sequence

from .bootstrap.confine import sandbox_policy
from .host import HostProfile, memfd_with
from .limits import Rlimit
from .process import Launch
from .spawner import Confine


def _split_nproc(rlimits: Sequence[Rlimit]) -> tuple[list[Rlimit], int | None]:
    table = [r for r in rlimits if r[0] != resource.RLIMIT_NPROC]
    nproc = next((soft for res, soft, _ in rlimits if res == resource.RLIMIT_NPROC), None)
    return table, nproc


def confined_launch(
    host: HostProfile,
    argv: Sequence[str],
    fds: Mapping[int, int],
    *,
    workspace: str,
    private_tmp: str,
    env: Mapping[str, str],
    rlimits: Sequence[Rlimit],
    lent: Mapping[int, int] | None = None,
    read_only: Sequence[str] = (),
    read_write: Sequence[str] = (),
    connect_tcp: Sequence[int] = (),
    seccomp_program: bytes | None = None,
    umask: int | None = None,
) -> Launch:
    """``argv`` confined to ``workspace`` and ``private_tmp`` (read-write), the system,
    the needed /etc files and ``read_only`` (read-only), more writable ``read_write``
    directories, TCP connect to ``connect_tcp`` ports only, under a supervisor.

    ``seccomp_program`` replaces the host's (the landlock level's filter) for this launch.
    The filter travels as a memfd at the first free descriptor number; the child reads and
    closes it before exec.
    """
    lent = dict(lent or {})
    policy = sandbox_policy(workspace, private_tmp, read_only, read_write=read_write, connect_tcp=connect_tcp)
    program = seccomp_program if seccomp_program is not None else host.seccomp_program
    numbered = dict(fds)
    seccomp_fd = None
    if program is not None:
        seccomp_fd = max([*numbered, *lent, 2]) + 1
        numbered[seccomp_fd] = memfd_with("seccomp", program)
    table, nproc = _split_nproc(rlimits)
    return Launch(
        argv,
        numbered,
        lent,
        env=env,
        cwd=workspace,
        run_as=host.run_as,
        rlimits=table,
        umask=umask,
        nproc_headroom=nproc,
        confine=Confine(policy, seccomp_fd),
    )


def bare_launch(
    host: HostProfile,
    argv: Sequence[str],
    fds: Mapping[int, int],
    *,
    cwd: str,
    env: Mapping[str, str],
    rlimits: Sequence[Rlimit],
    lent: Mapping[int, int] | None = None,
    umask: int | None = None,
) -> Launch:
    """``argv`` with no isolation at all (SANDBOX_ISOLATION=none, development only); what
    it leaves running when it exits is still killed (the spawner's orphan sweep)."""
    table, nproc = _split_nproc(rlimits)
    return Launch(
        argv,
        dict(fds),
        dict(lent or {}),
        env=env,
        cwd=cwd,
        run_as=host.run_as,
        rlimits=table,
        umask=umask,
        nproc_headroom=nproc,
        sweep_orphans=True,
    )
