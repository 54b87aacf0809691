"""The HTTP API's own wire shapes: request bodies, errors, lists, and the few response views
whose shape differs from a core model.

Routes answer with core models directly wherever the wire shape is the core model's; a view
lives here only when the API hides, renames or combines fields, and it is built from the core
model in one classmethod, never by copying fields by hand.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from core.models import Actor, AuditEntry, Role
from core.models.assistant import Answer, AnswerSection, ProposedAction, Source, ToolResult
from core.security.tokens import IssuedToken, TemporaryToken

T = TypeVar("T")


# -- envelopes ------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """Machine code plus a message fit to show a person."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error the API returns."""

    error: ErrorDetail


class Items(BaseModel, Generic[T]):
    """A list response."""

    items: list[T]


class Ready(BaseModel):
    """Readiness probe answer."""

    ready: bool


class WebhookAck(BaseModel):
    """The answer Telegram gets once an update is accepted."""

    ok: bool


# -- request bodies -------------------------------------------------------------------------


class ConfirmIn(BaseModel):
    """A body that only confirms a dangerous action."""

    model_config = ConfigDict(extra="forbid")

    confirm: bool = False


class FlagUpdate(BaseModel):
    """Body of ``PUT /api/v1/flags/{name}``."""

    model_config = ConfigDict(extra="forbid")

    value: bool | str = Field(description="new value: true/false, or a venue id")
    confirm: bool = Field(default=False, description="required for dangerous changes")
    expected_version: int | None = Field(
        default=None,
        ge=0,
        description="the flag's version this change is based on (from a read); refused with 409 "
        "if it changed since. Default: the version this replica last read",
    )


class BackupCreate(BaseModel):
    """Optional body of ``POST /api/v1/backups``."""

    model_config = ConfigDict(extra="forbid")

    reason: Literal["manual", "emergency"] = "manual"


class AuditExportIn(BaseModel):
    """Body of ``POST /api/v1/audit/export``: where and which time range."""

    model_config = ConfigDict(extra="forbid")

    dest: str | None = Field(
        default=None,
        pattern=r"^s3://",
        description="s3://bucket/prefix; omitted: the server's AUDIT_EXPORT_DEST. A caller over "
        "HTTP never names a path on the server's disk",
    )
    since: datetime | None = Field(default=None, description="first instant included (UTC)")
    until: datetime | None = Field(default=None, description="first instant excluded (UTC)")


class RestoreBody(BaseModel):
    """Body of ``POST /api/v1/backups/{id}/restore``."""

    model_config = ConfigDict(extra="forbid")

    confirm: bool = Field(default=False, description="required: restoring replaces all state")


class SilenceBody(BaseModel):
    """Body of ``POST /api/v1/incidents/{id}/silence``."""

    model_config = ConfigDict(extra="forbid")

    duration: str = Field(examples=["1h"], description="e.g. 30m, 1h, 4h, 1d (max 7d)")


class AskIn(BaseModel):
    """Body of ``POST /api/v1/assistant/ask``."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=2000, examples=["what's our PnL?"])


class ExecuteIn(BaseModel):
    """Body of ``POST /api/v1/assistant/execute``: a proposal as an answer gave it."""

    model_config = ConfigDict(extra="forbid")

    proposal: ProposedAction
    confirm: bool = Field(default=False, description="needed where the action asks for it (409)")


class TokenIssue(BaseModel):
    """What to issue: a name, a role and a lifetime."""

    name: str = Field(description="who or what the token is for, e.g. ci-deploy")
    role: Role = Role.VIEWER
    ttl: str = Field(default="8h", description="lifetime: 30m, 8h, 7d (at most 90d)")


class FailoverIn(BaseModel):
    """Body of ``POST /api/v1/failover``."""

    model_config = ConfigDict(extra="forbid")

    to: str | None = Field(default=None, description="ccxt id; default: the EXCHANGE_FAILOVER flag")
    confirm: bool = Field(default=False, description="required; without it, 409 with the pre-check")
    reason: str = Field(default="", max_length=500)


class HaltIn(ConfirmIn):
    """Body of ``POST /api/v1/halt``."""

    reason: str = Field(default="", max_length=500)


class ToggleIn(BaseModel):
    """Optional body of ``POST /api/v1/cores/{name}/toggle``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(default=None, description="set this state; omitted: flip")
    confirm: bool = Field(default=False, description="needed to switch off an essential core")


# -- response views that differ from a core model -------------------------------------------


class AuditEntryOut(BaseModel):
    """One audit entry; the chain link to the previous entry (``prev_hash``) stays inside."""

    seq: int
    ts: datetime
    actor: Actor
    action: str
    target: str
    before: Any
    after: Any
    outcome: str
    detail: str
    hash: str

    @classmethod
    def of(cls, entry: AuditEntry) -> Self:
        """The API view of a sealed audit entry."""
        return cls.model_validate(entry, from_attributes=True)


class AnswerOut(BaseModel):
    """An answer: plain text (``#`` headings, ``-`` items), where it came from, and why.
    The question is not echoed back."""

    answer: str = Field(validation_alias="text", description="the answer as plain text")
    source: Source
    fallback_reason: str | None
    intent: str | None
    inference: str
    facts: list[ToolResult]
    tools_failed: list[str]
    proposals: list[ProposedAction]
    sections: list[AnswerSection]
    latency_seconds: float
    steps: int
    tokens: int

    @classmethod
    def of(cls, answer: Answer) -> Self:
        """The API view of a core answer (``text`` is sent as ``answer``)."""
        return cls.model_validate(answer, from_attributes=True)


class TokenOut(BaseModel):
    """A temporary token without its value, with its state now."""

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
    def of(cls, record: TemporaryToken, **extra: str) -> Self:
        """The API view of a core token; ``extra`` fills the fields a subclass adds."""
        return cls.model_validate({**record.model_dump(), "state": record.state(), **extra})


class IssuedTokenOut(TokenOut):
    """A freshly issued token: ``token`` is shown this once and never again."""

    token: str

    @classmethod
    def issued(cls, issued: IssuedToken) -> Self:
        """The API view of a token just issued, its value included."""
        return cls.of(issued.token, token=issued.value.get_secret_value())
