"""Symmetric cipher known answers from the saved §9.2 session (§15 check 2) and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins.sprites import cipher, digits
from plugins.sprites.cloud_socket import parse_client_packet, secure_packet

from .testdata import SCRATCHCOMMUNICATION_SB3, saved_variables

KEY_STR = (
    "132254244129131791587141346023714020215122447223933242822161332002532112255919117311"
    "177438113728"
)
K = bytes.fromhex("dc7bf4239c2899eb938e2fef25425fb8")
CLIENT_SALT = "000177438113754"
SERVER_SALT = "000177438114057"
TEST_CIPHERTEXT = "3620:4:*mjJ'3wgQ'qßOrmßM( "
REPLY_CIPHERTEXT = '8538:13: : pcC?aqO$j**#V_K5L4k8F!$t"'
FROM_CLIENT = "18184807857825791131036608123074360179041181390396953000177438113754.762274253367252"
TO_CLIENT_1 = (
    "1868381865779815753575316032972011741651091916148593783388211863262652063"
    "000177438114057.762276320"
)

salts = st.integers(0, 10**15 - 1).map(lambda value: f"{value:015d}")
table_text = st.text(alphabet=digits.TABLE)


def test_key_derivation():
    """K = SHA-256 of the last 53 characters of key_str, first 16 bytes."""
    assert len(KEY_STR) == 96
    assert KEY_STR[-53:] == "47223933242822161332002532112255919117311177438113728"
    assert cipher.derive_key(KEY_STR) == K
    assert cipher.derive_key(KEY_STR[-53:]) == K


def test_salt_groups_and_salted_keys():
    """XOR groups and K_s of both §9.2 packets."""
    assert cipher.salt_groups(CLIENT_SALT) == [0, 1, 77, 43, 81, 13, 75, 4]
    assert cipher.salt_groups(SERVER_SALT) == [0, 1, 77, 43, 81, 14, 5, 7]
    assert cipher.salted_key(K, CLIENT_SALT).hex() == "dc7ab908cd25d2ef938e2fef25425fb8"
    assert cipher.salted_key(K, SERVER_SALT).hex() == "dc7ab908cd269cec938e2fef25425fb8"


def test_keystreams():
    """First keystream bytes of both packets (second covers a block boundary)."""
    client = cipher.keystream(cipher.salted_key(K, CLIENT_SALT), 19)
    assert list(client) == [
        71, 8, 82, 16, 207, 217, 69, 234, 9, 211, 77, 141, 102, 250, 254, 226, 5, 216, 8,
    ]  # fmt: skip
    server = cipher.keystream(cipher.salted_key(K, SERVER_SALT), 28)
    assert list(server) == [
        110, 234, 223, 186, 79, 249, 160, 171, 99, 127, 233, 81, 120, 56,
        197, 94, 104, 94, 143, 189, 224, 163, 45, 182, 16, 213, 76, 200,
    ]  # fmt: skip


def test_encrypt_known_answers():
    """Both §9.2 ciphertexts, including the trailing space and the space after `13:`."""
    assert cipher.encrypt(K, CLIENT_SALT, "test", seed=3620) == TEST_CIPHERTEXT
    assert cipher.encrypt(K, SERVER_SALT, "Hello client!", seed=8538) == REPLY_CIPHERTEXT
    assert TEST_CIPHERTEXT.endswith(" ") and len(TEST_CIPHERTEXT) == 26
    assert len(REPLY_CIPHERTEXT) == 36


def test_encoded_ciphertexts():
    """enc() of both ciphertexts."""
    assert digits.encode(TEST_CIPHERTEXT) == "8184807857825791131036608123074360179041181390396953"
    assert digits.encode(REPLY_CIPHERTEXT) == (
        "868381865779815753575316032972011741651091916148593783388211863262652063"
    )


def test_full_from_client_value_decrypts_to_test():
    """The saved FROM_CLIENT value parses and decrypts to `test`."""
    packet = parse_client_packet(FROM_CLIENT)
    assert packet is not None and packet.client_id == "76227" and not packet.more
    salt = packet.payload[-15:]
    assert salt == CLIENT_SALT
    ciphertext = digits.decode(packet.payload[:-15])
    assert ciphertext == TEST_CIPHERTEXT
    assert cipher.decrypt(K, salt, ciphertext) == "test"


def test_full_to_client_value_is_reproduced_and_decrypts():
    """The server's TO_CLIENT_1 value is rebuilt exactly (seed 8538, RND3 632, IDX 0)."""
    value = secure_packet(
        "Hello client!", "76227", K, SERVER_SALT, index=0, more=False, rnd3=632, seed=8538
    )
    assert value == TO_CLIENT_1
    payload = value.split(".")[0].removeprefix("1")
    assert cipher.decrypt(K, payload[-15:], digits.decode(payload[:-15])) == "Hello client!"


def test_saved_project_values_match_the_vectors():
    """The .sb3 holds the same session: key string, ciphertexts, FROM_CLIENT and TO_CLIENT_1."""
    saved = saved_variables(SCRATCHCOMMUNICATION_SB3)
    assert saved["[secure] client key"] == KEY_STR
    assert saved["☁ FROM_CLIENT"] == FROM_CLIENT
    assert saved["☁ TO_CLIENT_1"] == TO_CLIENT_1
    assert saved["[secure][encrypt] encrypted"] == TEST_CIPHERTEXT
    assert saved["[secure][encrypt] data"] == "test" + cipher.SUFFIX
    assert saved["[secure][decrypt] data"] == REPLY_CIPHERTEXT.split(":", 2)[2]
    assert saved["[sha] sha256 [sha256_in]:out"] == (
        "dc7bf4239c2899eb938e2fef25425fb876fbe88270a7c6e3355a040482f01cda"
    )
    assert cipher.derive_key(saved["[secure] client key"]) == K


def test_decrypt_rejects_tampering():
    """A changed suffix character, wrong salt, wrong length or missing header fails."""
    tampered = TEST_CIPHERTEXT[:15] + "a" + TEST_CIPHERTEXT[16:]  # inside the suffix
    with pytest.raises(ValueError):
        cipher.decrypt(K, CLIENT_SALT, tampered)
    with pytest.raises(ValueError):
        cipher.decrypt(K, SERVER_SALT, TEST_CIPHERTEXT)
    with pytest.raises(ValueError):
        cipher.decrypt(K, CLIENT_SALT, TEST_CIPHERTEXT.replace(":4:", ":5:"))
    with pytest.raises(ValueError):
        cipher.decrypt(K, CLIENT_SALT, TEST_CIPHERTEXT[:-1])
    with pytest.raises(ValueError):
        cipher.decrypt(K, CLIENT_SALT, "*mjJ'3wgQ'qßOrmßM( ")


def test_cipher_is_malleable_in_the_data_part():
    """No integrity (§12.1): shifting a data character shifts the plaintext; hence §13.5."""
    shifted = TEST_CIPHERTEXT[:7] + digits.TABLE[(digits.INDEX_OF["*"] + 1) % 91] + "mjJ"
    assert cipher.decrypt(K, CLIENT_SALT, shifted + TEST_CIPHERTEXT[11:]) == "uest"


def test_decrypt_compares_the_suffix_exactly():
    """A lower-case suffix (which the sprite would accept) is rejected by the server."""
    plain = "test" + cipher.SUFFIX.lower()
    shifts = cipher.keystream(cipher.salted_key(K, CLIENT_SALT), len(plain))
    body = "".join(
        digits.TABLE[(digits.INDEX_OF[char] + shift) % 91]
        for char, shift in zip(plain, shifts, strict=True)
    )
    with pytest.raises(ValueError):
        cipher.decrypt(K, CLIENT_SALT, f"1234:4:{body}")


def test_characters_outside_the_table_encrypt_as_question_marks():
    """The project maps unknown characters to '?' before encrypting (§7)."""
    assert cipher.decrypt(K, SERVER_SALT, cipher.encrypt(K, SERVER_SALT, "é\n!")) == "??!"


@pytest.mark.parametrize("salt", ["17743811375", "0001774381137540", "00017743811375a", ""])
def test_salts_must_be_15_digits(salt):
    """Salts are exactly 15 ASCII digits."""
    with pytest.raises(ValueError):
        cipher.encrypt(K, salt, "x")


def test_random_seeds_are_in_the_library_range():
    """Seeds are 4 digits, 1000–9998."""
    assert all(1000 <= cipher.random_seed() <= 9998 for _ in range(200))


@given(st.binary(min_size=16, max_size=16), salts, table_text, st.integers(1000, 9998))
def test_encrypt_decrypt_round_trip(key, salt, chunk, seed):
    """decrypt(encrypt(x)) == x; the ciphertext stays inside the table."""
    text = cipher.encrypt(key, salt, chunk, seed)
    assert text.startswith(f"{seed}:{len(chunk)}:")
    assert all(char in digits.INDEX_OF for char in text)
    assert cipher.decrypt(key, salt, text) == chunk


@given(st.binary(min_size=16, max_size=16), salts, salts, table_text)
def test_other_salt_fails(key, salt, other, chunk):
    """Decrypting under another salt fails the suffix check (unless the salted keys coincide)."""
    if cipher.salted_key(key, salt) == cipher.salted_key(key, other):
        return
    with pytest.raises(ValueError):
        cipher.decrypt(key, other, cipher.encrypt(key, salt, chunk, 1234))
