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
the real service would send.
"""

from __future__ import annotations

import json
import random
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox.tls import CertificateFiles, issue_certificate

JsonDict = dict[str, Any]


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


def route(method: str, pattern: str) -> Callable[[SubclassHandler[SimulatorT]], SubclassHandler[SimulatorT]]:
    """Mark a Simulator method (of any subclass) as the handler of `METHOD /path/{param}`."""

    def mark(handler: SubclassHandler[SimulatorT]) -> SubclassHandler[SimulatorT]:
        routes: list[tuple[str, str]] = getattr(handler, "_routes", [])
        routes.append((method.upper(), pattern))
        handler._routes = routes  # type: ignore[attr-defined]
        return handler

    return mark


def _compile(pattern: str) -> re.Pattern[str]:
    # `{name}` matches one path segment; `{name:path}` matches the rest of the path.
    regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", pattern)
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
    return re.compile(f"^{regex}$")


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
        self._routes: list[tuple[str, str, re.Pattern[str], Handler]] = []
        self._random = random.Random(0)
        for klass in reversed(type(self).__mro__):
            for attribute in vars(klass).values():
                for method, pattern in getattr(attribute, "_routes", []):
                    self._routes.append((method, pattern, _compile(pattern), attribute))
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

    def _match(self, request: Request) -> tuple[str, Handler | None]:
        for method, pattern, regex, handler in self._routes:
            found = regex.match(request.path)
            if found and method == request.method:
                request.path_params = {k: v for k, v in found.groupdict().items() if v is not None}
                return pattern, handler
        return request.path, None

    def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        pattern, handler = self._match(request)
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
            response = handler(self, request) if handler else self.not_found_response(request)
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


class _RequestHandler(BaseHTTPRequestHandler):
    server: _SimulatorHTTPServer
    protocol_version = "HTTP/1.1"
    # Without this, Nagle's algorithm holds small responses ~40 ms waiting for the client's ACK.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the default stderr line per request; the simulator keeps its own log."""

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command.upper(),
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            raw_query=split.query,
        )
        try:
            response = self.server.simulator.handle(request)
        except Exception as error:  # a simulator bug must show up as a 500, not a hung client
            self.server.errors.append(repr(error))
            response = json_response(500, {"error": {"code": "SimulatorError", "message": repr(error)}})
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch


class _SimulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        super().__init__(address, _RequestHandler)
        self.simulator = simulator
        self.errors: list[str] = []


class RunningServer:
    """A simulator served on a background thread; `stop()` shuts it down."""

    def __init__(self, simulator: Simulator, httpd: _SimulatorHTTPServer, scheme: str) -> None:
        self.simulator = simulator
        self._httpd = httpd
        host, port = httpd.server_address[:2]
        self.port = int(port)
        self.url = f"{scheme}://{host!s}:{self.port}"
        self._thread = threading.Thread(target=httpd.serve_forever, name=f"{simulator.name}-server", daemon=True)

    @property
    def errors(self) -> list[str]:
        return self._httpd.errors

    def start(self) -> RunningServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def server_tls_context(certificate: CertificateFiles | None = None) -> ssl.SSLContext:
    certificate = certificate or issue_certificate("sandbox-server")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate.cert_path, certificate.key_path)
    return context


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
    placeholder = Simulator()
    httpd = _SimulatorHTTPServer((host, port), placeholder)
    scheme = "https" if tls else "http"
    if tls:
        # The handshake runs in the per-request thread, so one slow client cannot block accept().
        httpd.socket = server_tls_context().wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    bound_port = httpd.server_address[1]
    simulator = simulator_factory(f"{scheme}://{host}:{bound_port}")
    httpd.simulator = simulator
    return RunningServer(simulator, httpd, scheme).start()


def serve_many(factories: Iterable[tuple[Callable[[str], Simulator], int]], *, tls: bool = True) -> list[RunningServer]:
    return [serve(factory, port=port, tls=tls) for factory, port in factories]
