"""Private temporary directories: made per sandbox, removed whatever the sandbox left."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from sandbox_executor import private_tmp


def test_a_directory_is_private_and_names_its_daemon(tmp_path: Path) -> None:
    path = Path(private_tmp.create(base=str(tmp_path)))
    assert path.name.startswith(f"sandbox-tmp-{os.getpid()}-")
    assert oct(path.stat().st_mode & 0o777) == "0o700"
    private_tmp.remove(str(path))
    assert not path.exists()


def test_removal_survives_what_hostile_code_leaves(tmp_path: Path) -> None:
    path = Path(private_tmp.create(base=str(tmp_path)))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1500):  # deeper than PATH_MAX, and than Python 3.11's rmtree recursion
        os.mkdir("d", dir_fd=fd)
        deeper = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.close(fd)
    locked = path / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "inner" / "file").write_text("x")
    locked.chmod(0)
    (path / "escape").symlink_to("/")
    private_tmp.remove(str(path))
    assert not path.exists()
    assert Path("/").exists()


def test_sweep_removes_only_the_dead_daemons_directories(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        mine_before = tmp_path / f"sandbox-tmp-{os.getpid()}-old"  # an earlier life of this pid
        of_dead = tmp_path / f"sandbox-tmp-{dead.pid}-x"
        of_alive = tmp_path / f"sandbox-tmp-{alive.pid}-y"
        unrelated = tmp_path / "sandbox-tmp-notapid"
        for path in (mine_before, of_dead, of_alive, unrelated):
            path.mkdir()
        assert private_tmp.sweep(str(tmp_path)) == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([of_alive.name, unrelated.name])
    finally:
        alive.kill()
        alive.wait()


def test_the_default_place_is_the_daemons_temporary_directory() -> None:
    path = private_tmp.create()
    try:
        assert os.path.dirname(path) == tempfile.gettempdir()
    finally:
        private_tmp.remove(path)
