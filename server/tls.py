"""Native TLS: wss:// and https:// on the listening port, with certificates reloaded in place.

asyncio gives a listening socket one `SSLContext` for its lifetime. To change certificates
without closing it (and the connections it accepted), that context's SNI callback, which runs
for every handshake (with or without a server name), hands each new handshake the context
loaded most recently. A reload (SIGHUP) reads the files off the event loop; files that do not
load (missing, not PEM, key and certificate that do not match) are reported and the previous
certificate stays in use. Connections already open keep the session they negotiated.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from cryptography import x509

from .config import ConfigError

log = logging.getLogger("stratus.tls")


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and hang start-up or a reload.
    raise _EncryptedKey


def load_tls_context(cert_path: str, key_path: str) -> tuple[ssl.SSLContext, str]:
    """A server context for a PEM certificate chain and its unencrypted private key, and a
    description of the certificate for the log; ConfigError saying what is wrong otherwise."""
    where = f"[server] tls_cert = {cert_path!r}, tls_key = {key_path!r}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert_path, key_path, password=_no_password)
        with open(cert_path, "rb") as handle:
            leaf = x509.load_pem_x509_certificate(handle.read())
    except _EncryptedKey:
        raise ConfigError(f"{where}: the private key is encrypted; give an unencrypted key "
                          "file readable only by the server's user") from None
    except ssl.SSLError as exc:
        raise ConfigError(f"{where}: not a PEM certificate chain and its matching private key "
                          f"({exc.reason or exc})") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {exc.filename or 'the files'} "
                          f"({exc.strerror or exc})") from None
    except ValueError as exc:  # cryptography: the first PEM block is no certificate
        raise ConfigError(f"{where}: the certificate file does not start with a PEM "
                          f"certificate ({exc})") from None
    described = (f"{leaf.subject.rfc4514_string() or 'no subject'}, valid until "
                 f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    return context, described


class TlsCertificate:
    """The certificate files of `[server] tls_cert` / `tls_key` and the context new TLS
    handshakes get. `listening` is the context to give the listening socket."""

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.current, self.described = load_tls_context(cert_path, key_path)
        self.listening = self.current
        self.listening.sni_callback = self._choose
        self.reloads = 0  # successful reloads since start

    def _choose(self, ssl_object: ssl.SSLObject, server_name: str | None,
                context: ssl.SSLContext) -> None:
        current = self.current
        if current is not context:
            ssl_object.context = current

    async def reload(self) -> bool:
        """Load the files again for new handshakes; on failure log why and keep the old ones."""
        try:
            context, described = await asyncio.to_thread(load_tls_context, self.cert_path,
                                                          self.key_path)
        except ConfigError as exc:
            log.error("TLS certificate not reloaded, new connections keep the previous one: %s",
                      exc)
            return False
        self.current, self.described = context, described
        self.reloads += 1
        log.info("TLS certificate reloaded from %s (%s); connected clients are unaffected",
                 self.cert_path, described)
        return True
