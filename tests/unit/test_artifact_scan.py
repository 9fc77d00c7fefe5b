"""Artifact detection: a pure comparison of snapshots, and a scan that trusts nothing."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from sandbox_executor.artifacts import Snapshot, changed_files, describe, guess_mime, snapshot


def _snap(**files: tuple[int, int, int, int]) -> Snapshot:
    return Snapshot(files={k.replace("__", "/"): v for k, v in files.items()})


def test_created_modified_unchanged_deleted() -> None:
    before = _snap(same=(1, 1, 10, 5), mod=(1, 1, 10, 6), gone=(1, 1, 1, 7))
    after = _snap(same=(1, 1, 10, 5), mod=(2, 2, 10, 6), new=(3, 3, 0, 8))
    assert changed_files(before, after) == [("mod", "modified"), ("new", "created")]


def test_every_component_of_the_state_counts_as_a_change() -> None:
    before = _snap(f=(1, 1, 1, 1))
    for changed in ((2, 1, 1, 1), (1, 2, 1, 1), (1, 1, 2, 1), (1, 1, 1, 2)):
        assert changed_files(before, _snap(f=changed)) == [("f", "modified")]


def test_changes_are_sorted_by_path() -> None:
    after = _snap(b=(1, 1, 1, 1), a__z=(1, 1, 1, 2), a=(1, 1, 1, 3), A=(1, 1, 1, 4))
    assert [p for p, _ in changed_files(Snapshot(), after)] == ["A", "a", "a/z", "b"]


def test_nothing_changed() -> None:
    snap = _snap(f=(1, 1, 1, 1))
    assert changed_files(snap, snap) == []
    assert changed_files(Snapshot(), Snapshot()) == []


def test_snapshot_skips_hidden_symlinks_fifos_and_bad_names(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden").write_text("h")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("c")
    (tmp_path / "sub" / ".secret").write_text("s")
    (tmp_path / "shadow").symlink_to("/etc/shadow")
    (tmp_path / "linkdir").symlink_to("/etc")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "bad\nname").write_text("x")
    snap = snapshot(str(tmp_path), max_files=100)
    assert sorted(snap.files) == ["a.txt", "sub/b.bin"]
    assert not snap.truncated


def test_snapshot_is_capped(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i}").write_text("x")
    snap = snapshot(str(tmp_path), max_files=10)
    assert snap.truncated and len(snap.files) <= 10


def test_snapshot_of_missing_root_is_empty(tmp_path: Path) -> None:
    assert snapshot(str(tmp_path / "nope"), 10).files == {}


def test_describe_hashes_and_types(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    (tmp_path / "img.png").write_bytes(png)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("hello")
    details = describe(str(tmp_path), [("d/notes.txt", "created"), ("img.png", "modified")], 1 << 20)
    assert [(d.path, d.change, d.size) for d in details] == [
        ("d/notes.txt", "created", 5),
        ("img.png", "modified", len(png)),
    ]
    assert details[0].sha256 == hashlib.sha256(b"hello").hexdigest()
    assert details[0].mime_type == "text/plain"
    assert details[1].sha256 == hashlib.sha256(png).hexdigest()
    assert details[1].mime_type == "image/png"


def test_describe_never_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "shadow").symlink_to("/etc/shadow")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    (tmp_path / "dirlink").symlink_to(tmp_path / "real")
    details = describe(str(tmp_path), [("shadow", "created"), ("dirlink/f", "created")], 1 << 20)
    assert details == []


def test_describe_skips_fifos_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    out: list[object] = []
    worker = threading.Thread(
        target=lambda: out.append(describe(str(tmp_path), [("fifo", "created")], 1 << 20))
    )
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "describe() blocked on a FIFO"
    assert out == [[]]


def test_describe_respects_the_hash_budget(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a" * 1000)
    (tmp_path / "b").write_bytes(b"b" * 1000)
    details = describe(str(tmp_path), [("a", "created"), ("b", "created")], 1500)
    assert details[0].sha256 is not None
    assert details[1].sha256 is None and details[1].size == 1000


def test_guess_mime_fallbacks() -> None:
    assert guess_mime("x.json", b'{"a": 1}') == "application/json"
    assert guess_mime("noext", b"plain words") == "text/plain"
    assert guess_mime("noext", b"\xff\xfe\x00\x01\x80") == "application/octet-stream"


def test_guess_mime_by_content_and_extension() -> None:
    assert guess_mime("noext", b"\x89PNG\r\n\x1a\n" + b"\x00" * 32) == "image/png"
    assert guess_mime("report.pdf", b"%PDF-1.4\n") == "application/pdf"
    assert guess_mime("data.csv", b"a,b\n1,2\n") == "text/csv"
    assert guess_mime("empty", b"") == "application/octet-stream"


def test_truncated_before_snapshot_does_not_invent_creations() -> None:
    start = 10_000_000_000
    before = Snapshot(files={"seen": (1, 1, 1, 1)}, truncated=True)
    after = _snap(seen=(1, 1, 1, 1), old_unscanned=(5, 5, 1, 2), fresh=(start, start, 1, 3))
    assert changed_files(before, after, since_ns=start) == [("fresh", "created")]
    # Without truncation, absence alone means created.
    assert changed_files(Snapshot(files=before.files), after, since_ns=start) == [
        ("fresh", "created"),
        ("old_unscanned", "created"),
    ]


def test_snapshot_of_a_large_tree_stops_at_the_cap(tmp_path: Path) -> None:
    for d in range(4):
        sub = tmp_path / f"d{d}"
        sub.mkdir()
        for i in range(300):
            (sub / f"f{i}").touch()
    snap = snapshot(str(tmp_path), max_files=500)
    # The directories entered (root, d0, d1) count toward the cap too.
    assert snap.truncated and len(snap.files) == 497


def test_snapshot_counts_directories_toward_the_cap(tmp_path: Path) -> None:
    for i in range(600):
        (tmp_path / f"d{i}").mkdir()
    snap = snapshot(str(tmp_path), max_files=500)
    assert snap.truncated and snap.files == {}
