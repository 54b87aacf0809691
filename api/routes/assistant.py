"""The assistant over HTTP: ask a question, diagnose an incident, carry out a proposal, see
which assistant answers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.schemas import AnswerOut, AskIn, ErrorBody, ExecuteIn
from core.assistant.service import ActionResult, AssistantStatus

router = APIRouter(tags=["assistant"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody},
    422: {"model": ErrorBody},
}


@router.post("/api/v1/assistant/ask", response_model=AnswerOut, responses=_ERRORS)
async def ask(body: AskIn, plane: PlaneDep, actor: ViewerDep) -> AnswerOut:
    """Ask a question; answered by the LLM, or by the rule-based fallback (``source``)."""
    return AnswerOut.of(await plane.assistant.ask(body.question, actor))


@router.post(
    "/api/v1/assistant/execute",
    response_model=ActionResult,
    responses={
        **_ERRORS,
        409: {"model": ErrorBody, "description": "confirmation required, or refused in this state"},
    },
)
async def execute(body: ExecuteIn, plane: PlaneDep, actor: ActorDep) -> ActionResult:
    """Carry out a proposed action as the caller: its role check, audit and confirmation."""
    return await plane.assistant.execute(body.proposal, actor, confirm=body.confirm)


@router.get("/api/v1/assistant", response_model=AssistantStatus, responses=_ERRORS)
async def assistant_status(plane: PlaneDep, _: ViewerDep) -> AssistantStatus:
    """Whether questions go to the LLM now (configured, LLM_RATE_LIMITED, circuit)."""
    return plane.assistant.status()


@router.post(
    "/api/v1/incidents/{incident_id}/diagnose", response_model=AnswerOut, responses=_ERRORS
)
async def diagnose(incident_id: int, plane: PlaneDep, actor: ViewerDep) -> AnswerOut:
    """Likely causes, the runbook's next steps and proposed actions for one incident."""
    return AnswerOut.of(await plane.assistant.diagnose(incident_id, actor))
