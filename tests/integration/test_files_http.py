"""Workspace files over HTTP on a real daemon: uploads and downloads round-trip bytes
exactly (past the generic request-body cap), listings, ownership, and the file's life
across runs. The attacks on these routes are in tests/security/test_file_routes.py."""

from __future__ import annotations

import os
import random
import subprocess
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.server import SANDBOX_UID, RunningServer, running_server

TOKEN = "files-token-" + uuid.uuid4().hex[:8]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    env = {"EXECUTOR_API_TOKEN": TOKEN, "MAX_UPLOAD_BYTES": str(4 * MIB), "MAX_REQUEST_BYTES": str(MIB)}
    with running_server(env) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as made:
        yield made
    entries = [str(entry) for entry in server.workspace.iterdir()]
    if entries:
        subprocess.run(["rm", "-rf", "--", *entries], check=True)


@pytest.mark.parametrize("size", [0, 1, 65_537, 3 * MIB])  # 3 MiB: over MAX_REQUEST_BYTES
def test_upload_then_download_round_trips_bytes_exactly(client: httpx.Client, size: int) -> None:
    data = random.Random(size).randbytes(size)
    put = client.put("/files/in/deep/blob.bin", content=data)
    assert put.status_code == 201, put.text
    assert put.json() == {
        "name": "blob.bin",
        "path": "in/deep/blob.bin",
        "type": "file",
        "size": size,
        "mtime": put.json()["mtime"],
    }
    got = client.get("/files/in/deep/blob.bin")
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-length"] == str(size)


def test_uploads_replace_create_parents_and_belong_to_the_sandbox_user(
    client: httpx.Client, server: RunningServer
) -> None:
    assert client.put("/files/a/b/c.txt", content=b"one").status_code == 201
    assert client.put("/files/a/b/c.txt", content=b"two").status_code == 200  # replaced
    assert (server.workspace / "a/b/c.txt").read_bytes() == b"two"
    if os.geteuid() == 0:  # the daemon runs as root here: what it creates is the sandbox user's
        for rel in ("a", "a/b", "a/b/c.txt"):
            assert (server.workspace / rel).stat().st_uid == SANDBOX_UID, rel
    # A chunked upload without Content-Length (curl -T -, a generator) works alike.
    assert client.put("/files/gen.bin", content=iter([b"x" * 1000] * 50)).status_code == 201
    assert (server.workspace / "gen.bin").stat().st_size == 50_000


def test_content_type_comes_from_the_artifact_detection(client: httpx.Client) -> None:
    for path, data in (("pic.dat", PNG), ("notes.txt", "héllo\n".encode()), ("d.json", b'{"a": 1}')):
        assert client.put(f"/files/{path}", content=data).status_code == 201
    types = {p: client.get(f"/files/{p}").headers["content-type"] for p in ("pic.dat", "notes.txt", "d.json")}
    assert types["pic.dat"] == "image/png"
    assert types["notes.txt"].startswith("text/plain")
    assert types["d.json"] == "application/json"


def test_listing_gives_name_size_mtime_and_type(client: httpx.Client, server: RunningServer) -> None:
    client.put("/files/dir/f.txt", content=b"12345")
    client.put("/files/dir/sub/g.txt", content=b"x")
    os.mkfifo(server.workspace / "dir/pipe")
    listing = client.get("/files", params={"path": "dir"})
    assert listing.status_code == 200
    doc = listing.json()
    assert doc["path"] == "dir" and doc["truncated"] is False
    assert [(e["name"], e["path"], e["type"]) for e in doc["entries"]] == [
        ("f.txt", "dir/f.txt", "file"),
        ("pipe", "dir/pipe", "fifo"),
        ("sub", "dir/sub", "directory"),
    ]
    assert doc["entries"][0]["size"] == 5 and doc["entries"][0]["mtime"].endswith("Z")
    root = client.get("/files").json()
    assert root["path"] == "" and [e["name"] for e in root["entries"]] == ["dir"]


def test_errors_are_json_with_their_status(client: httpx.Client, server: RunningServer) -> None:
    client.put("/files/d/f.txt", content=b"x")
    answers = {
        "missing file": client.get("/files/nope.txt"),
        "missing dir": client.get("/files", params={"path": "nope"}),
        "a directory downloaded": client.get("/files/d"),
        "upload onto a directory": client.put("/files/d", content=b"x"),
        "a file used as a directory": client.put("/files/d/f.txt/g", content=b"x"),
        "over MAX_UPLOAD_BYTES": client.put("/files/big.bin", content=b"x" * (4 * MIB + 1)),
        "no token": httpx.get(f"{server.url}/files/d/f.txt"),
    }
    assert {name: answer.status_code for name, answer in answers.items()} == {
        "missing file": 404,
        "missing dir": 404,
        "a directory downloaded": 409,
        "upload onto a directory": 409,
        "a file used as a directory": 409,
        "over MAX_UPLOAD_BYTES": 413,
        "no token": 401,
    }
    for name, answer in answers.items():
        assert answer.json()["error_code"].startswith("Executor."), name
    assert not (server.workspace / "big.bin").exists()
    assert [p.name for p in server.workspace.iterdir() if p.name.startswith(".upload-")] == []


def test_a_run_reads_what_was_uploaded_and_its_output_can_be_downloaded(client: httpx.Client) -> None:
    client.put("/files/inputs/numbers.txt", content=b"3\n4\n")
    code = (
        "def handler(event):\n"
        "    total = sum(int(x) for x in open('inputs/numbers.txt').read().split())\n"
        "    open('out.bin', 'wb').write(bytes([total]) * 3)\n"
        "    return total\n"
    )
    body = {"execution_id": f"exec_files_{uuid.uuid4().hex[:8]}", "language": "python", "code": code}
    result = client.post("/execute?wait=true", json=body).json()
    assert result["return_value"] == 7 and result["artifacts"] == ["out.bin"]
    assert client.get("/files/out.bin").content == b"\x07\x07\x07"


def test_the_routes_are_in_the_openapi_document(server: RunningServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", headers=AUTH).json()
    paths = spec["paths"]
    assert set(paths["/files/{path}"]) == {"get", "put"} and set(paths["/files"]) == {"get"}
    assert {"403", "404", "409", "413"} <= set(paths["/files/{path}"]["put"]["responses"])
    assert (
        "text/event-stream"
        in paths["/executions/{execution_id}/events"]["get"]["responses"]["200"]["content"]
    )
    assert "text/event-stream" in paths["/execute"]["post"]["responses"]["200"]["content"]
