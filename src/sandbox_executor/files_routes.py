"""The workspace's files over HTTP: ``GET``/``PUT /files/{path}`` and ``GET /files?path=DIR``.

Every lookup goes through :class:`~.files.WorkspaceFiles`: confined to the workspace, no
link followed, FIFOs and devices never opened. What it refuses are domain errors, turned
into statuses by api.py's one table; these routes only choose their success answers.
Lookups run off the event loop: on a FUSE workspace (S3) a single stat can be slow.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from .errors import PayloadTooLarge
from .files import FileEntry, Listing, WorkspaceFiles

# Uploads under this prefix bypass the generic request-body cap (api.BodyLimitMiddleware):
# they stream to disk under their own, MAX_UPLOAD_BYTES.
UPLOAD_PREFIX = "/files/"

_PATH_DOC = "Relative to the workspace; no `..`, no leading `/`, no symbolic link on the way"
_BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}


def add_file_routes(
    app: FastAPI, files: WorkspaceFiles, error_model: type[BaseModel], common: dict[int | str, Any]
) -> None:
    """Add the three file routes to ``app``; ``common`` documents the errors every route has."""

    def errors(described: dict[int, str]) -> dict[int | str, Any]:
        extra: dict[int | str, Any] = {
            code: {"model": error_model, "description": text} for code, text in described.items()
        }
        return {**common, **extra}

    refused = (
        "Path refused: outside the workspace, through or onto a symbolic link, or a FIFO, socket or device"
    )

    @app.get(
        "/files/{path:path}",
        response_class=Response,
        responses={
            200: {"content": {"*/*": _BINARY}, "description": "The file's bytes; Content-Type detected"},
            **errors({403: refused, 404: "No such file", 409: "The path names a directory"}),
        },
        summary="Download a workspace file",
    )
    async def download_file(path: str) -> Response:
        opened = await asyncio.to_thread(files.open_file, path)
        return StreamingResponse(
            opened.chunks(),
            media_type=opened.content_type,
            headers={"Content-Length": str(opened.size)},
        )

    @app.put(
        "/files/{path:path}",
        status_code=201,
        response_model=FileEntry,
        responses={
            200: {"model": FileEntry, "description": "An existing file was replaced"},
            201: {"model": FileEntry, "description": "The file was created"},
            **errors(
                {
                    403: refused,
                    404: "A parent directory vanished meanwhile",
                    409: "The path is a directory, or a file stands where it names a directory",
                    413: "Over MAX_UPLOAD_BYTES, or no room left in the workspace",
                }
            ),
        },
        # No body at all is an empty file, as with `touch`.
        openapi_extra={"requestBody": {"required": False, "content": {"application/octet-stream": _BINARY}}},
        summary="Upload a workspace file (parent directories created; all of it or nothing)",
    )
    async def upload_file(path: str, request: Request) -> Any:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > files.max_upload_bytes:
            # Refused before a byte is read (curl's Expect: 100-continue then sends nothing).
            raise PayloadTooLarge(
                f"The upload ({declared} bytes) exceeds {files.max_upload_bytes} bytes (MAX_UPLOAD_BYTES).",
                solution="Upload a smaller file, or raise MAX_UPLOAD_BYTES.",
            )
        stored = await files.write(path, request.stream())
        return JSONResponse(dataclasses.asdict(stored.file), status_code=201 if stored.created else 200)

    @app.get(
        "/files",
        response_model=Listing,
        responses=errors({403: refused, 404: "No such directory", 409: "The path names a file"}),
        summary="List a workspace directory: name, path, type, size, mtime of each entry",
    )
    async def list_files(path: str = Query(default="", description=_PATH_DOC)) -> Any:
        return await asyncio.to_thread(files.list_dir, path)
