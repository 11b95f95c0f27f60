"""The lean Redis connection of the cluster link (server/cluster/resp.py), against a real
redis-server: batches answered in order, pub/sub messages, the URL's password and database,
and what a caller sees when Redis goes away."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import time

import pytest
import redis.asyncio
from cryptography.hazmat.primitives import serialization

from server.cluster.resp import connect
from tests.conftest import free_port
from tests.server.test_tls import Authority


async def test_a_batch_gets_its_replies_in_order_with_errors_in_place(redis_server):
    """One call, several commands: replies come back in order; a refused command is an error
    object at its place and the others still run."""
    connection = await connect(redis_server.url, 2.0)
    try:
        replies = await connection.call(
            ("SET", "k", "v1"), ("EVALSHA", "0" * 40, 0), ("INCRBY", "n", 5), ("GET", "k"),
            ("HSET", "h", "f", 7), ("HGETALL", "h"))
        assert replies[0] == b"OK"
        assert isinstance(replies[1], Exception) and str(replies[1]).startswith("NOSCRIPT")
        assert replies[2:] == [5, b"v1", 1, [b"f", b"7"]]
        assert not connection.busy()
    finally:
        connection.close()


async def test_batches_sent_back_to_back_are_answered_each_to_its_own_callback(redis_server):
    """Batches written without waiting for replies each get exactly their own replies."""
    connection = await connect(redis_server.url, 2.0)
    got: list[list | None] = []
    done = asyncio.Event()

    def collect(replies):
        got.append(replies)
        if len(got) == 50:
            done.set()

    try:
        for index in range(50):
            connection.send([("INCR", "counter"), ("ECHO", f"batch {index}")], collect)
        await asyncio.wait_for(done.wait(), 5)
        assert got == [[index + 1, f"batch {index}".encode()] for index in range(50)]
    finally:
        connection.close()


async def test_pub_sub_messages_arrive_binary_safe(redis_server):
    """A subscribed connection hands every message to on_push, bytes as published (CRLF,
    non-UTF-8 and empty payloads included)."""
    pushed: list = []
    arrived = asyncio.Event()

    def on_push(reply):
        pushed.append(reply)
        if reply[0] == b"message" and len([r for r in pushed if r[0] == b"message"]) == 3:
            arrived.set()

    subscriber = await connect(redis_server.url, 2.0, on_push=on_push)
    publisher = await connect(redis_server.url, 2.0)
    try:
        subscriber.send([("SUBSCRIBE", b"stratus:c:test")])
        for _ in range(100):  # wait for the confirmation
            if pushed:
                break
            await asyncio.sleep(0.01)
        assert pushed[0] == [b"subscribe", b"stratus:c:test", 1]
        payloads = [b"line\r\nbreak", b"\xff\xfe not utf-8", b""]
        for payload in payloads:
            assert await publisher.call(("PUBLISH", b"stratus:c:test", payload)) == [1]
        await asyncio.wait_for(arrived.wait(), 5)
        assert [r[2] for r in pushed if r[0] == b"message"] == payloads
    finally:
        subscriber.close()
        publisher.close()


async def test_the_urls_password_and_database_are_used(redis_server):
    """redis://:password@host:port/db authenticates and selects the database; a wrong
    password is refused with a clear error."""
    admin = redis_server.client()
    admin.config_set("requirepass", "s3cret")
    try:
        base = f"127.0.0.1:{redis_server.port}"
        connection = await connect(f"redis://:s3cret@{base}/3", 2.0)
        try:
            assert await connection.call(("SET", "where", "db3")) == [b"OK"]
        finally:
            connection.close()
        admin.execute_command("AUTH", "s3cret")
        admin.execute_command("SELECT", 3)
        assert admin.get("where") == b"db3"
        with pytest.raises(ConnectionError, match="refused"):
            await connect(f"redis://:wrong@{base}/0", 2.0)
    finally:
        admin.config_set("requirepass", "")
        admin.close()


async def test_redis_going_away_fails_waiting_batches_and_tells_the_owner(redis_server):
    """When Redis stops, a batch waiting for replies gets None, on_lost is called once, and
    sending afterwards raises ConnectionError (no hang, no exception in the loop)."""
    lost: list = []
    connection = await connect(redis_server.url, 2.0,
                               on_lost=lambda conn, exc: lost.append((conn, exc)))
    results: list = []
    # BLPOP keeps this batch waiting until the server goes away.
    connection.send([("BLPOP", "never", 0)], results.append)
    await asyncio.sleep(0.1)
    assert connection.busy() and connection.waiting_since() is not None
    await asyncio.get_running_loop().run_in_executor(None, redis_server.stop)
    for _ in range(200):
        if lost:
            break
        await asyncio.sleep(0.01)
    assert results == [None]
    assert len(lost) == 1 and lost[0][0] is connection
    with pytest.raises(ConnectionError):
        connection.send([("PING",)])


async def test_unreachable_redis_fails_to_connect_within_the_timeout():
    """Nothing listening: connect raises an OSError at once, not after a hang."""
    with pytest.raises(OSError):
        await connect(f"redis://127.0.0.1:{free_port()}/0", 1.0)


@contextlib.contextmanager
def tls_redis(tmp_path, authority: Authority, clients_need_certificates: bool = False):
    """A redis-server speaking only TLS with a certificate of `authority`; yields its port."""
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        pytest.skip("redis-server is not installed")
    authority.install("127.0.0.1", tmp_path / "redis.pem", tmp_path / "redis.key")
    port = free_port()
    proc = subprocess.Popen(
        [redis_bin, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tmp_path / "redis.pem"), "--tls-key-file",
         str(tmp_path / "redis.key"), "--tls-ca-cert-file", str(authority.ca_file),
         "--tls-auth-clients", "yes" if clients_need_certificates else "no", "--save", "",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        else:
            pytest.fail("redis-server with TLS did not listen")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def ping(url: str) -> list:
    connection = await connect(url, 2.0)
    try:
        return await connection.call(("PING",))
    finally:
        connection.close()


async def test_rediss_urls_connect_over_tls_with_the_urls_ca(tmp_path):
    """rediss:// with ssl_ca_certs: TLS with the hostname checked against that authority;
    without the authority the certificate is refused."""
    authority = Authority(tmp_path)
    with tls_redis(tmp_path, authority) as port:
        assert await ping(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={authority.ca_file}") \
            == [b"PONG"]
        with pytest.raises(ssl.SSLError):
            await connect(f"rediss://127.0.0.1:{port}/0", 2.0)


async def test_rediss_urls_take_every_tls_option_redis_py_takes(tmp_path):
    """A client certificate from ssl_certfile / ssl_keyfile with its key's ssl_password, and
    ssl_cert_reqs=none, work as with redis-py, which reads the same URL."""
    authority = Authority(tmp_path)
    _certificate, certificate_pem, key_pem = authority.issue("stratus-node")
    (tmp_path / "client.pem").write_bytes(certificate_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    (tmp_path / "client.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"hunter2")))
    with tls_redis(tmp_path, authority, clients_need_certificates=True) as port:
        base = f"rediss://localhost:{port}/0?ssl_ca_certs={authority.ca_file}"
        with_certificate = (f"{base}&ssl_certfile={tmp_path / 'client.pem'}"
                            f"&ssl_keyfile={tmp_path / 'client.key'}&ssl_password=hunter2")
        assert await ping(with_certificate) == [b"PONG"]
        client = redis.asyncio.Redis.from_url(with_certificate)
        try:
            assert await client.ping() is True
        finally:
            await client.aclose()
        unverified = (f"rediss://localhost:{port}/0?ssl_cert_reqs=none"
                      f"&ssl_certfile={tmp_path / 'client.pem'}"
                      f"&ssl_keyfile={tmp_path / 'client.key'}&ssl_password=hunter2")
        assert await ping(unverified) == [b"PONG"]
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await ping(base)  # Redis asks for a client certificate this URL does not give
