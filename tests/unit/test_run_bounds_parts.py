"""The run-bounds parts that are pure, or that only read and write files: tested against
recorded kernel text and a fake cgroup v2 tree in a temporary directory (this host has no
writable cgroup v2; the real v2 path is exercised by tests/integration/test_run_bounds.py
where one exists)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_executor.proctree import ProcTable, anon_shmem_bytes, parse_stat, reissued
from sandbox_executor.run_bounds import BoundsUnavailable, HostCgroups, Limits
from sandbox_executor.run_bounds import cgroupfs as fs
from sandbox_executor.run_bounds.cgroups import Node, V2Cgroup
from sandbox_executor.run_bounds.detect import LEAF_NAME, prepare_v2, v2_root

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 /kubepods/pod1 /sys/fs/cgroup/my\\040space rw - cgroup2 cgroup2 rw,nsdelegate
"""

PROC_CGROUP = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
2:cpu,cpuacct:/x
0::/kubepods/pod1/ctr
"""


def test_mountinfo_lists_cgroup_mounts_with_their_controllers() -> None:
    mounts = fs.parse_mountinfo(MOUNTINFO)
    assert [(m.mount_point, m.version) for m in mounts] == [
        ("/sys/fs/cgroup/memory", 1),
        ("/sys/fs/cgroup/pids", 1),
        ("/sys/fs/cgroup/unified", 2),
        ("/sys/fs/cgroup/my space", 2),
    ]
    assert "memory" in mounts[0].controllers
    assert mounts[3].root == "/kubepods/pod1"


def test_proc_cgroup_maps_controllers_and_the_v2_hierarchy() -> None:
    own = fs.parse_proc_cgroup(PROC_CGROUP)
    assert own["memory"] == "/process_api/abc"
    assert own["cpuacct"] == "/x"
    assert own[""] == "/kubepods/pod1/ctr"


def test_cgroup_dir_honours_the_mount_root() -> None:
    mount = fs.parse_mountinfo(MOUNTINFO)[3]
    assert fs.cgroup_dir(mount, "/kubepods/pod1/ctr") == Path("/sys/fs/cgroup/my space/ctr")
    assert fs.cgroup_dir(mount, "/kubepods/pod1") == Path("/sys/fs/cgroup/my space")
    assert fs.cgroup_dir(mount, "/kubepods/pod10") is None
    assert fs.cgroup_dir(mount, "/elsewhere") is None


def test_keyed_files_and_limits() -> None:
    text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    assert fs.parse_keyed(text) == {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 3}
    assert fs.parse_keyed("low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 1\n")["oom_kill"] == 2
    assert fs.parse_limit("max\n") is None
    assert fs.parse_limit("268435456\n") == 268435456


def test_stat_line_with_a_hostile_process_name() -> None:
    line = b"4242 (a) b (c) S 17 4242 4242 0 -1 4194560 " + b"0 " * 12 + b"987654 12 34"
    proc, state = parse_stat(4242, line)
    assert (proc.pid, proc.ppid, proc.start, state) == (4242, 17, 987654, b"S")


def test_memory_counts_anonymous_and_shared_not_file_pages() -> None:
    status = (
        b"Name:\tpython3\nVmRSS:\t  20000 kB\nRssAnon:\t  3000 kB\n"
        b"RssFile:\t 16000 kB\nRssShmem:\t  1000 kB\n"
    )
    assert anon_shmem_bytes(status) == 4000 * 1024


def test_reissued_range_is_cyclic() -> None:
    assert reissued(100, 200, 150) and not reissued(100, 200, 100) and reissued(100, 200, 200)
    assert reissued(32000, 400, 32500) and reissued(32000, 400, 350) and not reissued(32000, 400, 1000)


def _fake_proc(root: Path, procs: dict[int, tuple[int, int]], last_pid: int, forks: int) -> None:
    for child in root.iterdir():
        if child.name.isdigit():
            (child / "stat").unlink()
            child.rmdir()
    for pid, (ppid, start) in procs.items():
        (root / str(pid)).mkdir()
        fields = ["S", str(ppid)] + ["0"] * 17 + [str(start)]
        (root / str(pid) / "stat").write_text(f"{pid} (p) {' '.join(fields)} 0 0\n")
    (root / "loadavg").write_text(f"0.00 0.00 0.00 1/10 {last_pid}\n")
    (root / "stat").write_text(f"cpu 0 0\nprocesses {forks}\n")
    (root / "sys" / "kernel").mkdir(parents=True, exist_ok=True)
    (root / "sys" / "kernel" / "pid_max").write_text("32768\n")


def test_process_table_rereads_only_reissued_pids(tmp_path: Path) -> None:
    _fake_proc(tmp_path, {1: (0, 1), 10: (1, 100), 11: (10, 110)}, last_pid=11, forks=50)
    table = ProcTable(proc=str(tmp_path))
    fresh, gone = table.refresh()
    assert [p.pid for p in fresh] == [1, 10, 11] and not gone
    assert table.descendants(table.procs[10]) == {10: 100, 11: 110}

    # 11 exited and its pid went round to a new child of 1; 12 is new; 10 untouched.
    _fake_proc(tmp_path, {1: (0, 1), 10: (1, 100), 11: (1, 900), 12: (10, 905)}, last_pid=12, forks=60)
    (tmp_path / "loadavg").write_text("0 0 0 1/10 12\n")
    fresh, gone = table.refresh()
    assert gone == set()  # pid 11 was outside the reissued range (11, 12]: not re-read
    assert [p.pid for p in fresh] == [12]

    # Once the allocator hands pid 11 out again, the table notices the new process.
    _fake_proc(
        tmp_path, {1: (0, 1), 10: (1, 100), 11: (1, 950), 12: (10, 905)}, last_pid=11, forks=32768 + 60
    )
    fresh, gone = table.refresh()
    assert 11 in gone and [(p.pid, p.ppid, p.start) for p in fresh] == [(11, 1, 950)]


# --- cgroup v2 file handling on a fake tree ----------------------------------------------


def _fake_v2(directory: Path, **files: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    defaults = {
        "cgroup.controllers": "cpu memory pids\n",
        "cgroup.subtree_control": "",
        "cgroup.procs": "",
        "cgroup.events": "populated 0\nfrozen 0\n",
        "cgroup.kill": "",
        "memory.max": "max\n",
        "memory.swap.max": "max\n",
        "memory.oom.group": "0\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
        "memory.current": "0\n",
        "memory.peak": "0\n",
        "pids.max": "max\n",
        "pids.events": "max 0\n",
    }
    for name, text in {**defaults, **{k.replace("__", "."): v for k, v in files.items()}}.items():
        (directory / name).write_text(text)


def test_v2_run_cgroup_files(tmp_path: Path) -> None:
    _fake_v2(tmp_path / "r1")
    cg = V2Cgroup(Node(tmp_path / "r1", "/x/r1"))
    cg.configure(Limits(256 << 20, 64))
    assert (tmp_path / "r1" / "memory.max").read_text() == str(256 << 20)
    assert (tmp_path / "r1" / "memory.swap.max").read_text() == "0"
    assert (tmp_path / "r1" / "memory.oom.group").read_text() == "1"
    assert (tmp_path / "r1" / "pids.max").read_text() == "64"
    assert cg.oom_kills() == 0 and not cg.pids_hit()
    (tmp_path / "r1" / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 1\noom_kill 2\n")
    (tmp_path / "r1" / "memory.peak").write_text("268400000\n")
    (tmp_path / "r1" / "pids.events").write_text("max 5\n")
    assert cg.oom_kills() == 2 and cg.pids_hit()
    assert cg.peak() == (268400000, "memory.peak")
    assert cg.kill(1.0)
    assert (tmp_path / "r1" / "cgroup.kill").read_text() == "1"


def test_v2_peak_is_absent_on_older_kernels(tmp_path: Path) -> None:
    _fake_v2(tmp_path / "r1")
    (tmp_path / "r1" / "memory.peak").unlink()
    (tmp_path / "r1" / "memory.swap.max").unlink()  # no swap accounting: nothing to set
    cg = V2Cgroup(Node(tmp_path / "r1", "/x/r1"))
    cg.configure(Limits(64 << 20, 16))
    assert cg.peak() == (None, "memory.peak")


def test_v2_kill_waits_for_the_cgroup_to_empty(tmp_path: Path) -> None:
    _fake_v2(tmp_path / "r1", cgroup__events="populated 1\n")
    cg = V2Cgroup(Node(tmp_path / "r1", "/x/r1"))
    assert not cg.kill(0.05)


def _host(mount_point: Path, own: str, root: str = "/") -> HostCgroups:
    mount = fs.CgroupMount(str(mount_point), root, 2, frozenset())
    return HostCgroups((mount,), {"": own})


def test_v2_root_is_the_daemons_cgroup_or_its_parent_when_already_in_the_leaf(tmp_path: Path) -> None:
    assert v2_root(_host(tmp_path, "/svc"), None) == Node(tmp_path / "svc", "/svc")
    assert v2_root(_host(tmp_path, f"/svc/{LEAF_NAME}"), None) == Node(tmp_path / "svc", "/svc")
    configured = tmp_path / "deleg" / "sbx"
    assert v2_root(_host(tmp_path, "/svc", root="/ns"), configured) == Node(configured, "/ns/deleg/sbx")
    with pytest.raises(BoundsUnavailable, match="not on a cgroup2 mount"):
        v2_root(_host(tmp_path, "/svc"), Path("/elsewhere"))


def test_prepare_v2_moves_the_daemon_into_a_leaf_then_enables_controllers(tmp_path: Path) -> None:
    root = tmp_path / "svc"
    _fake_v2(root, cgroup__procs="101\n202\n")
    _fake_v2(root / LEAF_NAME)
    _fake_v2(root / "sandbox-executor")
    base = prepare_v2(Node(root, "/svc"))
    assert base == Node(root / "sandbox-executor", "/svc/sandbox-executor")
    # Each pid is one write (the fake file keeps the last one).
    assert (root / LEAF_NAME / "cgroup.procs").read_text() == "202"
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (root / "sandbox-executor" / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_prepare_v2_names_what_is_missing(tmp_path: Path) -> None:
    _fake_v2(tmp_path / "svc", cgroup__controllers="cpu io\n")
    with pytest.raises(BoundsUnavailable, match="memory\\+pids"):
        prepare_v2(Node(tmp_path / "svc", "/svc"))
    with pytest.raises(BoundsUnavailable):
        prepare_v2(Node(tmp_path / "absent", "/absent"))


def test_only_our_own_dead_instances_are_swept() -> None:
    me = fs.instance_name()
    ns, pid, start = (int(x) for x in me[1:].split("-"))
    assert not fs.owner_dead(me)
    assert fs.owner_dead(f"d{ns}-{pid}-{start + 1}")  # same pid, another start: a dead daemon
    assert fs.owner_dead(f"d{ns}-999999999-1")
    assert not fs.owner_dead(f"d{ns + 1}-999999999-1")  # another pid namespace: not ours to judge
    assert not fs.owner_dead("d123-456")  # not a name we make
    assert not fs.owner_dead("lost+found")
