"""The acceptance journal on real files: a real SIGKILL, a real full (and read-only)
filesystem: a small tmpfs mounted for the test (root only)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from sandbox_executor.errors import StorageUnavailable
from sandbox_executor.journal import FILENAME, JOURNAL_DIRNAME, Journal, JournalInUse
from sandbox_executor.journal_records import MAX_LINE, Accepted, replay
from sandbox_executor.metrics import REGISTRY

REPO = Path(__file__).resolve().parents[2]
KIB = 1024


def _refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("sandbox_storage_unavailable_total", {"reason": reason}) or 0.0


def _journal_file(results: Path) -> Path:
    return results / JOURNAL_DIRNAME / FILENAME


def _crash_a_daemon(results: Path) -> None:
    daemon = subprocess.Popen(
        [sys.executable, "-m", "tests.support.journal_daemon", str(results)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        line = ""
        while line != "READY\n":
            line = daemon.stdout.readline()
            assert line, "the daemon died before it was ready"
    finally:
        daemon.kill()  # SIGKILL: nothing flushed or closed by the daemon itself
        daemon.wait(10)


def test_acceptances_survive_a_sigkill(tmp_path: Path) -> None:
    _crash_a_daemon(tmp_path)

    journal = Journal.open(tmp_path)
    try:
        assert journal.unfinished() == [
            Accepted("exec_1", "sess-a", "python", 30, 1000.0),
            Accepted("exec_3", None, "javascript", 3600, 1002.0),
        ]
        journal.complete("exec_1")
        assert [a.execution_id for a in journal.unfinished()] == ["exec_3"]
    finally:
        journal.close()
    # The completion is in the file: a third start sees only exec_3.
    again = Journal.open(tmp_path)
    assert [a.execution_id for a in again.unfinished()] == ["exec_3"]
    again.close()


def test_a_torn_or_corrupt_tail_is_survived_and_compacted_away(tmp_path: Path) -> None:
    _crash_a_daemon(tmp_path)
    path = _journal_file(tmp_path)
    data = path.read_bytes()
    end = replay(data).end
    # A record torn by the crash, then garbage where zeros were.
    with open(path, "r+b") as fh:
        fh.seek(end)
        fh.write(b'1234abcd {"e":"a","id":"exec_9","s"' + b"\n\xff\xfe junk \n")

    journal = Journal.open(tmp_path)
    assert [a.execution_id for a in journal.unfinished()] == ["exec_1", "exec_3"]
    journal.close()
    rewritten = replay(path.read_bytes())
    assert rewritten.skipped == 0 and rewritten.records == 2  # only the pending ones remain


def test_the_file_stays_bounded_and_pending_acceptances_survive_rewrites(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, capacity=4 * MAX_LINE)
    journal.accept("keep_me", "s", "python", 30)
    for i in range(2000):
        journal.accept(f"exec_{i}", "s", "python", 30)
        journal.complete(f"exec_{i}")
    assert _journal_file(tmp_path).stat().st_size == 4 * MAX_LINE
    journal.close()
    reopened = Journal.open(tmp_path)
    assert [a.execution_id for a in reopened.unfinished()] == ["keep_me"]
    reopened.close()


def test_a_replayed_acceptance_is_not_written_twice(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    first = journal.accept("exec_1", "s", "python", 30)
    size = replay(_journal_file(tmp_path).read_bytes()).end
    assert journal.accept("exec_1", "s", "python", 30) == first
    assert replay(_journal_file(tmp_path).read_bytes()).end == size
    journal.close()


def test_a_second_daemon_on_the_same_results_dir_is_refused(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    with pytest.raises(JournalInUse):
        Journal.open(tmp_path)
    journal.close()
    Journal.open(tmp_path).close()  # free again once the first is gone


# --- a real small filesystem ------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path) -> Path:
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\1" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_refuses_acceptance_and_accepting_resumes_when_space_returns(small_fs: Path) -> None:
    journal = Journal.open(small_fs, capacity=32 * KIB, min_free_bytes=64 * KIB)
    journal.accept("before", "s", "python", 30)
    filler = _fill(small_fs)
    refused_before = _refusals("full")

    with pytest.raises(StorageUnavailable) as caught:
        journal.accept("during", "s", "python", 30)

    assert caught.value.retry_after and caught.value.detail["reason"] == "full"
    assert caught.value.error_code == "Executor.StorageUnavailable"
    status = journal.status
    assert not status.available and status.reason == "full" and "bytes free" in (status.detail or "")
    assert _refusals("full") == refused_before + 1
    assert not journal.probe().available  # /health's look does not count as a refusal
    assert _refusals("full") == refused_before + 1

    filler.unlink()
    assert journal.probe().available
    journal.accept("after", "s", "python", 30)
    journal.close()
    reopened = Journal.open(small_fs, capacity=32 * KIB, min_free_bytes=64 * KIB)
    assert [a.execution_id for a in reopened.unfinished()] == ["before", "after"]
    reopened.close()


def test_enospc_while_rewriting_the_file_refuses_too(small_fs: Path) -> None:
    journal = Journal.open(small_fs, capacity=4 * MAX_LINE, min_free_bytes=0)
    _fill(small_fs)
    accepted = 0
    with pytest.raises(StorageUnavailable) as caught:
        for i in range(10_000):  # the pre-filled file takes records until it must be rewritten
            journal.accept(f"exec_{i}", "s", "python", 30)
            accepted += 1
    assert caught.value.detail["reason"] == "full"
    assert accepted > 100
    (small_fs / "filler").unlink()
    journal.accept("after", "s", "python", 30)
    assert journal.status.available
    journal.close()
    reopened = Journal.open(small_fs)
    assert len(reopened.unfinished()) == accepted + 1
    reopened.close()


def test_a_read_only_filesystem_refuses_and_recovers(small_fs: Path) -> None:
    # Remounted before the journal opens: a file open for writing would keep it writable.
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        journal = Journal.open(small_fs, capacity=32 * KIB, min_free_bytes=0)
        assert journal.status.reason == "read_only"
        with pytest.raises(StorageUnavailable) as caught:
            journal.accept("during", "s", "python", 30)
        assert caught.value.detail["reason"] == "read_only"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    journal.accept("after", "s", "python", 30)
    assert journal.status.available
    journal.close()


def test_a_journal_that_cannot_start_says_why_and_starts_later(small_fs: Path) -> None:
    filler = _fill(small_fs)
    journal = Journal.open(small_fs, capacity=32 * KIB, min_free_bytes=64 * KIB)  # no room at all
    assert not journal.status.available and journal.status.reason == "full"
    with pytest.raises(StorageUnavailable):
        journal.accept("during", "s", "python", 30)
    filler.unlink()
    journal.accept("after", "s", "python", 30)
    journal.close()


NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
UNPRIVILEGED = """
import sys
from pathlib import Path
from sandbox_executor.errors import StorageUnavailable
from sandbox_executor.journal import Journal
journal = Journal.open(Path(sys.argv[1]))
try:
    journal.accept("during", "s", "python", 30)
except StorageUnavailable as exc:
    print("refused", exc.detail["reason"], flush=True)
sys.stdin.readline()
journal.accept("after", "s", "python", 30)
print("accepted", journal.status.available, flush=True)
"""


def _line_starting(stream: IO[str], prefix: str) -> str:
    while True:  # past the daemon's own log lines
        line = stream.readline()
        if not line or line.startswith(prefix):
            return line


def test_an_unprivileged_daemon_without_write_access_refuses_until_given_it() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to start the daemon as another user")
    # Directly under /tmp: pytest's own tmp directory is not traversable by nobody.
    parent = Path(tempfile.mkdtemp(prefix="sbx-journal-"))
    parent.chmod(0o755)
    results = parent / "results"
    results.mkdir()
    proc = subprocess.Popen(
        [*AS_NOBODY, sys.executable, "-c", UNPRIVILEGED, str(results)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        assert _line_starting(proc.stdout, "refused") == "refused not_writable\n"
        os.chown(results, NOBODY, NOBODY)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert _line_starting(proc.stdout, "accepted") == "accepted True\n"
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(parent)
