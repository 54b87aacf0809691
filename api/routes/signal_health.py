"""The Signal Health page (runbook §5, ``FRONTEND_SIGNAL_HEALTH_ENABLED``): HTML and JSON.

``GET /signal-health`` is a server-rendered page (no scripts, no front-end build) that reloads
itself every ``SIGNAL_HEALTH_REFRESH_SECONDS``; ``GET /api/v1/signal-health`` is the same report as
JSON. Both need a viewer token and both are absent (the ordinary 404) while the flag is off.

A browser cannot send a bearer header, so the page also takes the token once as ``?token=``:
it is checked, moved into an HttpOnly, SameSite=Strict cookie scoped to this page, and the
browser is redirected to the bare URL so the token leaves the address bar and the history.
The cookie holds the token itself, so expiry and revocation apply on the next reload.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Annotated

from fastapi import APIRouter, Cookie, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.deps import ActorDep, PlaneDep, caller_of
from api.schemas import ErrorBody
from core.control_plane import ControlPlane
from core.errors import PermissionDenied, Unauthenticated
from core.flags import FlagService
from core.models import Role
from core.ops.signal_health import Freshness, SignalHealth
from core.security.access import require

FLAG = "FRONTEND_SIGNAL_HEALTH_ENABLED"
PAGE = "/signal-health"
COOKIE = "lunia_signal_health"
COOKIE_MAX_AGE = 8 * 3600
# The page's own policy: inline styles only, nothing else may load, run, frame or submit.
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

router = APIRouter(tags=["signal health"])


def _require_flag(flags: FlagService) -> None:
    """Behave exactly like an unknown route while the page is switched off."""
    if not flags.enabled(FLAG):
        raise HTTPException(404, "Not Found")


@router.get(
    "/api/v1/signal-health",
    response_model=SignalHealth,
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)
async def signal_health_json(plane: PlaneDep, actor: ActorDep) -> SignalHealth:
    """Per-core signal freshness and rates, venues, assistant split, open incidents (viewer)."""
    _require_flag(plane.flags)
    require(actor, Role.VIEWER, "the signal health report")
    return await plane.signal_health.report()


@router.get(PAGE, response_class=HTMLResponse, include_in_schema=True)
async def signal_health_page(
    request: Request,
    token: Annotated[str | None, Query(description="an API token, moved into a cookie")] = None,
    cookie: Annotated[str | None, Cookie(alias=COOKIE)] = None,
) -> Response:
    """The page; authenticate with a bearer header, ``?token=`` once, or the page's cookie."""
    plane: ControlPlane = request.app.state.plane
    _require_flag(plane.flags)
    header = request.headers.get("authorization", "")
    bearer = header[7:].strip() if header[:7].lower() == "bearer " else None
    presented = token or bearer or cookie
    if not presented:
        return _page_error(401, "Sign in", _SIGN_IN)
    try:
        actor = await plane.authenticator.authenticate(presented, caller=caller_of(request))
        require(actor, Role.VIEWER, "the signal health page")
    except Unauthenticated as exc:
        response = _page_error(401, "Sign in", f"{exc.message}. {_SIGN_IN}")
        response.delete_cookie(COOKIE, path=PAGE)
        return response
    except PermissionDenied as exc:
        return _page_error(403, "Not allowed", exc.message)
    if token is not None:
        redirect = RedirectResponse(PAGE, status_code=303)
        redirect.set_cookie(
            COOKIE,
            token,
            max_age=COOKIE_MAX_AGE,
            path=PAGE,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        redirect.headers["cache-control"] = "no-store"
        return redirect
    report = await plane.signal_health.report()
    return _html(200, render_page(report))


_SIGN_IN = (
    "Open this page once as /signal-health?token=YOUR_TOKEN (a viewer token is enough; an admin "
    "can issue a temporary one with /token issue NAME viewer 8h in a private chat with the bot)."
)


def _html(status: int, body: str) -> HTMLResponse:
    return HTMLResponse(
        body,
        status_code=status,
        headers={"content-security-policy": PAGE_CSP, "cache-control": "no-store"},
    )


def _page_error(status: int, title: str, message: str) -> HTMLResponse:
    return _html(status, _document(title, f"<h1>{escape(title)}</h1><p>{escape(message)}</p>", 0))


# -- rendering ------------------------------------------------------------------------------

_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;padding:12px;background:#111;color:#eee}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;width:100%}td,th{padding:4px 6px;border-bottom:1px solid #333;
text-align:left;vertical-align:top}th{color:#aaa;font-weight:normal}
.ok,.fresh{color:#5d5}.degraded,.stale,.warning{color:#fc3}.crashing,.critical,.down{color:#f55}
.off,.muted,.info{color:#999}.num{text-align:right;font-variant-numeric:tabular-nums}
"""


def _document(title: str, body: str, refresh: int) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"{meta}<title>{escape(title)} · Lunia</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _row(cells: list[str], attrs: str = "") -> str:
    return f"<tr{attrs}>" + "".join(cells) + "</tr>"


def _td(text: object, cls: str = "") -> str:
    klass = f' class="{escape(cls)}"' if cls else ""
    return f"<td{klass}>{escape(str(text))}</td>"


def _table(headers: list[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render_page(report: SignalHealth) -> str:
    """The whole page for one report (every dynamic value escaped)."""
    engine = report.engine
    mode = engine.mode.value
    header = (
        f'<h1>Signal Health <span class="{report.status}" id="status">{report.status}</span></h1>'
        f'<p class="muted">engine {escape(mode)} on {escape(engine.active_venue)} · '
        f"generated {_when(report.generated_at)} · reloads every {report.refresh_seconds} s</p>"
    )
    cores = _table(
        ["core", "signal", "last tick", "last signal", "ticks/min", "signals/min", "error"],
        [
            _row(
                [
                    _td(c.name + (" (essential)" if c.essential else "")),
                    _td(c.freshness.value, c.freshness.value),
                    _td(_age(c.tick_age_seconds)),
                    _td(_age(c.signal_age_seconds)),
                    _td(f"{c.ticks_per_minute:.1f}", "num"),
                    _td(f"{c.signals_per_minute:.1f}", "num"),
                    _td(
                        c.last_error or "", "crashing" if c.freshness is Freshness.CRASHING else ""
                    ),
                ],
                f' data-core="{escape(c.name)}" data-freshness="{c.freshness.value}"',
            )
            for c in report.cores
        ],
        "no cores registered",
    )
    venues = _table(
        ["venue", "role", "mode", "health", "failures", "last probe", "error"],
        [
            _row(
                [
                    _td(v.name + (" ◀ active" if v.active else "")),
                    _td(v.role),
                    _td(v.mode.value),
                    _td(
                        "unknown" if v.healthy is None else "ok" if v.healthy else "down",
                        "muted" if v.healthy is None else "ok" if v.healthy else "down",
                    ),
                    _td(v.consecutive_failures, "num"),
                    _td(_when(v.last_probe_at)),
                    _td(v.last_error or ""),
                ],
                f' data-venue="{escape(v.name)}"',
            )
            for v in report.venues
        ],
        "no venues configured",
    )
    a = report.assistant
    share = "no answers yet" if a.llm_share is None else f"{a.llm_share:.0%} from the LLM"
    assistant = (
        f'<p id="assistant">answering with <b>{escape(a.answering_with)}</b> '
        f"(circuit {escape(a.circuit.value)}) · {a.llm_answers} LLM / {a.fallback_answers} "
        f"fallback answers since start · {escape(share)}</p>"
    )
    counts = ", ".join(f"{n} {s.value}" for s, n in report.open_incidents.items() if n) or "none"
    incidents = _table(
        ["#", "severity", "state", "title", "source", "count", "open for"],
        [
            _row(
                [
                    _td(i.id),
                    _td(i.severity.value, i.severity.value),
                    _td(i.state.value),
                    _td(i.title),
                    _td(i.source),
                    _td(i.count, "num"),
                    _td(_age(i.age_seconds).removesuffix(" ago")),
                ],
                f' data-incident="{i.id}"',
            )
            for i in report.incidents
        ],
        "no open incidents",
    )
    body = (
        f"{header}<h2>Cores</h2>{cores}<h2>Venues</h2>{venues}<h2>Assistant</h2>{assistant}"
        f"<h2>Open incidents ({escape(counts)})</h2>{incidents}"
    )
    return _document("Signal Health", body, report.refresh_seconds)
