"""Attacks on the workspace file routes (GET/PUT /files/{path}, GET /files?path=) of a real
daemon over HTTP: links and FIFOs planted by sandboxed code, device nodes, traversal in
every spelling (sent raw, so no client normalises them away), huge uploads and huge
directories. Each attack must be refused with a clear 4xx, read or write nothing outside
the workspace, and leave the daemon serving (``Daemon.assert_survived``)."""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.helpers import EXECUTOR_TOKEN, SECRETS, Daemon, start_daemon

UPLOAD_CAP = 8 * 1024 * 1024
SECRET = "FILE-ROUTES-CANARY-" + os.urandom(4).hex()
IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """The suite's daemon with a small upload cap (SECURITY_DAEMON_USER applies)."""
    running = start_daemon({"MAX_UPLOAD_BYTES": str(UPLOAD_CAP)}, fast_disk=True)
    yield running
    log = running.server.log_path.read_text(errors="replace")
    running.close()
    assert not [secret for secret in SECRETS if secret in log]


@pytest.fixture
def outside() -> Iterator[Path]:
    """A host directory outside the workspace that the daemon's user could read and write:
    following a planted link would reach it."""
    path = Path(tempfile.mkdtemp(prefix="files-outside-", dir="/tmp"))
    path.chmod(0o777)
    (path / "secret").write_text(SECRET)
    (path / "secret").chmod(0o666)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def raw(daemon: Daemon, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One request with ``target`` sent exactly as written (http.client normalises nothing)."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.server.port, timeout=10)
    try:
        conn.request(method, target, body=body, headers={"Authorization": f"Bearer {EXECUTOR_TOKEN}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def assert_refused(status: int, body: bytes, *, allowed: tuple[int, ...] = (403,)) -> None:
    assert status in allowed, (status, body[:300])
    assert json.loads(body)["error_code"].startswith("Executor.")
    assert SECRET.encode() not in body and b"root:x:0" not in body
    assert not [s for s in SECRETS if s.encode() in body]


PLANT = {
    "python": """
import os
def handler(event):
    out = event["outside"]
    os.symlink(out + "/secret", "leak")
    os.symlink("/proc/self/environ", "environ")
    os.symlink("/", "root")
    os.symlink("..", "up")
    os.makedirs("d")
    os.symlink(out, "d/inner")
    os.symlink(out + "/created-through-a-link", "dangling")
    return sorted(os.listdir("."))
""",
    "shell": """
out=$(sed 's/.*"outside": *"\\([^"]*\\)".*/\\1/' "$SANDBOX_EVENT_FILE")
ln -s "$out/secret" leak
ln -s /proc/self/environ environ
ln -s / root
ln -s .. up
mkdir d && ln -s "$out" d/inner
ln -s "$out/created-through-a-link" dangling
ls
""",
}


@pytest.mark.parametrize("language", ["python", "shell"])
def test_links_planted_by_user_code_are_never_followed(fresh: Daemon, outside: Path, language: str) -> None:
    result = fresh.attack(PLANT[language], language, event={"outside": str(outside)})
    assert result["status"] == "success", result["stderr"][-500:]
    for target in (
        "/files/leak",
        "/files/environ",
        "/files/root/etc/passwd",
        "/files/up/" + fresh.workspace.name + "/leak",
        "/files/d/inner/secret",
        "/files?path=root",
        "/files?path=d/inner",
        "/files?path=up",
    ):
        assert_refused(*raw(fresh, "GET", target))
    for target in (
        "/files/leak",
        "/files/d/inner/secret",
        "/files/d/inner/new",
        "/files/dangling",
        "/files/root/tmp/x",
    ):
        assert_refused(*raw(fresh, "PUT", target, b"overwritten?"))
    assert (outside / "secret").read_text() == SECRET
    assert sorted(p.name for p in outside.iterdir()) == ["secret"], "nothing was created outside"
    # The listing shows the links as links, never what they point at.
    status, body = raw(fresh, "GET", "/files")
    assert status == 200
    kinds = {e["name"]: e["type"] for e in json.loads(body)["entries"]}
    assert kinds == {n: "symlink" for n in ("leak", "environ", "root", "up", "dangling")} | {"d": "directory"}
    fresh.assert_survived(language)


FIFO = {
    "python": "import os\ndef handler(event):\n    os.mkfifo('pipe')\n    os.mkdir('d')\n"
    "    os.mkfifo('d/p2')\n",
    "shell": "mkfifo pipe && mkdir d && mkfifo d/p2",
}


@pytest.mark.parametrize("language", ["python", "shell"])
def test_a_fifo_planted_by_user_code_is_refused_without_being_opened(fresh: Daemon, language: str) -> None:
    fresh.attack(FIFO[language], language)
    started = time.monotonic()
    for method, target in (
        ("GET", "/files/pipe"),
        ("GET", "/files/d/p2"),
        ("PUT", "/files/pipe"),
        ("GET", "/files?path=pipe"),
    ):
        status, body = raw(fresh, method, target, b"x" if method == "PUT" else None)
        assert_refused(status, body, allowed=(403, 409))  # listing a FIFO: not a directory
    assert time.monotonic() - started < 5, "a FIFO lookup blocked"
    # Never opened: a writer still finds no reader on it.
    with pytest.raises(OSError) as no_reader:
        os.open(fresh.workspace / "pipe", os.O_WRONLY | os.O_NONBLOCK)
    assert no_reader.value.errno == errno.ENXIO
    assert stat.S_ISFIFO(os.lstat(fresh.workspace / "pipe").st_mode), "the FIFO was not replaced"
    fresh.assert_survived(language)


@pytest.mark.skipif(not IS_ROOT, reason="planting a device node needs root (sandboxed code cannot)")
def test_device_nodes_are_refused(fresh: Daemon) -> None:
    tried = fresh.attack(
        "import os, stat\ndef handler(event):\n"
        "    try:\n        os.mknod('dev', stat.S_IFCHR | 0o666, os.makedev(1, 5))\n"
        "    except OSError as exc:\n        return exc.errno\n"
    )
    assert tried["return_value"] in (errno.EPERM, errno.EACCES), "sandboxed code made a device node"
    # Planted from the host: /dev/zero (an endless read) and /dev/null (a sink).
    os.mknod(fresh.workspace / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    os.mknod(fresh.workspace / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert_refused(*raw(fresh, "GET", "/files/zero"))
    assert_refused(*raw(fresh, "PUT", "/files/null", b"into the device?"))
    assert stat.S_ISCHR(os.lstat(fresh.workspace / "null").st_mode)
    fresh.assert_survived()


TRAVERSALS = [
    ("GET", "/files/../../etc/passwd"),
    ("GET", "/files/%2e%2e/%2e%2e/etc/passwd"),
    ("GET", "/files/..%2f..%2fetc%2fpasswd"),
    ("GET", "/files/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd"),
    ("GET", "/files/sub/../../etc/passwd"),
    ("GET", "/files//etc/passwd"),
    ("GET", "/files/%2fetc%2fpasswd"),
    ("GET", "/files/./etc"),
    ("GET", "/files/x%00y"),
    ("GET", "/files/" + "a" * 256),
    ("GET", "/files?path=.."),
    ("GET", "/files?path=%2e%2e%2f%2e%2e"),
    ("GET", "/files?path=/etc"),
    ("GET", "/files?path=sub/../.."),
    ("PUT", "/files/../escape.txt"),
    ("PUT", "/files/%2e%2e/escape.txt"),
    ("PUT", "/files//tmp/escape.txt"),
    ("PUT", "/files/sub/%2e%2e/%2e%2e/escape.txt"),
]


def test_traversal_absolute_and_encoded_paths_are_refused(fresh: Daemon) -> None:
    (fresh.workspace / "sub").mkdir()
    for method, target in TRAVERSALS:
        status, body = raw(fresh, method, target, b"escaped?" if method == "PUT" else None)
        assert_refused(status, body), (method, target)
        assert json.loads(body)["error_code"] == "Executor.PathRefused", (method, target)
    for place in (fresh.workspace.parent, Path("/tmp")):
        assert not (place / "escape.txt").exists()
    fresh.assert_survived()


def test_huge_uploads_are_refused_and_leave_nothing(fresh: Daemon) -> None:
    # Announced too big: refused before a byte of the body is read.
    with socket.create_connection(("127.0.0.1", fresh.server.port), timeout=10) as sock:
        sock.sendall(
            b"PUT /files/huge.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + EXECUTOR_TOKEN.encode()
            + b"\r\nContent-Length: 10737418240\r\n\r\n"
        )
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    # Chunked (no length announced): cut off at the cap, the partial file removed.
    status, body = raw_chunked(fresh, "/files/huge2.bin", UPLOAD_CAP + 2 * 1024 * 1024)
    assert status == 413 and json.loads(body)["error_code"] == "Executor.PayloadTooLarge"
    # A client that vanishes mid-upload leaves nothing either.
    with socket.create_connection(("127.0.0.1", fresh.server.port), timeout=10) as sock:
        sock.sendall(
            b"PUT /files/gone.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + EXECUTOR_TOKEN.encode()
            + b"\r\nContent-Length: 4000000\r\n\r\n"
            + b"y" * 1_000_000
        )
    deadline = time.monotonic() + 5
    while list(fresh.workspace.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(fresh.workspace.iterdir()) == []
    fresh.assert_survived()


def raw_chunked(daemon: Daemon, target: str, total: int) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.server.port, timeout=30)
    try:
        chunk = b"z" * (256 * 1024)
        body = (chunk for _ in range(total // len(chunk)))
        try:
            conn.request(
                "PUT",
                target,
                body=body,
                headers={"Authorization": f"Bearer {EXECUTOR_TOKEN}"},
                encode_chunked=True,
            )
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered and closed while we were still sending
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_listing_a_huge_directory_is_capped_and_quick(fresh: Daemon) -> None:
    fresh.attack(
        "import os\ndef handler(event):\n    os.makedirs('big')\n"
        "    for n in range(12000):\n        open(f'big/f{n:05d}', 'w').close()\n",
        timeout=30,
    )
    started = time.monotonic()
    status, body = raw(fresh, "GET", "/files?path=big")
    elapsed = time.monotonic() - started
    assert status == 200, body[:300]
    listing = json.loads(body)
    assert len(listing["entries"]) == 10_000 and listing["truncated"] is True
    assert elapsed < 5, elapsed
    fresh.assert_survived()
