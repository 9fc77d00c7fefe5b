"""Start a setting's container (podman run, or podman kube play of the pod spec), stop it,
remove it."""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import podman
from .settings import POD_SPEC, Setting


@dataclass(frozen=True)
class Launched:
    container: str
    started: float  # monotonic
    pod_file: Path | None = None  # kube play: the rendered spec, for kube down

    def stop(self) -> tuple[str, float]:
        """SIGTERM with a 20 s grace: (container exit status, seconds it took)."""
        at = time.monotonic()
        podman.podman("stop", "-t", "20", self.container, timeout=60)
        return podman.exit_code(self.container), time.monotonic() - at

    def remove(self) -> None:
        if self.pod_file is not None:
            podman.podman("kube", "down", str(self.pod_file), timeout=90)
            self.pod_file.unlink(missing_ok=True)
        podman.remove(self.container)


def launch(setting: Setting, name: str, image: str, env: dict[str, str]) -> Launched:
    """Raises RuntimeError with podman's message when the container cannot be created."""
    env = {**env, **dict(setting.env)}
    if setting.kube:
        return _kube_play(name, image, env)
    args = ["--network", "host"]  # the fake control plane is on the host's loopback
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    options = host_options(setting.options, Path("/dev/fuse").exists())
    started = podman.run_detached(name, [*args, *options, image, *setting.command])
    return Launched(name, started)


def host_options(options: tuple[str, ...], have_fuse: bool) -> list[str]:
    """``options`` without ``--device /dev/fuse`` on a host that has none (no fuse module):
    s3fs is never run here, and the isolation level does not depend on the device."""
    out: list[str] = []
    skip = False
    for i, option in enumerate(options):
        if skip:
            skip = False
            continue
        if not have_fuse and option == "--device" and options[i + 1 : i + 2] == ("/dev/fuse",):
            skip = True
            continue
        out.append(option)
    return out


def render_pod_spec(text: str, name: str, image: str, env: dict[str, str]) -> str:
    """The committed spec with its placeholders filled and ``env`` set (replacing the
    entries it already has, adding the others)."""
    text = re.sub(r"\bIMAGE\b", image, text)
    text = re.sub(r"\bNAME\b", name, text)
    text = re.sub(r'"PORT"', f'"{env["EXECUTOR_PORT"]}"', text)
    lines = text.splitlines()
    out: list[str] = []
    for line in lines:
        entry = re.match(r"(\s*)- \{name: (\w+), value: .*\}$", line)
        if entry and entry.group(2) in env:
            continue
        out.append(line)
        if line.strip() == "env:":
            indent = " " * (len(line) - len(line.lstrip()) + 2)
            out += [f"{indent}- {{name: {key}, value: {_quote(value)}}}" for key, value in env.items()]
    return "\n".join(out) + "\n"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _kube_play(name: str, image: str, env: dict[str, str]) -> Launched:
    spec = render_pod_spec(POD_SPEC.read_text(), name, image, env)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=f"{name}-", delete=False) as handle:
        handle.write(spec)
    pod_file = Path(handle.name)
    podman.podman("pod", "rm", "-f", "--ignore", name)
    started = time.monotonic()
    out = podman.podman("kube", "play", str(pod_file))
    container = f"{name}-executor"
    if out.returncode != 0:
        launched = Launched(container, started, pod_file)
        launched.remove()
        raise RuntimeError(f"podman kube play failed: {out.stderr.strip()[-800:]}")
    return Launched(container, started, pod_file)
