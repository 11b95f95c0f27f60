"""Server keys: library string formats, public_data, and §6.4 key recovery (EC and RSA)."""

from __future__ import annotations

import json
import math

import pytest

from plugins.sprites import cipher, digits, keys

from .sprite_client import SpriteClient
from .testdata import SCRATCHCOMMUNICATION_SB3, saved_variables

BASE_HEX = "0900000000000000000000000000000000000000000000000000000000000000"
SERVER_POINT_HEX = "888aaa945c4916c9ab632081dada3bd1eeee97036b4a353255c148972b5f897d"
CLIENT_SCALAR_HEX = "b8f021cf0bf8a5e7c80c19b2f34d901a71df19bb75472bac70e2244e369cb465"
CLIENT_POINT_HEX = "7032b3008b9138dab26d2c236818db30ae0cc1ee0b83d83eb24ce4b5d2205801"
SHARED_HEX = "84fef481834f9e4729223ced8cca97162c48ef21f252d885c8fdd3e13bbfad0b"
SHARED_DECIMAL = (
    "132254244129131791587141346023714020215122447223933242822161332002532112255919117311"
)
ACT = "000177438113728"
KEY_STR = SHARED_DECIMAL + "177438113728"
CLIENT_BLOB = (
    "000177438113728857881800281787886028779818604010280840480038081848679860402817801057"
    "80303790505780286810486810502808203058202830480807883867879"
)


@pytest.fixture(scope="module")
def rsa_key() -> keys.RSAServerKey:
    """One freshly generated RSA key for the module (generation takes ~0.3 s)."""
    return keys.RSAServerKey.generate()


def test_client_side_x25519_vectors():
    """client_pub = X25519(scalar, 9) and shared = X25519(scalar, server point) (§9.2)."""
    scalar = bytes.fromhex(CLIENT_SCALAR_HEX)
    assert keys.x25519(scalar, bytes.fromhex(BASE_HEX)).hex() == CLIENT_POINT_HEX
    shared = keys.x25519(scalar, bytes.fromhex(SERVER_POINT_HEX))
    assert shared.hex() == SHARED_HEX
    assert keys.decimal_bytes(shared) == SHARED_DECIMAL and len(SHARED_DECIMAL) == 84


def test_key_blob_vector():
    """blob = ACT + enc(client_pub): 143 digits, as saved in the project."""
    assert digits.encode(CLIENT_POINT_HEX) == CLIENT_BLOB[15:]
    assert len(CLIENT_BLOB) == keys.EC_BLOB_DIGITS == 143
    saved = saved_variables(SCRATCHCOMMUNICATION_SB3)
    assert saved["[secure] encrypted client key"] == CLIENT_BLOB
    assert saved["[secure] fragments"] == "58855"
    assert saved["[secure] public point"] == SERVER_POINT_HEX
    assert saved["[secure] hex key"] == CLIENT_SCALAR_HEX


def test_ec_recovery_with_the_client_side_substituted():
    """X25519 is symmetric: the client scalar as 'server' key recovers the saved key_str."""
    substitute = keys.ECServerKey(bytes.fromhex(CLIENT_SCALAR_HEX))
    blob = ACT + digits.encode(SERVER_POINT_HEX)
    key_str = keys.recover_key_string(substitute, blob, ACT)
    assert key_str == KEY_STR
    assert key_str.endswith("177438113728")
    assert cipher.derive_key(key_str).hex() == "dc7bf4239c2899eb938e2fef25425fb8"


def test_ec_recovery_end_to_end_with_a_fresh_key():
    """A fresh server key recovers the key_str the (simulated) sprite computed."""
    server = keys.ECServerKey.generate()
    client = SpriteClient("12345")
    values = client.ec_connect(server.public_point.hex(), ts=177438113728)
    blob = values[0][6 : values[0].index(".")]  # TYPE 0 + FID, then the blob
    assert server.recover_key_string(blob, ACT) == client.key_str


@pytest.mark.parametrize(
    ("blob", "act"),
    [
        (CLIENT_BLOB, "000177438113729"),  # ACT does not match
        (CLIENT_BLOB[:-2], ACT),  # short blob
        (ACT + "99" * 64, ACT),  # not decodable
        (ACT + digits.encode("g" * 64), ACT),  # not hex
        (ACT + digits.encode("00" * 32), ACT),  # low-order point: all-zero shared secret
        (CLIENT_BLOB, "17743811372"),  # ACT not 15 digits
    ],
)
def test_ec_recovery_failures(blob, act):
    """Inconsistent or malformed connects raise KeyRecoveryError."""
    server = keys.ECServerKey.generate()
    with pytest.raises(keys.KeyRecoveryError):
        server.recover_key_string(blob, act)


def test_ec_string_round_trip_and_public_data():
    """ECxxxxx1 + JSON [base, scalar]; public_data has exactly the three stage variables."""
    server = keys.ECServerKey.generate()
    text = server.to_string()
    assert text.startswith("ECxxxxx1")
    base_hex, scalar_hex = json.loads(text[8:])
    assert base_hex == BASE_HEX and bytes.fromhex(scalar_hex) == server.private_scalar
    assert keys.load_server_key(text) == server
    assert server.public_data() == {
        "[secure] public base": BASE_HEX,
        "[secure] public point": keys.x25519(server.private_scalar, bytes.fromhex(BASE_HEX)).hex(),
        "[secure] key exchange scheme": "EC",
    }


def test_generated_ec_scalars_are_clamped():
    """Scalars are stored clamped, as the library does."""
    scalar = keys.ECServerKey.generate().private_scalar
    assert scalar[0] & 7 == 0 and scalar[31] & 0x80 == 0 and scalar[31] & 0x40


def test_importing_a_library_ec_string():
    """A library string with the saved scalar yields its known public point."""
    imported = keys.load_server_key(f'ECxxxxx1["{BASE_HEX}", "{CLIENT_SCALAR_HEX}"]')
    assert isinstance(imported, keys.ECServerKey)
    assert imported.public_data()["[secure] public point"] == CLIENT_POINT_HEX


@pytest.mark.parametrize(
    "text", ["ECxxxxx1[", 'ECxxxxx1["09"]', 'ECxxxxx1["zz", "00"]', "RSAxxxx1[3, 5]", "xyz"]
)
def test_malformed_key_strings(text):
    """Broken key strings raise ValueError."""
    with pytest.raises(ValueError):
        keys.load_server_key(text)


def test_rsa_key_shape(rsa_key):
    """e = 3, n ≈ 2080 bits, d inverts e: textbook RSA round trip."""
    assert rsa_key.public_exponent == 3
    assert 2070 <= rsa_key.modulus.bit_length() <= 2080
    message = 123456789 * 10**200 + 42
    encrypted = pow(message, 3, rsa_key.modulus)
    assert pow(encrypted, rsa_key.private_exponent, rsa_key.modulus) == message


def test_rsa_string_round_trip_and_public_data(rsa_key):
    """RSAxxxx1 + JSON [3, d, n]; public_data exactly as §8."""
    text = rsa_key.to_string()
    assert text.startswith("RSAxxxx1")
    assert json.loads(text[8:]) == [3, rsa_key.private_exponent, rsa_key.modulus]
    assert keys.load_server_key(text) == rsa_key
    assert rsa_key.public_data() == {
        "[secure] public exponent": 3,
        "[secure] public modulus": rsa_key.modulus,
        "[secure] key exchange scheme": "RSA",
    }


def test_rsa_recovery_end_to_end(rsa_key):
    """The (simulated) sprite's RSA blob recovers key_str, which starts with the ACT."""
    client = SpriteClient("54321")
    values = client.rsa_connect(rsa_key.modulus, 3, ts=177438113728)
    assert int(client.key_str) ** 3 > rsa_key.modulus  # the sprite's padding rule holds
    blob = "".join(value[6 : value.index(".")] for value in values[:-1])
    assert len(values) - 1 == math.ceil(len(blob) / 220)
    key_str = keys.recover_key_string(rsa_key, blob, ACT)
    assert key_str == client.key_str and key_str.startswith("177438113728")
    with pytest.raises(keys.KeyRecoveryError):
        rsa_key.recover_key_string(blob, "000177438113729")


@pytest.mark.parametrize("blob", ["", "0", "1", "12a", "9" * 700])
def test_rsa_recovery_rejects_malformed_blobs(rsa_key, blob):
    """Empty, out-of-range, non-digit or over-long ciphertexts are refused."""
    with pytest.raises(keys.KeyRecoveryError):
        rsa_key.recover_key_string(blob, ACT)
