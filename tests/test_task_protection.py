"""ECS task scale-in protection against a stand-in ECS agent endpoint (a real HTTP server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from api_client.client import JobClient
from jobcore.jobs import JobStatus
from tests.conftest import Aws, StartWorker
from tests.helpers import eventually, synthetic_scene, wait_finished


@dataclass
class Agent:
    url: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    state = Agent(url="")

    async def protection(request: web.Request) -> web.Response:
        state.calls.append(await request.json())
        return web.json_response({"protection": {}}, status=state.status)

    app = web.Application()
    app.router.add_put("/task-protection/v1/state", protection)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


async def run_one_job(producer: JobClient, aws: Aws) -> None:
    scene, _ = synthetic_scene(seed=11)
    await aws.put("protected.jpg", scene)
    job = await producer.create_job("protected.jpg")
    row = (await wait_finished(producer, [job.id]))[job.id]
    assert row.status is JobStatus.COMPLETED


async def test_protected_while_busy_released_when_idle(
    start_worker: StartWorker, producer: JobClient, aws: Aws, agent: Agent
) -> None:
    await start_worker(ECS_AGENT_URI=agent.url)
    assert agent.calls == []  # idle at start: nothing to protect
    await run_one_job(producer, aws)

    async def released() -> bool:
        return len(agent.calls) == 2

    await eventually(released, timeout=15)
    assert agent.calls == [
        {"ProtectionEnabled": True, "ExpiresInMinutes": 60},
        {"ProtectionEnabled": False},
    ]


async def test_agent_errors_are_not_fatal(
    start_worker: StartWorker, producer: JobClient, aws: Aws, agent: Agent
) -> None:
    agent.status = 500
    await start_worker(ECS_AGENT_URI=agent.url)
    await run_one_job(producer, aws)
    await run_one_job(producer, aws)  # still working after refused protection calls
    assert agent.calls[0] == {"ProtectionEnabled": True, "ExpiresInMinutes": 60}
