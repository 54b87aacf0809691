"""Alertmanager API v2 client: silences created from chat are real Alertmanager silences."""

from __future__ import annotations

from datetime import datetime

import httpx

from core.errors import InvalidInput, Unavailable

# Labels that say what kind of alert it is, not what it is about: a silence matching only these
# would mute that alert for every instance, job and venue, far more than the one incident.
KIND_LABELS = frozenset({"alertname", "severity", "security"})


def silence_matchers(labels: dict[str, str]) -> list[dict[str, object]]:
    """Exact matchers on ``labels``, the labels every alert of the incident's group shares
    (so the silence covers the group and no broader set); ``InvalidInput`` when they name no
    more than the alert's kind, since such a silence would match far more than the group."""
    if not set(labels) - KIND_LABELS:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "no labels"
        raise InvalidInput(
            f"not silencing: the incident's alert group carries only {shown} in common, so an "
            "Alertmanager silence would match too much: it would mute every such alert, not "
            "just this group; acknowledge it instead, or silence it in Alertmanager with a "
            "narrower matcher"
        )
    return [
        {"name": k, "value": v, "isRegex": False, "isEqual": True}
        for k, v in sorted(labels.items())
    ]


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
        """Silence alerts carrying exactly ``labels`` until ``ends_at``; returns the silence id
        (``InvalidInput`` when the labels are too few for a matcher as narrow as the incident)."""
        body = {
            "matchers": silence_matchers(labels),
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
