"""The programs a sandbox's interpreter starts with, lent to it as sealed memfds.

The python and node bootstraps (``bootstrap/``) reach the interpreter as a file name,
``/dev/fd/N``, never as ``-c`` source: nothing long on any ``ps``, and their frames have a
name of their own. N is a memfd the daemon fills and seals once (no write, grow, shrink or
new seal) and lends to every sandbox: read-only whatever the sandbox's uid, and closed by
the bootstrap before user code runs. No file of the executor's package or environment is
bound into the sandbox.

The Python one is bytecode compiled for the sandbox's interpreter when that is the
daemon's own (the same binary, so the same bytecode format): about 1.5 ms less per start
than compiling the source in every sandbox. Another interpreter gets the source.
"""

from __future__ import annotations

import fcntl
import importlib.util
import marshal
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .models import Language

BOOTSTRAP_DIR = Path(__file__).with_name("bootstrap")
# co_filename of the compiled bootstrap: a pseudo name that linecache never looks up.
PYTHON_CODE_NAME = "<sandbox-bootstrap>"
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK


@dataclass(frozen=True)
class Bootstraps:
    """The sealed bootstrap programs (descriptors owned by the daemon)."""

    python_fd: int
    node_fd: int

    @classmethod
    def load(cls, python_binary: str) -> Bootstraps:
        python = python_program(python_binary)
        node = (BOOTSTRAP_DIR / "node_bootstrap.js").read_bytes()
        return cls(sealed_memfd("python-bootstrap", python), sealed_memfd("node-bootstrap", node))

    def lent(self, language: Language, number: int) -> dict[int, int]:
        """The descriptor a sandbox of ``language`` borrows, as its fd ``number``."""
        if language == "python":
            return {number: self.python_fd}
        if language == "javascript":
            return {number: self.node_fd}
        return {}

    def close(self) -> None:
        for fd in (self.python_fd, self.node_fd):
            os.close(fd)


def python_program(python_binary: str) -> bytes:
    """The python bootstrap as an unchecked hash-based .pyc for ``python_binary`` when
    that is this interpreter, else its source."""
    source = (BOOTSTRAP_DIR / "python_bootstrap.py").read_bytes()
    return compiled_python(source, python_binary, PYTHON_CODE_NAME)


def compiled_python(source: bytes, python_binary: str, code_name: str) -> bytes:
    """``source`` as an unchecked hash-based .pyc for ``python_binary`` when that is this
    interpreter (same bytecode format), else ``source`` itself; ``code_name`` becomes its
    frames' file name. The interpreter runs either from a file of any name."""
    if os.path.realpath(python_binary) != os.path.realpath(sys.executable):
        return source
    code = compile(source, code_name, "exec", dont_inherit=True)
    # PEP 552 header: magic, flags (hash-based, not checked against any source), hash.
    header = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little") + importlib.util.source_hash(source)
    return header + marshal.dumps(code)


def sealed_memfd(name: str, data: bytes) -> int:
    """A close-on-exec memfd holding ``data`` that nobody can change any more."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except OSError:
        os.close(fd)
        raise
    return fd
