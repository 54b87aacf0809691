"""Heartbeats: how each process of a deployment tells the others it is alive.

Low in the layers because the store keeps them: every process of a split deployment (``api``,
``bot``, ``worker``) writes its own record every few seconds, and any replica reads them all to
report the whole deployment (``core.ops.cluster``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class Heartbeat(BaseModel):
    """One process's latest beat: who it is, whether it leads its role, what it publishes."""

    role: str  # a ProcessRole value: api | bot | worker | all
    instance: str  # unique per process (host, pid, random suffix)
    version: str
    started_at: datetime
    seen_at: datetime
    expires_at: datetime  # absent for everyone after this: the process missed its beats
    leads: bool  # holds its role's lease (always true for a process without a lease)
    # What this process publishes for the replicas that cannot see it themselves (the leading
    # worker: venue health and core signal freshness), as JSON.
    views: dict[str, Any] = Field(default_factory=dict)
