"""One client that sends as fast as TCP allows: the flooder of the flood scenarios.

    python bench/flood.py --url ws://127.0.0.1:9080/ --protocol scratch [--seconds 60]
    python bench/flood.py --url ws://127.0.0.1:9080/ --protocol cl4 --reconnect

It upgrades, handshakes (Scratch: into its own room; CL4: the extension's handshake), then
writes one pre-built 64 KiB block of masked frames after another with blocking sends (Scratch:
`set` of one variable; CL4: `gmsg`), so the server, not this process, sets the pace. A thread
reads and discards what the server sends, counting CL4 `E:116` replies. When the server closes
the connection, `--reconnect` starts over (an attacker would); otherwise it waits for the end.
It stops after `--seconds` or on SIGTERM and prints one JSON object: messages sent (and per
second), bytes received, E:116 replies, connections made, the close codes seen.

Only stdlib; traffic goes only to the URL given.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import struct
import threading
import time
from urllib.parse import urlsplit

BLOCK_BYTES = 65536


def masked_frame(text: str) -> bytes:
    """One masked text frame (a client must mask; the key is random, the payload fixed)."""
    payload = text.encode()
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, 0x80 | length)
    else:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, length)
    return header + key + masked


def messages(protocol: str, room: str) -> tuple[bytes, bytes]:
    """(handshake frame, one flood frame) for `protocol`."""
    if protocol == "scratch":
        hello = {"method": "handshake", "project_id": room, "user": "flooder"}
        flood = {"method": "set", "user": "flooder", "project_id": room,
                 "name": "☁ flood", "value": "12345"}
    else:
        hello = {"cmd": "handshake", "val": {"language": "Scratch"}, "listener": "hello"}
        flood = {"cmd": "gmsg", "val": "flood"}
    return (masked_frame(json.dumps(hello, ensure_ascii=False)),
            masked_frame(json.dumps(flood, ensure_ascii=False)))


class Flooder:
    def __init__(self, url: str, protocol: str, room: str) -> None:
        parts = urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.path = parts.path or "/"
        self.hello, frame = messages(protocol, room)
        self.frame_count = BLOCK_BYTES // len(frame)
        self.block = frame * self.frame_count
        self.stop = threading.Event()
        self.sent = 0
        self.received = 0
        self.rate_limited = 0
        self.connections = 0
        self.refused = 0
        self.closes: dict[str, int] = {}

    def connect(self) -> socket.socket | None:
        sock = socket.create_connection(self.address, timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.address[0]}:{self.address[1]}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nUser-Agent: stratus-bench-flood\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            self.refused += 1
            sock.close()
            return None
        self.connections += 1
        sock.sendall(self.hello)
        sock.settimeout(0.5)  # so that a stop is noticed while the server holds back
        return sock

    def read(self, sock: socket.socket, done: threading.Event) -> None:
        tail = b""
        try:
            while True:
                try:
                    chunk = sock.recv(1 << 20)
                except TimeoutError:
                    if self.stop.is_set():
                        break
                    continue
                if not chunk:
                    break
                self.received += len(chunk)
                self.rate_limited += (tail[-8:] + chunk).count(b"E:116")
                tail = chunk[-256:]
                if b"\x88" in tail and close_code(tail) != "none":
                    break  # closed: the attacker does not wait for TCP to end
        except OSError:
            pass
        self.closes[close_code(tail)] = self.closes.get(close_code(tail), 0) + 1
        done.set()

    def run_connection(self) -> None:
        sock = self.connect()
        if sock is None:
            time.sleep(0.1)
            return
        done = threading.Event()
        reader = threading.Thread(target=self.read, args=(sock, done), daemon=True)
        reader.start()
        block = memoryview(self.block)
        offset = 0
        try:
            while not self.stop.is_set() and not done.is_set():
                try:
                    offset += sock.send(block[offset:])  # never a partial frame on timeout
                except TimeoutError:
                    continue
                if offset == len(block):
                    offset = 0
                    self.sent += self.frame_count
        except OSError:
            pass
        reader.join(1.0)
        sock.close()


def close_code(tail: bytes) -> str:
    """The code of the close frame that ends `tail`, "none" without one."""
    for start in range(len(tail) - 2, -1, -1):
        if tail[start] == 0x88 and tail[start + 1] == len(tail) - start - 2:
            payload = tail[start + 2 :]
            return str(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else "empty"
    return "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--protocol", choices=["scratch", "cl4"], default="scratch")
    parser.add_argument("--room", default="bench-flood")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--start-after", type=float, default=0.0,
                        help="seconds to wait before the first connection")
    parser.add_argument("--reconnect", action="store_true",
                        help="connect again whenever the server closes the connection")
    args = parser.parse_args()
    flooder = Flooder(args.url, args.protocol, args.room)
    signal.signal(signal.SIGTERM, lambda *_: flooder.stop.set())
    timer = threading.Timer(min(args.seconds, 600.0), flooder.stop.set)
    timer.daemon = True
    timer.start()
    flooder.stop.wait(args.start_after)
    started = time.monotonic()
    while not flooder.stop.is_set():
        try:
            flooder.run_connection()
        except OSError:
            time.sleep(0.1)
        if not args.reconnect:
            flooder.stop.wait()
    elapsed = max(time.monotonic() - started, 1e-3)
    print(json.dumps({
        "protocol": args.protocol,
        "seconds": round(elapsed, 2),
        "flood_sent": flooder.sent,
        "flood_sent_per_s": round(flooder.sent / elapsed),
        "flood_received_bytes": flooder.received,
        "flood_rate_limited": flooder.rate_limited,
        "flood_connections": flooder.connections,
        "flood_refused": flooder.refused,
        "flood_closes": flooder.closes,
    }), flush=True)


if __name__ == "__main__":
    main()
