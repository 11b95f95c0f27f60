"""`python -m server keygen`: create a server key for the scratchcommunication secure handshake.

    python -m server keygen --scheme ec --out data/keys/ec.key
    python -m server keygen --scheme rsa --out data/keys/rsa.key --force
    python -m server keygen --show data/keys/ec.key

The private key is written in the scratchcommunication library's own string format
(`ECxxxxx1["<base hex>", "<scalar hex>"]` or `RSAxxxx1[3, d, n]`), so a key made with the
library can be used as is: save its `Security.to_string()` to a file with mode 0600. The file
is created with mode 0600 (O_CREAT | O_EXCL, independent of the umask) and an existing file is
only replaced with --force. The command prints the `public_data` the project author types into
the project's stage variables; the private key is never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .keys import ECServerKey, RSAServerKey, load_server_key

KEY_FILE_MODE = 0o600


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server keygen",
        description="Create a private key for the scratchcommunication secure handshake and "
        "print the public values to put into the project.",
    )
    parser.add_argument("--scheme", choices=["ec", "rsa"], default="ec",
                        help="ec (X25519, preferred) or rsa (textbook RSA, old projects only)")
    parser.add_argument("--out", help="where to write the private key (mode 0600)")
    parser.add_argument("--force", action="store_true", help="replace an existing key file")
    parser.add_argument("--show", metavar="KEY_FILE",
                        help="print the public values of an existing key file instead")
    return parser


def write_private_file(path: Path, text: str, *, force: bool = False) -> None:
    """Write `text` to a new file with mode 0600; FileExistsError unless `force`."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = path
    if force:
        # Write a fresh 0600 file next to the old one, then swap it in atomically.
        target = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    try:
        os.fchmod(descriptor, KEY_FILE_MODE)  # exactly 0600 whatever the umask
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            descriptor = -1
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        if descriptor >= 0:
            os.close(descriptor)
        target.unlink(missing_ok=True)
        raise
    if target != path:
        os.replace(target, path)


def public_lines(key: ECServerKey | RSAServerKey) -> list[str]:
    """`name = value` lines of the key's public data, in the order the project shows them."""
    return [f"{name} = {value}" for name, value in key.public_data().items()]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.show:
        try:
            key = load_server_key(Path(args.show).read_text(encoding="ascii").strip())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            print(f"stratus keygen: cannot read a key from {args.show}: "
                  f"{error.__class__.__name__}", file=sys.stderr)
            return 1
    else:
        if not args.out:
            print("stratus keygen: --out PATH is required (or --show KEY_FILE)", file=sys.stderr)
            return 2
        out = Path(args.out)
        if out.exists() and not args.force:
            print(f"stratus keygen: {out} exists; use --force to replace it", file=sys.stderr)
            return 1
        key = ECServerKey.generate() if args.scheme == "ec" else RSAServerKey.generate()
        try:
            write_private_file(out, key.to_string(), force=args.force)
        except FileExistsError:
            print(f"stratus keygen: {out} exists; use --force to replace it", file=sys.stderr)
            return 1
        except OSError as error:
            print(f"stratus keygen: cannot write {out}: {error.strerror}", file=sys.stderr)
            return 1
        print(f"Wrote the {key.scheme} private key to {out} (mode 0600). Keep it secret.")
        print(f'Config: {key.scheme.lower()}_key_file = "{out}"')
    print("Set these stage variables in the project (then save it):")
    for line in public_lines(key):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
