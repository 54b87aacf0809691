"""One conversion of errors into the API's JSON error format: ``{"error": {code, message}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import (
    ConfirmationRequired,
    Conflict,
    InvalidInput,
    LuniaError,
    NotFound,
    OperationError,
    PermissionDenied,
    Queued,
    StoreError,
    Unavailable,
)

logger = logging.getLogger(__name__)

_STATUS: dict[type[OperationError], int] = {
    InvalidInput: 422,
    NotFound: 404,
    PermissionDenied: 403,
    ConfirmationRequired: 409,
    Queued: 202,
    Conflict: 409,
    Unavailable: 503,
}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one error body shape."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _status_for(exc: OperationError) -> int:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 400


async def _operation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OperationError)  # noqa: S101 - registered for this type only
    return error_response(_status_for(exc), exc.code, exc.message)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        if err.get("type") == "json_invalid":
            parts.append(f"body is not valid JSON ({err.get('msg', '')})")
        else:
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return error_response(422, "invalid_input", "; ".join(parts) or "invalid request")


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = "no such endpoint; see /docs for the API"
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("state store failed on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        503, "unavailable", "the state store is unavailable; nothing was stored, retry shortly"
    )


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    message = str(exc) if isinstance(exc, LuniaError) else "internal error; see the server log"
    return error_response(500, "internal", message)


def install_error_handlers(app: FastAPI) -> None:
    """Register the conversions on ``app``."""
    app.add_exception_handler(OperationError, _operation_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(StoreError, _store_error)
    # Registered on Exception, Starlette runs this in its outermost middleware: the client gets
    # the JSON body and the error is still logged with its traceback.
    app.add_exception_handler(Exception, _internal_error)
