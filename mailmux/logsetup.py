"""Logging for mailmux processes: one line per event on stderr, as text or JSON.

`MAILMUX_LOG_LEVEL` sets the level (INFO by default). JSON lines carry `ts` (ISO 8601, UTC),
`level`, `process` (the node id or "gateway"), `logger`, `msg` and, for errors, `exc`.
Third-party loggers that would put mail content or per-command chatter into the log are held
at WARNING whatever the level.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

LOG_FORMATS = ("text", "json")

# aiosmtpd logs every command at INFO and message lines at DEBUG: mail content stays out of the
# log at any MAILMUX_LOG_LEVEL; our handlers log each transaction themselves.
_QUIET_LOGGERS = ("mail.log",)


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": self.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup_logging(process: str, log_format: str = "text") -> None:
    level = os.environ.get("MAILMUX_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if level in logging.getLevelNamesMapping() else logging.INFO)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Python's own warnings (DeprecationWarning from a library, ...) go through the log too, in
    # the same format, instead of as raw lines on stderr.
    logging.captureWarnings(True)
