"""Native TLS (server/tls.py): wss:// and https:// on one port with a certificate made here by
`cryptography`, SIGHUP reloading it under connected clients, and bad files refused."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.exceptions import InvalidHandshake

from server.config import ConfigError
from server.tls import load_tls_context
from tests.conformance.helpers import (
    close_all,
    fresh_room,
    handshake_text,
    joined,
    recv,
    set_line,
    set_text,
    ws_connect,
)
from tests.conftest import ROOT, ServerProcess, write_toml


class Authority:
    """A throwaway certificate authority that issues certificates for 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stratus test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this authority (hostnames checked)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def issue(self, common_name: str) -> tuple[x509.Certificate, bytes, bytes]:
        """A certificate for 127.0.0.1 and localhost: (certificate, cert PEM, key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
            ]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert, cert.public_bytes(serialization.Encoding.PEM), key_pem

    def install(self, common_name: str, cert_file: Path, key_file: Path) -> x509.Certificate:
        """Issue a certificate and write it (and its key) to the given files."""
        cert, cert_pem, key_pem = self.issue(common_name)
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        return cert


@pytest.fixture
def authority(tmp_path) -> Authority:
    return Authority(tmp_path)


@pytest.fixture
def tls_server(tmp_path, authority):
    """A server subprocess serving a certificate from `authority` (files cert.pem, key.pem)."""
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    first = authority.install("first.stratus.test", cert_file, key_file)
    workdir = tmp_path / "server"
    workdir.mkdir()
    proc = ServerProcess(workdir, {"server": {"tls_cert": str(cert_file),
                                              "tls_key": str(key_file)}},
                         client_tls=authority.client_context())
    proc.start()
    proc.cert_file, proc.key_file, proc.first_cert = cert_file, key_file, first
    yield proc
    proc.stop()


def served_serial(ws) -> int:
    """The serial number of the certificate a websockets client was shown."""
    der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def https_get(proc: ServerProcess, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(proc.http_url + path, timeout=5,
                                context=proc.client_tls) as reply:
        return reply.status, reply.read()


async def wait_for_log(proc: ServerProcess, text: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{proc.log()}"
        await asyncio.sleep(0.05)


async def test_wss_and_https_share_the_port(tls_server):
    """With tls_cert/tls_key, Scratch clients work over wss:// and pages over https://."""
    assert tls_server.url.startswith("wss://")
    assert await asyncio.to_thread(https_get, tls_server, "/healthz") == (200, b"ok\n")
    room = fresh_room()
    ssl_context = tls_server.client_tls
    writer = await joined(tls_server.url, room, "writer", ssl=ssl_context)
    await writer.send(set_text("☁ score", "42"))
    await asyncio.sleep(0.1)
    late = await joined(tls_server.url, room, "late", ssl=ssl_context)
    assert await recv(late) == set_line("☁ score", "42")
    assert served_serial(late) == tls_server.first_cert.serial_number
    await close_all(writer, late)
    assert "TLS on: wss:// and https://" in tls_server.log()


async def test_plain_ws_to_a_tls_port_gets_no_websocket(tls_server):
    """A client speaking plain ws:// to the TLS port is not upgraded (and the server lives)."""
    with pytest.raises(InvalidHandshake):
        await ws_connect(tls_server.url.replace("wss://", "ws://"))
    assert await asyncio.to_thread(https_get, tls_server, "/healthz") == (200, b"ok\n")


async def test_sighup_reloads_the_certificate_under_connected_clients(tls_server, authority):
    """After SIGHUP new connections get the new certificate; open ones keep working; a bad
    file on a later SIGHUP is logged and the certificate in use stays."""
    ssl_context = tls_server.client_tls
    room = fresh_room()
    old = await joined(tls_server.url, room, "old", ssl=ssl_context)
    assert served_serial(old) == tls_server.first_cert.serial_number

    second = authority.install("second.stratus.test", tls_server.cert_file, tls_server.key_file)
    tls_server.proc.send_signal(signal.SIGHUP)
    await wait_for_log(tls_server, "TLS certificate reloaded")
    new = await joined(tls_server.url, room, "new", ssl=ssl_context)
    assert served_serial(new) == second.serial_number
    await old.send(set_text("☁ x", "1"))  # the connection from before the reload still works
    assert await recv(new) == set_line("☁ x", "1")
    assert served_serial(old) == tls_server.first_cert.serial_number

    tls_server.cert_file.write_text("not a certificate\n")
    tls_server.proc.send_signal(signal.SIGHUP)
    await wait_for_log(tls_server, "TLS certificate not reloaded")
    third = await ws_connect(tls_server.url, ssl=ssl_context)
    await third.send(handshake_text(room, "third"))
    assert served_serial(third) == second.serial_number
    assert await recv(third) == set_line("☁ x", "1")
    await old.send(set_text("☁ x", "2"))
    assert await recv(new) == set_line("☁ x", "2")
    assert tls_server.proc.poll() is None
    await close_all(old, new, third)


def test_healthcheck_speaks_tls(tls_server):
    """`python -m server healthcheck` with the TLS server's config checks it over https."""
    done = subprocess.run([sys.executable, "-m", "server", "healthcheck", "--config",
                           str(tls_server.config_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def start_with(tmp_path: Path, settings: dict) -> subprocess.CompletedProcess:
    config = tmp_path / "tls.toml"
    write_toml(config, {"server": {"host": "127.0.0.1", "port": 0,
                                   "data_dir": str(tmp_path / "data"), **settings}})
    return subprocess.run([sys.executable, "-m", "server", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_unreadable_certificate_stops_startup_with_exit_2(tmp_path, authority):
    """A missing certificate file, or a key that does not match, stops start-up naming the key."""
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    authority.install("a", cert_file, key_file)
    missing = start_with(tmp_path, {"tls_cert": str(tmp_path / "nope.pem"),
                                    "tls_key": str(key_file)})
    assert missing.returncode == 2
    assert "tls_cert" in missing.stderr and "nope.pem" in missing.stderr
    _, _, other_key = authority.issue("b")
    (tmp_path / "other.key").write_bytes(other_key)
    mismatched = start_with(tmp_path, {"tls_cert": str(cert_file),
                                       "tls_key": str(tmp_path / "other.key")})
    assert mismatched.returncode == 2
    assert "matching private key" in mismatched.stderr
    assert "Traceback" not in missing.stderr + mismatched.stderr


def test_encrypted_key_is_refused_without_a_prompt(tmp_path, authority):
    """An encrypted private key is refused with a message, instead of OpenSSL asking for a
    password on the terminal."""
    cert_file = tmp_path / "cert.pem"
    _, cert_pem, _ = authority.issue("a")
    cert_file.write_bytes(cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ConfigError, match="encrypted"):
        load_tls_context(str(cert_file), str(key_file))


def test_key_file_as_certificate_is_refused(tmp_path, authority):
    """A certificate path that holds something else (here the key) is refused clearly."""
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    authority.install("a", cert_file, key_file)
    with pytest.raises(ConfigError, match="tls_cert"):
        load_tls_context(str(key_file), str(key_file))


def test_certificate_is_described_for_the_log(tmp_path, authority):
    """A loaded certificate is described by its subject and expiry date."""
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    authority.install("described.stratus.test", cert_file, key_file)
    _, described = load_tls_context(str(cert_file), str(key_file))
    assert "CN=described.stratus.test" in described and "valid until" in described
