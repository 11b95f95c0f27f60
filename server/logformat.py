"""Log output on stderr: text lines for people, or one JSON object a line for log shippers.

`[server] log_format = "json"` writes each record as an object with `time` (ISO 8601, UTC,
milliseconds), `level`, `logger` and `message`, plus `exception` (the formatted traceback)
when the record carries one and `stack` when it carries a stack, and `worker` (e.g.
"worker-2[4242]") in a worker process of `--workers N`, whose text lines carry it too. JSON
escapes every control character, so a record is always exactly one line; client-supplied text
is escaped by the code that logs it (`logsafe.printable`) in both formats.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def __init__(self, worker: str = "") -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker:
            entry["worker"] = self.worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # Non-ASCII text stays readable; stderr's "backslashreplace" handles lone surrogates.
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str, worker: str = "") -> None:
    """Send every logger's records at `level` and above to stderr in `log_format`; `worker`
    names the worker process that writes them (`--workers N`)."""
    handler = logging.StreamHandler()
    text = TEXT_FORMAT.replace("%(name)s", f"{worker} %(name)s") if worker else TEXT_FORMAT
    handler.setFormatter(JsonFormatter(worker) if log_format == "json"
                         else logging.Formatter(text))
    logging.basicConfig(level=level.upper(), handlers=[handler])
