"""Loopback fakes of the Binance and OKX spot REST APIs, for real ``ccxt.async_support`` code.

Each fake is an aiohttp server on a free 127.0.0.1 port that answers in the exchange's own
shapes (binance ``/api/v3/...``, okx ``/api/v5/...``), keeps balances and orders, records every
request, and injects faults on demand: answer every call with an HTTP status (503 outage,
418 ban), or hold an order POST past the client's timeout while still creating the order.
Signatures are not verified.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

DEFAULT_PRICES = {"BTC/USDT": 60000.0, "ETH/USDT": 3000.0}
DEFAULT_BALANCES = {"USDT": 100000.0, "BTC": 1.0, "ETH": 10.0}
FEE_RATE = 0.001
PARAMS = web.RequestKey("params", dict)


@dataclass
class Recorded:
    """One request as the fake saw it."""

    method: str
    path: str
    params: dict[str, str]
    status: int = 200


@dataclass
class FakeOrder:
    """An order held by a fake exchange."""

    order_id: int
    client_order_id: str
    symbol: str
    side: str
    type: str
    amount: float
    price: float | None
    status: str  # open | filled | canceled
    filled: float = 0.0
    average: float | None = None
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))


class FakeExchange(LoopbackServer):
    """What both fakes share: a server, state, request log and fault injection."""

    name = "exchange"

    def __init__(self, host: str = "127.0.0.1") -> None:
        """Prepare the fake; ``start()`` (or ``async with``) serves it."""
        super().__init__(host)
        self.prices = dict(DEFAULT_PRICES)
        self.balances = dict(DEFAULT_BALANCES)
        self.orders: dict[str, FakeOrder] = {}
        self.requests: list[Recorded] = []
        self.fault: int | None = None
        self.order_delay = 0.0
        self._delayed_orders = 0
        self._ids = itertools.count(1000)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, to put in ``<VENUE>_API_URL``."""
        return self.origin

    def routes(self, app: web.Application) -> None:
        """Add the exchange's endpoints."""
        raise NotImplementedError

    def build_app(self) -> web.Application:
        """Every request recorded (and faults injected), then the exchange's endpoints."""
        app = web.Application(middlewares=[self._record])
        self.routes(app)
        return app

    # -- fault injection -----------------------------------------------------------------

    def fail(self, status: int) -> None:
        """Answer every request with ``status`` (503 outage, 418 ban) until ``recover()``."""
        self.fault = status

    def recover(self) -> None:
        """Answer normally again."""
        self.fault = None

    def delay_next_orders(self, seconds: float, count: int = 1) -> None:
        """Create the next ``count`` orders at once but answer their POST only after ``seconds``."""
        self.order_delay, self._delayed_orders = seconds, count

    def calls(self, method: str, path: str) -> list[Recorded]:
        """Recorded requests of one endpoint."""
        return [r for r in self.requests if r.method == method and r.path == path]

    def fault_body(self, status: int) -> web.Response:
        """The body the exchange sends with an injected status."""
        return web.Response(status=status, text="Service Unavailable")

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        params = dict(request.query)
        if request.can_read_body:
            raw = await request.text()
            if raw.startswith("["):  # okx batch-orders: a list of order objects
                params.update({k: str(v) for k, v in json.loads(raw)[0].items()})
            elif raw.startswith("{"):
                params.update({k: str(v) for k, v in json.loads(raw).items()})
            else:
                params.update(dict(parse_qsl(raw)))
        entry = Recorded(request.method, request.path, params)
        self.requests.append(entry)
        request[PARAMS] = params
        if self.fault is not None:
            entry.status = self.fault
            return self.fault_body(self.fault)
        response: web.StreamResponse = await handler(request)
        entry.status = response.status
        return response

    # -- matching engine -----------------------------------------------------------------

    def _book(self, symbol: str) -> tuple[float, float]:
        price = self.prices[symbol]
        return price * 0.9999, price * 1.0001

    def create(
        self,
        client_order_id: str,
        symbol: str,
        side: str,
        type_: str,
        amount: float,
        price: float | None,
    ) -> FakeOrder | str:
        """Create an order, or return the exchange's reason for refusing it."""
        if client_order_id in self.orders:
            return "duplicate"
        base, quote = symbol.split("/")
        bid, ask = self._book(symbol)
        fill = ask if side == "buy" else bid
        order = FakeOrder(
            next(self._ids), client_order_id, symbol, side, type_, amount, price, "open"
        )
        if type_ == "market":
            if side == "buy":
                if self.balances.get(quote, 0.0) < amount * fill * (1 + FEE_RATE):
                    return "insufficient"
                self.balances[quote] -= amount * fill * (1 + FEE_RATE)
                self.balances[base] = self.balances.get(base, 0.0) + amount
            else:
                if self.balances.get(base, 0.0) < amount:
                    return "insufficient"
                self.balances[base] -= amount
                self.balances[quote] = self.balances.get(quote, 0.0) + amount * fill * (
                    1 - FEE_RATE
                )
            order.status, order.filled, order.average = "filled", amount, fill
        self.orders[client_order_id] = order
        return order

    async def hold_order_answer(self) -> None:
        """Sleep past the client's timeout if a delay was asked for (order already created)."""
        if self._delayed_orders > 0:
            self._delayed_orders -= 1
            await asyncio.sleep(self.order_delay)

    def find(self, *, order_id: str | None, client_order_id: str | None) -> FakeOrder | None:
        """An order by exchange id or client order id."""
        if client_order_id:
            return self.orders.get(client_order_id)
        return next((o for o in self.orders.values() if str(o.order_id) == order_id), None)

    def created_orders(self) -> list[FakeOrder]:
        """Every order the exchange accepted, in order."""
        return sorted(self.orders.values(), key=lambda o: o.order_id)


def _n(value: float | None) -> str:
    return "0.00000000" if value is None else f"{value:.8f}"


class BinanceFake(FakeExchange):
    """Binance spot ``/api/v3`` as ccxt's binance client uses it."""

    name = "binance"

    def routes(self, app: web.Application) -> None:
        """Markets, tickers, account, orders."""
        app.router.add_get("/api/v3/exchangeInfo", self.exchange_info)
        app.router.add_get("/api/v3/ticker/24hr", self.ticker_24hr)
        app.router.add_get("/api/v3/ticker/price", self.ticker_price)
        app.router.add_get("/api/v3/ticker/bookTicker", self.book_ticker)
        app.router.add_get("/api/v3/account", self.account)
        app.router.add_post("/api/v3/order", self.post_order)
        app.router.add_get("/api/v3/order", self.get_order)
        app.router.add_delete("/api/v3/order", self.delete_order)
        app.router.add_get("/api/v3/openOrders", self.open_orders)
        app.router.add_get("/api/v3/myTrades", self.my_trades)

    def fault_body(self, status: int) -> web.Response:
        """Binance's bodies for a ban and for an outage."""
        if status == 418:
            return web.json_response(
                {"code": -1003, "msg": "Way too many requests; IP banned until 9999999999999."},
                status=418,
                headers={"Retry-After": "120"},
            )
        return web.Response(status=status, text="Service Unavailable")

    @staticmethod
    def _error(code: int, msg: str) -> web.Response:
        return web.json_response({"code": code, "msg": msg}, status=400)

    def _symbol(self, market_id: str) -> str:
        for symbol in self.prices:
            if symbol.replace("/", "") == market_id:
                return symbol
        raise web.HTTPBadRequest(
            text=json.dumps({"code": -1121, "msg": "Invalid symbol."}),
            content_type="application/json",
        )

    async def exchange_info(self, request: web.Request) -> web.Response:
        """``GET /api/v3/exchangeInfo``."""
        symbols = []
        for symbol in self.prices:
            base, quote = symbol.split("/")
            symbols.append(
                {
                    "symbol": base + quote,
                    "status": "TRADING",
                    "baseAsset": base,
                    "baseAssetPrecision": 8,
                    "quoteAsset": quote,
                    "quotePrecision": 8,
                    "quoteAssetPrecision": 8,
                    "baseCommissionPrecision": 8,
                    "quoteCommissionPrecision": 8,
                    "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
                    "icebergAllowed": True,
                    "ocoAllowed": True,
                    "quoteOrderQtyMarketAllowed": True,
                    "isSpotTradingAllowed": True,
                    "isMarginTradingAllowed": False,
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": "0.01000000",
                            "maxPrice": "1000000.00000000",
                            "tickSize": "0.01000000",
                        },
                        {
                            "filterType": "LOT_SIZE",
                            "minQty": "0.00001000",
                            "maxQty": "9000.00000000",
                            "stepSize": "0.00001000",
                        },
                        {"filterType": "NOTIONAL", "minNotional": "5.00000000"},
                    ],
                    "permissions": [],
                    "permissionSets": [["SPOT"]],
                    "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                    "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER"],
                }
            )
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": int(time.time() * 1000),
                "rateLimits": [],
                "exchangeFilters": [],
                "symbols": symbols,
            }
        )

    def _ticker(self, symbol: str) -> dict[str, Any]:
        bid, ask = self._book(symbol)
        price = self.prices[symbol]
        now = int(time.time() * 1000)
        return {
            "symbol": symbol.replace("/", ""),
            "priceChange": "0.00000000",
            "priceChangePercent": "0.000",
            "weightedAvgPrice": _n(price),
            "prevClosePrice": _n(price),
            "lastPrice": _n(price),
            "lastQty": "0.01000000",
            "bidPrice": _n(bid),
            "bidQty": "1.00000000",
            "askPrice": _n(ask),
            "askQty": "1.00000000",
            "openPrice": _n(price),
            "highPrice": _n(price),
            "lowPrice": _n(price),
            "volume": "100.00000000",
            "quoteVolume": _n(100 * price),
            "openTime": now - 86_400_000,
            "closeTime": now,
            "firstId": 1,
            "lastId": 100,
            "count": 100,
        }

    async def ticker_24hr(self, request: web.Request) -> web.Response:
        """``GET /api/v3/ticker/24hr`` for one symbol or all."""
        market_id = request.query.get("symbol")
        if market_id:
            return web.json_response(self._ticker(self._symbol(market_id)))
        return web.json_response([self._ticker(s) for s in self.prices])

    async def ticker_price(self, request: web.Request) -> web.Response:
        """``GET /api/v3/ticker/price``."""
        symbol = self._symbol(request.query["symbol"])
        return web.json_response(
            {"symbol": request.query["symbol"], "price": _n(self.prices[symbol])}
        )

    async def book_ticker(self, request: web.Request) -> web.Response:
        """``GET /api/v3/ticker/bookTicker``."""
        symbol = self._symbol(request.query["symbol"])
        bid, ask = self._book(symbol)
        return web.json_response(
            {
                "symbol": request.query["symbol"],
                "bidPrice": _n(bid),
                "bidQty": "1",
                "askPrice": _n(ask),
                "askQty": "1",
            }
        )

    async def account(self, request: web.Request) -> web.Response:
        """``GET /api/v3/account``."""
        return web.json_response(
            {
                "makerCommission": 10,
                "takerCommission": 10,
                "canTrade": True,
                "canWithdraw": True,
                "canDeposit": True,
                "updateTime": int(time.time() * 1000),
                "accountType": "SPOT",
                "balances": [
                    {"asset": a, "free": _n(v), "locked": "0.00000000"}
                    for a, v in self.balances.items()
                ],
                "permissions": ["SPOT"],
            }
        )

    def _order_json(self, order: FakeOrder, *, full: bool) -> dict[str, Any]:
        status = {"open": "NEW", "filled": "FILLED", "canceled": "CANCELED"}[order.status]
        body: dict[str, Any] = {
            "symbol": order.symbol.replace("/", ""),
            "orderId": order.order_id,
            "orderListId": -1,
            "clientOrderId": order.client_order_id,
            "price": _n(order.price),
            "origQty": _n(order.amount),
            "executedQty": _n(order.filled),
            "cummulativeQuoteQty": _n(order.filled * (order.average or 0.0)),
            "status": status,
            "timeInForce": "GTC",
            "type": order.type.upper(),
            "side": order.side.upper(),
            "workingTime": order.created_ms,
            "selfTradePreventionMode": "NONE",
        }
        if full:
            body["transactTime"] = order.created_ms
            body["fills"] = (
                [
                    {
                        "price": _n(order.average),
                        "qty": _n(order.filled),
                        "commission": _n(order.filled * (order.average or 0) * FEE_RATE),
                        "commissionAsset": order.symbol.split("/")[1],
                        "tradeId": order.order_id,
                    }
                ]
                if order.filled
                else []
            )
        else:
            body.update(
                time=order.created_ms,
                updateTime=order.created_ms,
                isWorking=True,
                stopPrice="0.00000000",
                icebergQty="0.00000000",
                origQuoteOrderQty="0.00000000",
            )
        return body

    async def post_order(self, request: web.Request) -> web.Response:
        """``POST /api/v3/order`` (created at once; the answer may be held back)."""
        p = request[PARAMS]
        result = self.create(
            p["newClientOrderId"],
            self._symbol(p["symbol"]),
            p["side"].lower(),
            p["type"].lower(),
            float(p["quantity"]),
            float(p["price"]) if "price" in p else None,
        )
        if result == "duplicate":
            return self._error(-2010, "Duplicate order sent.")
        if result == "insufficient":
            return self._error(-2010, "Account has insufficient balance for requested action.")
        assert isinstance(result, FakeOrder)
        await self.hold_order_answer()
        return web.json_response(self._order_json(result, full=True))

    async def get_order(self, request: web.Request) -> web.Response:
        """``GET /api/v3/order`` by ``orderId`` or ``origClientOrderId``."""
        p = request[PARAMS]
        order = self.find(order_id=p.get("orderId"), client_order_id=p.get("origClientOrderId"))
        if order is None:
            return self._error(-2013, "Order does not exist.")
        return web.json_response(self._order_json(order, full=False))

    async def delete_order(self, request: web.Request) -> web.Response:
        """``DELETE /api/v3/order``."""
        p = request[PARAMS]
        order = self.find(order_id=p.get("orderId"), client_order_id=p.get("origClientOrderId"))
        if order is None or order.status != "open":
            return self._error(-2011, "Unknown order sent.")
        order.status = "canceled"
        return web.json_response(self._order_json(order, full=False))

    async def open_orders(self, request: web.Request) -> web.Response:
        """``GET /api/v3/openOrders``."""
        market_id = request.query.get("symbol")
        return web.json_response(
            [
                self._order_json(o, full=False)
                for o in self.created_orders()
                if o.status == "open" and market_id in (None, o.symbol.replace("/", ""))
            ]
        )

    async def my_trades(self, request: web.Request) -> web.Response:
        """``GET /api/v3/myTrades``: one trade per filled order of ``symbol`` since
        ``startTime`` (the fake fills an order in one trade)."""
        market_id = request.query["symbol"]
        start = int(request.query.get("startTime", 0))
        return web.json_response(
            [
                {
                    "symbol": market_id,
                    "id": o.order_id,
                    "orderId": o.order_id,
                    "orderListId": -1,
                    "price": _n(o.average),
                    "qty": _n(o.filled),
                    "quoteQty": _n(o.filled * (o.average or 0.0)),
                    "commission": _n(o.filled * (o.average or 0.0) * FEE_RATE),
                    "commissionAsset": o.symbol.split("/")[1],
                    "time": o.created_ms,
                    "isBuyer": o.side == "buy",
                    "isMaker": o.type == "limit",
                    "isBestMatch": True,
                }
                for o in self.created_orders()
                if o.filled and o.symbol.replace("/", "") == market_id and o.created_ms >= start
            ]
        )


class OkxFake(FakeExchange):
    """OKX ``/api/v5`` spot endpoints as ccxt's okx client uses them."""

    name = "okx"

    def routes(self, app: web.Application) -> None:
        """Instruments, tickers, balance, orders."""
        app.router.add_get("/api/v5/public/instruments", self.instruments)
        app.router.add_get("/api/v5/asset/currencies", self.currencies)
        app.router.add_get("/api/v5/market/ticker", self.ticker)
        app.router.add_get("/api/v5/market/tickers", self.tickers)
        app.router.add_get("/api/v5/account/balance", self.balance)
        app.router.add_post("/api/v5/trade/order", self.post_order)
        app.router.add_post("/api/v5/trade/batch-orders", self.post_order)
        app.router.add_get("/api/v5/trade/order", self.get_order)
        app.router.add_get("/api/v5/trade/orders-pending", self.pending)
        app.router.add_post("/api/v5/trade/cancel-order", self.cancel_order)

    @staticmethod
    def _ok(data: list[Any]) -> web.Response:
        return web.json_response({"code": "0", "msg": "", "data": data})

    def _symbol(self, inst_id: str) -> str:
        return inst_id.replace("-", "/")

    async def instruments(self, request: web.Request) -> web.Response:
        """``GET /api/v5/public/instruments?instType=SPOT``."""
        if request.query.get("instType") != "SPOT":
            return self._ok([])
        data = []
        for symbol in self.prices:
            base, quote = symbol.split("/")
            data.append(
                {
                    "instType": "SPOT",
                    "instId": f"{base}-{quote}",
                    "uly": "",
                    "instFamily": "",
                    "baseCcy": base,
                    "quoteCcy": quote,
                    "settleCcy": "",
                    "ctVal": "",
                    "ctMult": "",
                    "ctValCcy": "",
                    "optType": "",
                    "stk": "",
                    "listTime": "1606468572000",
                    "expTime": "",
                    "lever": "10",
                    "tickSz": "0.1",
                    "lotSz": "0.00000001",
                    "minSz": "0.00001",
                    "ctType": "",
                    "alias": "",
                    "state": "live",
                    "maxLmtSz": "9999999999",
                    "maxMktSz": "1000000",
                    "maxLmtAmt": "20000000",
                    "maxMktAmt": "1000000",
                    "ruleType": "normal",
                }
            )
        return self._ok(data)

    def _ticker(self, symbol: str) -> dict[str, Any]:
        bid, ask = self._book(symbol)
        price = self.prices[symbol]
        return {
            "instType": "SPOT",
            "instId": symbol.replace("/", "-"),
            "last": str(price),
            "lastSz": "0.01",
            "askPx": str(ask),
            "askSz": "1",
            "bidPx": str(bid),
            "bidSz": "1",
            "open24h": str(price),
            "high24h": str(price),
            "low24h": str(price),
            "volCcy24h": str(100 * price),
            "vol24h": "100",
            "ts": str(int(time.time() * 1000)),
            "sodUtc0": str(price),
            "sodUtc8": str(price),
        }

    async def currencies(self, request: web.Request) -> web.Response:
        """``GET /api/v5/asset/currencies`` (ccxt reads it while loading markets with keys)."""
        data = [
            {
                "ccy": ccy,
                "name": ccy,
                "chain": f"{ccy}-{ccy}",
                "canDep": True,
                "canWd": True,
                "canInternal": True,
                "minWd": "0.001",
                "maxWd": "1000",
                "wdTickSz": "8",
                "minFee": "0.0001",
                "maxFee": "0.001",
                "mainNet": True,
                "logoLink": "",
            }
            for ccy in sorted({c for s in self.prices for c in s.split("/")})
        ]
        return self._ok(data)

    async def ticker(self, request: web.Request) -> web.Response:
        """``GET /api/v5/market/ticker?instId=``."""
        return self._ok([self._ticker(self._symbol(request.query["instId"]))])

    async def tickers(self, request: web.Request) -> web.Response:
        """``GET /api/v5/market/tickers?instType=SPOT``."""
        return self._ok([self._ticker(s) for s in self.prices])

    async def balance(self, request: web.Request) -> web.Response:
        """``GET /api/v5/account/balance``."""
        now = str(int(time.time() * 1000))
        details = [
            {
                "ccy": ccy,
                "availBal": str(v),
                "availEq": str(v),
                "cashBal": str(v),
                "eq": str(v),
                "frozenBal": "0",
                "ordFrozen": "0",
                "uTime": now,
            }
            for ccy, v in self.balances.items()
        ]
        return self._ok([{"totalEq": "0", "uTime": now, "details": details}])

    def _order_json(self, order: FakeOrder) -> dict[str, Any]:
        fee = order.filled * (order.average or 0.0) * FEE_RATE
        return {
            "instType": "SPOT",
            "instId": order.symbol.replace("/", "-"),
            "ordId": str(order.order_id),
            "clOrdId": order.client_order_id,
            "tag": "",
            "px": "" if order.price is None else str(order.price),
            "sz": str(order.amount),
            "ordType": order.type,
            "side": order.side,
            "posSide": "net",
            "tdMode": "cash",
            "tgtCcy": "base_ccy",
            "accFillSz": str(order.filled),
            "fillPx": "" if order.average is None else str(order.average),
            "fillSz": str(order.filled),
            "avgPx": "" if order.average is None else str(order.average),
            "state": {"open": "live", "filled": "filled", "canceled": "canceled"}[order.status],
            "fee": str(-fee),
            "feeCcy": order.symbol.split("/")[1],
            "lever": "",
            "cTime": str(order.created_ms),
            "uTime": str(order.created_ms),
            "category": "normal",
        }

    async def post_order(self, request: web.Request) -> web.Response:
        """``POST /api/v5/trade/order`` or ``batch-orders`` (one order; ids only, like OKX)."""
        p = request[PARAMS]
        result = self.create(
            p["clOrdId"],
            self._symbol(p["instId"]),
            p["side"],
            p["ordType"],
            float(p["sz"]),
            float(p["px"]) if p.get("px") else None,
        )
        if isinstance(result, str):
            code, msg = (
                ("51016", "Duplicated clOrdId")
                if result == "duplicate"
                else ("51008", "Insufficient balance")
            )
            return web.json_response(
                {
                    "code": "1",
                    "msg": "Operation failed",
                    "data": [
                        {
                            "clOrdId": p["clOrdId"],
                            "ordId": "",
                            "sCode": code,
                            "sMsg": msg,
                            "tag": "",
                        }
                    ],
                }
            )
        await self.hold_order_answer()
        return self._ok(
            [
                {
                    "clOrdId": result.client_order_id,
                    "ordId": str(result.order_id),
                    "tag": "",
                    "sCode": "0",
                    "sMsg": "Order placed",
                }
            ]
        )

    async def get_order(self, request: web.Request) -> web.Response:
        """``GET /api/v5/trade/order`` by ``ordId`` or ``clOrdId``."""
        p = request[PARAMS]
        order = self.find(order_id=p.get("ordId"), client_order_id=p.get("clOrdId"))
        if order is None:
            return web.json_response({"code": "51603", "msg": "Order does not exist", "data": []})
        return self._ok([self._order_json(order)])

    async def pending(self, request: web.Request) -> web.Response:
        """``GET /api/v5/trade/orders-pending``."""
        return self._ok([self._order_json(o) for o in self.created_orders() if o.status == "open"])

    async def cancel_order(self, request: web.Request) -> web.Response:
        """``POST /api/v5/trade/cancel-order``."""
        p = request[PARAMS]
        order = self.find(order_id=p.get("ordId"), client_order_id=p.get("clOrdId"))
        if order is None or order.status != "open":
            return web.json_response(
                {
                    "code": "1",
                    "msg": "",
                    "data": [
                        {
                            "clOrdId": p.get("clOrdId", ""),
                            "ordId": p.get("ordId", ""),
                            "sCode": "51400",
                            "sMsg": "Cancellation failed",
                        }
                    ],
                }
            )
        order.status = "canceled"
        return self._ok(
            [
                {
                    "clOrdId": order.client_order_id,
                    "ordId": str(order.order_id),
                    "sCode": "0",
                    "sMsg": "",
                }
            ]
        )


def credentials_env(*fakes: FakeExchange) -> dict[str, str]:
    """Environment that points each venue's ccxt client at its fake, with dummy keys."""
    env: dict[str, str] = {}
    for fake in fakes:
        prefix = fake.name.upper()
        env.update(
            {
                f"{prefix}_API_KEY": f"{fake.name}-test-key",
                f"{prefix}_SECRET": f"{fake.name}-test-secret",
                f"{prefix}_PASSWORD": f"{fake.name}-test-passphrase",
                f"{prefix}_API_URL": fake.url,
            }
        )
    return env
