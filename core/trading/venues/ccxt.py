"""``CcxtVenue``: any ccxt exchange behind the ``Venue`` protocol, and the one translation of
ccxt's errors into the project's error tree.

ccxt's own rate limiter is on. ``<VENUE>_API_URL`` replaces the scheme and host of every REST url
(a proxy, or a test fake) while keeping each path. An order POST is never retried blindly: after a
timeout the order is looked up by its client order id, and only an order the venue does not know
is sent again (with the same client order id, which the venue refuses to duplicate).

ccxt is imported when a venue first talks to an exchange, not at start: importing it loads every
exchange class ccxt ships (about half a second), which paper trading never needs.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from core.config.settings import VenueCredentials
from core.errors import (
    InsufficientFunds,
    InvalidInput,
    LuniaError,
    NotFound,
    OrderRejected,
    VenueAuthFailed,
    VenueBanned,
    VenueError,
    VenueRateLimited,
    VenueTimeout,
    VenueUnavailable,
)
from core.models import utcnow
from core.models.venues import (
    Balance,
    Order,
    OrderRequest,
    OrderSide,
    OrderStatus,
    OrderType,
    Ticker,
    VenueMode,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Spot only, and none of the extra calls load_markets makes by default (currencies, margin
# pairs, server time), so a venue needs nothing but its spot endpoints.
_OPTIONS: dict[str, Any] = {
    "defaultType": "spot",
    "fetchCurrencies": False,
    "fetchMargins": False,
    "fetchMarkets": {"types": ["spot"]},
    "adjustForTimeDifference": False,
    "warnOnFetchOpenOrdersWithoutSymbol": False,
}
PROBE_SYMBOL = "BTC/USDT"
_HTTP_STATUS = re.compile(r"\s([1-5]\d\d)\s")
_STATUSES = {
    "open": OrderStatus.OPEN,
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELED,
    "expired": OrderStatus.CANCELED,
    "rejected": OrderStatus.REJECTED,
}


@functools.cache
def _exchange_ids() -> frozenset[str]:
    # ccxt ships one module per exchange in ccxt/async_support/, named by its id (the same list
    # as ``ccxt.async_support.exchanges``, which only an import of every exchange gives).
    spec = importlib.util.find_spec("ccxt")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ccxt is not installed")
    package = Path(next(iter(spec.submodule_search_locations))) / "async_support"
    return frozenset(p.stem for p in package.glob("*.py") if not p.stem.startswith("_"))


def known_exchange(name: str) -> bool:
    """Whether ``name`` is a ccxt exchange id."""
    return name in _exchange_ids()


def _status_of(exc: Exception) -> str:
    found = _HTTP_STATUS.search(f" {exc} ")
    return f" (HTTP {found.group(1)})" if found else ""


def translate(venue: str, exc: Exception) -> LuniaError:  # noqa: C901 - one flat mapping
    """The project error for a ccxt error; the message never carries urls, bodies or keys."""
    from ccxt.base import errors as ccxt_errors

    kind, status = type(exc).__name__, _status_of(exc)
    if isinstance(exc, ccxt_errors.OnMaintenance):
        return VenueUnavailable(venue, f"in maintenance{status}", maintenance=True)
    if isinstance(exc, ccxt_errors.RequestTimeout):
        return VenueTimeout(venue, "no answer in time; the request may have been carried out")
    if isinstance(exc, ccxt_errors.RateLimitExceeded):
        return VenueRateLimited(venue, f"rate limited{status}; slowing down")
    if isinstance(exc, ccxt_errors.DDoSProtection):
        # binance answers both 429 and 418 with DDoSProtection; only 418 is a ban.
        if status == " (HTTP 429)":
            return VenueRateLimited(venue, f"rate limited{status}; slowing down")
        return VenueBanned(venue, f"banned this client{status or ' (DDoS protection)'}")
    if isinstance(exc, ccxt_errors.NetworkError):
        return VenueUnavailable(venue, f"unreachable or failing{status} ({kind})")
    if isinstance(exc, ccxt_errors.AuthenticationError):
        return VenueAuthFailed(venue, f"refused the API credentials ({kind})")
    if isinstance(exc, ccxt_errors.InsufficientFunds):
        return InsufficientFunds(f"{venue}: insufficient balance for the order")
    if isinstance(exc, ccxt_errors.OrderNotFound):
        return NotFound(f"{venue}: no such order")
    if isinstance(exc, ccxt_errors.BadSymbol):
        return InvalidInput(f"{venue}: unknown symbol")
    if isinstance(exc, ccxt_errors.InvalidOrder | ccxt_errors.OperationRejected):
        return OrderRejected(f"{venue}: order refused ({kind})")
    if isinstance(exc, ccxt_errors.BaseError):
        return VenueError(venue, f"exchange error ({kind}){status}", retryable=False)
    return VenueUnavailable(venue, f"unexpected failure ({kind})")


def rewrite_urls(urls: Any, base: str) -> Any:
    """Every http(s) url in ``urls`` (str, or nested dict) moved to ``base``, paths kept."""
    if isinstance(urls, dict):
        return {k: rewrite_urls(v, base) for k, v in urls.items()}
    if isinstance(urls, str) and urls.startswith(("http://", "https://")):
        target, original = urlsplit(base), urlsplit(urls)
        path = target.path.rstrip("/") + original.path
        return urlunsplit((target.scheme, target.netloc, path, original.query, ""))
    return urls


def _ts(millis: Any) -> datetime:
    if isinstance(millis, int | float):
        return datetime.fromtimestamp(millis / 1000, UTC)
    return utcnow()


async def _my_trades(exchange: Any, *, symbol: str, since: int) -> list[dict[str, Any]]:
    return list(await exchange.fetch_my_trades(symbol, since))


def _order_of_trades(venue: str, symbol: str, order_id: str, trades: list[dict[str, Any]]) -> Order:
    """One order's trades as the order's fill (quantity, average price, fee in the quote)."""
    quote = symbol.partition("/")[2]
    amount = sum(float(t.get("amount") or 0) for t in trades)
    cost = sum(float(t.get("cost") or 0) or float(t.get("amount") or 0) * float(t.get("price") or 0)
               for t in trades)  # fmt: skip
    fee = sum(
        float((t.get("fee") or {}).get("cost") or 0)
        for t in trades
        if (t.get("fee") or {}).get("currency") == quote
    )
    first = min(trades, key=lambda t: t.get("timestamp") or 0)
    return Order(
        client_order_id=order_id,
        venue_order_id=order_id,
        venue=venue,
        symbol=symbol,
        side=OrderSide(str(first.get("side") or "buy")),
        type=OrderType.LIMIT if first.get("type") == "limit" else OrderType.MARKET,
        amount=amount,
        filled=amount,
        average=cost / amount if amount else None,
        fee=fee,
        status=OrderStatus.FILLED,
        created_at=_ts(first.get("timestamp")),
        updated_at=_ts(max(t.get("timestamp") or 0 for t in trades)),
    )


class CcxtVenue:
    """One ccxt exchange, live or sandbox, with credentials from ``Settings``."""

    def __init__(
        self,
        name: str,
        credentials: VenueCredentials,
        *,
        sandbox: bool = False,
        timeout_seconds: float = 10.0,
    ) -> None:
        if not known_exchange(name):
            raise InvalidInput(f"{name!r} is not a ccxt exchange id")
        self.name = name
        self.mode = VenueMode.SANDBOX if sandbox else VenueMode.LIVE
        self._credentials = credentials
        self._sandbox = sandbox
        self._timeout_ms = int(timeout_seconds * 1000)
        self._exchange: Any = None

    async def start(self) -> None:
        """Build the ccxt client (markets load on first use)."""
        if self._exchange is not None:
            return
        import ccxt.async_support as ccxt_async
        from ccxt.base import errors as ccxt_errors

        config: dict[str, Any] = {
            "enableRateLimit": True,
            "timeout": self._timeout_ms,
            "options": dict(_OPTIONS),
        }
        c = self._credentials
        for key, value in (("apiKey", c.api_key), ("secret", c.secret), ("password", c.password)):
            if value is not None:
                config[key] = value.get_secret_value()
        exchange = getattr(ccxt_async, self.name)(config)
        try:
            if self._sandbox:
                exchange.set_sandbox_mode(True)
            if c.api_url:
                exchange.urls["api"] = rewrite_urls(exchange.urls["api"], c.api_url)
        except ccxt_errors.BaseError as exc:
            await exchange.close()
            raise VenueError(self.name, f"cannot be set up ({type(exc).__name__})") from None
        self._exchange = exchange

    async def close(self) -> None:
        """Close ccxt's HTTP session; safe to call twice."""
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            await exchange.close()

    async def _call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        if self._exchange is None:
            await self.start()
        from ccxt.base import errors as ccxt_errors  # imported by start()

        try:
            if not self._exchange.markets:
                await self._exchange.load_markets()
            return await fn(self._exchange)
        except ccxt_errors.BaseError as exc:
            raise translate(self.name, exc) from None

    async def ticker(self, symbol: str) -> Ticker:
        """The venue's ticker for ``symbol``."""
        raw = await self._call(lambda ex: ex.fetch_ticker(symbol))
        last = float(raw.get("last") or raw.get("close") or 0.0)
        return Ticker(
            symbol=symbol,
            bid=float(raw.get("bid") or last),
            ask=float(raw.get("ask") or last),
            last=last,
            ts=_ts(raw.get("timestamp")),
        )

    async def balances(self) -> dict[str, Balance]:
        """Non-zero balances from the venue's account."""
        raw = await self._call(lambda ex: ex.fetch_balance())
        free, used = raw.get("free") or {}, raw.get("used") or {}
        return {
            asset: Balance(asset=asset, free=float(free.get(asset) or 0), used=float(amount or 0))
            for asset, amount in used.items()
            if float(free.get(asset) or 0) or float(amount or 0)
        }

    def _order(self, raw: dict[str, Any], request: OrderRequest) -> Order:
        status = _STATUSES.get(str(raw.get("status")), OrderStatus.OPEN)
        average = raw.get("average")
        fee = raw.get("fee") or {}
        fee_cost = float(fee.get("cost") or 0.0)
        base, _, quote = request.symbol.partition("/")
        if fee.get("currency") == base and average:
            fee_cost *= float(average)
        elif fee.get("currency") not in (quote, None):
            fee_cost = 0.0  # paid in a third asset (BNB): not part of this symbol's PnL
        return Order(
            client_order_id=str(raw.get("clientOrderId") or request.client_order_id),
            venue_order_id=str(raw["id"]) if raw.get("id") else None,
            venue=self.name,
            symbol=request.symbol,
            side=request.side,
            type=request.type,
            amount=float(raw.get("amount") or request.amount),
            price=float(raw["price"]) if raw.get("price") else request.price,
            filled=float(raw.get("filled") or 0.0),
            average=float(average) if average else None,
            fee=fee_cost,
            status=status,
            created_at=_ts(raw.get("timestamp")),
        )

    async def _create(self, request: OrderRequest) -> dict[str, Any]:
        params = {"clientOrderId": request.client_order_id}
        price = request.price if request.type is OrderType.LIMIT else None
        return await self._call(
            lambda ex: ex.create_order(
                request.symbol,
                request.type.value,
                request.side.value,
                request.amount,
                price,
                params,
            )
        )

    async def place(self, request: OrderRequest) -> Order:
        """Send the order once; after a timeout, look it up by client order id first."""
        try:
            raw = await self._create(request)
        except VenueTimeout:
            logger.warning(
                "order %s on %s timed out; looking it up before anything is resent",
                request.client_order_id,
                self.name,
            )
            found = await self._reconcile(request)
            if found is not None:
                logger.info("order %s was placed after all", request.client_order_id)
                return found
            logger.warning("%s does not know order %s; sending it once more", self.name, request)
            raw = await self._create(request)
        order = self._order(raw, request)
        if raw.get("status") is None or (order.type is OrderType.MARKET and order.filled == 0):
            # Some venues (okx) acknowledge with ids only: read the order's actual state.
            fetched = await self.fetch_order(request.symbol, request.client_order_id)
            if fetched is not None:
                order = fetched
        return order

    async def _reconcile(self, request: OrderRequest) -> Order | None:
        try:
            return await self.fetch_order(request.symbol, request.client_order_id)
        except VenueError as exc:
            raise VenueTimeout(
                self.name,
                f"order {request.client_order_id} timed out and could not be looked up; "
                "it was NOT resent: check open orders before retrying",
            ) from exc

    async def fetch_order(self, symbol: str, client_order_id: str) -> Order | None:
        """The order with our client order id, or None if the venue does not know it."""
        request = OrderRequest(
            symbol=symbol, side=OrderSide.BUY, amount=1, client_order_id=client_order_id
        )
        try:
            raw = await self._call(
                lambda ex: ex.fetch_order("", symbol, {"clientOrderId": client_order_id})
            )
        except NotFound:
            return None
        order = self._order(raw, request)
        return order.model_copy(
            update={
                "side": OrderSide(str(raw.get("side") or "buy")),
                "type": OrderType.LIMIT if raw.get("type") == "limit" else OrderType.MARKET,
            }
        )

    async def open_orders(self, symbol: str | None = None) -> list[Order]:
        """Orders resting on the venue."""
        raws = await self._call(lambda ex: ex.fetch_open_orders(symbol))
        orders = []
        for raw in raws:
            request = OrderRequest(
                symbol=str(raw["symbol"]),
                side=OrderSide(str(raw.get("side") or "buy")),
                amount=float(raw.get("amount") or 1),
                type=OrderType.LIMIT if raw.get("type") == "limit" else OrderType.MARKET,
                client_order_id=str(raw.get("clientOrderId") or raw.get("id")),
            )
            orders.append(self._order(raw, request))
        return orders

    async def filled_since(self, since: datetime, symbols: Sequence[str]) -> list[Order]:
        """Orders with trades at or after ``since`` (``fetch_my_trades`` per symbol), their
        trades summed per order; the venue's order id stands in for a client order id."""
        found: list[Order] = []
        start = int(since.timestamp() * 1000)
        for symbol in symbols:
            trades = await self._call(functools.partial(_my_trades, symbol=symbol, since=start))
            by_order: dict[str, list[dict[str, Any]]] = {}
            for trade in trades:
                by_order.setdefault(str(trade.get("order") or trade.get("id")), []).append(trade)
            found += [_order_of_trades(self.name, symbol, oid, t) for oid, t in by_order.items()]
        return found

    async def cancel(self, order: Order) -> Order:
        """Cancel a resting order."""
        await self._call(
            lambda ex: ex.cancel_order(
                order.venue_order_id or "", order.symbol, {"clientOrderId": order.client_order_id}
            )
        )
        return order.model_copy(update={"status": OrderStatus.CANCELED, "updated_at": utcnow()})

    async def probe(self) -> None:
        """Read markets and a ticker; raise the translated error if the venue fails."""
        await self.ticker(PROBE_SYMBOL)
