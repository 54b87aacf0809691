"""Temporary API tokens over HTTP (admin): issue (value shown once), list, revoke."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import ActorDep, AdminDep, PlaneDep
from api.schemas import ErrorBody, IssuedTokenOut, Items, TokenIssue, TokenOut

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    422: {"model": ErrorBody},
    429: {"model": ErrorBody, "description": "rate limited; see Retry-After"},
}


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
    return IssuedTokenOut.issued(issued)


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
