"""Server key pairs for the secure handshake (EC = X25519, RSA = textbook e=3) (spec §6, §8).

Key strings use the scratchcommunication library's format so users can migrate:
``ECxxxxx1["<base hex>", "<scalar hex>"]`` and ``RSAxxxx1[3, d, n]``. They are plaintext private
keys: whoever stores them must restrict permissions or encrypt them at rest (spec §8, §13.11).
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from . import digits

EC_PREFIX = "ECxxxxx1"
RSA_PREFIX = "RSAxxxx1"
X25519_BASE_HEX = "09" + "00" * 31
RSA_PUBLIC_EXPONENT = 3
RSA_KEY_BITS = 2080  # the library draws two ~1040-bit primes (n ≈ 626 digits)
ACT_DIGITS = 15
EC_BLOB_DIGITS = ACT_DIGITS + 128  # ACT + enc(64 hex chars of the client's public point)

_HEX_POINT = re.compile(r"[0-9a-fA-F]{64}")


class KeyRecoveryError(ValueError):
    """The key blob of a secure connect does not yield a consistent session key string."""


def clamp_scalar(raw: bytes) -> bytes:
    """Clamp 32 random bytes as an X25519 scalar (the form the library stores)."""
    if len(raw) != 32:
        raise ValueError("an X25519 scalar is 32 bytes")
    clamped = bytearray(raw)
    clamped[0] &= 248
    clamped[31] &= 127
    clamped[31] |= 64
    return bytes(clamped)


def x25519(scalar: bytes, point: bytes) -> bytes:
    """X25519(scalar, u-coordinate), both 32 bytes little-endian; ValueError on low-order points."""
    private_key = X25519PrivateKey.from_private_bytes(scalar)
    return private_key.exchange(X25519PublicKey.from_public_bytes(point))


def decimal_bytes(data: bytes) -> str:
    """Bytes as plain decimal numbers without separators, as the sprite builds key_str."""
    return "".join(str(byte) for byte in data)


def _act_value(act: str) -> str:
    if len(act) != ACT_DIGITS or not digits.is_ascii_digits(act):
        raise KeyRecoveryError("ACT must be 15 ASCII digits")
    return str(int(act))


@dataclass(frozen=True)
class ECServerKey:
    """A static X25519 server key (the default and preferred scheme)."""

    private_scalar: bytes = field(repr=False)  # never shown in logs or tracebacks
    base: bytes = bytes.fromhex(X25519_BASE_HEX)

    scheme = "EC"

    @classmethod
    def generate(cls) -> ECServerKey:
        """Draw a fresh clamped scalar from the OS CSPRNG."""
        return cls(clamp_scalar(secrets.token_bytes(32)))

    @classmethod
    def from_string(cls, text: str) -> ECServerKey:
        """Parse the library's ``ECxxxxx1["<base hex>", "<scalar hex>"]`` string."""
        if not text.startswith(EC_PREFIX):
            raise ValueError(f"EC key strings start with {EC_PREFIX}")
        try:
            base_hex, scalar_hex = json.loads(text[len(EC_PREFIX) :])
            base, scalar = bytes.fromhex(base_hex), bytes.fromhex(scalar_hex)
        except (ValueError, TypeError) as error:
            raise ValueError("malformed EC key string") from error
        if len(base) != 32 or len(scalar) != 32:
            raise ValueError("EC base and scalar must be 32 bytes each")
        return cls(scalar, base)

    def to_string(self) -> str:
        """Serialise in the library's format (a plaintext private key)."""
        return EC_PREFIX + json.dumps([self.base.hex(), self.private_scalar.hex()])

    @property
    def public_point(self) -> bytes:
        """X25519(scalar, base): the value for ``[secure] public point``."""
        return x25519(self.private_scalar, self.base)

    def public_data(self) -> dict[str, str]:
        """The stage-variable values the project author fills in (spec §8)."""
        return {
            "[secure] public base": self.base.hex(),
            "[secure] public point": self.public_point.hex(),
            "[secure] key exchange scheme": "EC",
        }

    def recover_key_string(self, blob: str, act: str) -> str:
        """Spec §6.4 steps 3–4 for EC: ACT prefix + enc(client point hex) → key_str."""
        act_value = _act_value(act)
        if len(blob) != EC_BLOB_DIGITS or not digits.is_ascii_digits(blob):
            raise KeyRecoveryError("EC key blob must be 143 digits")
        salt0 = blob[:ACT_DIGITS]
        try:
            point_hex = digits.decode(blob[ACT_DIGITS:])
        except ValueError as error:
            raise KeyRecoveryError("EC key blob does not decode") from error
        if _HEX_POINT.fullmatch(point_hex) is None:
            raise KeyRecoveryError("EC key blob is not a 32-byte hex point")
        try:
            shared = x25519(self.private_scalar, bytes.fromhex(point_hex))
        except ValueError as error:  # low-order point: all-zero shared secret
            raise KeyRecoveryError("degenerate client point") from error
        key_str = decimal_bytes(shared) + str(int(salt0))
        if not key_str.endswith(act_value):
            raise KeyRecoveryError("key string does not end with the connect's ACT")
        return key_str


@dataclass(frozen=True)
class RSAServerKey:
    """A textbook-RSA server key with e = 3; only for old projects configured for it (§12.4)."""

    public_exponent: int
    private_exponent: int = field(repr=False)
    modulus: int

    scheme = "RSA"

    @classmethod
    def generate(cls, bits: int = RSA_KEY_BITS) -> RSAServerKey:
        """Two ~bits/2 primes with gcd(3, p−1) = gcd(3, q−1) = 1; d = 3⁻¹ mod lcm(p−1, q−1)."""
        # OpenSSL's generator supports e = 3 and guarantees gcd(e, p-1) = gcd(e, q-1) = 1.
        numbers = rsa.generate_private_key(RSA_PUBLIC_EXPONENT, bits).private_numbers()
        p, q = numbers.p, numbers.q
        private_exponent = pow(RSA_PUBLIC_EXPONENT, -1, math.lcm(p - 1, q - 1))
        return cls(RSA_PUBLIC_EXPONENT, private_exponent, p * q)

    @classmethod
    def from_string(cls, text: str) -> RSAServerKey:
        """Parse the library's ``RSAxxxx1[3, d, n]`` string."""
        if not text.startswith(RSA_PREFIX):
            raise ValueError(f"RSA key strings start with {RSA_PREFIX}")
        try:
            values = json.loads(text[len(RSA_PREFIX) :])
            public_exponent, private_exponent, modulus = values
        except (ValueError, TypeError) as error:
            raise ValueError("malformed RSA key string") from error
        if not all(type(value) is int and value > 1 for value in values):
            raise ValueError("RSA key values must be integers > 1")
        return cls(public_exponent, private_exponent, modulus)

    def to_string(self) -> str:
        """Serialise in the library's format (a plaintext private key)."""
        return RSA_PREFIX + json.dumps([self.public_exponent, self.private_exponent, self.modulus])

    def public_data(self) -> dict[str, int | str]:
        """The stage-variable values the project author fills in (spec §8)."""
        return {
            "[secure] public exponent": self.public_exponent,
            "[secure] public modulus": self.modulus,
            "[secure] key exchange scheme": "RSA",
        }

    def recover_key_string(self, blob: str, act: str) -> str:
        """Spec §6.4 steps 3–4 for RSA: key_str = str(c^d mod n), which must start with ACT."""
        act_value = _act_value(act)
        if not blob or not digits.is_ascii_digits(blob):
            raise KeyRecoveryError("RSA key blob must be decimal digits")
        if len(blob) > len(str(self.modulus)):  # also keeps int() below its digit limit
            raise KeyRecoveryError("RSA ciphertext longer than the modulus")
        ciphertext = int(blob)
        if not 1 < ciphertext < self.modulus:
            raise KeyRecoveryError("RSA ciphertext out of range")
        key_str = str(pow(ciphertext, self.private_exponent, self.modulus))
        if not key_str.startswith(act_value):
            raise KeyRecoveryError("key string does not start with the connect's ACT")
        return key_str


ServerKey = ECServerKey | RSAServerKey


def load_server_key(text: str) -> ServerKey:
    """Parse either library key string (``ECxxxxx1…`` or ``RSAxxxx1…``)."""
    if text.startswith(EC_PREFIX):
        return ECServerKey.from_string(text)
    if text.startswith(RSA_PREFIX):
        return RSAServerKey.from_string(text)
    raise ValueError("unknown key string format")


def recover_key_string(server_key: ServerKey, blob: str, act: str) -> str:
    """Recover a connect's key_str with one server key; KeyRecoveryError if inconsistent."""
    return server_key.recover_key_string(blob, act)
