"""A small HTTP(S) framework shared by the simulators.

Every simulator is a `Simulator` subclass: it registers routes with `@route`, keeps its records
under `self.lock`, and gets the stable control API of ARCHITECTURE.md for free:

    POST /_sandbox/reset      forget every record, fault and logged request
    GET  /_sandbox/state      every stored record as JSON (subclasses say what in `state()`)
    GET  /_sandbox/requests   request log (method, path, route, status, time) + counts per route
    POST /_sandbox/faults     {"method", "path_prefix", "status", "retry_after", "latency_ms",
                               "count", "probability"}; DELETE clears them

Faults are applied before the route runs, so an injected 429 never reaches a handler. The error
body of an injected status is the simulator's own (`fault_response`), so clients see exactly what
the real service would send. A route names the query options it implements (`query=[...]`); any
other is refused with `unknown_option_response` before the handler runs.

The HTTP layer (`HttpServer`, also used by the local Functions host) is werkzeug routing served by
cheroot: HTTP/1.1 with TLS, keep-alive, chunked request bodies, `Expect: 100-continue`, HEAD.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import cheroot.wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import Map, Rule

from sandbox.tls import CertificateFiles, issue_certificate

JsonDict = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[JsonDict, StartResponse], Iterable[bytes]]
_log = logging.getLogger("sandbox.http")
_WORKER_THREADS = 32  # concurrent requests per server; idle keep-alive connections hold none


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    path_params: dict[str, str] = field(default_factory=dict)
    raw_query: str = ""

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    merged = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
    return Response(status, json.dumps(payload).encode("utf-8"), merged)


def empty_response(status: int = 204, headers: dict[str, str] | None = None) -> Response:
    return Response(status, b"", dict(headers or {}))


Handler = Callable[["Simulator", Request], Response]
SimulatorT = TypeVar("SimulatorT", bound="Simulator")
SubclassHandler = Callable[[SimulatorT, Request], Response]


def route(
    method: str, pattern: str, *, query: Iterable[str] = ()
) -> Callable[[SubclassHandler[SimulatorT]], SubclassHandler[SimulatorT]]:
    """Mark a Simulator method (of any subclass) as the handler of `METHOD /path/{param}`.

    `query` names the query options the handler implements; any other one is refused with the
    simulator's `unknown_option_response` before the handler runs (unknown means refused, never
    a 200 that ignored it).
    """

    def mark(handler: SubclassHandler[SimulatorT]) -> SubclassHandler[SimulatorT]:
        routes: list[tuple[str, str, frozenset[str]]] = getattr(handler, "_routes", [])
        routes.append((method.upper(), pattern, frozenset(query)))
        handler._routes = routes  # type: ignore[attr-defined]
        return handler

    return mark


def _rule_text(pattern: str) -> str:
    """`/a/{name}/{rest:path}` (the declaration syntax) as a werkzeug rule `/a/<name>/<path:rest>`.

    `{name}` matches within one path segment, `{name:path}` the rest of the path; a trailing slash
    is optional everywhere (`strict_slashes=False`), as on the real services.
    """
    text = re.sub(r"\\([()$.])", r"\1", pattern).rstrip("/") or "/"
    text = re.sub(r"\{(\w+):path\}", r"<path:\1>", text)
    return re.sub(r"\{(\w+)\}", r"<\1>", text)


class Fault(BaseModel):
    """One injected fault, as posted to `/_sandbox/faults`."""

    model_config = ConfigDict(extra="forbid")

    method: str = "*"
    path_prefix: str = "/"
    status: int | None = Field(default=None, ge=100, le=599)
    retry_after: int | None = Field(default=None, ge=0)
    latency_ms: int = Field(default=0, ge=0, le=120_000)
    count: int | None = Field(default=1, ge=1)
    probability: float = Field(default=1.0, ge=0.0, le=1.0)

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method.upper())) and path.startswith(self.path_prefix)


@dataclass
class LoggedRequest:
    method: str
    path: str
    route: str
    status: int
    time: str
    duration_ms: float

    def as_dict(self) -> JsonDict:
        return {
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "status": self.status,
            "time": self.time,
            "duration_ms": round(self.duration_ms, 2),
        }


class Simulator:
    """Base of every simulator. Subclasses add routes and override `reset_records`/`state`."""

    name = "simulator"

    def __init__(self, base_url: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.lock = threading.RLock()
        self._faults: list[Fault] = []
        self._log: list[LoggedRequest] = []
        self.errors: list[str] = []  # handler exceptions (answered 500); tests assert there are none
        self._random = random.Random(0)
        # (method, rule) -> (declared pattern, handler, query options it implements)
        self._handlers: dict[tuple[str, str], tuple[str, Handler, frozenset[str]]] = {}
        for klass in reversed(type(self).__mro__):
            for attribute in vars(klass).values():
                for method, pattern, query in getattr(attribute, "_routes", []):
                    self._handlers.setdefault((method, _rule_text(pattern)), (pattern, attribute, query))
        rules: dict[str, set[str]] = {}
        for method, rule in self._handlers:
            rules.setdefault(rule, set()).add(method)
        url_map = Map(
            [Rule(rule, methods=sorted(methods), endpoint=rule) for rule, methods in rules.items()],
            strict_slashes=False,
            merge_slashes=False,
        )
        self._router = url_map.bind("sandbox")
        self.reset_records()

    # ---- to override -------------------------------------------------------------------------
    def reset_records(self) -> None:
        """Forget every stored record (called on construction and on `/_sandbox/reset`)."""

    def state(self) -> JsonDict:
        """Every stored record, for `GET /_sandbox/state`."""
        return {}

    def fault_response(self, status: int, request: Request) -> Response:
        """The body the real service sends with this status (overridden per simulator)."""
        return json_response(status, {"error": {"code": str(status), "message": "Injected fault"}})

    def not_found_response(self, request: Request) -> Response:
        return json_response(404, {"error": {"code": "NotFound", "message": f"No route {request.path}"}})

    def unknown_option_response(self, request: Request, name: str) -> Response:
        """A query option this resource does not implement (the real services' 400 for an unknown one)."""
        message = f"The query parameter '{name}' is not supported."
        return json_response(400, {"error": {"code": "BadRequest", "message": message}})

    def method_not_allowed_response(self, request: Request, allowed: list[str]) -> Response:
        """A known resource asked with a method it does not take (the `Allow` header is added for you)."""
        message = f"The requested resource does not support http method '{request.method}'."
        return json_response(405, {"error": {"code": "MethodNotAllowed", "message": message}})

    # ---- control API ---------------------------------------------------------------------------
    @route("POST", "/_sandbox/reset")
    def _control_reset(self, request: Request) -> Response:
        with self.lock:
            self._faults.clear()
            self._log.clear()
            self.reset_records()
        return empty_response(204)

    @route("GET", "/_sandbox/state")
    def _control_state(self, request: Request) -> Response:
        with self.lock:
            return json_response(200, self.state())

    @route("GET", "/_sandbox/requests")
    def _control_requests(self, request: Request) -> Response:
        with self.lock:
            entries = [entry.as_dict() for entry in self._log]
        counts = Counter(f"{entry['method']} {entry['route']}" for entry in entries)
        return json_response(200, {"requests": entries, "counts": dict(counts)})

    @route("DELETE", "/_sandbox/requests")
    def _control_clear_requests(self, request: Request) -> Response:
        with self.lock:
            self._log.clear()
        return empty_response(204)

    @route("POST", "/_sandbox/faults")
    def _control_add_fault(self, request: Request) -> Response:
        try:
            body = request.json()
            faults = [Fault.model_validate(item) for item in (body if isinstance(body, list) else [body])]
        except (ValueError, ValidationError) as error:
            return json_response(400, {"error": {"code": "BadFault", "message": str(error)}})
        with self.lock:
            self._faults.extend(faults)
        return json_response(201, {"faults": [fault.model_dump() for fault in self._faults]})

    @route("DELETE", "/_sandbox/faults")
    def _control_clear_faults(self, request: Request) -> Response:
        with self.lock:
            self._faults.clear()
        return empty_response(204)

    # ---- dispatch ------------------------------------------------------------------------------
    def add_fault(self, fault: Fault) -> None:
        with self.lock:
            self._faults.append(fault)

    def requests_log(self) -> list[JsonDict]:
        with self.lock:
            return [entry.as_dict() for entry in self._log]

    def _take_fault(self, request: Request) -> Fault | None:
        if request.path.startswith("/_sandbox/"):
            return None
        with self.lock:
            for fault in self._faults:
                if not fault.matches(request.method, request.path):
                    continue
                if self._random.random() >= fault.probability:
                    continue
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _route(self, request: Request) -> tuple[str, Handler | list[str] | None, frozenset[str]]:
        """(declared pattern, handler, its query options); a list of allowed methods when only the method is wrong."""
        method = "GET" if request.method == "HEAD" else request.method
        try:
            rule, params = self._router.match(request.path, method=method)
        except MethodNotAllowed as refused:
            return request.path, sorted(refused.valid_methods or []), frozenset()
        except NotFound:
            return request.path, None, frozenset()
        request.path_params = dict(params)
        return self._handlers[(method, rule)]

    def dispatch(self, request: Request) -> Response:
        """The route's answer, without faults or the request log (also for composite / batch subrequests)."""
        _, found, options = self._route(request)
        return self._answer(request, found, options)

    def _answer(self, request: Request, found: Handler | list[str] | None, options: frozenset[str]) -> Response:
        unknown = sorted(set(request.query) - options) if not request.path.startswith("/_sandbox/") else []
        if callable(found) and unknown:
            return self.unknown_option_response(request, unknown[0])
        if callable(found):
            return found(self, request)
        if found:
            response = self.method_not_allowed_response(request, found)
            response.headers["Allow"] = ", ".join(found)
            return response
        return self.not_found_response(request)

    def wsgi(self, environ: JsonDict, start_response: StartResponse) -> Iterable[bytes]:
        request = read_request(environ)
        try:
            response = self.handle(request)
        except Exception as error:  # a simulator bug must show up as a 500, not a hung client
            self.errors.append(repr(error))
            response = json_response(500, {"error": {"code": "SimulatorError", "message": repr(error)}})
        return write_response(environ, start_response, response.status, response.headers.items(), response.body)

    def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        pattern, found, options = self._route(request)
        fault = self._take_fault(request)
        response: Response | None = None
        if fault is not None:
            if fault.latency_ms:
                time.sleep(fault.latency_ms / 1000)
            if fault.status is not None:
                response = self.fault_response(fault.status, request)
                if fault.retry_after is not None:
                    response.headers["Retry-After"] = str(fault.retry_after)
        if response is None:
            response = self._answer(request, found, options)
        if request.path.startswith("/_sandbox/"):
            return response  # the control API is not part of what a test counts
        with self.lock:
            self._log.append(
                LoggedRequest(
                    method=request.method,
                    path=request.path,
                    route=pattern,
                    status=response.status,
                    time=datetime.now(UTC).isoformat(),
                    duration_ms=(time.perf_counter() - started) * 1000,
                )
            )
        return response


# ---- HTTP -----------------------------------------------------------------------------------------
def read_request(environ: JsonDict) -> Request:
    """The WSGI request as a `Request`: path and query as sent (still percent-encoded), body read whole
    (the server has already de-chunked it and answered `Expect: 100-continue`)."""
    target = environ.get("REQUEST_URI") or quote(environ.get("PATH_INFO") or "/")
    split = urlsplit(target)
    headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")}
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    return Request(
        method=str(environ["REQUEST_METHOD"]).upper(),
        path=split.path or "/",
        query=parse_qs(split.query, keep_blank_values=True),
        headers=headers,
        body=environ["wsgi.input"].read(),
        raw_query=split.query,
    )


def write_response(
    environ: JsonDict, start_response: StartResponse, status: int, headers: Iterable[tuple[str, str]], body: bytes
) -> list[bytes]:
    """Start the WSGI response: Content-Length set here (never on 1xx/204/304), no body for HEAD."""
    sent = [(name, value) for name, value in headers if name.lower() != "content-length"]
    if status >= 200 and status not in (204, 304):
        sent.append(("Content-Length", str(len(body))))
    start_response(f"{status} {HTTP_STATUS_CODES.get(status, 'Unknown')}", sent)
    return [] if environ["REQUEST_METHOD"] == "HEAD" or status in (204, 304) else [body]


class _Cheroot(cheroot.wsgi.Server):
    _connections: Any

    def error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        """cheroot writes to stderr; a dropped client is no error of ours, so say it through logging."""
        _log.log(level if level >= logging.ERROR else logging.DEBUG, "%s", msg, exc_info=traceback)


class _HandshakeInWorker(BuiltinSSLAdapter):
    """cheroot does the TLS handshake in its one accept loop, so a slow handshake would hold up every
    connection of the server; deferred, OpenSSL does it on the worker thread's first read."""

    def wrap(self, sock: socket.socket) -> tuple[Any, JsonDict]:
        wrapped = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return wrapped, {"wsgi.url_scheme": "https", "HTTPS": "on"}


class HttpServer:
    """A threaded HTTP/1.1 server (cheroot) for one WSGI app, optionally over TLS.

    cheroot reads chunked request bodies, answers `Expect: 100-continue`, keeps connections alive
    (idle ones wait in a selector, not in a thread) and closes them all on `stop()`, which returns
    in milliseconds.
    """

    def __init__(self, app: WSGIApp, *, host: str, port: int, tls: CertificateFiles | None, name: str) -> None:
        self._server = _Cheroot((host, port), app, numthreads=_WORKER_THREADS, server_name=name)
        self._server.keep_alive_conn_limit = 1000  # cheroot's default (10) would close busy clients' connections
        self._server.timeout = 120  # idle keep-alive connections live as long as behind the real services' front doors
        if tls is not None:
            self._server.ssl_adapter = _HandshakeInWorker(str(tls.cert_path), str(tls.key_path))
        self._server.prepare()  # binds now, so that port 0 becomes a real port before `start`
        self.host = host
        self.port = int(self._server.bind_addr[1])
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve, name=f"{name}-http", daemon=True)

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        # cheroot's stop() waits for its selector loop, which looks at the stop flag only between
        # select() calls (0.5 s apart when idle): set the flag, then wake select() with a connection.
        self._server._connections._stop_requested = True
        with contextlib.suppress(OSError):
            socket.create_connection((self.host, self.port), timeout=1).close()
        self._server.stop()
        self._thread.join(timeout=5)


class RunningServer:
    """A simulator served on background threads; `stop()` shuts it down."""

    def __init__(self, simulator: Simulator, http: HttpServer) -> None:
        self.simulator = simulator
        self._http = http
        self.port = http.port
        self.url = http.url

    @property
    def errors(self) -> list[str]:
        return self.simulator.errors

    def start(self) -> RunningServer:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()


def serve(
    simulator_factory: Callable[[str], Simulator],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: bool = True,
) -> RunningServer:
    """Bind (port 0 = any free port), build the simulator with its own base URL, and start it.

    The factory receives the base URL because simulators put it in links they return
    (`@odata.nextLink`, certificate URLs, instance URLs).
    """
    holder: list[Simulator] = []

    def app(environ: JsonDict, start_response: StartResponse) -> Iterable[bytes]:
        return holder[0].wsgi(environ, start_response)

    certificate = issue_certificate("sandbox-server") if tls else None
    http = HttpServer(app, host=host, port=port, tls=certificate, name="simulator")
    holder.append(simulator_factory(http.url))
    return RunningServer(holder[0], http).start()


def serve_many(factories: Iterable[tuple[Callable[[str], Simulator], int]], *, tls: bool = True) -> list[RunningServer]:
    return [serve(factory, port=port, tls=tls) for factory, port in factories]
