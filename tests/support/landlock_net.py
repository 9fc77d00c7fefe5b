"""A probe confined as the landlock level confines pip (Landlock TCP rules, the egress
seccomp rules), to show the kernel facts on their own; pip itself runs through the real pip
sandbox in tests/integration/test_egress_pip.py.

The wrapper runs ``bootstrap/confine.py`` (Landlock for files and TCP, no_new_privs, the
seccomp program) in a fresh ``python3 -I -S`` and execs the command:

    python3 -I -S -c WRAPPER POLICY_JSON SECCOMP_FD -- COMMAND...
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from sandbox_executor import seccomp
from sandbox_executor.bootstrap import confine
from sandbox_executor.dependencies.egress.tcp_rules import pip_landlock_program

BOOTSTRAP_DIR = str(Path(confine.__file__).parent)

WRAPPER = r"""
import json, os, sys
spec, seccomp_fd, sep, *command = sys.argv[1:]
assert sep == "--"
spec = json.loads(spec)
sys.path.insert(0, spec.pop("bootstrap"))
import confine
with os.fdopen(int(seccomp_fd), "rb") as fh:
    program = fh.read()
confine.confine(confine.Confinement(policy=confine.Policy(**spec), seccomp_program=program))
os.execv(command[0], command)
"""


def landlock_abi() -> int:
    return confine.landlock_abi()


# pip's user agent reads these (pip._vendor.distro): under Landlock a file that exists but is
# not allowed answers EACCES, which distro does not expect (ENOENT, as in bwrap, is fine).
PIP_ETC_FILES = ("/etc/os-release", "/etc/debian_version", "/etc/lsb-release")


def policy(
    connect_port: int, read_only: Sequence[str] = (), read_write: Sequence[str] = ()
) -> dict[str, object]:
    """The landlock level's file rules (system, a few /etc files, devices) plus ours."""
    etc = (*confine.ETC_FILES, *confine.ETC_ACCOUNTS, *PIP_ETC_FILES)
    return {
        "read_only": [*confine.SYSTEM_DIRS, *etc, *read_only],
        "read_write": list(read_write),
        "devices": list(confine.DEVICES),
        "connect_tcp": [connect_port],
    }


def program(*, tcp_rules: bool = True) -> bytes:
    """The landlock level's filter with AF_INET allowed, with or without the egress rules."""
    return pip_landlock_program() if tcp_rules else seccomp.build_landlock_program(allow_inet=True)


def wrapped(python: str, spec: dict[str, object], seccomp_fd: int, command: list[str]) -> list[str]:
    text = json.dumps({**spec, "bootstrap": BOOTSTRAP_DIR})
    return [python, "-I", "-S", "-c", WRAPPER, text, str(seccomp_fd), "--", *command]


def memfd_with(data: bytes) -> int:
    fd = os.memfd_create("egress-seccomp")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
