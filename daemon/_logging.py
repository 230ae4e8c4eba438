"""structlog set-up: journald's native protocol when stderr is the journal, JSON lines when not on a
terminal, a readable console line on one.

Configured for speed: a filtering bound logger drops below-level calls without building an event, and
``cache_logger_on_first_use`` freezes each logger's processor chain at first use.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TextIO

import structlog

from ._config import LogSettings
from ._events import MESSAGE_IDS
from ._journal import JournalLoggerFactory, JournalRenderer, stderr_is_journal


def configure(settings: LogSettings, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    fmt = settings.format
    if fmt == "auto":
        fmt = "journal" if stderr_is_journal() else "console" if stream.isatty() else "json"
    level = logging.getLevelNamesMapping()[settings.level.upper()]
    processors: list[structlog.typing.Processor] = [structlog.processors.add_log_level]
    logger_factory: Callable[..., Any]
    if fmt == "journal":
        # journald stamps entries itself; CODE_FILE/LINE/FUNC come from the call site.
        cp = structlog.processors.CallsiteParameter
        processors += [
            structlog.processors.CallsiteParameterAdder(
                [cp.PATHNAME, cp.LINENO, cp.FUNC_NAME, cp.THREAD_NAME]
            ),
            structlog.processors.format_exc_info,
            JournalRenderer(message_ids=MESSAGE_IDS),
        ]
        logger_factory = JournalLoggerFactory()
    else:
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
        if fmt == "json":
            processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        else:
            processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
        logger_factory = structlog.WriteLoggerFactory(file=stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
