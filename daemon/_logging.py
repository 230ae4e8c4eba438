"""structlog set-up: JSON lines when not on a terminal, a readable console line on one.

Configured for speed: a filtering bound logger drops below-level calls without building an event, and
``cache_logger_on_first_use`` freezes each logger's processor chain at first use.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from ._config import LogSettings


def configure(settings: LogSettings, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: structlog.typing.Processor
    processors: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[settings.level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
