"""Temporary API tokens over HTTP (admin): issue (value shown once), list, revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import ActorDep, AdminDep, PlaneDep
from api.schemas import ErrorBody, Items
from core.models import Role
from core.security.tokens import TemporaryToken

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    422: {"model": ErrorBody},
    429: {"model": ErrorBody, "description": "rate limited; see Retry-After"},
}


class TokenIssue(BaseModel):
    """What to issue: a name, a role and a lifetime."""

    name: str = Field(description="who or what the token is for, e.g. ci-deploy")
    role: Role = Role.VIEWER
    ttl: str = Field(default="8h", description="lifetime: 30m, 8h, 7d (at most 90d)")


class TokenOut(BaseModel):
    """A temporary token without its value."""

    id: str
    name: str
    role: Role
    state: str = Field(description="live, expired or revoked")
    issued_at: datetime
    expires_at: datetime
    issued_by: str
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    @classmethod
    def of(cls, token: TemporaryToken) -> TokenOut:
        """The API view of a core token."""
        return cls(**token.model_dump(), state=token.state())


class IssuedTokenOut(TokenOut):
    """A freshly issued token: ``token`` is shown this once and never again."""

    token: str


@router.get("", response_model=Items[TokenOut], responses=_ERRORS)
async def list_tokens(plane: PlaneDep, actor: AdminDep) -> Items[TokenOut]:
    """Temporary tokens (admin), newest first: names, roles, expiry, issuer; never values."""
    found = await plane.temporary_tokens.list(actor)
    return Items[TokenOut](items=[TokenOut.of(t) for t in found])


@router.post(
    "",
    response_model=IssuedTokenOut,
    status_code=201,
    responses={**_ERRORS, 409: {"model": ErrorBody, "description": "a live token has the name"}},
)
async def issue_token(plane: PlaneDep, actor: ActorDep, body: TokenIssue) -> IssuedTokenOut:
    """Issue a temporary token (admin); the response is the only place its value appears."""
    issued = await plane.temporary_tokens.issue(actor, name=body.name, role=body.role, ttl=body.ttl)
    return IssuedTokenOut(
        **TokenOut.of(issued.token).model_dump(), token=issued.value.get_secret_value()
    )


@router.delete(
    "/{token_id}",
    response_model=TokenOut,
    responses={
        **_ERRORS,
        404: {"model": ErrorBody, "description": "no such token"},
        409: {"model": ErrorBody, "description": "already revoked"},
    },
)
async def revoke_token(token_id: str, plane: PlaneDep, actor: ActorDep) -> TokenOut:
    """Revoke a temporary token (admin); it stops working at once."""
    return TokenOut.of(await plane.temporary_tokens.revoke(actor, token_id))
