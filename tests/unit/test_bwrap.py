"""The bwrap argv is a pure function of the spec: exact, order-sensitive checks."""

from __future__ import annotations

import os

import pytest

from sandbox_executor.bwrap import ETC_ENTRIES, Mount, SandboxSpec, build_bwrap_argv, bwrap_supports
from sandbox_executor.host import host_system_mounts


def _spec(**overrides: object) -> SandboxSpec:
    values: dict[str, object] = {
        "command": ["/usr/bin/python3", "-c", "print(1)"],
        "workspace": "/srv/ws",
        "bwrap_path": "/usr/bin/bwrap",
        "system_mounts": [Mount("ro-bind", "/usr", "/usr"), Mount("symlink", "usr/lib", "/lib")],
        "extra_mounts": [Mount("ro-bind-try", "/opt/venv", "/opt/sandbox-venv")],
        "env": [("PATH", "/usr/bin:/bin"), ("HOME", "/workspace")],
        "tmpfs_size_bytes": 1234,
        "info_fd": 7,
        "seccomp_fd": 9,
        "data_files": [(11, "/etc/passwd")],
    }
    values.update(overrides)
    return SandboxSpec(**values)  # type: ignore[arg-type]


def _pairs(argv: list[str], flag: str) -> list[str]:
    """Values following every occurrence of a one-argument flag."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def test_full_argv_is_exact() -> None:
    assert build_bwrap_argv(_spec()) == [
        "/usr/bin/bwrap",
        "--unshare-all", "--unshare-user",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--disable-userns",
        "--as-pid-1",
        "--hostname", "sandbox",
        "--info-fd", "7",
        "--seccomp", "9",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/lib", "/lib",
        "--ro-bind-try", "/opt/venv", "/opt/sandbox-venv",
        "--ro-bind-data", "11", "/etc/passwd",
        "--proc", "/proc", "--dev", "/dev",
        "--size", "1234", "--tmpfs", "/tmp",
        "--size", "1234", "--tmpfs", "/dev/shm",
        "--bind", "/srv/ws", "/workspace",
        "--remount-ro", "/", "--remount-ro", "/dev",
        "--chdir", "/workspace",
        "--clearenv",
        "--setenv", "PATH", "/usr/bin:/bin",
        "--setenv", "HOME", "/workspace",
        "--",
        "/usr/bin/python3", "-c", "print(1)",
    ]  # fmt: skip


def test_command_follows_the_separator_untouched() -> None:
    command = ["/bin/bash", "-c", "--share-net", "--bind / /"]
    argv = build_bwrap_argv(_spec(command=command))
    sep = argv.index("--")
    assert argv[sep + 1 :] == command
    # Nothing that looks like an option after the separator was taken as one.
    assert "--share-net" not in argv[:sep]


def test_no_network_by_default_and_share_net_on_request() -> None:
    assert "--share-net" not in build_bwrap_argv(_spec())
    argv = build_bwrap_argv(_spec(network=True))
    assert argv.index("--share-net") < argv.index("--")
    assert "--unshare-all" in argv


def test_disable_userns_only_when_supported() -> None:
    assert "--disable-userns" in build_bwrap_argv(_spec(disable_userns=True))
    assert "--disable-userns" not in build_bwrap_argv(_spec(disable_userns=False))


def test_optional_descriptors_are_omitted() -> None:
    argv = build_bwrap_argv(_spec(info_fd=None, seccomp_fd=None, data_files=()))
    assert "--info-fd" not in argv and "--seccomp" not in argv and "--ro-bind-data" not in argv


def test_environment_is_cleared_before_it_is_set() -> None:
    env = [("A", "x y"), ("B", "--clearenv"), ("C", "")]
    argv = build_bwrap_argv(_spec(env=env))
    clear = argv.index("--clearenv")
    assert all(i > clear for i, a in enumerate(argv) if a == "--setenv")
    setenv = [argv[i + 1 : i + 3] for i, a in enumerate(argv) if a == "--setenv"]
    assert setenv == [["A", "x y"], ["B", "--clearenv"], ["C", ""]]


def test_workspace_is_the_only_writable_bind_and_the_root_is_read_only() -> None:
    argv = build_bwrap_argv(_spec())
    bind_targets = [argv[i + 2] for i, a in enumerate(argv) if a == "--bind"]
    assert bind_targets == ["/workspace"]
    # Remounting / read-only must come after every mount that creates entries in it.
    last_mount = max(i for i, a in enumerate(argv) if a in ("--bind", "--tmpfs", "--ro-bind", "--dev"))
    assert argv.index("--remount-ro") > last_mount
    assert _pairs(argv, "--chdir") == ["/workspace"]


def test_tmpfs_size_applies_to_tmp() -> None:
    argv = build_bwrap_argv(_spec(tmpfs_size_bytes=64 * 1024 * 1024))
    i = argv.index("--size")
    assert argv[i + 1 : i + 4] == [str(64 * 1024 * 1024), "--tmpfs", "/tmp"]


def test_isolation_flags_always_present() -> None:
    argv = build_bwrap_argv(_spec())
    sep = argv.index("--")
    head = argv[:sep]
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--clearenv", "--as-pid-1"):
        assert flag in head
    assert head[head.index("--cap-drop") + 1] == "ALL"
    assert _pairs(head, "--proc") == ["/proc"] and _pairs(head, "--dev") == ["/dev"]


def test_as_pid_1_can_be_turned_off() -> None:
    assert "--as-pid-1" not in build_bwrap_argv(_spec(as_pid_1=False))


def test_unknown_mount_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown mount kind"):
        build_bwrap_argv(_spec(extra_mounts=[Mount("overlay", "/a", "/b")]))


def test_dir_mount() -> None:
    argv = build_bwrap_argv(_spec(extra_mounts=[Mount("dir", "", "/run/x")]))
    assert _pairs(argv, "--dir") == ["/run/x"]


def test_inherited_fds() -> None:
    spec = _spec(data_files=[(11, "/etc/passwd"), (12, "/etc/group")], info_fd=7, seccomp_fd=9)
    assert sorted(spec.inherited_fds()) == [7, 9, 11, 12]
    assert _spec(info_fd=None, seccomp_fd=None, data_files=()).inherited_fds() == []


def test_host_system_mounts_expose_no_secrets() -> None:
    overlay = Mount("ro-bind", "/srv/state/passwd", "/etc/passwd")
    mounts = host_system_mounts([overlay])
    dests = [m.dest for m in mounts]
    for forbidden in ("/etc/shadow", "/root", "/home", "/etc", "/var", "/run", "/proc", "/sys"):
        assert forbidden not in dests
    # /etc content is limited to the allow-list, plus the overlays (placed last, so they win).
    etc = [m for m in mounts if m.dest.startswith("/etc/")]
    assert all(m.dest in ETC_ENTRIES for m in etc[:-1])
    assert mounts[-1] == overlay
    for mount in mounts:
        if mount.dest in ("/bin", "/lib", "/lib64", "/sbin") and os.path.islink(mount.dest):
            assert mount == Mount("symlink", os.readlink(mount.dest), mount.dest)
    assert Mount("ro-bind", "/usr", "/usr") in mounts


def test_bwrap_supports() -> None:
    help_text = "    --disable-userns             Disable further use of user namespaces"
    assert bwrap_supports(help_text, "--disable-userns")
    assert not bwrap_supports(help_text, "--as-pid-1")


def test_the_compat_spec_keeps_every_namespace_without_proc_or_hostname() -> None:
    argv = build_bwrap_argv(_spec(proc=False, hostname=None, disable_userns=False))
    for flag in ("--unshare-all", "--unshare-user", "--cap-drop", "--as-pid-1", "--new-session"):
        assert flag in argv
    assert "--proc" not in argv and "--hostname" not in argv and "--disable-userns" not in argv
    # The container's (masked) /proc, read-only: the bootstraps need /dev/fd.
    at = argv.index("/proc") - 1
    assert argv[at : at + 3] == ["--ro-bind", "/proc", "/proc"]
