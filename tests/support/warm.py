"""Run the engine and security suites with the warm pool on or off.

``SANDBOX_TEST_WARM_POOL`` selects the path every test execution takes:

* unset: each suite's own default (engine fixtures run cold; a test daemon uses the
  daemon's default ``WARM_POOL_SIZE``, which keeps a pool);
* ``0``: cold everywhere (test daemons get ``WARM_POOL_SIZE=0``);
* ``N > 0``: warm everywhere: test daemons get ``WARM_POOL_SIZE=N``, and engine fixtures
  that call :func:`execute` run each request in a sandbox that was started, and whose
  interpreter was up and blocked on its input pipe, before the request existed.

So ``SANDBOX_TEST_WARM_POOL=0 pytest ...`` and ``SANDBOX_TEST_WARM_POOL=1 pytest ...``
run the same suites over both paths.
"""

from __future__ import annotations

import os

from sandbox_executor.engine import Engine
from sandbox_executor.models import ExecuteRequest, ExecutionResult
from sandbox_executor.pool import WarmPool

ENV = "SANDBOX_TEST_WARM_POOL"


def warm_pool_size() -> int | None:
    """The pool size the test run asks for, or None when the variable is unset."""
    value = os.environ.get(ENV, "").strip()
    return int(value) if value else None


async def execute(engine: Engine, request: ExecuteRequest, *, size: int | None = None) -> ExecutionResult:
    """``engine.execute(request)``, through a pre-started sandbox when the run (or ``size``)
    asks for it."""
    try:
        return await _execute(engine, request, warm_pool_size() if size is None else size)
    finally:
        await engine.aclose()  # the engine's spawner helper would outlive the test otherwise


async def _execute(engine: Engine, request: ExecuteRequest, size: int | None) -> ExecutionResult:
    if not size:
        return await engine.execute(request)
    pool = WarmPool(engine.sandboxes, engine.settings, size=size, pinned=(request.language,), replace=False)
    warm = Engine(engine.settings, engine.sandboxes, warm_source=pool)
    await pool.start()
    try:
        if not await pool.wait_ready(request.language, timeout=15):
            raise RuntimeError(f"no warm {request.language} sandbox came up: {pool.stats()}")
        result = await warm.execute(request)
        assert pool.hits == 1, "the execution did not take the warm sandbox"
        return result
    finally:
        await pool.aclose()
