"""The one exception tree of the control plane.

Every error a person may see is an ``OperationError``; adapters convert it once (the API in one
exception handler, the bot in one error handler, the CLI in ``main``)::

    LuniaError                      anything raised on purpose by this project
    ├── ConfigError                 a bad setting; stops startup with one line naming the variable
    ├── StoreError                  the state store failed (disk, corruption, Redis lost)
    │   └── StoreUnavailable        retryable: the store could not be reached
    └── OperationError              refused or failed operation, message fit to show a person
        ├── InvalidInput            the request itself is wrong (400/422)
        ├── NotFound                no such flag / incident / backup (404)
        ├── PermissionDenied        the actor's role does not allow this (403)
        ├── Unauthenticated         no, unknown, expired or revoked credentials (401)
        ├── ConfirmationRequired    dangerous action asked without confirmation (409)
        ├── Conflict                impossible state transition (409)
        │   └── OrderRejected       the engine or the venue refused an order (halted, read-only)
        │       ├── RiskLimitExceeded   over a per-symbol or total exposure limit
        │       └── InsufficientFunds   the venue has not enough balance for it
        ├── Queued                  Redis unreachable: the action was spooled, applied later (202)
        └── Unavailable             a dependency is down; ``retryable`` says whether to try again
            └── VenueError          an exchange call failed (ccxt errors, translated once)
                ├── VenueUnavailable    retryable: network, 5xx, maintenance
                │   └── VenueTimeout    no answer in time: the request may have been carried out
                ├── VenueRateLimited    retryable after a pause: 429
                ├── VenueBanned         418 / DDoS protection: stop calling, fail over
                └── VenueAuthFailed     credentials refused; not retryable
            └── LlmError            an LLM call failed (openai errors, translated once)
                ├── LlmRateLimited      retryable after ``retry_after``: 429
                ├── LlmUnavailable      retryable: 5xx, connection refused
                │   └── LlmTimeout      no answer within LLM_TIMEOUT_SECONDS
                └── LlmRejected         auth, bad request, unusable reply, budget; not retryable

Library errors (sqlite3, redis, ccxt, openai) are translated where those libraries are called,
with ``raise X(...) from e``.
"""

from __future__ import annotations


class LuniaError(Exception):
    """Base of every error this project raises on purpose."""

    retryable: bool = False


class ConfigError(LuniaError):
    """A setting is missing or invalid; the message names the variable."""


class StoreError(LuniaError):
    """The state store failed."""


class StoreUnavailable(StoreError):
    """The state store could not be reached; trying again later may work."""

    retryable = True


class OperationError(LuniaError):
    """An operation was refused or failed; the message is shown to a person as is."""

    code = "operation_failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(OperationError):
    """The request is malformed or names an invalid value."""

    code = "invalid_input"


class NotFound(OperationError):
    """The named object does not exist."""

    code = "not_found"


class PermissionDenied(OperationError):
    """The actor's role does not allow the operation."""

    code = "forbidden"


class Unauthenticated(OperationError):
    """The caller presented no credentials, or ones that are unknown, expired or revoked;
    ``reason`` (missing_token, bad_token, expired_token) is what metrics and audit record."""

    code = "unauthenticated"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConfirmationRequired(OperationError):
    """The operation is dangerous and must be repeated with an explicit confirmation."""

    code = "confirmation_required"


class Conflict(OperationError):
    """The operation is impossible in the object's current state."""

    code = "conflict"


class Queued(OperationError):
    """The store (Redis) is unreachable: the action was kept in the local spool and will be
    applied, in order, when it is back. Not a failure: the API answers 202."""

    code = "queued"


class Unavailable(OperationError):
    """A dependency needed for the operation is down."""

    code = "unavailable"

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class OrderRejected(Conflict):
    """An order was refused before or by the venue; nothing was traded."""

    code = "order_rejected"


class RiskLimitExceeded(OrderRejected):
    """The order would take exposure over a configured limit."""

    code = "risk_limit"


class InsufficientFunds(OrderRejected):
    """The venue has not enough balance for the order."""

    code = "insufficient_funds"


class VenueError(Unavailable):
    """An exchange call failed; ``venue`` names the exchange."""

    code = "venue_error"

    def __init__(self, venue: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(f"{venue}: {message}", retryable=retryable)
        self.venue = venue


class VenueUnavailable(VenueError):
    """The venue is unreachable, failing (5xx) or in maintenance; retryable."""

    code = "venue_unavailable"

    def __init__(self, venue: str, message: str, *, maintenance: bool = False) -> None:
        super().__init__(venue, message)
        self.maintenance = maintenance


class VenueTimeout(VenueUnavailable):
    """The venue did not answer in time; the request may still have been carried out."""

    code = "venue_timeout"


class VenueRateLimited(VenueError):
    """The venue asked us to slow down (429); retryable after a pause."""

    code = "venue_rate_limited"


class VenueBanned(VenueError):
    """The venue banned this client (418 / DDoS protection); do not call it again soon."""

    code = "venue_banned"

    def __init__(self, venue: str, message: str) -> None:
        super().__init__(venue, message, retryable=False)


class VenueAuthFailed(VenueError):
    """The venue refused the credentials; fixing them needs a person."""

    code = "venue_auth_failed"

    def __init__(self, venue: str, message: str) -> None:
        super().__init__(venue, message, retryable=False)


class LlmError(Unavailable):
    """The LLM call failed; ``retryable`` errors open the assistant's circuit."""

    code = "llm_error"


class LlmRateLimited(LlmError):
    """The LLM server asked us to slow down (429); ``retry_after`` seconds when it said."""

    code = "llm_rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LlmUnavailable(LlmError):
    """The LLM server is unreachable or failing (5xx); retryable."""

    code = "llm_unavailable"


class LlmTimeout(LlmUnavailable):
    """The LLM server did not answer in time; retryable."""

    code = "llm_timeout"


class LlmRejected(LlmError):
    """The LLM server refused the request or answered unusably; retrying will not help."""

    code = "llm_rejected"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)
