"""The workspace guard's scan and mount lookup, on real files in a temporary directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sandbox_executor import mountinfo
from sandbox_executor.workspace_guard import deleted_open_bytes, scan_changes

MIB = 1024 * 1024


def _write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\1" * size)


def test_scan_counts_what_changed_since_the_start_by_allocation(tmp_path: Path) -> None:
    _write(tmp_path / "old.bin", MIB)
    time.sleep(0.05)
    since = time.time_ns()
    _write(tmp_path / "a" / "new.bin", 2 * MIB)
    with open(tmp_path / "sparse.bin", "wb") as fh:
        fh.truncate(1 << 30)  # 1 GiB apparent, nothing allocated
    os.link(tmp_path / "a" / "new.bin", tmp_path / "a" / "again.bin")  # counted once
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    _write(outside / "huge.bin", 3 * MIB)
    (tmp_path / "link").symlink_to(outside)  # never followed
    result = scan_changes(tmp_path, since, None, 1000)
    assert result.complete
    assert 2 * MIB <= result.added_bytes < 2 * MIB + 64 * 1024


def test_scan_charges_growth_of_files_in_the_baseline(tmp_path: Path) -> None:
    _write(tmp_path / "log.txt", MIB)
    baseline = {"log.txt": (tmp_path / "log.txt").stat().st_blocks * 512}
    since = time.time_ns()
    with open(tmp_path / "log.txt", "ab") as fh:
        fh.write(b"\1" * MIB)
    assert MIB <= scan_changes(tmp_path, since, baseline, 1000).added_bytes < MIB + 64 * 1024
    assert scan_changes(tmp_path, since, None, 1000).added_bytes >= 2 * MIB  # no baseline: whole file


def test_scan_stops_at_its_entry_bound(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i}").write_bytes(b"x")
    result = scan_changes(tmp_path, 0, None, 10)
    assert not result.complete and result.entries > 10


def test_deleted_but_open_files_are_found(tmp_path: Path) -> None:
    path = tmp_path / "gone.bin"
    with open(path, "wb") as fh:
        fh.write(b"\1" * MIB)
        fh.flush()
        path.unlink()
        assert deleted_open_bytes([os.getpid()], tmp_path.stat().st_dev) >= MIB
        assert deleted_open_bytes([os.getpid()], -1) == 0
    assert deleted_open_bytes([os.getpid()], tmp_path.stat().st_dev) == 0


MOUNTS = """\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
23 22 0:40 / /work rw - tmpfs tmpfs rw
24 23 0:41 / /work/deep rw - xfs /dev/sdb rw
25 23 0:42 /vol/_data /work/bind rw - ext4 /dev/sda1 rw
26 23 0:43 / /work rw - overlay overlay rw
"""


def test_mount_lookup_takes_the_deepest_and_latest_mount() -> None:
    mounts = mountinfo.parse(MOUNTS)
    lookup = {
        p: m.fstype
        for p in ("/", "/etc", "/work", "/work/x", "/work/deep/y", "/workspace")
        if (m := mountinfo.mount_of(p, mounts)) is not None
    }
    assert lookup == {
        "/": "ext4",
        "/etc": "ext4",
        "/work": "overlay",  # mounted over the tmpfs
        "/work/x": "overlay",
        "/work/deep/y": "xfs",
        "/workspace": "ext4",
    }
    bind = mountinfo.mount_of("/work/bind", mounts)
    assert bind is not None and bind.root == "/vol/_data"
