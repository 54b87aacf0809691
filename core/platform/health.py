"""Component health: checks run in the background, probes read the cached result.

``/healthz`` must never wait on a slow dependency, so each check runs on a timer with its own
timeout and the probe only reads the last outcome, serialised once when the outcomes change
(``HealthService.encoded``): a probe costs no more than the framework's own routing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel

from core.models import utcnow
from core.platform.metrics import Metrics
from core.platform.tasks import cancel_and_wait

logger = logging.getLogger(__name__)


class Status(enum.StrEnum):
    """State of one component, or of the whole service."""

    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"
    DISABLED = "disabled"


class ComponentHealth(BaseModel):
    """The latest outcome of one component's check."""

    status: Status
    detail: str = ""
    checked_at: datetime | None = None
    latency_ms: float | None = None


class HealthReport(BaseModel):
    """What ``/healthz`` answers."""

    status: Status
    components: dict[str, ComponentHealth]

    def redacted(self) -> HealthReport:
        """The report without the components' free-text details (they may name chats, paths,
        lease holders): what an unauthenticated probe sees in production."""
        return HealthReport(
            status=self.status,
            components={
                name: item.model_copy(update={"detail": ""})
                for name, item in self.components.items()
            },
        )


@dataclass(frozen=True)
class EncodedReport:
    """A health report already serialised as the JSON body of ``/healthz``."""

    status: Status
    body: bytes


Check = Callable[[], Awaitable[ComponentHealth]]


@dataclass
class _Registered:
    check: Check
    critical: bool
    last: ComponentHealth


class HealthService:
    """Runs registered checks periodically and keeps their latest results."""

    def __init__(self, metrics: Metrics, *, interval: float = 5.0, timeout: float = 2.0) -> None:
        self._metrics = metrics
        self._interval = interval
        self._timeout = timeout
        self._components: dict[str, _Registered] = {}
        self._task: asyncio.Task[None] | None = None
        self._encoded = self._encode()

    def register(self, name: str, check: Check, *, critical: bool = True) -> None:
        """Add a component; ``critical`` ones make the service ``down`` when they are. A check
        registered again under the same name (one that takes over from a placeholder) keeps
        the last result until it runs."""
        known = self._components.get(name)
        last = (
            known.last
            if known is not None
            else ComponentHealth(status=Status.DEGRADED, detail="not checked yet")
        )
        self._components[name] = _Registered(check, critical, last)
        self._encoded = self._encode()

    async def start(self) -> None:
        """Run every check once, then keep refreshing them in the background."""
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="health-checks")

    async def close(self) -> None:
        """Stop the background checks."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.refresh()

    async def refresh(self) -> None:
        """Run all checks now, concurrently, each bounded by the timeout."""
        names = list(self._components)
        results = await asyncio.gather(*(self._run(n) for n in names))
        for name, result in zip(names, results, strict=True):
            self._components[name].last = result
            self._metrics.component_up.labels(name).set(
                1 if result.status in (Status.OK, Status.DISABLED) else 0
            )
        self._encoded = self._encode()

    async def _run(self, name: str) -> ComponentHealth:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._components[name].check()
        except TimeoutError:
            result = ComponentHealth(
                status=Status.DOWN, detail=f"check timed out after {self._timeout:g}s"
            )
        except Exception as exc:
            logger.warning("health check %s failed: %s", name, exc)
            result = ComponentHealth(status=Status.DOWN, detail=f"check failed: {exc}")
        result.checked_at = utcnow()
        result.latency_ms = round((time.perf_counter() - started) * 1000, 2)
        return result

    def encoded(self, *, redacted: bool) -> EncodedReport:
        """The cached report as JSON bytes, built when the checks last ran (no work per call);
        ``redacted`` drops the components' details."""
        return self._encoded[redacted]

    def _encode(self) -> dict[bool, EncodedReport]:
        report = self.snapshot()
        return {
            False: EncodedReport(report.status, report.model_dump_json().encode()),
            True: EncodedReport(report.status, report.redacted().model_dump_json().encode()),
        }

    def snapshot(self) -> HealthReport:
        """The cached state of every component and the overall verdict."""
        overall = Status.OK
        for item in self._components.values():
            status = item.last.status
            if status == Status.DOWN and item.critical:
                overall = Status.DOWN
            elif status in (Status.DOWN, Status.DEGRADED) and overall == Status.OK:
                overall = Status.DEGRADED
        return HealthReport(
            status=overall,
            components={name: item.last for name, item in self._components.items()},
        )
