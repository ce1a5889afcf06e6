"""A local Azure Functions host for machines without Core Tools: `python -m sandbox.host`.

It imports a v2 `FunctionApp` (default `function_app:app`), reads each function's trigger, and
runs it the way the Functions host does:
- HTTP triggers on `http://127.0.0.1:7071/api/<route>`: methods, route parameters (`{id}`,
  optional `{id?}`, catch-all `{*rest}`), query, headers, body; function- and admin-level routes
  need `?code=` or `x-functions-key` equal to `SANDBOX_FUNCTION_KEY` (401 otherwise).
- Timer triggers by their six-field NCRONTAB schedule (`%SETTING%` resolved from app settings), in
  UTC, `run_on_startup` honoured, `past_due` set when an occurrence fired late.
- Queue triggers pumped from storage with host.json's `batchSize`, `newBatchThreshold`,
  `maxPollingInterval`, `visibilityTimeout` (delay before a failed message is retried),
  `maxDequeueCount` (then the message moves to `<queue>-poison`) and `messageEncoding`.
App settings come from the environment, plus `local.settings.json` `Values` for names not set
there, as `func start` does. One log line per invocation: function, trigger, duration, outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import functools
import importlib
import inspect
import json
import logging
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from sandbox.server import HttpServer, StartResponse, read_request, write_response
from shared.ncrontab import Schedule
from shared.settings import apply_local_settings_file, expand_development_storage

log = logging.getLogger("sandbox.host")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_SETTING_EXPRESSION = re.compile(r"%([A-Za-z0-9_]+)%")


class HostConfigError(ValueError):
    """host.json, an app setting or a binding cannot be used as written."""


def parse_timespan(value: str | int | float, name: str) -> float:
    """host.json TimeSpan ("hh:mm:ss[.fff]" or "d.hh:mm:ss") -> seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)", value.strip())
    if not match:
        raise HostConfigError(f"host.json {name}: {value!r} is not a TimeSpan like '00:00:30'")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass(frozen=True)
class QueueOptions:
    """`extensions.queues` of host.json, with the Functions defaults."""

    batch_size: int = 16
    new_batch_threshold: int | None = None
    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    message_encoding: str = "base64"

    @property
    def threshold(self) -> int:
        return self.new_batch_threshold if self.new_batch_threshold is not None else self.batch_size // 2

    @classmethod
    def from_host_json(cls, host_json: Mapping[str, Any]) -> QueueOptions:
        queues = (host_json.get("extensions") or {}).get("queues") or {}
        options = cls(
            batch_size=int(queues.get("batchSize", 16)),
            new_batch_threshold=int(queues["newBatchThreshold"]) if "newBatchThreshold" in queues else None,
            max_polling_interval=parse_timespan(queues.get("maxPollingInterval", "00:01:00"), "maxPollingInterval"),
            visibility_timeout=parse_timespan(queues.get("visibilityTimeout", "00:00:00"), "visibilityTimeout"),
            max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
            message_encoding=str(queues.get("messageEncoding", "base64")).lower(),
        )
        if not 1 <= options.batch_size <= 32:
            raise HostConfigError("host.json batchSize must be between 1 and 32")
        if options.max_dequeue_count < 1:
            raise HostConfigError("host.json maxDequeueCount must be at least 1")
        if options.message_encoding not in ("base64", "none"):
            raise HostConfigError("host.json messageEncoding must be 'base64' or 'none'")
        return options


def load_host_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("version") != "2.0":
        raise HostConfigError(f'{path} must be a JSON object with "version": "2.0"')
    return data


def resolve_setting_expressions(text: str, environ: Mapping[str, str]) -> str:
    """`%NAME%` -> the app setting's value, as binding expressions are resolved by the host."""

    def value_of(match: re.Match[str]) -> str:
        name = match.group(1)
        if not environ.get(name):
            raise HostConfigError(f"app setting {name} is not set (used as %{name}% in a binding)")
        return environ[name]

    return _SETTING_EXPRESSION.sub(value_of, text)


def _call(function: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    result = function(**arguments)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result


@dataclass
class Invocation:
    function: str
    trigger: str
    outcome: str
    duration_ms: float
    detail: str = ""


# ---- HTTP -------------------------------------------------------------------------------------------
@dataclass
class HttpRoute:
    name: str
    function: Callable[..., Any]
    argument: str
    methods: frozenset[str]
    auth_level: str
    template: str
    pattern: re.Pattern[str]

    @classmethod
    def build(cls, name: str, function: Callable[..., Any], trigger: Mapping[str, Any]) -> HttpRoute:
        template = str(trigger.get("route") or name).strip("/")
        regex = ""
        for segment in template.split("/"):
            found = re.fullmatch(r"\{(\*?)(\w+)(?::[^}?]+)?(\??)\}", segment)
            if not found:
                regex += "/" + re.escape(segment)
            elif found.group(1):
                regex += rf"(?:/(?P<{found.group(2)}>.*))?"
            elif found.group(3):
                regex += rf"(?:/(?P<{found.group(2)}>[^/]+))?"
            else:
                regex += rf"/(?P<{found.group(2)}>[^/]+)"
        methods = trigger.get("methods") or ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        return cls(
            name=name,
            function=function,
            argument=str(trigger["name"]),
            methods=frozenset(str(getattr(method, "value", method)).upper() for method in methods),
            auth_level=str(getattr(trigger.get("authLevel"), "value", trigger.get("authLevel") or "function")).lower(),
            template=template,
            pattern=re.compile(f"^{regex}/?$", re.IGNORECASE),
        )


# ---- queues -----------------------------------------------------------------------------------------
@dataclass
class QueueFunction:
    name: str
    function: Callable[..., Any]
    argument: str
    queue: str
    connection: str


@dataclass
class TimerFunction:
    name: str
    function: Callable[..., Any]
    argument: str
    schedule: Schedule
    run_on_startup: bool


class _InFlight:
    """How many messages of one queue are being processed right now."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = threading.Condition()

    def add(self) -> None:
        with self._changed:
            self.count += 1

    def done(self, _future: Any = None) -> None:
        with self._changed:
            self.count -= 1
            self._changed.notify_all()

    def wait_until_at_most(self, limit: int, stop: threading.Event) -> None:
        with self._changed:
            while self.count > limit and not stop.is_set():
                self._changed.wait(timeout=0.5)


@dataclass
class LocalHost:
    """Runs the triggers of one or more FunctionApps; `start()` then `stop()`."""

    functions: list[Any]
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    queue_options: QueueOptions = field(default_factory=QueueOptions)
    http_port: int = 7071
    route_prefix: str = "api"
    on_invocation: Callable[[Invocation], None] | None = None

    def __post_init__(self) -> None:
        self.http_routes: list[HttpRoute] = []
        self.queue_functions: list[QueueFunction] = []
        self.timer_functions: list[TimerFunction] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._http: HttpServer | None = None
        self.invocations: list[Invocation] = []
        self._invocations_lock = threading.Lock()
        for function in self.functions:
            self._index(function)

    # ---- indexing -------------------------------------------------------------------------------
    def _index(self, function: Any) -> None:
        name = function.get_function_name()
        trigger = function.get_trigger().get_dict_repr()
        user_function = function.get_user_function()
        kind = trigger["type"]
        if kind == "httpTrigger":
            self.http_routes.append(HttpRoute.build(name, user_function, trigger))
        elif kind == "timerTrigger":
            expression = resolve_setting_expressions(str(trigger["schedule"]), self.environ)
            self.timer_functions.append(
                TimerFunction(
                    name, user_function, trigger["name"], Schedule.parse(expression), bool(trigger.get("runOnStartup"))
                )
            )
        elif kind == "queueTrigger":
            queue = resolve_setting_expressions(str(trigger["queueName"]), self.environ)
            connection = str(trigger.get("connection") or "AzureWebJobsStorage")
            self.queue_functions.append(QueueFunction(name, user_function, trigger["name"], queue, connection))
        else:
            raise HostConfigError(f"function {name}: the local host does not run {kind} triggers")

    @property
    def url(self) -> str:
        return self._http.url if self._http else f"http://127.0.0.1:{self.http_port}"

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> LocalHost:
        if self.http_routes:
            self._http = HttpServer(self._wsgi, host="127.0.0.1", port=self.http_port, tls=None, name="functions-host")
            self._http.start()
        for timer in self.timer_functions:
            self._spawn(f"timer-{timer.name}", functools.partial(self._run_timer, timer))
        for queue_function in self.queue_functions:
            self._spawn(f"queue-{queue_function.name}", functools.partial(self._pump_queue, queue_function))
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._http:
            self._http.stop()
        for thread in self._threads:
            thread.join(timeout=15)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _record(self, invocation: Invocation) -> None:
        with self._invocations_lock:
            self.invocations.append(invocation)
        log.info(
            "function=%s trigger=%s duration_ms=%.1f outcome=%s%s",
            invocation.function,
            invocation.trigger,
            invocation.duration_ms,
            invocation.outcome,
            f" {invocation.detail}" if invocation.detail else "",
        )
        if self.on_invocation:
            self.on_invocation(invocation)

    def _invoke(self, name: str, trigger: str, call: Callable[[], Any], detail: str = "") -> tuple[bool, Any]:
        started = time.perf_counter()
        try:
            result = call()
        except Exception as error:
            self._record(
                Invocation(
                    name, trigger, "failed", (time.perf_counter() - started) * 1000, f"{detail} error={error!r}".strip()
                )
            )
            log.debug("%s", traceback.format_exc())
            return False, error
        self._record(Invocation(name, trigger, "succeeded", (time.perf_counter() - started) * 1000, detail))
        return True, result

    # ---- HTTP -----------------------------------------------------------------------------------
    def _authorized(self, route: HttpRoute, query: Mapping[str, str], headers: Mapping[str, str]) -> bool:
        if route.auth_level == "anonymous":
            return True
        expected = self.environ.get("SANDBOX_FUNCTION_KEY", "")
        given = query.get("code") or next((v for k, v in headers.items() if k.lower() == "x-functions-key"), "")
        return bool(expected) and given == expected

    def _wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request = read_request(environ)
        status, headers, payload = self.handle_http(
            request.method, request.path, request.raw_query, request.headers, request.body
        )
        return write_response(environ, start_response, status, headers, payload)

    def handle_http(
        self, method: str, path: str, raw_query: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        import azure.functions as func

        prefix = f"/{self.route_prefix}" if self.route_prefix else ""
        if not path.lower().startswith(prefix.lower()):
            return 404, [], b""
        relative = path[len(prefix) :] or "/"
        for route in self.http_routes:
            found = route.pattern.match(relative)
            if not found or method not in route.methods:
                continue
            query = dict(parse_qsl(raw_query, keep_blank_values=True))
            if not self._authorized(route, query, headers):
                self._record(Invocation(route.name, "http", "unauthorized", 0.0, f"{method} {path}"))
                return 401, [], b""
            request = func.HttpRequest(
                method=method,
                url=f"{self.url}{path}" + (f"?{raw_query}" if raw_query else ""),
                headers=dict(headers),
                params=query,
                route_params={k: v for k, v in found.groupdict().items() if v is not None},
                body=body,
            )
            ok, result = self._invoke(
                route.name,
                "http",
                functools.partial(_call, route.function, {route.argument: request}),
                f"{method} {path}",
            )
            if not ok or not isinstance(result, func.HttpResponse):
                return 500, [], b""
            response_headers = [(k, v) for k, v in result.headers.items() if k.lower() != "content-length"]
            if not any(k.lower() == "content-type" for k, _ in response_headers) and result.mimetype:
                response_headers.append(("Content-Type", f"{result.mimetype}; charset={result.charset or 'utf-8'}"))
            return result.status_code, response_headers, result.get_body() or b""
        return 404, [], b""

    # ---- timers ---------------------------------------------------------------------------------
    def _run_timer(self, timer: TimerFunction) -> None:
        from azure.functions.timer import TimerRequest

        if timer.run_on_startup:
            self._invoke(
                timer.name, "timer", lambda: _call(timer.function, {timer.argument: TimerRequest(past_due=False)})
            )
        due = timer.schedule.next_after(dt.datetime.now(dt.UTC))
        while not self._stop.is_set():
            wait = (due - dt.datetime.now(dt.UTC)).total_seconds()
            if wait > 0 and self._stop.wait(wait):
                return
            late = (dt.datetime.now(dt.UTC) - due).total_seconds()
            request = TimerRequest(past_due=late > 1.0)
            self._invoke(
                timer.name,
                "timer",
                functools.partial(_call, timer.function, {timer.argument: request}),
                f"scheduled={due.isoformat()}",
            )
            due = timer.schedule.next_after(max(due, dt.datetime.now(dt.UTC)))

    # ---- queues ---------------------------------------------------------------------------------
    def _connection_string(self, setting: str) -> str:
        value = self.environ.get(setting) or self.environ.get(f"{setting}__connectionString")
        if not value:
            raise HostConfigError(f"app setting {setting} (the queue trigger's connection) is not set")
        return expand_development_storage(value)

    def _pump_queue(self, queue_function: QueueFunction) -> None:
        from azure.storage.queue import QueueClient

        options = self.queue_options
        connection = self._connection_string(queue_function.connection)
        # Raw clients: the host decodes itself, as host.json messageEncoding says.
        source = QueueClient.from_connection_string(connection, queue_function.queue)
        poison = QueueClient.from_connection_string(connection, f"{queue_function.queue}-poison")
        for client in (source, poison):
            with contextlib.suppress(Exception):  # exists already (or will be reported on first use)
                client.create_queue()
        # Like the host: take a batch, and take the next one once the messages still being
        # processed are down to newBatchThreshold.
        in_flight = _InFlight()
        idle_delay = 0.05
        with ThreadPoolExecutor(max_workers=options.batch_size + options.threshold) as pool:
            while not self._stop.is_set():
                in_flight.wait_until_at_most(options.threshold, self._stop)
                try:
                    messages = list(
                        source.receive_messages(
                            messages_per_page=options.batch_size,
                            max_messages=options.batch_size,
                            visibility_timeout=600,  # the function's lease; released on failure
                        )
                    )
                except Exception as error:
                    log.warning("queue %s: receive failed (%s); retrying", queue_function.queue, error)
                    messages = []
                if not messages:
                    # Exponential back-off while idle, capped by maxPollingInterval, like the host.
                    if self._stop.wait(idle_delay):
                        break
                    idle_delay = min(idle_delay * 2, options.max_polling_interval)
                    continue
                idle_delay = 0.05
                for message in messages:
                    in_flight.add()
                    future = pool.submit(self._process_message, queue_function, source, poison, message)
                    future.add_done_callback(in_flight.done)

    def _decode(self, content: str) -> bytes:
        if self.queue_options.message_encoding == "none":
            return content.encode("utf-8")
        try:
            return base64.b64decode(content.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError) as error:
            raise HostConfigError(f"message is not base64 (host.json messageEncoding is base64): {error}") from error

    def _process_message(self, queue_function: QueueFunction, source: Any, poison: Any, message: Any) -> None:
        from azure.functions.queue import QueueMessage

        options = self.queue_options
        dequeue_count = int(message.dequeue_count or 1)

        def invoke() -> Any:
            body = self._decode(str(message.content))
            queue_message = QueueMessage(  # type: ignore[no-untyped-call]
                id=message.id,
                body=body,
                dequeue_count=dequeue_count,
                expiration_time=message.expires_on,
                insertion_time=message.inserted_on,
                time_next_visible=message.next_visible_on,
                pop_receipt=message.pop_receipt,
            )
            return _call(queue_function.function, {queue_function.argument: queue_message})

        ok, _ = self._invoke(
            queue_function.name,
            "queue",
            invoke,
            f"queue={queue_function.queue} id={message.id} dequeue_count={dequeue_count}",
        )
        try:
            if ok:
                source.delete_message(message.id, message.pop_receipt)
            elif dequeue_count >= options.max_dequeue_count:
                poison.send_message(message.content)  # the same wire text, so the poison trigger decodes it alike
                source.delete_message(message.id, message.pop_receipt)
                log.warning(
                    "queue %s: message %s moved to %s-poison after %d attempts",
                    queue_function.queue,
                    message.id,
                    queue_function.queue,
                    dequeue_count,
                )
            else:
                source.update_message(
                    message.id, message.pop_receipt, visibility_timeout=int(options.visibility_timeout)
                )
        except Exception:
            # The lease simply expires and the message comes back: nothing is lost.
            log.exception("queue %s: could not settle message %s", queue_function.queue, message.id)


_indexed: dict[int, list[Any]] = {}
_indexed_lock = threading.Lock()


def indexed_functions(app: Any) -> list[Any]:
    """`app.get_functions()`, once per app: the library validates names against what it indexed
    before, so a second call on the same app fails with "not a unique function name"."""
    with _indexed_lock:
        if id(app) not in _indexed:
            _indexed[id(app)] = list(app.get_functions())
        return _indexed[id(app)]


def functions_of(apps: Iterable[Any], names: Iterable[str] | None = None) -> list[Any]:
    """The indexed functions of the given FunctionApps, optionally only those named."""
    wanted = set(names) if names is not None else None
    found = [function for app in apps for function in indexed_functions(app)]
    if wanted is not None:
        missing = wanted - {function.get_function_name() for function in found}
        if missing:
            raise HostConfigError(f"no function named {', '.join(sorted(missing))}")
        found = [function for function in found if function.get_function_name() in wanted]
    return found


def load_app(reference: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute or "app")


def build_host(
    *,
    app_reference: str = "function_app:app",
    port: int = 7071,
    host_json: Path = PROJECT_ROOT / "host.json",
    local_settings: Path = PROJECT_ROOT / "local.settings.json",
) -> LocalHost:
    apply_local_settings_file(local_settings)
    config = load_host_json(host_json)
    route_prefix = str(((config.get("extensions") or {}).get("http") or {}).get("routePrefix", "api"))
    return LocalHost(
        functions=functions_of([load_app(app_reference)]),
        queue_options=QueueOptions.from_host_json(config),
        http_port=port,
        route_prefix=route_prefix,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.host", description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="function_app:app", help="module:attribute of the FunctionApp")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--settings", type=Path, default=PROJECT_ROOT / "local.settings.json")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every HTTP request at INFO
    host = build_host(app_reference=arguments.app, port=arguments.port, local_settings=arguments.settings)
    host.start()
    log.info("local Functions host on %s/%s with %d functions", host.url, host.route_prefix, len(host.functions))
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with contextlib.suppress(KeyboardInterrupt):
        stopped.wait()
    host.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
