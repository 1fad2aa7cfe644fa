"""The web surface around the rating app: whom to believe about proxies, and response headers.

One ASGI middleware, outermost, so that it sees every request and every response, Gradio's own
included:

- Forwarding headers (`X-Forwarded-For`, `-Proto`, `-Host`, `Forwarded`, Gradio's
  `X-Gradio-Server`) are honoured only from the address given as `--trusted-proxy`, and removed
  from every other request; otherwise anyone could pick the client address that the login
  throttle counts, or the host name that Gradio writes into its page.
- Host is checked before Gradio sees it, because Gradio writes the host name into its page (its
  frontend compares it with its own location, so it cannot be left out): a Host that is not a
  plain host name or address (with an optional port) is refused, and so is a name the server
  does not answer to (`--allowed-host`; by default, a server bound to loopback answers only to
  loopback names, which also defeats DNS rebinding). Pages are `no-store`, so that no shared
  cache keeps a page made for another Host and serves it to a rater.
- Every response forbids framing (clickjacking), MIME sniffing and referrers, and loses any
  CORS header: the app is only ever used from its own origin, so no other site may read it
  with the rater's cookie.
"""

from __future__ import annotations

import re

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No script-src: Gradio's page runs inline scripts (its per-request config among them), which only
# 'unsafe-inline' would allow. The app's own script is a same-origin file (rater_app/static).
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
FORWARDING_HEADERS = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
_REPLACED = {name for name, _ in SECURITY_HEADERS}
_PAGE_TYPES = {b"text/html", b"application/json"}
_HOST = re.compile(rb"^(?:[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def host_name(host: bytes) -> str:
    """The name part of a well-formed Host value: no port, no IPv6 brackets, lower case."""
    text = host.decode("ascii").lower()
    if text.startswith("["):
        return text[1 : text.index("]")]
    return text.rsplit(":", 1)[0] if ":" in text else text


def default_allowed_hosts(bind: str) -> frozenset[str] | None:
    """The names a server bound to `bind` answers to when `--allowed-host` is not given.

    Bound to loopback, only loopback names can reach it honestly (anything else is DNS
    rebinding); bound to another address, the public name is unknown, so any well-formed one.
    """
    return LOOPBACK_NAMES if bind.lower() in LOOPBACK_NAMES else None


class WebGuard:
    """ASGI middleware: see the module docstring."""

    def __init__(
        self, app: ASGIApp, trusted_proxy: str | None = None, allowed_hosts: frozenset[str] | None = None
    ) -> None:
        self.app = app
        self.trusted_proxy = trusted_proxy
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        scope = self._resolve_proxy(scope)
        hosts = [value for key, value in scope["headers"] if key in (b"host", b"x-forwarded-host")]
        if any(not self._acceptable(host) for host in hosts):
            if scope["type"] == "http":
                await PlainTextResponse("bad Host header", status_code=400)(
                    scope, receive, self._secured(send)
                )
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, self._secured(send))

    def _acceptable(self, host: bytes) -> bool:
        if not _HOST.match(host):
            return False
        return self.allowed_hosts is None or host_name(host) in self.allowed_hosts

    def _resolve_proxy(self, scope: Scope) -> Scope:
        """The request as the app should see it: client and scheme from a trusted proxy only."""
        headers = scope["headers"]
        client = scope.get("client")
        if self.trusted_proxy is None or client is None or client[0] != self.trusted_proxy:
            kept = [(k, v) for k, v in headers if k not in FORWARDING_HEADERS and k != b"x-gradio-server"]
            return {**scope, "headers": kept}
        scope = {**scope, "headers": [(k, v) for k, v in headers if k != b"x-gradio-server"]}
        values = {k: v.decode("latin-1") for k, v in headers if k in FORWARDING_HEADERS}
        forwarded_for = [part.strip() for part in values.get(b"x-forwarded-for", "").split(",")]
        if forwarded_for[-1]:  # the proxy appends the address it saw; earlier entries are hearsay
            scope["client"] = (forwarded_for[-1], 0)
        proto = values.get(b"x-forwarded-proto", "").split(",")[0].strip()
        if proto in ("http", "https"):
            scope["scheme"] = proto if scope["type"] == "http" else {"http": "ws", "https": "wss"}[proto]
        return scope

    @staticmethod
    def _secured(send: Send) -> Send:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() not in _REPLACED and not name.lower().startswith(b"access-control-")
                ]
                kinds = {
                    value.split(b";")[0].strip() for name, value in headers if name.lower() == b"content-type"
                }
                if kinds & _PAGE_TYPES:  # pages and API answers; tiles and assets keep their caching
                    headers = [(name, value) for name, value in headers if name.lower() != b"cache-control"]
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers + SECURITY_HEADERS}
            await send(message)

        return send_secured
