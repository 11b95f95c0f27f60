"""The server core: listening socket, connections, HTTP routes, rooms and lifecycle.

It knows no wire protocol. Protocols, the bridge and other components are handed to `Server`
by the composition root (`server.__main__.build_server`); each is installed at once (it
registers its protocol entry, routes, plugin wiring and facade service) and started once the
store is open (it opens its room namespaces). See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from . import __version__
from .backplane import Backplane, Cluster, LocalCluster
from .budget import ReadLimits
from .codes import CloseCode, State
from .config import Config
from .connection import Connection
from .events import EventBus
from .facade import Facade
from .fanout import Codec, Fanout, FanoutSettings
from .history import RoomHistory
from .http import plain_response
from .logsafe import printable
from .node_requests import NodeRequests
from .persistence import Persister
from .plugins import PluginManager
from .rooms import RoomLimits, RoomRegistry
from .routes import TEXT, HttpRequest, RouteTable
from .session import ProtocolRegistry
from .store import Store, StoreReadError
from .tls import TlsCertificate
from .traffic import Traffic

log = logging.getLogger("stratus")

ROBOTS_TXT = b"User-agent: *\nDisallow: /\n"
JANITOR_INTERVAL = 60.0
# Seconds between tries to read the stored blocked rooms while they cannot be read.
BLOCK_REREAD_INTERVAL = 5.0
# Bus topic a node whose link came back sends after the rows it stored meanwhile (blocks
# made or lifted through it while cut off): the other nodes re-read the stored blocks.
BLOCKS_TOPIC = "stratus.blocks"
PENDING = "pending"  # the protocol of a connection whose first message has not come yet
OPEN, CONNECTING = State.OPEN, State.CONNECTING


class Component(Protocol):
    """A part of the server the composition root plugs in (a protocol, the bridge, ...)."""

    name: str

    def install(self, server: Server) -> None:
        """Register protocol entries, routes, plugin wiring and services (no loop yet)."""

    async def start(self, server: Server) -> None:
        """The store is open and the loop runs: open room namespaces."""

    async def stop(self) -> None:
        """The server is shutting down (clients are gone)."""


class Server:
    """One Stratus server process: owns connections, rooms, the store and the timers."""

    def __init__(self, config: Config, components: Iterable[Component] = (),
                 cluster: Cluster | None = None) -> None:
        self.config = config
        self.settings = config.server
        self.http_settings = config.http
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections: dict[Connection, None] = {}
        self.started = time.time()
        self.store: Store | None = None
        self.events = EventBus()
        self.traffic = Traffic()
        # Text messages read by connections that have ended, by protocol (live ones count
        # their own, see `stats`).
        self._received_by_ended: dict[str, int] = {}
        self.routes = RouteTable()
        self.protocols = ProtocolRegistry()
        # Checks every upgraded connection passes before its first message: each returns
        # None or the (text, close code) to refuse it with.
        self.upgrade_checks: list[Callable[[Connection], tuple[str, int] | None]] = []
        self.rooms: dict[str, RoomRegistry] = {}  # room namespaces by name
        # The link to the other nodes ([cluster] backend); one process: LocalCluster.
        self.cluster: Cluster = cluster if cluster is not None else LocalCluster()
        self._backplanes: list[Backplane] = []
        # Requests to the other nodes and their replies (None for one process); made before
        # the components install, so they can register what this node answers.
        bus = self.cluster.bus
        self.node_requests: NodeRequests | None = None
        if bus is not None:
            self.node_requests = NodeRequests(bus, config.cluster.reply_timeout,
                                              lambda: self.cluster.fault)
            bus.on_relinked(self._relinked)
            bus.subscribe(BLOCKS_TOPIC, self._blocks_announced)
        self._restoring: asyncio.Task | None = None
        # The stored blocks could not be read (and whether that was logged), and the timer
        # of the next try.
        self._blocks_unread = False
        self._blocks_warned = False
        self._block_retry: asyncio.TimerHandle | None = None
        self._restore_again = False  # asked for again while a read was under way
        self.facade = Facade(self)
        self.plugins = PluginManager(self.facade)
        self.plugins.load_config(config.plugins)
        self.components = list(components)
        for component in self.components:
            component.install(self)
        self.trusted_proxies = [
            ipaddress.ip_network(network, strict=False) for network in config.server.trusted_proxies
        ]
        section = config.server
        self.read_limits = ReadLimits(section.max_frames_per_second, section.frame_burst,
                                      section.max_bytes_per_second)
        # Most connections at once (0 = no limit): max_connections, capped by the open-file
        # limit less a reserve for the store, logs and refusals (set in `start`).
        self.connection_limit = section.max_connections
        self._refusing = False  # a "server full" episode is under way (logged once)
        self._per_address: dict[str, int] = {}  # upgraded connections per client address
        self._listener: asyncio.Server | None = None
        self.tls: TlsCertificate | None = None  # with [server] tls_cert: wss:// and https://
        self._tls_reload: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._committed = 0
        self._fault: str | None = None
        self.routes.add("/healthz", self._health)
        self.routes.add("/robots.txt", lambda request: plain_response(200, "OK", ROBOTS_TXT, TEXT))
        # The plain status page, unless a component (the dashboard) serves "/" already.
        if section.status_page and "/" not in self.routes.paths():
            self.routes.add("/", self._status_page)

    # Lifecycle

    async def start(self) -> None:
        """Open the store, start the components and the plugins, and start listening."""
        self.loop = asyncio.get_running_loop()
        cfg = self.config
        self.connection_limit = connection_limit(cfg.server.max_connections,
                                                 cfg.server.reserved_fds)
        tls: dict[str, Any] = {}
        if cfg.server.tls_cert:  # checked before the store opens: a bad file fails fast
            self.tls = TlsCertificate(cfg.server.tls_cert, cfg.server.tls_key)
            tls = {"ssl": self.tls.listening,
                   "ssl_handshake_timeout": cfg.server.handshake_timeout}
        await self.cluster.start()
        self.store = self.cluster.open_store(cfg)
        for component in self.components:
            await component.start(self)
        await self._restore_blocks()
        await self.plugins.start()
        host: Any = cfg.server.host or None
        # With several workers each binds the port itself (SO_REUSEPORT) and the kernel
        # spreads new connections over them.
        self._listener = await self.loop.create_server(
            lambda: Connection(self), host, cfg.server.port, reuse_address=True,
            reuse_port=cfg.server.workers > 1, backlog=4096, **tls
        )
        if self._blocks_unread and self._block_retry is None:
            self._relinked()  # the link may have come back while starting, unheard
        self._every(cfg.server.ping_interval, self._sweep)
        self._every(cfg.store.flush_interval, self._persist)
        self._every(min(JANITOR_INTERVAL, max(cfg.store.room_idle_timeout, 1.0)), self._janitor)
        addresses = ", ".join(
            printable(sock.getsockname()) for sock in self._listener.sockets
        )
        log.info("Stratus %s listening on %s (%s, config: %s)", __version__, addresses,
                 self.cluster.describe(cfg), cfg.source)
        if self.tls is not None:
            log.info("TLS on: wss:// and https:// with %s (%s); SIGHUP reloads it",
                     self.tls.cert_path, self.tls.described)

    def _relinked(self) -> None:
        """The link to the other nodes is back: make this node's blocks agree with the stored
        ones (blocks and unblocks another node made meanwhile), and have the other nodes
        re-read them too (blocks and unblocks made through this one meanwhile: its queued rows
        reach Redis before the message). Before it listens, `start` does it itself once the
        rooms are open."""
        if self._listener is None or self._stopping.is_set():
            return
        bus = self.cluster.bus
        if bus is not None:
            bus.publish(BLOCKS_TOPIC, b"")
        self._reread_blocks()

    def _blocks_announced(self, origin: str, payload: bytes) -> None:
        """Another node's link came back: re-read the stored blocks it may have changed."""
        if self._listener is not None and not self._stopping.is_set():
            self._reread_blocks()

    def _reread_blocks(self) -> None:
        """Re-read the stored blocks now, or again once the read under way is done (it may
        have read them before the change that asks for this)."""
        self._block_retry = None
        if self._restoring is None or self._restoring.done():
            self._restoring = self.loop.create_task(self._restore_blocks())
        else:
            self._restore_again = True

    async def _restore_blocks(self) -> None:
        """Apply the stored blocks and lift stored ones removed meanwhile, logging each. If
        the store cannot be read, nothing changes: it is read again after
        BLOCK_REREAD_INTERVAL while the cluster link is up (else when it comes back)."""
        if self._block_retry is not None:
            self._block_retry.cancel()
            self._block_retry = None
        self._restore_again = False
        try:
            changes = await self.facade.restore_blocked_rooms()
        except StoreReadError as exc:
            self._blocks_unread = True
            # With the cluster link down that is expected (and said once already): the
            # relink reads them. Otherwise the read itself failed: say so, and try again.
            if self.cluster.fault is None and not self._stopping.is_set():
                if not self._blocks_warned:
                    log.warning("cannot read the stored blocked rooms (%s): this node's blocks "
                                "are kept as they are until they can be read",
                                printable(str(exc)))
                    self._blocks_warned = True
                self._block_retry = self.loop.call_later(BLOCK_REREAD_INTERVAL,
                                                         self._reread_blocks)
            return
        except Exception:
            log.exception("re-reading the stored blocked rooms failed")
            return
        self._blocks_unread = False
        if self._blocks_warned:
            log.info("the stored blocked rooms could be read again")
            self._blocks_warned = False
        starting = self._listener is None
        if starting and changes.applied:
            log.info("%d blocked rooms restored from the store", len(changes.applied))
        for namespace, room_id in [] if starting else changes.applied:
            log.info("blocked %s room %s: stored as blocked, and this node had missed it",
                     namespace, printable(room_id, 200))
        for namespace, room_id in changes.lifted:
            log.info("unblocked %s room %s: no longer stored as blocked, and this node had "
                     "missed it", namespace, printable(room_id, 200))
        if self._restore_again and not self._stopping.is_set():
            self._restoring = self.loop.create_task(self._restore_blocks())

    def open_rooms(self, namespace: str, codec: Codec, limits: RoomLimits,
                   fanout: FanoutSettings) -> RoomRegistry:
        """A room namespace with its fan-out, backplane, persistence and, with [history]
        enabled, its history (call from `start`)."""
        if namespace in self.rooms:
            raise ValueError(f"room namespace {namespace!r} is opened twice")
        backplane = self.cluster.backplane(namespace)
        spreader = Fanout(namespace, fanout, codec, self.loop, self.events, self.traffic)
        backplane.attach(spreader.deliver)
        self._backplanes.append(backplane)
        registry = RoomRegistry(namespace, limits, self.store, spreader, backplane,
                                Persister(namespace, self.store), self.loop)
        history = self.config.history
        if history.enabled:
            RoomHistory(registry, history.keep).attach()
        self.rooms[namespace] = registry
        return registry

    @property
    def worker(self) -> int:
        """This node's worker number (the high part of its client ids; 0 for one process)."""
        return self.cluster.worker

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

    def reload_tls(self) -> None:
        """Read the TLS certificate files again for new handshakes (SIGHUP calls this)."""
        if self.tls is None:
            log.info("SIGHUP: no TLS certificate configured, nothing to reload")
            return
        self._tls_reload = self.loop.create_task(self.tls.reload())

    def request_shutdown(self) -> None:
        """Ask `run` to shut down gracefully (signal handlers call this)."""
        self._stopping.set()

    async def run(self, started: Callable[[], None] | None = None) -> None:
        """Serve until a shutdown is requested, then shut down; `started` is called once the
        server listens."""
        await self.start()
        if started is not None:
            started()
        await self._stopping.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, close clients with 1001, flush fan-out and the store."""
        log.info("shutting down: closing %d connections", len(self.connections))
        if self._listener is not None:
            self._listener.close()
        for timer in self._timers.values():
            timer.cancel()
        if self._block_retry is not None:
            self._block_retry.cancel()
        for registry in self.rooms.values():
            registry.flush_all()
        for connection in list(self.connections):
            if connection.state == OPEN:
                connection.close(CloseCode.GOING_AWAY)
            else:
                connection.abort()
        deadline = time.monotonic() + min(self.config.server.close_timeout, 3.0)
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            connection.abort()
        await asyncio.sleep(0)
        await self.plugins.stop()
        for component in reversed(self.components):
            try:
                await component.stop()
            except Exception:
                log.exception("%s failed to stop", getattr(component, "name", component))
        for registry in self.rooms.values():
            await registry.settle_loads(self.config.store.shutdown_write_timeout)
        self._persist()
        for registry in self.rooms.values():
            await asyncio.to_thread(registry.close)
        for backplane in self._backplanes:
            await backplane.close()
        if self.node_requests is not None:
            await self.node_requests.close()
        await self.cluster.close()
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
        for registry in self.rooms.values():
            registry.persist()
        store = self.store
        if store is not None:
            fault = store.fault
            if fault != self._fault:
                self._fault = fault
                if fault and self.events.store_failed:
                    self.events.store_failed(fault)
            committed = store.committed
            if committed != self._committed:
                self._committed = committed
                if self.events.store_committed:
                    self.events.store_committed(committed)

    def _janitor(self) -> None:
        if self.store is None:
            return
        for registry in self.rooms.values():
            dropped = registry.sweep_idle(self.loop.time(), self.store.committed)
            if dropped:
                log.info("dropped %d idle %s rooms from memory", dropped, registry.namespace)

    # Callbacks from connections

    def connection_opened(self, connection: Connection) -> None:
        self.connections[connection] = None
        if self.events.connection_opened:
            self.events.connection_opened(connection)
        limit = self.connection_limit
        if limit and len(self.connections) > limit + self.config.server.reserved_fds // 2:
            # Past the limit, connections are still accepted to be answered 503; this far past
            # it (unfinished requests piling up) half the fd reserve is kept for the store.
            self._server_full()
            connection.abort()

    def connection_dropped(self, connection: Connection) -> None:
        """A connection ended before it was upgraded."""
        self.connections.pop(connection, None)
        self._connection_gone(connection)
        if self.events.connection_closed:
            self.events.connection_closed(connection, None)

    def _connection_gone(self, connection: Connection) -> None:
        received = connection.received
        if received:
            name = protocol_of(connection)
            ended = self._received_by_ended
            ended[name] = ended.get(name, 0) + received
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
        if self.events.connection_upgraded:
            self.events.connection_upgraded(connection)
        for check in self.upgrade_checks:
            refusal = check(connection)
            if refusal is not None:
                text, code = refusal
                log.info("refusing %s with %d", printable(connection.peer), code)
                if self.events.client_refused:
                    self.events.client_refused(connection.peer, code, "upgrade check")
                connection.send_text(text)
                connection.close(code)
                return
        self.plugins.connected(connection)

    def connection_closed(self, connection: Connection) -> None:
        """An upgraded connection ended (its session was told when it started closing)."""
        self.connections.pop(connection, None)
        self._connection_gone(connection)
        if self.events.connection_closed:
            self.events.connection_closed(connection, connection.close_code)
        if self.plugins.hooks("disconnect"):
            self.plugins.disconnected(connection)
        else:
            self.plugins.forget(connection)

    def first_text(self, connection: Connection, text: str) -> None:
        """A connection's first message: the protocol that claims it serves the connection."""
        selected = self.protocols.select(text)
        if selected is None:
            connection.close(CloseCode.PROTOCOL_ERROR, "Unknown protocol")
            return
        entry, token = selected
        session = connection.session = entry.open(connection, token)
        if entry.read_limits is not None:
            connection.limit_reading(entry.read_limits)
        if self.events.protocol_selected:
            self.events.protocol_selected(connection, entry.name)
        session.receive(text)

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
            if self.events.client_refused:
                self.events.client_refused(connection.peer, 503, "server full")
            return plain_response(503, "Service Unavailable", b"Server is full.\n", TEXT)
        per_address = self.config.server.max_connections_per_ip
        if per_address:
            address = connection.peer
            count = self._per_address.get(address, 0)
            if count >= per_address:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("refusing %s: %d connections from it", printable(address), count)
                if self.events.client_refused:
                    self.events.client_refused(address, 429, "connections per address")
                return plain_response(429, "Too Many Requests",
                                      b"Too many connections from your address.\n", TEXT)
            self._per_address[address] = count + 1
            connection.counted_address = address
        return None

    def http_response(self, request: HttpRequest) -> Response | Awaitable[Response]:
        """Answer a plain HTTP request (no WebSocket upgrade) from the route table."""
        return self.routes.respond(request)

    def http_wants_body(self, method: str, path: str) -> bool:
        """Whether a route reads the body of this request (see `RouteTable.wants_body`)."""
        return self.routes.wants_body(method, path)

    def _health(self, request: Request) -> Response:
        fault = self.store.fault if self.store is not None else None
        if fault:
            return plain_response(503, "Service Unavailable", f"{fault}\n".encode(), TEXT)
        cluster_fault = self.cluster.fault
        if cluster_fault:
            # Still 200: the node serves its own clients, so a load balancer should keep it.
            return plain_response(200, "OK", f"ok; {cluster_fault}\n".encode(), TEXT)
        return plain_response(200, "OK", b"ok\n", TEXT)

    def stats(self) -> dict[str, Any]:
        """Counts for status pages and metrics."""
        rooms = {
            namespace: {
                "in_memory": len(registry.rooms),
                "active": sum(1 for room in registry.rooms.values() if room.members),
            }
            for namespace, registry in self.rooms.items()
        }
        by_protocol = dict.fromkeys([*self.protocols.names(), PENDING], 0)
        received = dict.fromkeys(by_protocol, 0)
        received.update(self._received_by_ended)
        for connection in self.connections:
            name = protocol_of(connection)
            by_protocol[name] = by_protocol.get(name, 0) + 1
            received[name] = received.get(name, 0) + connection.received
        store = self.store
        traffic = self.traffic
        return {
            "version": __version__,
            "uptime": time.time() - self.started,
            "connections": len(self.connections),
            "rooms": rooms,
            # Connections by protocol ("pending": no protocol chosen yet, HTTP requests too).
            "protocols": by_protocol,
            # Text messages read since start, by the protocol of the connection.
            "messages_received": received,
            "sent": {"frames": traffic.frames_sent, "bytes": traffic.bytes_sent,
                     "updates": traffic.updates_sent},
            "store": {
                "writes": store.writes if store is not None else 0,
                "write_errors": store.write_errors if store is not None else 0,
                "fault": store.fault if store is not None else None,
            },
            # The link to the other nodes ([cluster] backend "local": always up, no node id).
            "cluster": {
                "backend": self.config.cluster.backend,
                "node": getattr(self.cluster, "node_id", None),
                "link_up": self.cluster.fault is None,
            },
        }

    def _status_page(self, request: Request) -> Response:
        stats = self.stats()
        uptime = int(stats["uptime"])
        body = (
            "<!doctype html><html><head><meta charset=utf-8><title>Stratus</title>"
            "<meta name=robots content=noindex></head><body>"
            "<h1>Stratus cloud-variable server</h1>"
            f"<p>Version {html.escape(__version__)}. Up {uptime // 3600} h "
            f"{uptime % 3600 // 60} min.</p>"
            f"<p>{status_line(stats)}</p>"
            "<p>Point a TurboWarp project's <code>cloud_host</code> at this server's "
            "<code>ws://</code> or <code>wss://</code> address.</p>"
            "</body></html>"
        )
        return plain_response(200, "OK", body.encode(), "text/html; charset=utf-8")


def status_line(stats: dict[str, Any]) -> str:
    """"N connections, A active rooms, M rooms in memory." from `Server.stats()` (plain text:
    numbers only, safe in HTML). Pages at "/" show it; tests and scripts read it."""
    active = sum(counts["active"] for counts in stats["rooms"].values())
    in_memory = sum(counts["in_memory"] for counts in stats["rooms"].values())
    return (f"{stats['connections']} connections, {active} active rooms, "
            f"{in_memory} rooms in memory.")
def protocol_of(connection: Connection) -> str:
    """The name of the protocol a connection speaks, or PENDING before its first message."""
    session = connection.session
    return session.protocol_name if session is not None else PENDING


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
    """SIGTERM and SIGINT shut the server down gracefully; with TLS, SIGHUP reloads the
    certificate (without TLS, SIGHUP keeps its default action and ends the process)."""
    loop = asyncio.get_running_loop()
    handlers = {signal.SIGTERM: server.request_shutdown, signal.SIGINT: server.request_shutdown}
    if server.settings.tls_cert:
        handlers[signal.SIGHUP] = server.reload_tls
    for sig, handler in handlers.items():
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass


async def serve(server: Server, started: Callable[[], None] | None = None) -> None:
    """Run `server` until SIGTERM/SIGINT (`started` is called once it listens)."""
    install_signal_handlers(server)
    await server.run(started)
