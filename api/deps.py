"""Request dependencies: the control plane and the caller, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.control_plane import ControlPlane
from core.errors import PermissionDenied
from core.models import Actor, Role
from core.security.access import require

_bearer = HTTPBearer(auto_error=False, description="API token from API_TOKENS")


def get_plane(request: Request) -> ControlPlane:
    """The running control plane of this app."""
    plane: ControlPlane = request.app.state.plane
    return plane


PlaneDep = Annotated[ControlPlane, Depends(get_plane)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def actor_for_token(plane: ControlPlane, token: str) -> Actor:
    """The API actor for a token (configured or temporary), or 401 saying why not."""
    actor = plane.tokens.resolve(token)
    if actor is None:
        check = await plane.temporary_tokens.resolve(token)
        if check is not None and check.refusal is not None:
            plane.metrics.auth_denied.labels("api", "expired_token").inc()
            raise HTTPException(401, check.refusal, headers={"WWW-Authenticate": "Bearer"})
        actor = check.actor if check is not None else None
    if actor is None:
        plane.metrics.auth_denied.labels("api", "bad_token").inc()
        raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return actor


async def current_actor(plane: PlaneDep, credentials: Credentials) -> Actor:
    """The API actor for the bearer token (configured or temporary), or 401."""
    if credentials is None:
        plane.metrics.auth_denied.labels("api", "missing_token").inc()
        raise HTTPException(
            401,
            "missing bearer token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return await actor_for_token(plane, credentials.credentials)


ActorDep = Annotated[Actor, Depends(current_actor)]


def _role(needed: Role) -> object:
    def check(plane: PlaneDep, actor: ActorDep) -> Actor:
        try:
            require(actor, needed, "this endpoint")
        except PermissionDenied:
            plane.metrics.auth_denied.labels("api", "role").inc()
            raise
        return actor

    return Depends(check)


ViewerDep = Annotated[Actor, _role(Role.VIEWER)]
OperatorDep = Annotated[Actor, _role(Role.OPERATOR)]
AdminDep = Annotated[Actor, _role(Role.ADMIN)]
