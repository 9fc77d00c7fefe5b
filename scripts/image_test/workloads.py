"""Ordinary code that must keep working at every isolation level, and how to judge it.

Each program also says where it ran: the hostname (``sandbox`` only at the ``bwrap``
level, which names the sandbox's own UTS namespace) and whether the daemon's own files
(its virtualenv) could be read (never: bwrap does not bind them, Landlock denies them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PYTHON = """\
import multiprocessing, os, socket, subprocess, sys, tempfile

def square(x):
    return x * x

def handler(event):
    try:
        open('/srv/executor/venv/pyvenv.cfg').close()
        daemon_files = 'readable'
    except OSError as exc:
        daemon_files = exc.strerror
    with multiprocessing.get_context('fork').Pool(2) as pool:
        squares = pool.map(square, range(3))
    child = subprocess.run(['echo', 'hi'], capture_output=True, text=True).stdout.strip()
    with tempfile.NamedTemporaryFile('w+') as tmp:
        tmp.write('x'); tmp.flush(); tmp.seek(0); tmp_ok = tmp.read() == 'x'
    return {'host': socket.gethostname(), 'daemon_files': daemon_files, 'uid': os.getuid(),
            'exe': sys.executable, 'echo': event.get('x'), 'pool': squares, 'child': child,
            'tmp': tmp_ok}
"""

JAVASCRIPT = """\
const fs = require('fs'), os = require('os'), path = require('path');
const { execFileSync } = require('child_process');
exports.handler = async (event) => {
  let daemonFiles = 'readable';
  try { fs.readFileSync('/srv/executor/venv/pyvenv.cfg'); } catch (e) { daemonFiles = e.code; }
  const tmp = path.join(os.tmpdir(), 'js-' + process.pid);
  fs.writeFileSync(tmp, 'x');
  return { host: os.hostname(), daemonFiles, uid: process.getuid(), echo: event.x,
           child: execFileSync('echo', ['hi']).toString().trim(),
           tmp: fs.readFileSync(tmp, 'utf8') === 'x', node: process.version };
};
"""

SHELL = """\
echo "uid=$(id -u)"
cat /srv/executor/venv/pyvenv.cfg >/dev/null 2>&1 && echo daemon-files-readable || echo daemon-files-hidden
printf 'a\\nb\\nc\\n' | grep -c . | sed 's/^/lines=/'
echo t > "${TMPDIR:-/tmp}/sh.$$" && echo "tmp=$(cat "${TMPDIR:-/tmp}/sh.$$")"
echo "host=$(uname -n)"
"""


@dataclass(frozen=True)
class Workload:
    language: str
    code: str
    # (ok, what to show) from the result and the level the daemon reported.
    verify: Callable[[dict[str, Any], str], bool]


def _python_ok(result: dict[str, Any], level: str) -> bool:
    rv = result.get("return_value") or {}
    return bool(
        rv.get("uid") == 1000
        and rv.get("exe") == "/usr/bin/python3"
        and rv.get("echo") == 42
        and rv.get("daemon_files") != "readable"
        and rv.get("pool") == [0, 1, 4]
        and rv.get("child") == "hi"
        and rv.get("tmp") is True
        and (level != "bwrap" or rv.get("host") == "sandbox")
    )


def _javascript_ok(result: dict[str, Any], level: str) -> bool:
    rv = result.get("return_value") or {}
    return bool(
        rv.get("uid") == 1000
        and rv.get("echo") == 42
        and rv.get("daemonFiles") != "readable"
        and rv.get("child") == "hi"
        and rv.get("tmp") is True
        and (level != "bwrap" or rv.get("host") == "sandbox")
    )


def _shell_ok(result: dict[str, Any], level: str) -> bool:
    lines = str(result.get("stdout", "")).split()
    want = ["uid=1000", "daemon-files-hidden", "lines=3", "tmp=t"]
    return lines[:4] == want and len(lines) == 5 and (level != "bwrap" or lines[4] == "host=sandbox")


WORKLOADS: tuple[Workload, ...] = (
    Workload("python", PYTHON, _python_ok),
    Workload("javascript", JAVASCRIPT, _javascript_ok),
    Workload("shell", SHELL, _shell_ok),
)


def shown(result: Any) -> str:
    """The part of a result worth printing."""
    if isinstance(result, dict) and result.get("status") == "success":
        keep = {k: result.get(k) for k in ("return_value", "stdout") if result.get(k)}
        return json.dumps(keep)[:500]
    return json.dumps(result)[:700]
