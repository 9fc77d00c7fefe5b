"""Dependency sync pieces without pip: validation, the versioned store, tree sealing,
metadata reading and the pip sandbox's command line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sandbox_executor.config import Settings
from sandbox_executor.dependencies import DependencyManager, SyncRequest
from sandbox_executor.dependencies.egress.route import (
    PROXY_SOCKET_MOUNT,
    RELAY_PATH,
    loopback_route,
    socket_route,
)
from sandbox_executor.dependencies.fs import read_installed, seal_tree
from sandbox_executor.dependencies.pip_sandbox import PIP_CACHE_MOUNT, PipJob, PipRunner
from sandbox_executor.dependencies.store import Manifest, VenvStore
from sandbox_executor.dependencies.validation import (
    normalize_requirement,
    normalize_requirements,
    redact_url,
    validate_index_url,
    validate_runtime,
)
from sandbox_executor.errors import InternalError, InvalidRequest

PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")


@pytest.mark.parametrize(
    ("entry", "name", "spec"),
    [
        ("requests", "requests", "requests"),
        ("Requests==2.31.0", "requests", "requests==2.31.0"),
        (" pandas >= 2.0 , <3 ", "pandas", "pandas<3,>=2.0"),
        ("Foo_Bar[b,a]>=1; python_version >= '3.8'", "foo-bar", 'foo-bar[a,b]>=1; python_version >= "3.8"'),
        ("zope.interface", "zope-interface", "zope-interface"),
    ],
)
def test_valid_entries_are_normalized(entry: str, name: str, spec: str) -> None:
    assert normalize_requirement(entry) == (name, spec)


@pytest.mark.parametrize(
    "entry",
    [
        "--index-url=http://evil.example/simple",
        "--extra-index-url http://evil.example/simple",
        "-r requirements.txt",
        "-e .",
        "-egit+https://example.com/x.git",
        "--target=/etc",
        "foo @ https://example.com/foo-1.0.whl",
        "foo@file:///etc/passwd",
        "./local/project",
        "/abs/path/foo-1.0-py3-none-any.whl",
        "foo.whl",
        "foo-1.0.tar.gz",
        "C:\\x",
        "requests\n--index-url=http://evil.example",
        "requests\t==1.0",
        "requests\x00",
        "reqüests",
        "",
        "   ",
        "a" * 300,
        "requests==",
        "requests ; ;",
        "git+https://example.com/x.git",
    ],
)
def test_option_like_path_like_and_malformed_entries_are_400(entry: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        normalize_requirement(entry)
    assert info.value.error_code == "Executor.ValidationError"


def test_non_string_entry_is_400() -> None:
    with pytest.raises(InvalidRequest):
        normalize_requirement(42)


def test_entry_count_is_bounded_and_later_duplicates_win() -> None:
    with pytest.raises(InvalidRequest):
        normalize_requirements(["a"] * 4, max_entries=3)
    assert normalize_requirements(["b", "A==1", "a==2"], 3) == {"b": "b", "a": "a==2"}


@pytest.mark.parametrize(
    "url",
    [
        "https://pypi.org/simple",
        "http://127.0.0.1:8000/simple/",
        "https://user:pw@repo.example.com/simple",
        "http://10.0.0.7:3141/root/pypi/+simple/",  # an in-cluster mirror: its own host only
        "https://[2001:db8::1]/simple",
    ],
)
def test_good_index_urls(url: str) -> None:
    assert validate_index_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "file:///etc",
        "ftp://example.com/simple",
        "http://",
        "https:///simple",
        "pypi.org/simple",
        "http://example.com/a b",
        "http://example.com:99999/",
        "https://example.com/\nsimple",
        "-i http://x",
        "http://" + "a" * 3000,
        # Addresses the installer's proxy never connects to: metadata, multicast, nothing.
        "http://169.254.169.254/simple",
        "http://[fe80::1]/simple",
        "http://[::ffff:169.254.169.254]/simple",
        "http://224.0.0.1/simple",
        "http://0.0.0.0:8080/simple",
        # Hosts that are not plainly hosts.
        "http://exa%6dple.com/simple",
        "http://example.com\\@127.0.0.1/simple",
    ],
)
def test_bad_index_urls_are_400(url: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_index_url(url)


def test_runtime_must_be_python() -> None:
    for ok in ("python", "python3", "python3.11", "python3.12"):
        validate_runtime(ok)
    for bad in ("node20", "python2.7; rm", "", "ruby"):
        with pytest.raises(InvalidRequest):
            validate_runtime(bad)


def test_redact_url_hides_credentials() -> None:
    assert redact_url("https://u:secret@h.example:8443/simple") == "https://***@h.example:8443/simple"
    assert redact_url("https://h.example/simple") == "https://h.example/simple"


def test_sync_request_ignores_extra_fields_and_has_contract_defaults() -> None:
    req = SyncRequest.model_validate({"session_id": "s", "unknown": 1})
    assert req.python_package_index_url == "https://pypi.org/simple"
    assert req.sync_mode == "replace" and req.dependencies == []
    assert req.language_runtime == "python3.11"


async def test_invalid_sync_is_rejected_before_touching_disk(tmp_path: Path) -> None:
    settings = Settings(sandbox_venv_path=tmp_path / "venv", workspace_path=str(tmp_path))
    manager = DependencyManager(settings)
    for body in (
        {"dependencies": ["requests", "--index-url=http://evil.example"]},
        {"dependencies": ["x"] * (settings.dependency_max_entries + 1)},
        {"dependencies": ["requests"], "python_package_index_url": "file:///tmp"},
        {"dependencies": ["requests"], "language_runtime": "node20"},
    ):
        with pytest.raises(InvalidRequest):
            await manager.sync(SyncRequest.model_validate(body))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ the store
def _store(tmp_path: Path, **overrides: object) -> VenvStore:
    settings = Settings(sandbox_venv_path=tmp_path / "venv", max_timeout_seconds=100, **overrides)
    store = VenvStore(settings)
    store.ensure_root()
    return store


def _live_version(store: VenvStore, requirements: dict[str, str]) -> Path:
    path = store.new_version()
    (path / "marker").write_text(path.name)
    store.write_manifest(path, Manifest(path.name, requirements, "https://i.example/simple"))
    store.switch(path)
    return path


def test_switch_replaces_the_symlink_and_retires_the_previous_tree(tmp_path: Path) -> None:
    store = _store(tmp_path)
    v1 = _live_version(store, {"a": "a"})
    assert os.readlink(store.link) == str(v1)
    assert (store.link / "marker").read_text() == "v1"
    v2 = _live_version(store, {"b": "b"})
    assert store.current_dir() == v2 and (store.link / "marker").read_text() == "v2"
    assert (store.root / "v1.retired").exists() and not (store.root / "v2.retired").exists()
    loaded = store.load_current()
    assert loaded is not None and loaded.requirements == {"b": "b"}
    assert stat.S_IMODE(os.stat(store.root / "v2.json").st_mode) == 0o600
    # v1 may still be bound by a running execution: kept until max timeout + margin.
    assert store.collect() == [] and v1.exists()
    later = float((store.root / "v1.retired").read_text()) + 100 + 60
    assert store.collect(now=later) == [v1]
    assert not v1.exists() and not (store.root / "v1.json").exists()
    assert v2.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".venv.link")]


def test_collect_removes_interrupted_installs_and_scratch(tmp_path: Path) -> None:
    store = _store(tmp_path)
    live = _live_version(store, {})
    interrupted = store.new_version()  # no manifest: never switched to
    (interrupted / "pkg").mkdir()
    (interrupted / "pkg" / "f").write_text("x")
    (interrupted / "pkg").chmod(0o500)  # sandboxed code may leave unwritable dirs behind
    scratch = store.root / "scratch-v9"
    scratch.mkdir()
    removed = store.collect()
    assert set(removed) == {interrupted, scratch}
    assert live.exists() and not interrupted.exists() and not scratch.exists()


@pytest.mark.parametrize("with_content", [True, False])
def test_first_switch_over_a_real_directory(tmp_path: Path, with_content: bool) -> None:
    store = _store(tmp_path)
    store.link.mkdir()
    if with_content:
        (store.link / "template.py").write_text("X = 1\n")
    v1 = _live_version(store, {})
    assert store.link.is_symlink() and store.current_dir() == v1
    kept = [p for p in store.root.iterdir() if p.name.startswith("initial-")]
    if with_content:
        assert len(kept) == 1 and (kept[0] / "template.py").exists()
    else:
        assert kept == []


# ------------------------------------------------------------------------ trees written by pip
def _dist_info(target: Path, name: str, version: str) -> Path:
    info = target / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n")
    return info


def test_read_installed_reads_metadata_but_never_follows_links_or_blocks(tmp_path: Path) -> None:
    target = tmp_path / "t"
    _dist_info(target, "Good", "1.0")
    outside = tmp_path / "outside"
    outside.write_text("Name: host-secret\nVersion: 9\n")
    linked = target / "linked-1.0.dist-info"
    linked.mkdir()
    (linked / "METADATA").symlink_to(outside)
    (target / "dirlink-1.0.dist-info").symlink_to(_dist_info(tmp_path / "o", "dirlink", "1.0"))
    fifo = target / "fifo-1.0.dist-info"
    fifo.mkdir()
    os.mkfifo(fifo / "METADATA")
    assert read_installed(target) == [("Good", "1.0")]


def test_seal_tree_strips_special_bits_and_leaves_outside_files_alone(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir(mode=0o777)
    tool = target / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o6777)
    private = target / "private.py"
    private.write_text("")
    private.chmod(0o600)
    outside = tmp_path / "outside"
    outside.write_text("")
    outside.chmod(0o600)
    (target / "link").symlink_to(outside)
    os.link(outside, target / "hardlink")
    os.mkfifo(target / "fifo")
    seal_tree(target, None)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tool).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o600
    assert not (target / "fifo").exists()


# ------------------------------------------------------------------------ pip's sandbox
def test_pip_runs_in_a_sandbox_with_nothing_of_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INTERNAL_API_TOKEN", "tok-123")
    settings = Settings(
        sandbox_venv_path=tmp_path / "venv", internal_api_token="tok-123", executor_api_token="tok-456"
    )
    runner = PipRunner(settings)
    job = PipJob(
        ["alpha==1.0", "beta"],
        "http://127.0.0.1:9/simple",
        tmp_path / "v1",
        tmp_path / "scratch",
        tmp_path / "cache",
    )
    argv, fds, env, cwd = runner.command(job, socket_route("/store/egress/v1.sock"))
    try:
        assert env == {} and cwd is None  # bwrap itself starts with an empty environment
        # A network namespace of its own: nothing but a private loopback.
        assert "--clearenv" in argv and "--share-net" not in argv
        assert "--unshare-all" in argv and "--disable-userns" in argv
        assert not any("tok-" in arg for arg in argv)
        sep = argv.index("--", argv.index("--clearenv"))
        setenv = {argv[i + 1] for i, a in enumerate(argv[:sep]) if a == "--setenv"}
        assert setenv <= {
            "PATH",
            "HOME",
            "TMPDIR",
            "LANG",
            "PYTHONDONTWRITEBYTECODE",
            "SSL_CERT_FILE",
            "PIP_CERT",
            "REQUESTS_CA_BUNDLE",
            *PROXY_VARIABLES,
        }
        writable = {argv[i + 1]: argv[i + 2] for i, a in enumerate(argv[:sep]) if a == "--bind"}
        assert writable == {
            str(tmp_path / "v1"): "/opt/sandbox-venv",
            str(tmp_path / "cache"): PIP_CACHE_MOUNT,
            str(tmp_path / "scratch"): "/workspace",
        }
        read_only = {argv[i + 2]: argv[i + 1] for i, a in enumerate(argv[:sep]) if a == "--ro-bind"}
        assert read_only[PROXY_SOCKET_MOUNT] == "/store/egress/v1.sock"
        # The relay runs from a data file, binds its port, then execs pip.
        relay = argv[sep + 1 :]
        assert relay[:7] == [settings.python_binary, "-I", "-S", RELAY_PATH, "3128", PROXY_SOCKET_MOUNT, "--"]
        inner = relay[7:]
        assert inner[0] == settings.python_binary
        assert "--isolated" in inner and "--no-input" in inner
        assert inner[inner.index("--index-url") + 1] == "http://127.0.0.1:9/simple"
        assert inner[inner.index("--target") + 1] == "/opt/sandbox-venv"
        assert inner[inner.index("--proxy") + 1] == "http://127.0.0.1:3128"
        # Wheels only by default: no package code runs during the install.
        assert inner[inner.index("--only-binary") + 1] == ":all:"
        assert inner[-3:] == ["--", "alpha==1.0", "beta"]
        data = {argv[i + 2] for i, a in enumerate(argv[:sep]) if a == "--ro-bind-data"}
        assert data == {"/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", RELAY_PATH}
        # The executions' seccomp filter applies to pip and to any build it runs.
        assert "--seccomp" in argv[:sep]
        assert len(fds) == 6
    finally:
        for fd in fds:
            os.close(fd)


def test_unsandboxed_pip_still_gets_a_clean_environment(tmp_path: Path) -> None:
    settings = Settings(sandbox_venv_path=tmp_path / "venv", disable_bwrap=True)
    job = PipJob(["alpha"], "https://i.example/simple", tmp_path / "v1", tmp_path / "s", tmp_path / "c")
    argv, fds, env, cwd = PipRunner(settings).command(job, loopback_route(41234, "tok"))
    assert fds == [] and cwd == str(tmp_path / "s")
    assert set(env) <= {
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "PYTHONDONTWRITEBYTECODE",
        "SSL_CERT_FILE",
        "PIP_CERT",
        "REQUESTS_CA_BUNDLE",
        *PROXY_VARIABLES,
    }
    assert argv[argv.index("--target") + 1] == str(tmp_path / "v1")
    # No network namespace here: the proxy's loopback port, with the install's password.
    assert argv[argv.index("--proxy") + 1] == "http://pip:tok@127.0.0.1:41234"


async def test_unwritable_venv_location_is_a_500_that_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    settings = Settings(sandbox_venv_path=tmp_path / "file" / "venv")
    with pytest.raises(InternalError) as info:
        await DependencyManager(settings).sync(SyncRequest(dependencies=[]))
    assert info.value.error_code == "Executor.InternalError"
    assert str(tmp_path / "file") in info.value.solution


async def test_empty_replace_switches_to_an_empty_tree_without_pip(tmp_path: Path) -> None:
    settings = Settings(sandbox_venv_path=tmp_path / "venv", bwrap_path="/nonexistent/bwrap")
    manager = DependencyManager(settings)
    body = await manager.sync(SyncRequest(dependencies=[]))
    assert body["status"] == "completed" and body["installed_dependencies"] == []
    assert (tmp_path / "venv").is_symlink() and list((tmp_path / "venv").iterdir()) == []
