"""Artifacts through the real engine: what a run created or modified, and nothing else."""

from __future__ import annotations

import hashlib
import os
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sandbox_executor.models import ExecutionResult, Status

RunCode = Callable[..., Awaitable[ExecutionResult]]
IS_ROOT = os.geteuid() == 0


def _give(path: Path) -> None:
    """Hand a pre-existing workspace file to the sandbox user."""
    if IS_ROOT:
        os.chown(path, 65534, 65534)


def _code(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


async def test_created_and_modified_files_are_reported_sorted(run_code: RunCode, workspace: Path) -> None:
    for name in ("keep.txt", "mod.txt", "same-size.txt"):
        (workspace / name).write_text("old\n")
        _give(workspace / name)
    code = _code(
        """
        import os
        def handler(event):
            os.makedirs("out/deep", exist_ok=True)
            open("b.txt", "w").write("bee")
            open("out/deep/data.json", "w").write('{"a": 1}')
            open("a.csv", "w").write("x,y\\n1,2\\n")
            with open("mod.txt", "a") as f:
                f.write("more\\n")
            open("same-size.txt", "w").write("new\\n")
            open(".hidden", "w").write("h")
            os.makedirs(".cache/x", exist_ok=True)
            open(".cache/x/f", "w").write("h")
            os.makedirs("out/.tmp", exist_ok=True)
            open("out/.tmp/f", "w").write("h")
            os.makedirs("emptydir", exist_ok=True)
            open("/tmp/outside.txt", "w").write("not in the workspace")
            open("gone.txt", "w").write("deleted before the end")
            os.unlink("gone.txt")
            return "ok"
        """
    )
    result = await run_code(code)
    assert result.status == Status.SUCCESS, result.stderr
    assert result.artifacts == ["a.csv", "b.txt", "mod.txt", "out/deep/data.json", "same-size.txt"]
    details = {d.path: d for d in result.artifact_details}
    assert [d.path for d in result.artifact_details] == result.artifacts
    assert details["b.txt"].change == "created" and details["b.txt"].size == 3
    assert details["b.txt"].sha256 == hashlib.sha256(b"bee").hexdigest()
    assert details["mod.txt"].change == "modified" and details["mod.txt"].size == len("old\nmore\n")
    assert details["same-size.txt"].change == "modified"
    assert details["out/deep/data.json"].mime_type == "application/json"
    assert details["a.csv"].mime_type == "text/csv"
    assert not result.artifacts_truncated


async def test_unchanged_workspace_reports_nothing(run_code: RunCode, workspace: Path) -> None:
    (workspace / "existing.txt").write_text("x")
    result = await run_code("def handler(event):\n    return open('existing.txt').read()\n")
    assert result.return_value == "x"
    assert result.artifacts == [] and result.artifact_details == []


async def test_symlink_to_a_host_secret_is_never_followed(run_code: RunCode, workspace: Path) -> None:
    code = _code(
        """
        import os
        def handler(event):
            os.symlink("/etc/shadow", "shadow")
            os.symlink("/etc", "etc")
            os.symlink("/root/.bashrc", "bashrc.txt")
            os.makedirs("real", exist_ok=True)
            open("real/file.txt", "w").write("mine")
            os.symlink("real", "alias")
            try:
                inside = open("shadow").read()
            except OSError as exc:
                inside = type(exc).__name__
            return inside
        """
    )
    result = await run_code(code)
    assert result.status == Status.SUCCESS, result.stderr
    assert result.return_value == "FileNotFoundError"  # no /etc/shadow in the sandbox
    assert result.artifacts == ["real/file.txt"]
    shadow_hash = hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest()
    assert all(d.sha256 != shadow_hash for d in result.artifact_details)
    assert (workspace / "shadow").is_symlink()  # the link is there, the daemon left it alone


async def test_symlink_swapped_in_for_a_reported_file(run_code: RunCode, workspace: Path) -> None:
    # A background process replaces a file by a symlink to /etc/shadow while the run ends:
    # whatever the timing, the daemon never reads through it.
    code = _code(
        """
        import os
        def handler(event):
            open("victim.txt", "w").write("harmless")
            if os.fork() == 0:
                for _ in range(2000):
                    try:
                        os.unlink("victim.txt")
                        os.symlink("/etc/shadow", "victim.txt")
                    except OSError:
                        pass
                os._exit(0)
            return "ok"
        """
    )
    result = await run_code(code)
    shadow_hash = hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest()
    shadow_size = Path("/etc/shadow").stat().st_size
    for d in result.artifact_details:
        assert d.sha256 != shadow_hash
        assert not (d.path == "victim.txt" and d.size == shadow_size and d.size != len("harmless"))


async def test_fifo_and_devices_do_not_block(run_code: RunCode, workspace: Path) -> None:
    os.mkfifo(workspace / "preexisting.fifo")
    code = _code(
        """
        import os
        def handler(event):
            os.mkfifo("new.fifo")
            os.mkfifo("sub.fifo.txt")
            open("regular.txt", "w").write("r")
            return "ok"
        """
    )
    started = time.monotonic()
    result = await run_code(code)
    assert time.monotonic() - started < 5
    assert result.status == Status.SUCCESS, result.stderr
    assert result.artifacts == ["regular.txt"]


async def test_scan_is_capped(run_code: RunCode, make_settings: object) -> None:
    settings = make_settings(artifact_max_files=50, artifact_max_reported=1000)  # type: ignore[operator]
    code = "import os\ndef handler(e):\n    [open(f'f{i:03}.txt', 'w').close() for i in range(200)]\n"
    result = await run_code(code, settings=settings)
    assert result.status == Status.SUCCESS
    assert result.artifacts_truncated
    assert len(result.artifacts) <= 50


async def test_reported_list_is_capped(run_code: RunCode, make_settings: object) -> None:
    settings = make_settings(artifact_max_reported=10)  # type: ignore[operator]
    code = "def handler(e):\n    [open(f'f{i:03}.txt', 'w').close() for i in range(30)]\n"
    result = await run_code(code, settings=settings)
    assert result.artifacts == [f"f{i:03}.txt" for i in range(10)]
    assert result.artifacts_truncated


async def test_hash_budget(run_code: RunCode, make_settings: object) -> None:
    settings = make_settings(artifact_max_hash_bytes=1024 * 1024)  # type: ignore[operator]
    code = (
        "def handler(e):\n"
        "    open('a.bin', 'wb').write(b'a' * 600000)\n"
        "    open('b.bin', 'wb').write(b'b' * 600000)\n"
    )
    result = await run_code(code, settings=settings)
    a, b = result.artifact_details
    assert a.sha256 == hashlib.sha256(b"a" * 600000).hexdigest()
    assert b.sha256 is None and b.size == 600000
