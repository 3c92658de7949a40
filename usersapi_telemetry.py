"""Request ids, logs and metrics of the users API.

Every request gets an id (the caller's X-Request-ID when it is sane, else a new one), carried
in its response and in every log line it causes; every request is one access line and is
counted in Prometheus metrics, summed over gunicorn's workers. ``usersapi.create_app()`` wires
this in with ``init_app()``; gunicorn.conf.py gives gunicorn's own log the same formatter.
Nothing here knows about users.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Self

from flask import Blueprint, Flask, Response, current_app, g, has_request_context, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from pydantic import ValidationInfo, field_validator
from pythonjsonlogger.json import JsonFormatter as LibraryJsonFormatter

from usersapi_settings import EnvironmentSettings

REQUEST_ID_HEADER = "X-Request-ID"
# The same rule as the nginx ingress: anything else is replaced, never logged as sent.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
UNMATCHED_ROUTE = "<unmatched>"
LogFormat = Literal["json", "text"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
access_log = logging.getLogger("usersapi.access")
ACCESS = "access"  # the attribute of a log record that holds the access line's fields

# --------------------------------------------------------------------------------------
# Request ids
# --------------------------------------------------------------------------------------


def request_id_from(incoming: str | None) -> str:
    """The caller's X-Request-ID when it is sane, else a new unique one."""
    if incoming is not None and SANE_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return g.get("request_id") if has_request_context() else None


def request_id_of(record: logging.LogRecord) -> str | None:
    """The id of the request being served when RECORD was logged, if any. Handlers format
    records in the thread that logs them, so the request context is still the right one."""
    access = getattr(record, ACCESS, None)
    return access["request_id"] if access else current_request_id()


# --------------------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------------------


class LogSettings(EnvironmentSettings):
    """LOG_LEVEL and LOG_FORMAT, in any letter case: part of the API's settings, and read
    alone by gunicorn.conf.py for gunicorn's own log."""

    log_level: LogLevel = "INFO"
    log_format: LogFormat = "json"

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def any_letter_case(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        value = value.strip()
        return value.upper() if info.field_name == "log_level" else value.lower()


def time_of(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(LibraryJsonFormatter):
    """One JSON object per line: time, level, logger, message, the request id and, for the
    access line, the request's fields; a traceback travels inside the object as
    "exception". Fields without a value are left out, but the access line's key."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
        )

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, ACCESS, None)
        if access is None:
            return super().format(record)
        # The access line, once a request: its fields are known, so they are written without
        # the library's walk over every attribute of the record (11 µs less a line, measured).
        head = {"time": time_of(record), "level": record.levelname, "logger": record.name}
        return json.dumps({**head, "message": record.getMessage(), **access})

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = time_of(record)
        super().add_fields(log_data, record, message_dict)
        log_data["request_id"] = request_id_of(record)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        # The access line's "key" stays, null for a request without one.
        return {
            name: value for name, value in log_data.items() if value is not None or name == "key"
        }


class TextFormatter(logging.Formatter):
    """Readable lines for the development server, with the request id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = request_id_of(record) or "-"
        return super().format(record)


def log_formatter(log_format: str = "json") -> logging.Formatter:
    """The formatter for LOG_FORMAT (json or text); gunicorn.conf.py gives gunicorn's own
    log the same."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(level: str, log_format: str) -> None:
    """Log to stderr in LOG_FORMAT, unless the process already has a handler (gunicorn.conf.py
    installs one with the same formatter; pytest installs its own). LOG_LEVEL applies to the
    service's loggers, the access line included: WARNING drops the access lines."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(log_formatter(log_format))
        root.addHandler(handler)
    logging.getLogger("usersapi").setLevel(level)


def route_label() -> str:
    """The URL rule that matched (a template such as /users/<userid:user_id>, never the path
    with its ids), or a fixed label when none did."""
    return request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE


def log_request(response: Response, request_id: str, route: str, seconds: float) -> None:
    """The access line: the path without its query string (search terms are personal data)
    and the name of the API key used, never the key."""
    method, path, status = request.method, request.path, response.status_code
    fields = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "route": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "client": request.remote_addr,  # after ProxyFix: the address nginx saw
        "key": g.get("api_key_name"),
    }
    message = "%s %s %s %.2f ms"
    access_log.info(message, method, path, status, seconds * 1000, extra={ACCESS: fields})


# --------------------------------------------------------------------------------------
# Metrics: Prometheus text format, summed over gunicorn's workers
# --------------------------------------------------------------------------------------

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BATCH_BUCKETS = (1, 2, 5, 10, 50, 100, 250, 500, 1000)


@dataclass(frozen=True)
class Metrics:
    """The service's metrics, in a registry of the app's own (each app in a test counts
    from zero). Under gunicorn every worker writes its figures to files in
    PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py sets it up) and /metrics sums the files."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    database_errors: Counter
    batch_sizes: Histogram
    refusals: Counter
    workers: Gauge
    # The request counter and latency histogram of each method, route and status seen.
    request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = field(
        default_factory=dict
    )

    @classmethod
    def create(cls) -> Self:
        registry = CollectorRegistry()
        metrics = cls(
            registry=registry,
            requests=Counter(
                "usersapi_http_requests",
                "HTTP requests answered, by method, route template and status",
                ["method", "route", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "usersapi_http_request_duration_seconds",
                "Time to answer an HTTP request, by method and route template",
                ["method", "route"],
                registry=registry,
            ),
            database_errors=Counter(
                "usersapi_mongodb_errors",
                "MongoDB errors answered as 503 or 500, by kind",
                ["kind"],
                registry=registry,
            ),
            batch_sizes=Histogram(
                "usersapi_batch_size",
                "Users in one POST or PATCH /users request, by operation",
                ["operation"],
                buckets=BATCH_BUCKETS,
                registry=registry,
            ),
            refusals=Counter(
                "usersapi_auth_refusals",
                "Requests refused for their API key, by reason",
                ["reason"],
                registry=registry,
            ),
            # Each worker counts itself once; a worker that exits is taken out of the sum
            # (gunicorn.conf.py's child_exit), so this is the number of live workers.
            workers=Gauge(
                "usersapi_workers",
                "gunicorn workers serving",
                registry=registry,
                multiprocess_mode="livesum",
            ),
        )
        metrics.workers.set(1)
        return metrics

    def series_of(self, method: str, route: str, status: int) -> tuple[Counter, Histogram]:
        """The request counter and latency histogram of one method, route and status, looked
        up once: labels() takes a lock and checks its arguments on every call. The keys are
        few: known methods, the routes, the statuses the API answers."""
        series = self.request_series.get((method, route, status))
        if series is None:
            series = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
            self.request_series[method, route, status] = series
        return series


def metrics() -> Metrics:
    app_metrics: Metrics = current_app.extensions["usersapi.metrics"]
    return app_metrics


def record_request(response: Response, route: str, seconds: float) -> None:
    # Any token is a method to werkzeug: unknown ones share a label to keep the series few.
    method = request.method if request.method in KNOWN_METHODS else "OTHER"
    counter, histogram = metrics().series_of(method, route, response.status_code)
    counter.inc()
    histogram.observe(seconds)


def record_database_error(kind: str) -> None:
    metrics().database_errors.labels(kind).inc()


def record_batch_size(operation: str, size: int) -> None:
    metrics().batch_sizes.labels(operation).observe(size)


def record_refusal(reason: str) -> None:
    metrics().refusals.labels(reason).inc()


def exposition() -> bytes:
    """The metrics in Prometheus text format: the sum over every worker's files in
    multiprocess mode, else this process's own registry."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest(metrics().registry)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


# Not in the OpenAPI document: an operator's endpoint, closed at the ingress.
endpoints = Blueprint("telemetry", __name__)


@endpoints.get("/metrics")
def prometheus_metrics() -> Response:
    return current_app.response_class(exposition(), mimetype=None, content_type=CONTENT_TYPE_LATEST)


# --------------------------------------------------------------------------------------
# Wiring
# --------------------------------------------------------------------------------------


def start_request() -> None:
    g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    g.started = time.perf_counter()


def finish_request(response: Response) -> Response:
    """Every response carries the request id; every request gets one access line and is
    counted in the metrics."""
    request_id = g.get("request_id")
    if request_id is None:  # a hook registered before start_request failed
        request_id = g.request_id = request_id_from(None)
    response.headers[REQUEST_ID_HEADER] = request_id
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    route = route_label()
    log_request(response, request_id, route, seconds)
    record_request(response, route, seconds)
    return response


def init_app(app: Flask) -> None:
    """Call first in the app factory: the request id then exists before any other hook runs,
    and the access line and metrics (after_request hooks run in reverse) see the final
    response."""
    app.extensions["usersapi.metrics"] = Metrics.create()
    app.before_request(start_request)
    app.after_request(finish_request)
    app.register_blueprint(endpoints)
