"""Alertmanager API v2 client: silences created from chat are real Alertmanager silences."""

from __future__ import annotations

from datetime import datetime

import httpx

from core.errors import Unavailable


class AlertmanagerClient:
    """Creates, expires and reads silences on one Alertmanager."""

    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            response = await self._client.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise Unavailable(f"Alertmanager unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise Unavailable(
                f"Alertmanager answered {response.status_code}: {response.text[:200]}",
                retryable=response.status_code >= 500,
            )
        return response

    async def create_silence(
        self, labels: dict[str, str], ends_at: datetime, created_by: str, comment: str
    ) -> str:
        """Silence alerts carrying exactly ``labels`` until ``ends_at``; returns the silence id."""
        if not labels:
            raise Unavailable("the incident has no labels to match a silence on", retryable=False)
        body = {
            "matchers": [
                {"name": k, "value": v, "isRegex": False, "isEqual": True}
                for k, v in sorted(labels.items())
            ],
            "startsAt": datetime.now(ends_at.tzinfo).isoformat(),
            "endsAt": ends_at.isoformat(),
            "createdBy": created_by,
            "comment": comment,
        }
        response = await self._call("POST", "/api/v2/silences", json=body)
        return str(response.json()["silenceID"])

    async def expire_silence(self, silence_id: str) -> None:
        """Lift a silence now."""
        await self._call("DELETE", f"/api/v2/silence/{silence_id}")

    async def silence_state(self, silence_id: str) -> str:
        """``active``, ``pending`` or ``expired``."""
        response = await self._call("GET", f"/api/v2/silence/{silence_id}")
        return str(response.json()["status"]["state"])
