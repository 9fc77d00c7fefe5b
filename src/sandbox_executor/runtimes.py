"""Per-language launch: the interpreter command and the message that starts user code.

Every sandbox starts its interpreter with a bootstrap that blocks on its input pipe for a
launch message; this keeps code and event off argv and environment (no size limits) and
lets a pre-started sandbox take a request later (the warm pool). The python and node
bootstraps are files given by name (``bootstraps.py``); the shell one is this module's
one-liner. Every bootstrap's argv is: input fd, result fd, start marker, and (python,
shell) the sandbox's process cap. Paths as the sandboxed code sees them (workspace, venv,
temporary directory, home) are a :class:`Layout`: fixed mount points under bwrap, real
paths where there is no mount namespace.
"""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .models import ExecuteRequest, Language

SANDBOX_VENV_MOUNT = "/opt/sandbox-venv"
SHELL_EVENT_FILE = "/tmp/event.json"
# First byte every bootstrap writes on the result fd, before it reads its launch message:
# proof that bwrap set the sandbox up and the interpreter runs. Without it, a non-zero exit
# is bwrap's own failure (a missing workspace, no namespaces), never the user's code.
STARTED_MARKER = b"R"
PYTHON_EXTRA_PATHS = ("/usr/lib/python3/dist-packages",)
# Descriptor numbers inside every sandbox, whatever numbers the daemon's own copies have:
# the launch message comes in on INPUT_FD, the outcome goes out on RESULT_FD, and the
# python or node bootstrap program is /dev/fd/BOOTSTRAP_FD (bwrap's own follow).
INPUT_FD, RESULT_FD, BOOTSTRAP_FD = 3, 4, 5


# Reads the launch script from its input fd (exports + event file + user code) and runs it
# as the script itself, so `exit`, `$LINENO` and errors behave as in a plain bash script.
# An empty process cap ($4) leaves the one the spawner set.
SHELL_BOOTSTRAP = (
    '{ [ -z "$4" ] || ulimit -u "$4"; } || exit 126; printf %s "$3" >&"$2"; eval "exec $2>&-"; '
    'exec bash --noprofile --norc "/dev/fd/$1"'
)


@dataclass(frozen=True)
class Layout:
    """Where sandboxed code finds its directories: bwrap's mount points by default; the
    real paths at the levels without a mount namespace (landlock, none), where the
    temporary directory and home are a private directory per sandbox."""

    workspace: str = "/workspace"
    venv: str = SANDBOX_VENV_MOUNT
    tmp: str = "/tmp"
    home: str = "/workspace"

    @property
    def event_file(self) -> str:
        """Where the shell's event is written (``SANDBOX_EVENT_FILE``)."""
        return f"{self.tmp}/event.json"


BWRAP_LAYOUT = Layout()


@dataclass(frozen=True)
class LaunchJob:
    """What a sandbox needs to start user code."""

    execution_id: str
    language: Language
    code: str
    event: dict[str, Any]
    env: dict[str, str]
    timeout: int
    max_return_bytes: int


def job_from_request(request: ExecuteRequest, settings: Settings) -> LaunchJob:
    """The launch job for a validated request, with limits clamped to the daemon's maxima."""
    return LaunchJob(
        execution_id=request.execution_id,
        language=request.language,
        code=request.code,
        event=request.effective_event(),
        env=dict(request.env_vars),
        timeout=settings.clamp_timeout(request.timeout),
        max_return_bytes=settings.max_return_value_bytes,
    )


def interpreter_command(
    language: Language,
    settings: Settings,
    input_fd: int,
    result_fd: int,
    bootstrap: str,
    *,
    own_nproc: bool = True,
) -> list[str]:
    """The command run inside the sandbox, before any request is known.

    ``input_fd`` carries the launch message in; ``result_fd`` the handler's outcome out;
    ``bootstrap`` names the python or node bootstrap file. With ``own_nproc`` (the bwrap
    levels) every command first lowers its own RLIMIT_NPROC to ``pids_limit``: set inside
    the sandbox's user namespace, that cap counts this sandbox's processes only (see
    limits.Limits.pids_total for the looser cap over all of them). Without a user
    namespace the spawner sets the cap (limits.py) and the command leaves it.
    """
    pids = str(settings.pids_limit) if own_nproc else ""
    args = [str(input_fd), str(result_fd), STARTED_MARKER.decode()]
    if language == "python":
        # -I: ignore PYTHON* variables and user site, no script directory on sys.path; -S:
        # skip site (3-5 ms of start-up; the bootstrap adds the paths it needs); -u:
        # unbuffered, so output before a timeout is kept; -B: no .pyc writes anywhere.
        command = [settings.python_binary, "-I", "-S", "-u", "-B", bootstrap, *args]
        return [*command, pids] if own_nproc else command
    if language == "javascript":
        heap_mb = max(32, settings.memory_limit_mb * 3 // 4)
        # The bootstrap's name is /dev/fd/N: resolving it to its target would lose it.
        node = [
            settings.node_binary,
            f"--max-old-space-size={heap_mb}",
            "--preserve-symlinks-main",
            bootstrap,
        ]
        node += args
        if not own_nproc:
            return node
        # node has no setrlimit(): util-linux prlimit sets it and execs node (about 1 ms).
        prlimit = shutil.which("prlimit", path="/usr/bin:/bin")
        if prlimit is not None:
            return [prlimit, f"--nproc={pids}:{pids}", "--", *node]
        wrapper = f'ulimit -u {pids} && exec "$@"'
        return [settings.bash_binary, "--noprofile", "--norc", "-c", wrapper, "bash", *node]
    if language == "shell":
        return [settings.bash_binary, "--noprofile", "--norc", "-c", SHELL_BOOTSTRAP, "bash", *args, pids]
    raise ValueError(f"unsupported language {language!r}")


def uses_result_channel(language: Language) -> bool:
    """Whether the runtime reports a handler outcome on the result fd."""
    return language in ("python", "javascript")


def launch_message(job: LaunchJob, layout: Layout = BWRAP_LAYOUT) -> bytes:
    """The bytes written to the sandbox's fd 3 to start ``job``."""
    if job.language == "shell":
        return _shell_script(job, layout.event_file).encode("utf-8", "surrogatepass")
    doc: dict[str, Any] = {
        "code": job.code,
        "event": job.event,
        "env": job.env,
        "max_return_bytes": job.max_return_bytes,
        "context": {"execution_id": job.execution_id, "timeout": job.timeout},
    }
    if job.language == "python":
        doc["sys_path"] = [layout.venv, *PYTHON_EXTRA_PATHS]
        doc["filename"] = "handler.py"
    else:
        doc["filename"] = "handler.js"
        doc["node_paths"] = [f"{layout.venv}/node_modules"]
    # ASCII escapes: a lone surrogate (legal as a JSON escape in a request) travels intact
    # instead of becoming bytes that are not UTF-8 and break the bootstrap's decoder.
    return json.dumps(doc, ensure_ascii=True).encode("ascii")


def _shell_script(job: LaunchJob, event_file: str = SHELL_EVENT_FILE) -> str:
    event_json = json.dumps(job.event, ensure_ascii=False)
    exports = "".join(f"export {name}={shlex.quote(value)}; " for name, value in job.env.items())
    # The prelude shares line 1 with the user's first line (it ends in "; "), so bash's
    # line numbers and $LINENO are the user's own. Anything that may start a script can
    # follow "; " (a command, a comment or shebang, a compound command, a here-doc).
    prelude = (
        'eval "exec ${0##*/}<&-"; '
        f"{exports}export SANDBOX_EVENT_FILE={shlex.quote(event_file)}; "
        f"printf '%s' {shlex.quote(event_json)} > {shlex.quote(event_file)}; "
    )
    return prelude + job.code + "\n"


def base_environment(
    settings: Settings, language: Language, layout: Layout = BWRAP_LAYOUT
) -> list[tuple[str, str]]:
    """The environment an interpreter starts with; nothing of the daemon's own."""
    env = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", layout.home),
        ("TMPDIR", layout.tmp),
        ("LANG", "C.UTF-8"),
        ("PYTHONUNBUFFERED", "1"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("PYTHONPATH", layout.venv),
    ]
    if language == "javascript":
        env.append(("NODE_PATH", f"{layout.venv}/node_modules"))
    return env
