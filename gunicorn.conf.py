"""gunicorn settings of the users API; gunicorn reads this file from the working directory
by default, so `gunicorn` alone serves the app (the container image names it explicitly).

Command-line options and GUNICORN_CMD_ARGS still win over these values. Read from the
environment:

    WEB_CONCURRENCY            worker processes                        default 1
    GUNICORN_THREADS           threads per worker (gthread)            default 16
    MONGO_POOL_SIZE            MongoDB connections per worker          default: the threads
    PROMETHEUS_MULTIPROC_DIR   where workers write their metrics       default: a new
                               temporary directory, removed on exit
    LOG_LEVEL, LOG_FORMAT      as for the app (json or text)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(
            f"gunicorn.conf.py: {name} must be a whole number of at least 1, got {raw!r}"
        )
    return int(raw)


wsgi_app = "usersapi:create_app()"
bind = ["0.0.0.0:8000"]

# Threaded workers: a request waiting on MongoDB holds one thread, not the whole worker.
# The defaults fit the api service's 0.5 CPU limit: the GIL keeps a worker to at most one
# core of Python, so a second worker buys no CPU, and it costs some: two processes taking
# turns find their code gone from the caches (measured, a tenth to a quarter more CPU per
# request; docs/developing.md). Sixteen threads overlap as many database waits. The
# service's replicas, not a second worker, keep it answering while a worker restarts.
worker_class = "gthread"
workers = env_int("WEB_CONCURRENCY", 1)
threads = env_int("GUNICORN_THREADS", 16)
# One MongoDB connection per thread: no thread ever waits for a connection of its own pool.
os.environ.setdefault("MONGO_POOL_SIZE", str(threads))

# The heartbeat file lives in tmpfs where there is one, so a slow overlay disk never makes
# the arbiter kill healthy workers. On SIGTERM, workers get graceful_timeout seconds to
# finish their requests (keep the orchestrator's stop grace period longer than that).
worker_tmp_dir = "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108
graceful_timeout = 30
timeout = 60
# The orchestrator starts, scales and stops the service: no control socket in $HOME (the
# image's user has none, and two servers on one machine would share its default path).
control_socket_disable = True

# --- Metrics: prometheus_client's multiprocess mode. Each worker writes its figures to
# files in this directory and /metrics sums them. The variable must be set before
# prometheus_client is first imported, in the arbiter and so in every worker it forks.
CREATED_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if CREATED_METRICS_DIR:
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="usersapi-metrics-", dir=shm)

# --- Logs: the app writes one JSON line per request, so gunicorn's access log is off; its
# error log goes to stderr through the app's formatter, in the same format.
# Imported only now, after PROMETHEUS_MULTIPROC_DIR is set above.
from gunicorn.glogging import Logger  # type: ignore[import-untyped]  # noqa: E402

from usersapi_settings import ConfigError  # noqa: E402
from usersapi_telemetry import LogSettings  # noqa: E402


class AppWritesTheAccessLine(Logger):  # type: ignore[misc]
    """gunicorn's logger without its access log. With logconfig_dict set, gunicorn builds
    every request's access-log fields even though no handler writes them (about 18 µs a
    request, measured); the app writes the access line itself."""

    def access(self, *_request: Any) -> None:
        return


logger_class = AppWritesTheAccessLine

try:
    LOG_SETTINGS = LogSettings.from_env()  # the app's own rules for the two
except ConfigError as exc:
    raise SystemExit(f"gunicorn.conf.py: {exc}") from None
loglevel = LOG_SETTINGS.log_level.lower()
accesslog = None
errorlog = "-"
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "usersapi": {
            "()": "usersapi_telemetry.log_formatter",
            "log_format": LOG_SETTINGS.log_format,
        },
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "usersapi",
            "stream": "ext://sys.stderr",
        },
    },
    "root": {"level": "WARNING", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
    },
}
# Log records without the caller's file and line, the thread and the process: no formatter
# here prints them, and finding them is much of what a record costs (the logging HOWTO's
# "Optimization"). Set in the arbiter, so every worker it forks has them so.
logging._srcfile = None
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False


def metrics_dir() -> Path:
    return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_starting(server: Any) -> None:
    """Start from zero: figures of an earlier run in the same directory would be summed in."""
    directory = metrics_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    server.log.info("metrics of all workers are summed in %s", directory)


def child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess  # noqa: PLC0415 - after the variable is set

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(_server: Any) -> None:
    if CREATED_METRICS_DIR:
        shutil.rmtree(metrics_dir(), ignore_errors=True)
