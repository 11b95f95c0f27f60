"""The server: listening socket, HTTP routes, protocol selection, liveness and lifecycle."""

from __future__ import annotations

import asyncio
import html
import ipaddress
import logging
import signal
import time
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from protocols import scratch
from protocols.bridge import Bridge
from protocols.cl4.endpoint import Cl4Endpoint
from protocols.cl4.wire import looks_like_cl4

from . import __version__
from .config import Config
from .connection import CONNECTING, OPEN, Connection, ReadLimits, plain_response
from .logsafe import printable
from .plugins import PluginManager
from .rooms import RoomLimits, RoomRegistry
from .store import Store, open_store

log = logging.getLogger("stratus")

ROBOTS_TXT = b"User-agent: *\nDisallow: /\n"
GOING_AWAY = 1001
JANITOR_INTERVAL = 60.0


class Server:
    """One Stratus server process: owns connections, rooms, the store and the timers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections: dict[Connection, None] = {}
        self.started = time.time()
        self.store: Store | None = None
        self.scratch_rooms: RoomRegistry | None = None
        self.scratch_options = scratch.ScratchOptions.from_config(config.scratch)
        self.cl4 = Cl4Endpoint(config.cl4, config.cl4.max_queue_bytes)
        self.plugins = PluginManager(self)
        self.plugins.load_config(config.plugins)
        self.plugins.attach_cl4(self.cl4.engine)
        self.trusted_proxies = [
            ipaddress.ip_network(network, strict=False) for network in config.server.trusted_proxies
        ]
        section = config.server
        self.read_limits = ReadLimits(section.max_frames_per_second, section.frame_burst,
                                      section.max_bytes_per_second)
        # A Scratch client's messages are nearly all sets: [scratch] sets how fast it is read.
        self.scratch_read_limits = ReadLimits(config.scratch.messages_per_second,
                                              config.scratch.message_burst,
                                              section.max_bytes_per_second)
        # Most connections at once (0 = no limit): max_connections, capped by the open-file
        # limit less a reserve for the store, logs and refusals (set in `start`).
        self.connection_limit = section.max_connections
        self._refusing = False  # a "server full" episode is under way (logged once)
        self._per_address: dict[str, int] = {}  # upgraded connections per client address
        self._listener: asyncio.Server | None = None
        self._stopping = asyncio.Event()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    # Lifecycle

    async def start(self) -> None:
        """Open the store and start listening."""
        self.loop = asyncio.get_running_loop()
        cfg = self.config
        self.connection_limit = connection_limit(cfg.server.max_connections,
                                                 cfg.server.reserved_fds)
        self.store = open_store(cfg.store, cfg.data_dir)
        section = cfg.scratch
        limits = RoomLimits(
            max_variables=section.max_variables_per_room,
            max_clients=section.max_clients_per_room,
            max_rooms=section.max_rooms,
            batch_hz=section.batch_hz,
            burst_window=section.burst_window_ms / 1000.0,
            coalesce=section.coalesce,
            max_pending_lines=section.max_pending_lines,
            idle_timeout=cfg.store.room_idle_timeout,
            max_idle_rooms=cfg.store.max_idle_rooms,
        )
        self.scratch_rooms = RoomRegistry(scratch.NAMESPACE, scratch.CODEC, limits, self.store,
                                          self.loop)
        if self.plugins.hooks("variable"):
            self.scratch_rooms.variable_hooks_for = self.plugins.variable_hooks
        if cfg.bridge.enabled:
            Bridge(self.scratch_rooms, self.scratch_options, self.cl4.engine, cfg.bridge.rooms,
                   self.plugins)
        await self.plugins.start()
        host: Any = cfg.server.host or None
        self._listener = await self.loop.create_server(
            lambda: Connection(self), host, cfg.server.port, reuse_address=True, backlog=4096
        )
        self._every(cfg.server.ping_interval, self._sweep)
        self._every(cfg.store.flush_interval, self._persist)
        self._every(min(JANITOR_INTERVAL, max(cfg.store.room_idle_timeout, 1.0)), self._janitor)
        addresses = ", ".join(
            printable(sock.getsockname()) for sock in self._listener.sockets
        )
        log.info("Stratus %s listening on %s (store: %s, config: %s)", __version__, addresses,
                 cfg.store.backend, cfg.source)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        assert self._listener is not None
        return self._listener.sockets[0].getsockname()[1]

    def _every(self, interval: float, callback) -> None:
        name = callback.__name__

        def tick() -> None:
            try:
                callback()
            except Exception:
                log.exception("periodic task %s failed", name)
            self._timers[name] = self.loop.call_later(interval, tick)

        self._timers[name] = self.loop.call_later(interval, tick)

    def request_shutdown(self) -> None:
        """Ask `run` to shut down gracefully (signal handlers call this)."""
        self._stopping.set()

    async def run(self) -> None:
        """Serve until a shutdown is requested, then shut down."""
        await self.start()
        await self._stopping.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, close clients with 1001, flush fan-out and the store."""
        log.info("shutting down: closing %d connections", len(self.connections))
        if self._listener is not None:
            self._listener.close()
        for timer in self._timers.values():
            timer.cancel()
        if self.scratch_rooms is not None:
            self.scratch_rooms.flush_all()
        for connection in list(self.connections):
            if connection.state == OPEN:
                connection.close(GOING_AWAY)
            else:
                connection.abort()
        deadline = time.monotonic() + min(self.config.server.close_timeout, 3.0)
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            connection.abort()
        await asyncio.sleep(0)
        await self.plugins.stop()
        if self.scratch_rooms is not None:
            await self.scratch_rooms.settle_loads(self.config.store.shutdown_write_timeout)
        self._persist()
        if self.scratch_rooms is not None:
            await asyncio.to_thread(self.scratch_rooms.close)
        try:
            if self.store is not None:
                await asyncio.to_thread(self.store.close)
        finally:
            log.info("stopped")

    # Periodic work

    def _sweep(self) -> None:
        """Keepalive pings, the handshake deadline, and dropping dead or closing clients."""
        now = time.monotonic()
        handshake_deadline = now - self.config.server.handshake_timeout
        for connection in list(self.connections):
            state = connection.state
            if state == OPEN:
                session = connection.session
                if (session is None or not session.identified) and (
                    connection.created <= handshake_deadline
                ):
                    connection.abort()  # as the reference: no close frame
                elif not connection.ping():
                    log.debug("dropping %s: no pong", printable(connection.peer))
                    connection.abort()
            elif state == CONNECTING and connection.created <= handshake_deadline:
                connection.abort()

    def _persist(self) -> None:
        if self.scratch_rooms is not None:
            self.scratch_rooms.persist()

    def _janitor(self) -> None:
        if self.scratch_rooms is not None and self.store is not None:
            dropped = self.scratch_rooms.sweep_idle(self.loop.time(), self.store.committed)
            if dropped:
                log.info("dropped %d idle rooms from memory", dropped)

    # Callbacks from connections

    def connection_opened(self, connection: Connection) -> None:
        self.connections[connection] = None
        limit = self.connection_limit
        if limit and len(self.connections) > limit + self.config.server.reserved_fds // 2:
            # Past the limit, connections are still accepted to be answered 503; this far past
            # it (unfinished requests piling up) half the fd reserve is kept for the store.
            self._server_full()
            connection.abort()

    def connection_dropped(self, connection: Connection) -> None:
        self.connections.pop(connection, None)
        self._connection_gone(connection)

    def _connection_gone(self, connection: Connection) -> None:
        address = connection.counted_address
        if address is not None:
            connection.counted_address = None
            left = self._per_address[address] - 1
            if left:
                self._per_address[address] = left
            else:
                del self._per_address[address]
        if self._refusing and len(self.connections) < self.connection_limit * 0.9:
            self._refusing = False
            log.info("accepting connections again (%d open)", len(self.connections))

    def connection_upgraded(self, connection: Connection) -> None:
        refusal = scratch.connect_refusal(connection, self.scratch_options)
        if refusal is not None:
            text, code = refusal
            log.info("refusing %s with %d", printable(connection.peer), code)
            connection.send_text(text)
            connection.close(code)
            return
        self.plugins.connected(connection)

    def connection_closed(self, connection: Connection) -> None:
        self.connections.pop(connection, None)
        self._connection_gone(connection)
        if self.plugins.hooks("disconnect"):
            self.plugins.disconnected(connection)  # while the client still has its room
        session = connection.session
        if session is not None:
            session.on_close()
        elif connection.room is not None:
            connection.room.leave(connection)

    def text_received(self, connection: Connection, text: str) -> None:
        session = connection.session
        if session is None:
            session = connection.session = self.select_protocol(connection, text)
        session.on_text(text)

    def select_protocol(self, connection: Connection, first_text: str) -> Any:
        """The session for a connection, chosen by its first message (CL4 spec §2)."""
        if self.config.cl4.enabled and looks_like_cl4(first_text):
            return self.cl4.session_for(connection)
        connection.limit_reading(self.scratch_read_limits)
        return scratch.ScratchSession(connection, self.scratch_rooms, self.scratch_options,
                                      self.plugins)

    # HTTP

    def client_address(self, peer: str, headers: Headers) -> str:
        """The client's address: the peer, or a forwarded one if the peer is a trusted proxy."""
        if not self.trusted_proxies or not peer:
            return peer
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return peer
        if not any(address in network for network in self.trusted_proxies):
            return peer
        forwarded = ",".join(headers.get_all("X-Forwarded-For"))
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            hop = hops[0] if self.config.server.forwarded_for == "first" else hops[-1]
        else:
            real = headers.get_all("X-Real-IP")  # more than one: no answer, so the peer
            hop = real[0].strip() if len(real) == 1 else ""
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return peer
        # A zone index ("fe80::1%<anything>") names an interface of another host and is free
        # client text; without it the address is plain, wherever it is logged or compared.
        return str(address).partition("%")[0]

    def _server_full(self) -> None:
        if not self._refusing:
            self._refusing = True
            log.warning("connection limit reached (%d connections, limit %d from [server] "
                        "max_connections and the open-file limit): new connections get 503 "
                        "until some close", len(self.connections), self.connection_limit)

    def refuse_upgrade(self, connection: Connection) -> Response | None:
        """An HTTP refusal for a WebSocket upgrade, or None to accept it."""
        limit = self.connection_limit
        if limit and len(self.connections) > limit:
            self._server_full()
            return plain_response(503, "Service Unavailable", b"Server is full.\n",
                                  "text/plain; charset=utf-8")
        per_address = self.config.server.max_connections_per_ip
        if per_address:
            address = connection.peer
            count = self._per_address.get(address, 0)
            if count >= per_address:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("refusing %s: %d connections from it", printable(address), count)
                return plain_response(429, "Too Many Requests",
                                      b"Too many connections from your address.\n",
                                      "text/plain; charset=utf-8")
            self._per_address[address] = count + 1
            connection.counted_address = address
        return None

    def http_response(self, request: Request) -> Response:
        """Answer a plain HTTP request (no WebSocket upgrade)."""
        head = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return plain_response(405, "Method Not Allowed", b"Method not allowed.\n",
                                  "text/plain; charset=utf-8", {"Allow": "GET, HEAD"})
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            fault = self.store.fault if self.store is not None else None
            if fault:
                return plain_response(503, "Service Unavailable", f"{fault}\n".encode(),
                                      "text/plain; charset=utf-8", head=head)
            return plain_response(200, "OK", b"ok\n", "text/plain; charset=utf-8", head=head)
        if path == "/robots.txt":
            return plain_response(200, "OK", ROBOTS_TXT, "text/plain; charset=utf-8", head=head)
        if path == "/" and self.config.server.status_page:
            return plain_response(200, "OK", self._status_page(), "text/html; charset=utf-8",
                                  head=head)
        return plain_response(404, "Not Found", b"Not found. This is a cloud-variable server.\n",
                              "text/plain; charset=utf-8", head=head)

    def _status_page(self) -> bytes:
        rooms = self.scratch_rooms.rooms if self.scratch_rooms else {}
        active = sum(1 for room in rooms.values() if room.members)
        uptime = int(time.time() - self.started)
        body = (
            "<!doctype html><html><head><meta charset=utf-8><title>Stratus</title>"
            "<meta name=robots content=noindex></head><body>"
            "<h1>Stratus cloud-variable server</h1>"
            f"<p>Version {html.escape(__version__)}. Up {uptime // 3600} h "
            f"{uptime % 3600 // 60} min.</p>"
            f"<p>{len(self.connections)} connections, {active} active rooms, "
            f"{len(rooms)} rooms in memory.</p>"
            "<p>Point a TurboWarp project's <code>cloud_host</code> at this server's "
            "<code>ws://</code> or <code>wss://</code> address.</p>"
            "</body></html>"
        )
        return body.encode()


def connection_limit(max_connections: int, reserved_fds: int) -> int:
    """`max_connections` (0 = none), capped by the open-file limit less `reserved_fds`."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return max_connections
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    by_files = max(1, soft - reserved_fds)
    return min(max_connections, by_files) if max_connections else by_files


def install_signal_handlers(server: Server) -> None:
    """SIGTERM and SIGINT shut the server down gracefully."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, server.request_shutdown)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass


async def serve(config: Config) -> None:
    """Run a server with `config` until SIGTERM/SIGINT."""
    server = Server(config)
    install_signal_handlers(server)
    await server.run()
