"""Request dependencies: the control plane and the caller, as ``Annotated`` aliases.

Who a token belongs to, and who may call what, is decided in core (``Authenticator``,
``require``); this module only turns core's refusals into 401 / 403 and has them recorded.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.control_plane import ControlPlane
from core.errors import PermissionDenied, Unauthenticated
from core.models import Actor, Role
from core.security.access import require

_bearer = HTTPBearer(auto_error=False, description="API token from API_TOKENS")


def get_plane(request: Request) -> ControlPlane:
    """The running control plane of this app."""
    plane: ControlPlane = request.app.state.plane
    return plane


PlaneDep = Annotated[ControlPlane, Depends(get_plane)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def caller_of(request: Request) -> str:
    """Who is calling, for the audit entry of a refused request: the client address."""
    return f"client:{request.client.host if request.client else 'unknown'}"


def unauthorized(exc: Unauthenticated) -> HTTPException:
    """Core's refusal as the HTTP answer: 401 with a bearer challenge."""
    return HTTPException(401, exc.message, headers={"WWW-Authenticate": "Bearer"})


# Set in a request's state once its credentials are accepted. Request metrics label the 4xx
# answers of such requests by route; an anonymous client's 4xx share one series (api/app.py).
AUTHENTICATED = "authenticated"


def mark_authenticated(request: Request) -> None:
    """Note that this request's credentials were accepted (its refusals keep their route label)."""
    setattr(request.state, AUTHENTICATED, True)


async def current_actor(plane: PlaneDep, request: Request, credentials: Credentials) -> Actor:
    """The API actor for the bearer token (configured or temporary), or 401."""
    presented = credentials.credentials if credentials is not None else None
    try:
        actor = await plane.authenticator.authenticate(presented, caller=caller_of(request))
    except Unauthenticated as exc:
        raise unauthorized(exc) from None
    mark_authenticated(request)
    return actor


ActorDep = Annotated[Actor, Depends(current_actor)]


def _role(needed: Role) -> object:
    async def check(plane: PlaneDep, request: Request, actor: ActorDep) -> Actor:
        try:
            require(actor, needed, "this endpoint")
        except PermissionDenied as exc:
            await plane.refusals.record(
                actor,
                "api.forbidden",
                "role",
                channel="api",
                target=f"{request.method} {request.url.path}",
                detail=exc.message,
            )
            raise
        return actor

    return Depends(check)


ViewerDep = Annotated[Actor, _role(Role.VIEWER)]
OperatorDep = Annotated[Actor, _role(Role.OPERATOR)]
AdminDep = Annotated[Actor, _role(Role.ADMIN)]
