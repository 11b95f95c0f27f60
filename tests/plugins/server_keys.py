"""Fresh server keys for the sprite-plugin tests, written to 0600 files."""

from __future__ import annotations

from pathlib import Path

from plugins.sprites.keys import ECServerKey, RSAServerKey


class Keys:
    """A fresh EC and RSA server key pair and the 0600 files that hold them."""

    def __init__(self, directory: Path) -> None:
        self.ec = ECServerKey.generate()
        self.rsa = RSAServerKey.generate()
        self.ec_file = directory / "ec.key"
        self.rsa_file = directory / "rsa.key"
        for path, key in ((self.ec_file, self.ec), (self.rsa_file, self.rsa)):
            path.write_text(key.to_string())
            path.chmod(0o600)
