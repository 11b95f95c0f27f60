"""The sprite's symmetric cipher: SHA-256 key, salted AES-128 keystream, mod-91 shifts (spec §7).

This cipher has no integrity protection (spec §12); callers must add the replay and salt rules
of §13.5–13.6 (see cloud_socket.py).
"""

from __future__ import annotations

import hashlib
import re
import secrets

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .digits import INDEX_OF, TABLE, TABLE_SIZE, sanitize

SUFFIX = "ITSTHEENDOFTHIS"
KEY_STRING_TAIL = 53  # the sprite's single-block SHA-256 only ever sees the last 53 characters
KEY_BYTES = 16
SALT_DIGITS = 15
AES_BLOCK = 16
SEED_MIN, SEED_MAX = 1000, 9998

_SALT = re.compile(r"[0-9]{15}")
_HEADER = re.compile(r"([0-9]+):([0-9]+):")


def derive_key(key_str: str) -> bytes:
    """Session key K = SHA-256(ASCII of the last 53 characters of key_str)[:16]."""
    return hashlib.sha256(key_str[-KEY_STRING_TAIL:].encode("ascii")).digest()[:KEY_BYTES]


def salt_groups(salt: str) -> list[int]:
    """Split a 15-digit salt into 7 two-digit groups and one final single digit."""
    if _SALT.fullmatch(salt) is None:
        raise ValueError("salt must be exactly 15 ASCII digits")
    return [int(salt[position : position + 2]) for position in range(0, SALT_DIGITS, 2)]


def salted_key(key: bytes, salt: str) -> bytes:
    """Per-packet key K_s: the first 8 bytes of K XOR the salt groups, bytes 8..15 unchanged."""
    if len(key) != KEY_BYTES:
        raise ValueError("key must be 16 bytes")
    groups = salt_groups(salt)
    head = bytes(byte ^ group for byte, group in zip(key, groups, strict=False))
    return head + key[len(groups) :]


def keystream(key_s: bytes, length: int) -> bytes:
    """AES-128-ECB of 16-byte big-endian counters 1, 2, …, truncated to `length` bytes."""
    blocks = -(-length // AES_BLOCK)
    counters = b"".join(counter.to_bytes(AES_BLOCK, "big") for counter in range(1, blocks + 1))
    # ECB over explicit counter blocks, exactly as the sprite computes it (CTR from 1, zero nonce).
    encryptor = Cipher(algorithms.AES(key_s), modes.ECB()).encryptor()
    return (encryptor.update(counters) + encryptor.finalize())[:length]


def random_seed() -> int:
    """A seed in the library's range 1000–9998 (the receiver ignores it)."""
    return SEED_MIN + secrets.randbelow(SEED_MAX - SEED_MIN + 1)


def encrypt(key: bytes, salt: str, chunk: str, seed: int | None = None) -> str:
    """Encrypt one chunk to f"{seed}:{len}:{cipher}"; characters outside the table become '?'."""
    if seed is None:
        seed = random_seed()
    plain = sanitize(chunk) + SUFFIX
    shifts = keystream(salted_key(key, salt), len(plain))
    cipher = "".join(
        TABLE[(INDEX_OF[char] + shift) % TABLE_SIZE]
        for char, shift in zip(plain, shifts, strict=True)
    )
    return f"{seed}:{len(chunk)}:{cipher}"


def decrypt(key: bytes, salt: str, text: str) -> str:
    """Decrypt f"{seed}:{len}:{cipher}"; ValueError unless the exact suffix and length match."""
    header = _HEADER.match(text)
    if header is None:
        raise ValueError("missing seed:length: header")
    length = int(header.group(2))
    cipher = text[header.end() :]
    if len(cipher) != length + len(SUFFIX):
        raise ValueError("ciphertext length does not match the declared length")
    try:
        indexes = [INDEX_OF[char] for char in cipher]
    except KeyError:
        raise ValueError("ciphertext character outside the table") from None
    shifts = keystream(salted_key(key, salt), len(cipher))
    plain = "".join(
        TABLE[(index - shift) % TABLE_SIZE] for index, shift in zip(indexes, shifts, strict=True)
    )
    if not plain.endswith(SUFFIX):
        raise ValueError("authentication suffix mismatch")
    return plain[:length]
