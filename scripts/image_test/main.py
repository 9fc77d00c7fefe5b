"""Runs every setting of settings.py against one image; see scripts/image-test."""

from __future__ import annotations

import argparse
import os
import secrets
import time

from . import attacks, hostproc, level, lifecycle, podman
from .client import Daemon
from .launch import Launched, launch
from .plane import FakeControlPlane
from .report import Report, SettingRecord
from .settings import ALL, ROOT, Setting


def exercise(setting: Setting, image: str, plane: FakeControlPlane, report: Report, keep: bool) -> None:
    where = setting.name
    record = report.setting(where, setting.expected_level)
    print(f"--- {where}: {setting.about} (expected level: {setting.expected_level})", flush=True)
    began = time.monotonic()
    port = podman.free_port()
    internal, api = f"internal-{secrets.token_hex(12)}", f"api-{secrets.token_hex(12)}"
    env = {
        "EXECUTOR_PORT": str(port),
        "CONTROL_PLANE_URL": plane.url,
        "SESSION_ID": f"it-{where}",
        "HEARTBEAT_INTERVAL": "1",
        "INTERNAL_API_TOKEN": internal,
        "EXECUTOR_API_TOKEN": api,
    }
    name = f"se-it-{where}-{os.getpid()}"
    try:
        launched = launch(setting, name, image, env)
    except RuntimeError as exc:
        report.check(where, "container starts", False, str(exc), "starts")
        record.seconds = time.monotonic() - began
        return
    try:
        daemon = Daemon(f"http://127.0.0.1:{port}", api, launched.container)
        _with_container(setting, launched, daemon, plane, report, (internal, api), port, record)
    except Exception as exc:  # a hung podman, a bug here: this setting fails, the next runs
        report.check(where, "the checks ran to the end", False, f"{type(exc).__name__}: {exc}")
    finally:
        if not keep:
            launched.remove()
        record.seconds = time.monotonic() - began
        report.measure(f"{where}: seconds", round(record.seconds, 1))


def _with_container(
    setting: Setting,
    launched: Launched,
    daemon: Daemon,
    plane: FakeControlPlane,
    report: Report,
    tokens: tuple[str, str],
    port: int,
    record: SettingRecord,
) -> None:
    where = setting.name
    healthy_at = daemon.wait_healthy(60)
    if not report.check(
        where, "the daemon starts and answers GET /health", healthy_at is not None, "", "starts"
    ):
        print(
            f"--- last log lines of {launched.container} ---\n{podman.logs(launched.container)}---",
            flush=True,
        )
        return
    assert healthy_at is not None
    report.measure(f"{where}: start to /health 200", round(healthy_at - launched.started, 2), " s")
    hostname = podman.hostname(launched.container)
    pid1 = podman.host_pid(launched.container)
    if not report.check(where, "the container's PID 1 is visible from the host", pid1 is not None):
        return
    assert pid1 is not None
    # Before any user code: tini, the daemon, the spawner (sandboxes are one level deeper).
    core = tuple(hostproc.tree(pid1, depth=2).values())
    record.level = level.check(report, where, daemon, setting.expected_level)
    lifecycle.ready(report, where, plane, hostname, tokens[0], launched.started)
    if setting.control:
        target = attacks.Target(where, daemon, plane, pid1, core, port, tokens, report, control=True)
        attacks.run_all(target)
        return
    if not setting.kube:  # kube play does not take the image's HEALTHCHECK
        lifecycle.healthcheck(report, where, launched.container)
    lifecycle.workloads(report, where, daemon, record.level)
    lifecycle.result_callback(report, where, plane)
    if setting.dependency_sync:
        lifecycle.dependency_sync(report, where, daemon)
    lifecycle.privileges(report, where, pid1, setting.strict_privileges)
    attacks.run_all(attacks.Target(where, daemon, plane, pid1, core, port, tokens, report))
    if podman.running(launched.container):
        lifecycle.stop(report, where, launched, plane, hostname)
    else:
        report.check(
            where, "the container is still running at the end", False, podman.logs(launched.container, 5)
        )


def main() -> int:
    parser = argparse.ArgumentParser(description="End-to-end test of the container image.")
    parser.add_argument("--image", default=os.environ.get("IMAGE", "localhost/sandbox-executor:dev"))
    parser.add_argument("--keep", action="store_true", help="leave the containers for inspection")
    parser.add_argument(
        "--only", action="append", choices=[s.name for s in ALL], help="run only this setting (repeatable)"
    )
    opts = parser.parse_args()
    report = Report()
    began = time.monotonic()
    size = podman.podman("image", "inspect", "--format", "{{.Size}}", opts.image)
    if not report.check("image", "exists", size.returncode == 0, opts.image):
        return report.finish(ROOT / "build" / "image-test.json")
    report.measure("image size", round(int(size.stdout.strip()) / 1e6, 1), " MB")
    plane = FakeControlPlane()
    try:
        for setting in ALL:
            if not opts.only or setting.name in opts.only:
                exercise(setting, opts.image, plane, report, opts.keep)
    finally:
        plane.close()
    report.measure("total", round(time.monotonic() - began, 1), " s")
    return report.finish(ROOT / "build" / "image-test.json")
