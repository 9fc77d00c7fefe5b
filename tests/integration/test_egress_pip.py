"""The installer behind the egress proxy, end to end at each isolation level this host can
give: real pip (in bwrap with no network of its own and the relay, or confined by Landlock
and seccomp to the proxy's loopback port), the per-install proxy, a PEP 503 index on
127.0.0.1, and listeners that record whether anything reached them. Only loopback addresses
are ever dialled."""

from __future__ import annotations

import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox_executor.config import Settings
from sandbox_executor.dependencies import DependencyManager, SyncRequest
from sandbox_executor.dependencies.pip_sandbox import PipRunner
from sandbox_executor.engine import Engine
from sandbox_executor.errors import InstallFailed
from sandbox_executor.metrics import REGISTRY
from sandbox_executor.models import ExecuteRequest
from tests.conftest import make_workspace
from tests.support.hostile_build import assert_nothing_got_out, hostile_build, require_level
from tests.support.listeners import RecordingListener
from tests.support.local_index import LocalIndex, sdist_bytes


@pytest.fixture(params=["bwrap", "bwrap-compat", "landlock"])
def level(request: pytest.FixtureRequest) -> str:
    return require_level(str(request.param))


@pytest.fixture
def base() -> Iterator[Path]:
    path = make_workspace("egress-it-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def state() -> Iterator[Path]:
    # Not pytest's tmp_path: the sandbox uid must traverse it.
    path = Path(tempfile.mkdtemp(prefix="egress-state-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def udp_sink() -> Iterator[socket.socket]:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    yield sink
    sink.close()


def manager_for(settings: Settings) -> DependencyManager:
    return DependencyManager(settings, pip=PipRunner(settings, runtime_root=None))


def denied(reason: str) -> float:
    value = REGISTRY.get_sample_value("sandbox_dependency_egress_denied_total", {"reason": reason})
    return value or 0.0


def settings_for(level: str, base: Path, state: Path, **overrides: Any) -> Settings:
    name = secrets.token_hex(4)
    return Settings(
        sandbox_isolation=level,  # type: ignore[arg-type]
        workspace_path=str(base),
        sandbox_venv_path=state / name / "venv",
        results_dir=state / name / "results",
        warm_pool_size=0,
        dependency_install_timeout_seconds=120,
        **overrides,
    )


async def run_python(settings: Settings, code: str) -> Any:
    result = await Engine(settings).execute(
        ExecuteRequest(execution_id="exec_" + secrets.token_hex(4), code=code, language="python")
    )
    assert result.status == "success", result.stderr
    return result.return_value


async def test_a_hostile_build_reaches_nothing_but_the_index_and_wheels_still_install(
    level: str, base: Path, state: Path, udp_sink: socket.socket
) -> None:
    with (
        LocalIndex() as index,
        LocalIndex(host="127.0.0.2") as second_index,
        RecordingListener() as other,
        RecordingListener() as executor,
    ):
        second_index.add_wheel("alpha", "9.9", {"alpha.py": "VALUE = 'wrong index'\n"})
        others = [("127.0.0.1", other.port), ("127.0.0.1", executor.port), ("127.0.0.2", second_index.port)]
        build = hostile_build(index.url, others, udp_port=udp_sink.getsockname()[1])
        index.add_wheel("alpha", "1.0", {"alpha.py": "VALUE = 1\n"})
        index.add_wheel("buildhelper", "1.0", {"buildhelper.py": "VALUE = 'helper'\n"})
        index.add(*sdist_bytes("evil-pkg", "1.0", "evil_pkg", build))
        index.add(
            *sdist_bytes(
                "needs-helper",
                "1.0",
                "needs_helper",
                "import buildhelper\nFINDINGS['helper'] = buildhelper.VALUE\n",
                build_requires=["buildhelper"],
            )
        )
        settings = settings_for(level, base, state, dependency_allow_sdist=True, executor_port=executor.port)
        manager = manager_for(settings)
        before = {reason: denied(reason) for reason in ("host_not_allowed", "bad_target", "method")}
        try:
            body = await manager.sync(
                SyncRequest(
                    python_package_index_url=index.url, dependencies=["alpha", "evil-pkg", "needs-helper"]
                )
            )
        finally:
            await manager.aclose()
        installed = {d["name"]: d["version"] for d in body["installed_dependencies"]}
        assert installed == {"alpha": "1.0", "evil-pkg": "1.0", "needs-helper": "1.0"}
        code = (
            "import alpha, evil_pkg, needs_helper\n"
            "def handler(event):\n"
            "    return [alpha.VALUE, evil_pkg.FINDINGS, needs_helper.FINDINGS]\n"
        )
        alpha_value, findings, helper = await run_python(settings, code)
        # Nothing the build step tried arrived anywhere.
        assert (other.count(), executor.count(), second_index.request_count()) == (0, 0, 0)
    with pytest.raises(BlockingIOError):
        udp_sink.recv(64)
    assert alpha_value == 1
    # pip's isolated build environment got the proxy too: its nested pip fetched the
    # build requirement from the index.
    assert helper == {"helper": "helper"}
    assert_nothing_got_out(findings, unix_socket=level != "landlock")
    if level == "landlock":
        # Without a network namespace every direct way out is refused by the kernel:
        # Landlock (TCP connect to the proxy's port only), seccomp (Fast Open, UDP).
        assert set(findings["direct"].values()) == {"PermissionError"}, findings["direct"]
        assert set(findings["fastopen"].values()) == {"PermissionError"}, findings["fastopen"]
        assert findings["udp"] == "PermissionError"
    # Each kind of refusal was counted in /metrics' counter.
    assert all(denied(reason) > count for reason, count in before.items()), before


@pytest.mark.parametrize("level", ["bwrap", "landlock"], indirect=True)
async def test_by_default_the_sdist_is_refused_and_named(level: str, base: Path, state: Path) -> None:
    with LocalIndex() as index, RecordingListener() as other:
        index.add_wheel("alpha", "1.0", {"alpha.py": "VALUE = 1\n"}, requires=["evil-pkg"])
        index.add(
            *sdist_bytes("evil-pkg", "1.0", "evil_pkg", hostile_build(index.url, [("127.0.0.1", other.port)]))
        )
        manager = manager_for(settings_for(level, base, state))
        try:
            with pytest.raises(InstallFailed) as direct:
                await manager.sync(SyncRequest(python_package_index_url=index.url, dependencies=["evil-pkg"]))
            # The same sdist as a dependency of a wheel.
            with pytest.raises(InstallFailed) as transitive:
                await manager.sync(SyncRequest(python_package_index_url=index.url, dependencies=["alpha"]))
            # A project that does not exist is not blamed on wheels.
            with pytest.raises(InstallFailed) as unknown:
                await manager.sync(SyncRequest(python_package_index_url=index.url, dependencies=["nosuch"]))
        finally:
            await manager.aclose()
        # pip never even downloaded the sdist, so none of its code ran.
        assert not any(path.startswith("/files/evil_pkg") for path in index.requests)
        assert other.count() == 0
    for caught in (direct, transitive):
        error = caught.value
        assert error.error_code == "Executor.DependencyInstallFailed"
        assert "evil-pkg" in error.description and "DEPENDENCY_ALLOW_SDIST=false" in error.description
        assert "DEPENDENCY_ALLOW_SDIST=true" in error.solution
        assert "No matching distribution found for evil-pkg" in str(error.detail)
    assert "(required by alpha)" in transitive.value.description
    assert "DEPENDENCY_ALLOW_SDIST" not in unknown.value.description


FETCH = """
import urllib.request
def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return type(exc).__name__
FINDINGS["listed"] = fetch(LISTED)
FINDINGS["unlisted"] = fetch(UNLISTED)
"""


async def test_linked_file_hosts_are_learned_and_listed_hosts_admitted(base: Path, state: Path) -> None:
    """The index's pages send pip to a second host for the files (learned as relayed);
    DEPENDENCY_ALLOWED_HOSTS admits a host nothing links to; anything else stays refused."""
    level = require_level("bwrap")
    with (
        LocalIndex(host="127.0.0.2") as files,
        LocalIndex(host="127.0.0.3") as listed,
        RecordingListener("127.0.0.4") as unlisted,
    ):
        with LocalIndex(link_base=f"http://127.0.0.2:{files.port}") as index:
            for server in (index, files):  # listed by the index, served by the file host
                server.add_wheel("alpha", "1.0", {"alpha.py": "VALUE = 1\n"})
            listed.add("probe", b"ok")
            urls = {
                "LISTED": f"http://127.0.0.3:{listed.port}/files/probe",
                "UNLISTED": f"http://127.0.0.4:{unlisted.port}/",
            }
            build = "".join(f"{name} = {url!r}\n" for name, url in urls.items()) + FETCH
            for server in (index, files):
                server.add(*sdist_bytes("fetcher", "1.0", "fetcher", build))
            settings = settings_for(
                level,
                base,
                state,
                dependency_allow_sdist=True,
                dependency_allowed_hosts=(f"127.0.0.3:{listed.port}",),
            )
            manager = manager_for(settings)
            try:
                await manager.sync(
                    SyncRequest(python_package_index_url=index.url, dependencies=["alpha", "fetcher"])
                )
            finally:
                await manager.aclose()
            findings = await run_python(
                settings, "import fetcher\ndef handler(event):\n    return fetcher.FINDINGS\n"
            )
        assert any(path.startswith("/files/alpha-1.0") for path in files.requests), files.requests
        assert not any(path.startswith("/files/alpha-1.0") for path in index.requests)
        assert unlisted.count() == 0
    assert findings == {"listed": 200, "unlisted": 403}
