"""Logs on stderr, for structlog and stdlib loggers alike: one JSON object a line for machines (the
default when stderr is not a terminal), readable lines for a person at a terminal.

The format is ``--log-format`` / ``LOSSPROOF_LOG_FORMAT``: ``auto`` (the default), ``json`` or ``text``.
``lossproof up`` resolves ``auto`` once and hands the result to its children, so every process of a
pipeline writes the same format to the same stream.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

import structlog

LogFormat = Literal["auto", "json", "text"]
FORMATS: tuple[LogFormat, ...] = ("auto", "json", "text")
ENV = "LOSSPROOF_LOG_FORMAT"


def resolve(fmt: str | None = None) -> Literal["json", "text"]:
    """``fmt`` (or ``LOSSPROOF_LOG_FORMAT``) with ``auto`` decided by whether stderr is a terminal."""
    chosen = fmt or os.environ.get(ENV) or "auto"
    if chosen == "json":
        return "json"
    if chosen == "text":
        return "text"
    # an unknown value is not worth refusing a start for: the safe default
    return "text" if _isatty(sys.stderr) else "json"


def _isatty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


def setup(component: str, level: str = "INFO", fmt: str | None = None) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
    ]
    render: list[structlog.types.Processor]
    if resolve(fmt) == "text":
        # local wall-clock time: the person reading it is here, now
        shared.append(structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False))
        # (the console renderer formats exceptions itself)
        render = [structlog.dev.ConsoleRenderer(colors=_isatty(sys.stderr), sort_keys=False)]
    else:
        shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
        render = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *render,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    structlog.contextvars.bind_contextvars(component=component)
    # aiohttp's access log is one line per request: far too much on the ingest path.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# Until a process calls setup(), structlog would print to stdout, which is a tool's output (and a
# test's protocol with its child): stderr instead, in structlog's default format.
if not structlog.is_configured():
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
