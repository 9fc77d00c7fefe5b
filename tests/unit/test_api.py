"""The HTTP layer in-process (httpx.ASGITransport): status table, error bodies, headers,
health and metrics, over a service whose engine is scripted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from sandbox_executor.api import create_app
from sandbox_executor.config import Settings
from sandbox_executor.pool import PoolStats
from sandbox_executor.service import ExecutionService
from tests.support.fakes import RecordingReporter, ScriptedEngine


class FakePool:
    def stats(self) -> PoolStats:
        return PoolStats(2, 12345, {"python": 2}, {"python": 2}, 0, 5, 1, 0)


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


async def _client(service: ExecutionService) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(service))
    return httpx.AsyncClient(transport=transport, base_url="http://executor")


@pytest.fixture
async def make_client(
    make_settings: Callable[..., Settings], engine: ScriptedEngine
) -> AsyncIterator[Callable[..., Any]]:
    services: list[ExecutionService] = []
    clients: list[httpx.AsyncClient] = []

    async def make(**overrides: Any) -> httpx.AsyncClient:
        pool = overrides.pop("pool", None)
        service = ExecutionService(make_settings(**overrides), engine, RecordingReporter(), pool=pool)
        await service.start()
        services.append(service)
        clients.append(await _client(service))
        return clients[-1]

    yield make
    for gate in engine.gates.values():
        gate.set()
    for client in clients:
        await client.aclose()
    for service in services:
        await service.abort_all()


async def test_execute_accepts_and_answers_the_record(make_client: Any, engine: ScriptedEngine) -> None:
    client = await make_client()
    body = {"execution_id": "e1", "language": "python", "code": "c", "unknown_field": 1}
    resp = await client.post("/execute", json=body)
    assert resp.status_code == 200 and resp.json() == {
        "execution_id": "e1",
        "status": "queued",
        "message": "Execution accepted",
    }
    engine.gate("e1").set()
    engine.gate("e2").set()
    waited = await client.post("/execute?wait=true", json={**body, "execution_id": "e2"})
    assert waited.status_code == 200 and waited.json()["status"] == "success"
    assert waited.json()["execution_id"] == "e2"


async def test_domain_errors_become_their_status_with_the_contract_body(make_client: Any) -> None:
    client = await make_client(max_queued_executions=1)
    first = await client.post("/execute", json={"execution_id": "e1", "language": "python", "code": "c"})
    assert first.status_code == 200
    for _ in range(5):
        await asyncio.sleep(0)  # the only worker takes it: the queue is empty again
    second = await client.post("/execute", json={"execution_id": "e2", "language": "python", "code": "c"})
    assert second.status_code == 200
    conflict = await client.post("/execute", json={"execution_id": "e1", "language": "python", "code": "d"})
    assert conflict.status_code == 409
    assert set(conflict.json()) == {"error_code", "description", "error_detail", "solution", "request_id"}
    assert conflict.json()["error_code"] == "Executor.Conflict"
    full = await client.post("/execute", json={"execution_id": "e3", "language": "python", "code": "c"})
    assert full.status_code == 503 and full.headers["Retry-After"] == "1"
    assert full.json()["error_code"] == "Executor.QueueFull"


async def test_invalid_body_unknown_id_and_wrong_method(make_client: Any) -> None:
    client = await make_client()
    bad = await client.post("/execute", json={"execution_id": "../etc", "language": "python", "code": "c"})
    assert bad.status_code == 400 and bad.json()["error_code"] == "Executor.ValidationError"
    assert "execution_id" in bad.json()["description"]
    not_json = await client.post("/execute", content=b"{nope")
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["description"]
    missing = await client.get("/executions/unknown")
    assert missing.status_code == 404 and missing.json()["error_code"] == "Executor.NotFound"
    assert "kept for" in missing.json()["solution"]
    wrong = await client.get("/execute")
    assert wrong.status_code == 405 and wrong.json()["error_code"] == "Executor.MethodNotAllowed"
    assert wrong.headers["allow"] == "POST"


async def test_body_over_the_limit_is_refused_before_parsing(make_client: Any) -> None:
    client = await make_client(max_request_bytes=1000)
    resp = await client.post("/execute", content=b"x" * 2000)
    assert resp.status_code == 400 and "exceeds 1000 bytes" in resp.json()["description"]


async def test_a_token_guards_everything_but_health(make_client: Any) -> None:
    client = await make_client(executor_api_token="s3cret")
    denied = await client.get("/executions/e1")
    assert denied.status_code == 401 and denied.headers["WWW-Authenticate"] == "Bearer"
    assert denied.json()["error_code"] == "Executor.Unauthorized"
    allowed = await client.get("/executions/e1", headers={"Authorization": "Bearer s3cret"})
    assert allowed.status_code == 404
    assert (await client.get("/health")).status_code == 200


async def test_health_reads_typed_stats(make_client: Any) -> None:
    pool = FakePool()
    client = await make_client(pool=pool)
    health = (await client.get("/health")).json()
    assert health["status"] == "healthy" and health["isolation"] == "bwrap"
    assert (health["warm_sandboxes"], health["warm_pool_memory_bytes"]) == (2, 12345)
    assert (health["results_pending_delivery"], health["results_undeliverable"]) == (0, 0)
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200 and "sandbox_queue_depth" in metrics.text
    assert 'sandbox_warm_pool_sandboxes{language="python"} 2.0' in metrics.text
    assert "sandbox_warm_pool_memory_bytes 12345.0" in metrics.text


async def test_health_answers_503_with_the_reason(make_client: Any, engine: ScriptedEngine) -> None:
    client = await make_client()
    engine.last_start_error = "no namespaces"
    resp = await client.get("/health")
    assert resp.status_code == 503
    assert resp.json() == {"status": "unhealthy", "reason": "sandboxes cannot start: no namespaces"}


async def test_dependency_sync_without_a_manager_is_unavailable(make_client: Any) -> None:
    client = await make_client()
    body = {"session_id": "s", "language_runtime": "python3.11", "dependencies": [], "sync_mode": "replace"}
    resp = await client.post("/internal/session-config/sync", json=body)
    assert resp.status_code == 503 and resp.json()["error_code"] == "Executor.Unavailable"
