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
        ├── ConfirmationRequired    dangerous action asked without confirmation (409)
        ├── Conflict                impossible state transition (409)
        └── Unavailable             a dependency is down; ``retryable`` says whether to try again

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


class ConfirmationRequired(OperationError):
    """The operation is dangerous and must be repeated with an explicit confirmation."""

    code = "confirmation_required"


class Conflict(OperationError):
    """The operation is impossible in the object's current state."""

    code = "conflict"


class Unavailable(OperationError):
    """A dependency needed for the operation is down."""

    code = "unavailable"

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
