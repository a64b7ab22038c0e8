"""ECS task scale-in protection: while the worker holds jobs, ask the ECS agent to protect the
task, so neither the autoscaler nor a deployment stops it mid-job; release it once idle.
Failures are logged and never fatal: protection is an optimisation over a graceful drain."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import structlog

log = structlog.get_logger(__name__)

PROTECTION_MINUTES = 60  # renewed well before it runs out while jobs keep coming
RENEW_AFTER_SECONDS = PROTECTION_MINUTES * 60 / 2
IDLE_GRACE_SECONDS = 2.0  # do not flap between back-to-back jobs


class TaskProtection:
    def __init__(self, agent_uri: str, session: aiohttp.ClientSession) -> None:
        self.url = f"{agent_uri.rstrip('/')}/task-protection/v1/state"
        self.session = session
        self.busy_changed = asyncio.Event()
        self.busy = False
        self.protected = False

    def set_busy(self, busy: bool) -> None:
        if busy != self.busy:
            self.busy = busy
            self.busy_changed.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.busy_changed.wait(), timeout=RENEW_AFTER_SECONDS)
            except TimeoutError:
                if self.protected:
                    await self._put(True)  # renew
                continue
            self.busy_changed.clear()
            if not self.busy:
                await asyncio.sleep(IDLE_GRACE_SECONDS)
                if self.busy:
                    continue
            if self.busy != self.protected:
                await self._put(self.busy)

    async def release(self) -> None:
        if self.protected:
            await self._put(False)

    async def _put(self, enabled: bool) -> None:
        body: dict[str, Any] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = PROTECTION_MINUTES
        try:
            async with self.session.put(
                self.url, json=body, timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                if response.status >= 300:
                    text = await response.text()
                    log.warning("task protection refused", status=response.status, body=text[:300])
                    return
            self.protected = enabled
            log.info("task protection " + ("enabled" if enabled else "released"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("task protection call failed", error=str(exc) or type(exc).__name__)
