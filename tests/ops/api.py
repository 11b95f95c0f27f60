"""An HTTP client for the admin and public APIs of a test server (real sockets, 127.0.0.1)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable
from typing import Any

TOKEN = "test-admin-token-0123456789"


class Reply:
    """Status, headers (lower-case names) and body of one answer."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:200]!r}>"


def call(port: int, method: str, path: str, body: Any = None, token: str | None = TOKEN,
         raw: bytes | Iterable[bytes] | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> Reply:
    """One request: `body` is sent as JSON, `raw` as is (an iterable of byte strings is sent
    chunked); the admin token unless token=None."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=sent,
                     encode_chunked=data is not None and not isinstance(data, bytes))
        reply = conn.getresponse()
        return Reply(reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read())
    finally:
        conn.close()
