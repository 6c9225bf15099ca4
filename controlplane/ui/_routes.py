"""The console's routes: pages, their live refresh, login, static files."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

from controlplane.acl import Authorizer, Identity
from controlplane.store import StoreError
from controlplane.ui import _html, _pages
from controlplane.ui._data import ConsoleData, ConsoleError, ServiceFilter
from controlplane.ui._live import LiveFeed
from serving.errors import ServiceError, UnauthenticatedError

if TYPE_CHECKING:
    from controlplane.app import ControlPlane

__all__ = ["COOKIE", "Console", "add_console"]

log = logging.getLogger(__name__)

#: The cookie that keeps the token's secret (HttpOnly, SameSite=Strict, path /ui/).
COOKIE = "eco_console_token"
#: A request for a page's content alone (the live refresh), not the whole page.
FRAGMENT_HEADER = "X-Eco-Fragment"
#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE = 15.0
_MAX_SECRET = 512
_STATIC_TYPES = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
_SECURITY_HEADERS = {
    # Scripts and styles from /ui/static only: a value shown on a page can never run.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={**_SECURITY_HEADERS, "Location": location})


class _LoginNeeded(Exception):
    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class Console:
    """The console of one control plane; its routes are added by :func:`add_console`."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.feed = LiveFeed(plane)
        self._static = {
            name: resources.files("controlplane.ui").joinpath("static", name).read_bytes()
            for name in _STATIC_TYPES
        }

    @property
    def authorizer(self) -> Authorizer:
        authorizer = self.plane.authorizer
        if authorizer is None:
            raise RuntimeError("the control plane is not started")
        return authorizer

    # -- who is asking ------------------------------------------------------------------

    async def _who(self, request: web.Request) -> tuple[Identity, str]:
        """The caller's identity and secret; _LoginNeeded when a token is needed."""
        header = request.headers.get("Authorization", "")
        secret = header[7:].strip() if header[:7].lower() == "bearer " else ""
        secret = secret or request.cookies.get(COOKIE, "")
        if len(secret) > _MAX_SECRET:
            raise _LoginNeeded("the token is not valid (unknown or deleted)")
        try:
            return await self.authorizer.identify(secret), secret
        except UnauthenticatedError as exc:
            raise _LoginNeeded("" if not secret else str(exc)) from None

    def _refuse(self, request: web.Request, exc: _LoginNeeded) -> web.Response:
        if request.headers.get(FRAGMENT_HEADER) or request.path == "/ui/events":
            return web.Response(
                status=401, text=exc.message or "a token is required", headers=_SECURITY_HEADERS
            )
        target = "/ui/login" + ("?expired=1" if exc.message else "")
        response = _see_other(target)
        if exc.message:
            response.del_cookie(COOKIE, path="/ui/")
        return response

    # -- pages -------------------------------------------------------------------------

    def page(
        self,
        slug: str,
        title: str,
        build: Callable[[ConsoleData, web.Request], Awaitable[str | None]],
    ) -> _Handler:
        """The handler of page ``slug``: ``build`` makes its content (None: not
        found) for the caller; the whole page, or the content alone for a live
        refresh (``X-Eco-Fragment``)."""

        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                identity, secret = await self._who(request)
            except _LoginNeeded as exc:
                return self._refuse(request, exc)
            data = ConsoleData(self.plane, self.authorizer, identity, secret)
            status = 200
            revision = self.plane.view.revision
            try:
                content = await build(data, request)
            except ConsoleError as exc:
                status = 400 if exc.field else 502
                content = (
                    f'<h1>{_html.esc(title)}</h1><p class="error" role="alert" '
                    f'data-testid="page-error">{_html.esc(exc)}</p>'
                )
            except ServiceError as exc:
                status = 503
                content = (
                    f'<h1>{_html.esc(title)}</h1><p class="error" role="alert" '
                    f'data-testid="page-error">{_html.esc(exc)}</p>'
                )
            if content is None:
                status = 404
                content = (
                    f'<h1>Not found</h1><p class="error" data-testid="page-error">'
                    f"Nothing at {_html.esc(request.path)} that this token may read.</p>"
                )
            if not self.plane.serving:
                content = (
                    '<p class="banner" role="alert" data-testid="store-banner">The control '
                    "plane does not hear from its store: what is shown may be stale.</p>"
                ) + content
            headers = {**_SECURITY_HEADERS, "X-Eco-Revision": str(revision)}
            if request.headers.get(FRAGMENT_HEADER):
                return web.Response(
                    status=status, text=content, content_type="text/html", headers=headers
                )
            body = _html.page(
                title=title,
                current=slug,
                content=content,
                revision=revision,
                who=str(identity) or "",
                logout=bool(secret),
            )
            return web.Response(status=status, text=body, content_type="text/html", headers=headers)

        return handler

    # -- the event stream --------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``change`` events carrying the revision, as the state changes; ends
        when the control plane stops (the page then shows it has lost it)."""
        try:
            await self._who(request)
        except _LoginNeeded as exc:
            return self._refuse(request, exc)
        if request.method == "HEAD":  # the page asking why its stream failed
            return web.Response(headers=_SECURITY_HEADERS)
        try:
            listener = self.feed.listen()
        except ServiceError as exc:
            return web.Response(status=503, text=str(exc), headers=_SECURITY_HEADERS)
        try:
            response = web.StreamResponse(
                headers={
                    **_SECURITY_HEADERS,
                    "Content-Type": "text/event-stream",
                    "X-Accel-Buffering": "no",
                }
            )
            await response.prepare(request)
            revision = self.plane.view.revision
            await response.write(f"retry: 1000\nevent: hello\ndata: {revision}\n\n".encode())
            while True:
                signal = await listener.next(KEEPALIVE)
                if signal is None:
                    await response.write(b": keep-alive\n\n")
                elif signal < 0:
                    break
                else:
                    await response.write(f"event: change\ndata: {signal}\n\n".encode())
            return response
        finally:
            self.feed.leave(listener)

    # -- login -------------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.Response:
        message = ""
        if request.query.get("expired"):
            message = "The token is no longer valid (unknown or deleted): log in again."
        return web.Response(
            text=_html.login(message, default_allow=self.authorizer.default_allow),
            content_type="text/html",
            headers=_SECURITY_HEADERS,
        )

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        secret = str(form.get("token", "")).strip()
        problem = ""
        if not secret:
            problem = "token: enter a token's secret"
        elif len(secret) > _MAX_SECRET:
            problem = f"token: longer than {_MAX_SECRET} characters; not a token's secret"
        elif await self.authorizer.store.resolve(secret) is None:
            problem = "token: not a valid token (unknown or deleted)"
        if problem:
            return web.Response(
                status=401,
                text=_html.login(problem, default_allow=self.authorizer.default_allow),
                content_type="text/html",
                headers=_SECURITY_HEADERS,
            )
        response = _see_other("/ui/services")
        response.set_cookie(
            COOKIE,
            secret,
            path="/ui/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def logout(self, _request: web.Request) -> web.Response:
        response = _see_other("/ui/login")
        response.del_cookie(COOKIE, path="/ui/")
        return response

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self._static.get(name)
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(
            body=body,
            content_type=_STATIC_TYPES[name],
            headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"},
        )

    async def close(self, _app: web.Application | None = None) -> None:
        await self.feed.close()


async def _services(data: ConsoleData, request: web.Request) -> str:
    return _pages.services(data, ServiceFilter.parse(request.query))


async def _service(data: ConsoleData, request: web.Request) -> str | None:
    return _pages.service(data, request.match_info["namespace"], request.match_info["name"])


async def _intentions(data: ConsoleData, _request: web.Request) -> str:
    return _pages.intentions(data)


def _simple(
    build: Callable[[ConsoleData], Awaitable[str]],
) -> Callable[[ConsoleData, web.Request], Awaitable[str]]:
    async def wrapped(data: ConsoleData, _request: web.Request) -> str:
        return await build(data)

    return wrapped


def add_console(app: web.Application, plane: ControlPlane) -> Console:
    """Adds the console's routes under ``/ui/`` to the admin ``app``; its live feed
    is closed when the app shuts down."""
    console = Console(plane)

    async def home(_request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/services")

    @web.middleware
    async def store_trouble(request: web.Request, handler: _Handler) -> web.StreamResponse:
        """A console request that needed the store while it does not answer: 503."""
        if not request.path.startswith("/ui"):
            return await handler(request)
        try:
            return await handler(request)
        except StoreError as exc:
            log.warning("console %s: the store does not answer: %s", request.path, exc)
            return web.Response(
                status=503,
                text=f"the control plane cannot reach its store ({exc}); try again shortly\n",
                headers=_SECURITY_HEADERS,
            )

    app.middlewares.append(store_trouble)
    router = app.router
    router.add_get("/ui", home)
    router.add_get("/ui/", home)
    router.add_get("/ui/services", console.page("services", "Services", _services))
    router.add_get("/ui/services/{namespace}/{name}", console.page("services", "Service", _service))
    router.add_get("/ui/nodes", console.page("nodes", "Nodes", _simple(_pages.nodes)))
    router.add_get(
        "/ui/platforms", console.page("platforms", "Platforms", _simple(_pages.platforms))
    )
    router.add_get("/ui/bus", console.page("bus", "Bus", _simple(_pages.bus)))
    router.add_get("/ui/routes", console.page("routes", "Gateway routes", _simple(_pages.routes)))
    router.add_get("/ui/sync", console.page("sync", "Sync jobs", _simple(_pages.sync)))
    router.add_get("/ui/intentions", console.page("intentions", "Intentions", _intentions))
    router.add_get("/ui/datasets", console.page("datasets", "Datasets", _simple(_pages.datasets)))
    router.add_get("/ui/events", console.events)
    router.add_get("/ui/login", console.login_form)
    router.add_post("/ui/login", console.login)
    router.add_post("/ui/logout", console.logout)
    router.add_get("/ui/static/{name}", console.static)
    app.on_shutdown.append(console.close)
    return console
