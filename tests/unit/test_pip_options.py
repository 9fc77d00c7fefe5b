"""pip's options for wheels-only installs and the proxy, and naming a missing wheel."""

from __future__ import annotations

import os
from pathlib import Path

from sandbox_executor.dependencies.pip_options import find_missing_wheel, pip_extra_args, read_log_tail
from sandbox_executor.errors import InstallFailed

# pip 26's own words (captured from real runs against tests/support/local_index.py).
DIRECT = (
    "Looking in indexes: http://127.0.0.1:45731/simple\n"
    "ERROR: Could not find a version that satisfies the requirement evil-pkg (from versions: none)\n"
    "ERROR: No matching distribution found for evil-pkg\n"
)
TRANSITIVE = (
    "Collecting alpha\n  Downloading alpha-1.0-py3-none-any.whl (846 bytes)\n"
    "ERROR: Could not find a version that satisfies the requirement evil-pkg>=2 (from alpha) "
    "(from versions: none)\n"
    "ERROR: No matching distribution found for evil-pkg>=2 (from alpha)\n"
)
LOG = (
    "2026-11-30T04:28:45,661   Skipping link: No sources permitted for evil-pkg: "
    "http://127.0.0.1:42249/files/evil_pkg-1.0.tar.gz#sha256=05 (from http://127.0.0.1:42249/simple/evil-pkg/)\n"
)


def test_extra_args() -> None:
    assert pip_extra_args(allow_sdist=True, proxy_url=None) == []
    assert pip_extra_args(allow_sdist=False, proxy_url=None) == ["--only-binary", ":all:"]
    assert pip_extra_args(allow_sdist=False, proxy_url="http://127.0.0.1:3128", log_path="/w/pip.log") == [
        "--proxy",
        "http://127.0.0.1:3128",
        "--only-binary",
        ":all:",
        "--log",
        "/w/pip.log",
    ]
    # The log is only needed to explain a refused sdist.
    assert pip_extra_args(allow_sdist=True, proxy_url="http://p", log_path="/w/pip.log") == [
        "--proxy",
        "http://p",
    ]


def test_a_source_only_package_is_named_with_the_setting() -> None:
    missing = find_missing_wheel(DIRECT, LOG)
    assert missing is not None
    assert (missing.name, missing.requirement, missing.required_by, missing.source_only) == (
        "evil-pkg",
        "evil-pkg",
        None,
        True,
    )
    error = missing.error()
    assert isinstance(error, InstallFailed) and error.error_code == "Executor.DependencyInstallFailed"
    assert "evil-pkg" in error.description and "DEPENDENCY_ALLOW_SDIST" in error.description
    assert "DEPENDENCY_ALLOW_SDIST=true" in error.solution
    assert error.detail == "package: evil-pkg; requirement: evil-pkg; setting: DEPENDENCY_ALLOW_SDIST=false"
    assert missing.error("pip said so").detail.endswith("\npip said so")


def test_a_transitive_requirement_names_its_parent() -> None:
    missing = find_missing_wheel(TRANSITIVE, LOG.replace("evil-pkg:", "Evil_Pkg:"))
    assert missing is not None
    assert (missing.name, missing.requirement, missing.required_by) == ("evil-pkg", "evil-pkg>=2", "alpha")
    assert "(required by alpha)" in missing.error().description


def test_a_project_that_does_not_exist_is_not_blamed_on_wheels() -> None:
    output = DIRECT.replace("evil-pkg", "nosuch")
    assert find_missing_wheel(output, LOG) is None
    # Without the log the missing project is named, with a hedged reason.
    missing = find_missing_wheel(output)
    assert missing is not None and missing.name == "nosuch" and not missing.source_only
    assert find_missing_wheel("ERROR: Could not install packages due to an OSError\n", LOG) is None


def test_log_tail_reads_regular_files_only(tmp_path: Path) -> None:
    log = tmp_path / "pip.log"
    log.write_text("x" * 100 + "END")
    assert read_log_tail(str(log), 10) == "x" * 7 + "END"
    (tmp_path / "link").symlink_to(log)
    assert read_log_tail(str(tmp_path / "link")) is None
    os.mkfifo(tmp_path / "fifo")
    assert read_log_tail(str(tmp_path / "fifo")) is None
    assert read_log_tail(str(tmp_path / "absent")) is None
