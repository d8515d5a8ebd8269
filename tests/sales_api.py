"""A local sales API for the poller tests: every pagination style, each behind its own
kind of authentication, with faults planned per request.

It runs on its own thread and event loop, so a test (synchronous, like the rest of
the integration tests) drives `tillstream` processes while the API answers them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

__all__ = ["Route", "SalesApi", "api_key", "basic", "bearer", "revenue", "sale"]

PAGE_SIZE = 5
SLOW_SECONDS = 3.0


def sale(prefix: str, n: int) -> dict[str, Any]:
    """Sale number `n`: every 7th has a quantity the cleaning stage rejects."""
    return {
        "id": n,
        "orderRef": f"{prefix}-{n:04d}",
        "createdAt": f"2025-03-14T{n // 60 % 24:02d}:{n % 60:02d}:00",
        "item": {"name": ["laptop pro", "smartfone x", "Desk Lamp"][n % 3]},
        "qty": "two" if n % 7 == 0 else 1 + n % 4,
        "price": round(5 + n * 0.25, 2),
        "region": "nort",
        "updated_at": f"2025-03-14T12:00:{n:04d}Z",
    }


def revenue(records: list[dict[str, Any]]) -> Decimal:
    return sum(
        (
            Decimal(r["qty"]) * Decimal(str(r["price"]))
            for r in records
            if isinstance(r["qty"], int)
        ),
        Decimal(0),
    )


@dataclass
class Route:
    """One endpoint: its records, how it wants to be authenticated, its planned faults."""

    prefix: str
    auth: Callable[[web.Request], bool]
    records: list[dict[str, Any]] = field(default_factory=list)
    faults: deque[str | None] = field(default_factory=deque)
    """Consumed one per request: None serves normally; "500", "503", "429", "slow"
    (answers after SLOW_SECONDS), "bad_json", "wrong_shape", "hold" (answers once
    `SalesApi.release` is set)."""
    queries: list[dict[str, str]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    """When each request arrived (monotonic seconds)."""

    def add(self, count: int) -> list[dict[str, Any]]:
        start = len(self.records) + 1
        new = [sale(self.prefix, n) for n in range(start, start + count)]
        self.records += new
        return new

    @property
    def valid(self) -> list[dict[str, Any]]:
        return [r for r in self.records if isinstance(r["qty"], int)]


def bearer(token: str) -> Callable[[web.Request], bool]:
    return lambda request: request.headers.get("Authorization") == f"Bearer {token}"


def basic(user: str, password: str) -> Callable[[web.Request], bool]:
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return lambda request: request.headers.get("Authorization") == expected


def api_key(header: str, key: str) -> Callable[[web.Request], bool]:
    return lambda request: request.headers.get(header) == key


class SalesApi:
    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.held = threading.Event()
        self.release = threading.Event()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/page", self._page)
        app.router.add_get("/offset", self._offset)
        app.router.add_get("/cursor", self._cursor)
        app.router.add_get("/link", self._link)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _admit(self, request: web.Request, route: Route) -> web.StreamResponse | None:
        """The fault planned for this request, or an auth refusal; None to serve it."""
        route.queries.append(dict(request.query))
        route.times.append(time.monotonic())
        if not route.auth(request):
            return web.json_response({"error": "unauthorised"}, status=401)
        fault = route.faults.popleft() if route.faults else None
        if fault == "hold":
            self.held.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
            return None
        if fault in ("500", "503"):
            return web.json_response({"error": "try later"}, status=int(fault))
        if fault == "429":
            return web.json_response(
                {"error": "slow down"}, status=429, headers={"Retry-After": "1"}
            )
        if fault == "slow":
            await asyncio.sleep(SLOW_SECONDS)
        if fault == "bad_json":
            return web.Response(text='{"data": [{"id": 1,', content_type="application/json")
        if fault == "wrong_shape":
            return web.json_response({"data": {"items": "none today"}})
        return None

    async def _page(self, request: web.Request) -> web.StreamResponse:
        """Page numbers; `updated_since` is inclusive, so the newest record comes again."""
        route = self.routes["page"]
        if (refusal := await self._admit(request, route)) is not None:
            return refusal
        since = request.query.get("updated_since", "")
        found = [r for r in route.records if r["updated_at"] >= since]
        page, size = int(request.query["page"]), int(request.query["per_page"])
        return web.json_response({"data": found[(page - 1) * size : page * size]})

    async def _offset(self, request: web.Request) -> web.StreamResponse:
        """Offset and limit; `since_id` is exclusive. The body is the array itself."""
        route = self.routes["offset"]
        if (refusal := await self._admit(request, route)) is not None:
            return refusal
        since = int(request.query.get("since_id", "0"))
        found = [r for r in route.records if r["id"] > since]
        offset, limit = int(request.query["offset"]), int(request.query["limit"])
        return web.json_response(found[offset : offset + limit])

    async def _cursor(self, request: web.Request) -> web.StreamResponse:
        """An opaque token in the body names the next page."""
        route = self.routes["cursor"]
        if (refusal := await self._admit(request, route)) is not None:
            return refusal
        since = int(request.query.get("since_id", "0"))
        found = [r for r in route.records if r["id"] > since]
        start = int(base64.b64decode(request.query.get("cursor", "MA==")))
        rest = start + PAGE_SIZE < len(found)
        token = base64.b64encode(str(start + PAGE_SIZE).encode()).decode() if rest else None
        body = {"data": {"items": found[start : start + PAGE_SIZE]}, "meta": {"next": token}}
        return web.Response(text=json.dumps(body), content_type="application/json")

    async def _link(self, request: web.Request) -> web.StreamResponse:
        """A `Link` header (relative, among other relations) names the next page."""
        route = self.routes["link"]
        if (refusal := await self._admit(request, route)) is not None:
            return refusal
        since = request.query.get("updated_since", "")
        found = [r for r in route.records if r["updated_at"] >= since]
        after = int(request.query.get("after", "0"))
        headers = {}
        if after + PAGE_SIZE < len(found):
            target = f"/link?after={after + PAGE_SIZE}&updated_since={since}"
            headers["Link"] = f'</link?after=0>; rel="first", <{target}>; rel="next"'
        return web.json_response({"sales": found[after : after + PAGE_SIZE]}, headers=headers)
