"""A test stand-in for the scratchcommunication sprite (spec §3, §5, §6), written from the spec."""

from __future__ import annotations

import math
import random

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from plugins.sprites import cipher, digits
from plugins.sprites.keys import clamp_scalar


class SpriteClient:
    """Computes what the sprite would set on FROM_CLIENT and how it reads TO_CLIENT values."""

    def __init__(self, client_id: str, *, packet_size: int = 220, seed: int = 1):
        self.client_id = client_id
        self.packet_size = packet_size
        self.rng = random.Random(seed)
        self.key_str: str | None = None
        self.fixed_key: bytes | None = None  # set to test with a given K instead of a handshake
        self.last_accepted_salt = 0
        self.used_salts: list[int] = []

    @property
    def secure(self) -> bool:
        """True once a secure handshake (or a fixed key) is in place."""
        return self.key_str is not None or self.fixed_key is not None

    @property
    def key(self) -> bytes | None:
        """The session key K, or None while insecure."""
        if self.fixed_key is not None:
            return self.fixed_key
        return None if self.key_str is None else cipher.derive_key(self.key_str)

    def _trailer(self) -> str:
        return f".{self.client_id}{self.rng.randrange(10_000_000_000)}"

    def insecure_connect(self) -> list[str]:
        """§6.1: `_connect` through the send path (encrypted if a key is still set)."""
        values = self.send("_connect", ts=self.rng.randrange(10**11, 10**12))
        self.key_str = self.fixed_key = None
        return values

    def _fragments_and_connect(self, blob: str, act: str) -> list[str]:
        fragment_ids, values = [], []
        for start in range(0, len(blob), self.packet_size):
            fragment_id = f"{self.rng.randrange(100_000):05d}"
            fragment_ids.append(fragment_id)
            chunk = blob[start : start + self.packet_size]
            values.append(f"0{fragment_id}{chunk}{self._trailer()}")
        connect = "1" + digits.encode("_safe_connect:") + "".join(fragment_ids) + act
        values.append(connect + self._trailer())
        return values

    def ec_connect(self, public_point_hex: str, ts: int, scalar: bytes | None = None) -> list[str]:
        """§6.2: fragments of ACT + enc(client point), then `_safe_connect:`."""
        scalar = scalar or clamp_scalar(self.rng.randbytes(32))
        private = X25519PrivateKey.from_private_bytes(scalar)
        client_point = private.public_key().public_bytes_raw().hex()
        server_point = X25519PublicKey.from_public_bytes(bytes.fromhex(public_point_hex))
        shared = private.exchange(server_point)
        self.key_str = "".join(str(byte) for byte in shared) + str(ts)
        act = f"{ts:015d}"
        return self._fragments_and_connect(act + digits.encode(client_point), act)

    def rsa_connect(self, modulus: int, exponent: int, ts: int) -> list[str]:
        """§6.3: key_str = ts + random digits, blob = key_str^e mod n (no ACT prefix)."""
        length = max(64, math.ceil(10 + len(str(modulus)) / exponent - len(str(ts))))
        self.key_str = str(ts) + "".join(str(self.rng.randrange(10)) for _ in range(length))
        blob = str(pow(int(self.key_str), exponent, modulus))
        return self._fragments_and_connect(blob, f"{ts:015d}")

    def send(self, message: str, ts: int) -> list[str]:
        """Data packets; secure chunks get ACT = ts + 10 per packet (the sprite waits 0.1 s)."""
        if not self.secure:
            stream = digits.encode(message)
            chunks = [
                stream[start : start + self.packet_size]
                for start in range(0, len(stream), self.packet_size)
            ] or [""]
        else:
            size = (self.packet_size - 50) // 2
            texts = [message[start : start + size] for start in range(0, len(message), size)]
            chunks = []
            for index, text in enumerate(texts or [""]):
                act = f"{ts + 10 * index:015d}"
                self.used_salts.append(int(act))
                chunks.append(digits.encode(cipher.encrypt(self.key, act, text)) + act)
        return [
            ("-" if index < len(chunks) - 1 else "") + "1" + chunk + self._trailer()
            for index, chunk in enumerate(chunks)
        ]

    def receive(self, values: list[str], client_now: float) -> str | None:
        """§5: one recv over the given TO_CLIENT values, in order; the message or None."""
        secure = self.secure
        floor = math.ceil(100 * (client_now - 2))
        self.last_accepted_salt = max(self.last_accepted_salt, floor)
        slots: dict[int, str] = {}
        marker = "." + self.client_id
        for value in values:
            if marker not in value:
                continue
            head, tail = value.split(marker, 1)
            index = int(tail[3:])
            complete = "-" not in value
            payload = head
            if secure or index == 0:  # otherwise a "-" stays in the data (the 3+-packet bug)
                payload = payload.removeprefix("-").removeprefix("1")
            if secure:
                salt = payload[-15:]
                if int(salt) < self.last_accepted_salt or int(salt) > (client_now + 30) * 100:
                    continue
                try:
                    payload = cipher.decrypt(self.key, salt, digits.decode(payload[:-15]))
                except ValueError:
                    continue
                self.last_accepted_salt = int(salt)
            slots[index + 1] = payload
            if complete:
                joined = "".join(slots[slot] for slot in sorted(slots))
                return joined if secure else digits.decode(joined)
        return None
