"""The checks every setting gets around its user code: ready, HEALTHCHECK, ordinary
workloads, dependency sync, the processes' privileges, SIGTERM -> exited."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import hostproc, podman
from .client import Daemon
from .launch import Launched
from .plane import FakeControlPlane
from .report import Report
from .settings import ROOT
from .workloads import WORKLOADS, shown


def ready(
    report: Report, where: str, plane: FakeControlPlane, hostname: str, token: str, started: float
) -> None:
    call = plane.wait_for(
        "/containers/ready", 15, lambda b: isinstance(b, dict) and b.get("container_id") == hostname
    )
    report.check(
        where,
        "containers/ready with container_id = hostname, INTERNAL_API_TOKEN as bearer",
        call is not None and call.authorization == f"Bearer {token}",
        json.dumps(call.body if call else None),
    )
    if call:
        report.measure(f"{where}: start to containers/ready", round(call.at - started, 2), " s")


def healthcheck(report: Report, where: str, container: str) -> None:
    out = podman.podman("healthcheck", "run", container)
    report.check(
        where, "image HEALTHCHECK passes", out.returncode == 0, (out.stdout + out.stderr).strip()[-200:]
    )


def workloads(report: Report, where: str, daemon: Daemon, level: str) -> None:
    for workload in WORKLOADS:
        body = {
            "execution_id": f"exec_{where}_{workload.language}",
            "session_id": f"it-{where}",
            "code": workload.code,
            "language": workload.language,
            "timeout": 30,
            "event": {"x": 42},
        }
        status, result, took = daemon.execute(body)
        ok = status == 200 and isinstance(result, dict) and result.get("status") == "success"
        ok = ok and workload.verify(result, level)
        report.check(
            where,
            f"{workload.language} runs (subprocess, /tmp, its sandbox hides the daemon's files)",
            ok,
            f"HTTP {status} in {took * 1000:.0f} ms {shown(result)}",
            workload.language,
        )


def result_callback(report: Report, where: str, plane: FakeControlPlane) -> None:
    call = plane.wait_for(f"/executions/exec_{where}_python/result", 10)
    report.check(
        where, "result callback delivered", call is not None and call.body.get("status") == "success", ""
    )


def dependency_sync(report: Report, where: str, daemon: Daemon) -> None:
    """POST /internal/session-config/sync from a loopback index, then import the package.

    Proves SANDBOX_VENV_PATH (/opt/sandbox-venv) is writable where the daemon needs it and
    that pip's own sandbox works at this setting's level.
    """
    sys.path.insert(0, str(ROOT))
    from tests.support.local_index import LocalIndex  # needs the project's venv (packaging)

    with LocalIndex() as index:
        index.add_wheel("imgtest-dep", "1.0", {"imgtest_dep.py": "VALUE = 'from-the-index'\n"})
        body = {
            "session_id": f"it-{where}",
            "language_runtime": "python3.11",
            "python_package_index_url": index.url,
            "dependencies": ["imgtest-dep==1.0"],
            "sync_mode": "replace",
        }
        try:
            status, answer = daemon.call("POST", "/internal/session-config/sync", body, timeout=120)
        except OSError as exc:
            status, answer = 0, str(exc)
    ok = status == 200 and isinstance(answer, dict) and answer.get("status") == "completed"
    report.check(
        where, "dependency sync into /opt/sandbox-venv", ok, f"HTTP {status} {json.dumps(answer)[:400]}"
    )
    code = "import imgtest_dep\ndef handler(event):\n    return imgtest_dep.VALUE\n"
    request = {"execution_id": f"exec_{where}_dep", "code": code, "language": "python", "timeout": 20}
    status, result, _ = daemon.execute(request)
    report.check(
        where,
        "user code imports the synced package",
        status == 200 and isinstance(result, dict) and result.get("return_value") == "from-the-index",
        ""
        if status == 200 and isinstance(result, dict) and result.get("status") == "success"
        else shown(result),
    )


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def privileges(report: Report, where: str, pid1: int, strict: bool) -> None:
    """Every process of the container, read from the host's /proc.

    Strict: uid/gid 1000 everywhere, no capabilities (bounding set included) and
    no_new_privs; otherwise (gosu from root) uid/gid 1000 and no capabilities in effect.
    """
    procs = hostproc.tree(pid1, depth=64)
    container_userns = os.readlink(f"/proc/{pid1}/ns/user")
    problems: list[str] = []
    seen = 0
    for proc in procs.values():
        try:
            st = _status(proc.pid)
            nested = os.readlink(f"/proc/{proc.pid}/ns/user") != container_userns
        except OSError:
            continue  # exited meanwhile (a warm sandbox being replaced)
        seen += 1
        what: list[str] = []
        if set(st["Uid"].split()) != {"1000"} or set(st["Gid"].split()) != {"1000"}:
            what.append(f"Uid {st['Uid']} Gid {st['Gid']}")
        # Capabilities count in the container's user namespace. A bwrap sandbox lives in a
        # user namespace of its own (owned by uid 1000): it holds capabilities over that
        # namespace only while bwrap sets it up, then drops them all.
        caps = ("CapPrm", "CapEff", "CapAmb") + (("CapBnd",) if strict else ())
        what += [f"{cap} {st[cap]}" for cap in caps if not nested and int(st[cap], 16) != 0]
        if strict and st.get("NoNewPrivs") != "1":
            what.append(f"NoNewPrivs {st.get('NoNewPrivs')}")
        if st.get("State", "").startswith("Z"):
            what.append("a zombie nobody reaped")
        if what:
            problems.append(f"{proc.pid} {proc.cmdline[:40]}: {', '.join(what)}")
    if pid1 in procs and not procs[pid1].cmdline.split(" ")[0].endswith("tini"):
        problems.append(f"PID 1 is {procs[pid1].cmdline[:60]}, not tini")
    report.check(
        where,
        f"all {seen} processes run as 1000:1000 without capabilities"
        + (", no-new-privileges" if strict else " in effect")
        + ", PID 1 is tini",
        seen >= 3 and not problems,
        "; ".join(problems)[:800],
    )


def stop(report: Report, where: str, launched: Launched, plane: FakeControlPlane, hostname: str) -> None:
    code, took = launched.stop()
    call = plane.wait_for(
        "/containers/exited", 5, lambda b: isinstance(b, dict) and b.get("container_id") == hostname
    )
    body = call.body if call else None
    report.check(
        where,
        "SIGTERM -> containers/exited with exit_code 143, container exit status 143",
        isinstance(body, dict) and body.get("exit_code") == 143 and code == "143",
        f"callback {json.dumps(body)}, exit {code}, stopped in {took:.2f} s",
    )
