"""Error answers that need the service in an odd state: 500 on an internal error, 503 while
shutting down.

Nothing real makes the service raise, so the first test forces it in-process.
"""

from __future__ import annotations

import httpx

from sandbox_executor.api import create_app
from sandbox_executor.config import Settings
from sandbox_executor.engine import Engine
from sandbox_executor.service import ExecutionService


async def test_internal_error_is_500_with_request_id_and_no_trace(tmp_path) -> None:
    settings = Settings(workspace_path=str(tmp_path), results_dir=tmp_path / "results")
    service = ExecutionService(settings, Engine(settings))

    def explode(request: object) -> None:
        raise RuntimeError("secret internal detail")

    service.submit = explode  # type: ignore[method-assign]
    app = create_app(service)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        resp = await client.post("/execute", json={"execution_id": "boom", "language": "python", "code": "x"})
    assert resp.status_code == 500
    body = resp.json()
    assert body["error_code"] == "Executor.InternalError"
    assert body["request_id"] and resp.headers.get("x-request-id") in (None, body["request_id"])
    assert "secret internal detail" not in resp.text and "Traceback" not in resp.text


async def test_shutting_down_answers_503(tmp_path) -> None:
    settings = Settings(workspace_path=str(tmp_path), results_dir=tmp_path / "results")
    service = ExecutionService(settings, Engine(settings))
    await service.start()
    await service.abort_all()  # what SIGTERM does first
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        resp = await client.post("/execute", json={"execution_id": "late", "language": "python", "code": "x"})
    assert resp.status_code == 503
    assert resp.json()["error_code"] == "Executor.ShuttingDown"
    assert resp.headers["Retry-After"]
