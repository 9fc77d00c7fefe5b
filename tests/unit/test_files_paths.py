"""Workspace-relative paths: what is accepted and what is refused, before any lookup."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox_executor.errors import InvalidRequest, PathRefused
from sandbox_executor.workspace_paths import NAME_MAX, PATH_MAX, entry_type, split_path


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("a", ("a",)),
        ("a/b/c.txt", ("a", "b", "c.txt")),
        ("dir/", ("dir",)),
        (".hidden", (".hidden",)),
        ("..a/b..", ("..a", "b..")),
        ("sp ace/ü/\\", ("sp ace", "ü", "\\")),
        ("x" * NAME_MAX, ("x" * NAME_MAX,)),
    ],
)
def test_accepted(path: str, parts: tuple[str, ...]) -> None:
    assert split_path(path) == parts


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../etc/passwd",
        "a/../../b",
        "a/..",
        "/etc/passwd",
        "//x",
        "a//b",
        "./a",
        "a/./b",
        "a\x00b",
        "\x00",
        "x" * (NAME_MAX + 1),
        "a/" * (PATH_MAX // 2),
        "\ud800",
        "",
        ".",
        "/",
    ],
)
def test_refused(path: str) -> None:
    with pytest.raises(PathRefused) as info:
        split_path(path)
    assert isinstance(info.value, InvalidRequest)
    assert info.value.error_code == "Executor.PathRefused"
    assert info.value.detail["path"] == path[:256]


def test_the_root_only_where_allowed() -> None:
    assert split_path("", allow_root=True) == ()
    assert split_path(".", allow_root=True) == ()
    assert split_path("./", allow_root=True) == ()
    with pytest.raises(PathRefused):
        split_path("/", allow_root=True)


@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=8))
def test_no_accepted_path_can_leave_the_workspace(parts: list[str]) -> None:
    path = "/".join(parts)
    try:
        accepted = split_path(path)
    except PathRefused:
        return
    assert all(p not in ("", ".", "..") and "/" not in p and "\x00" not in p for p in accepted)
    assert not path.startswith("/")


def test_entry_types() -> None:
    import stat

    assert entry_type(stat.S_IFREG | 0o644) == "file"
    assert entry_type(stat.S_IFDIR) == "directory"
    assert entry_type(stat.S_IFLNK) == "symlink"
    assert entry_type(stat.S_IFIFO) == "fifo"
    assert entry_type(stat.S_IFSOCK) == "socket"
    assert entry_type(stat.S_IFCHR) == entry_type(stat.S_IFBLK) == "device"
