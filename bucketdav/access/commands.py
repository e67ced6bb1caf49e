"""`bucketdav token NAME` and `bucketdav passwd NAME`: the access-file lines for a new secret."""

from __future__ import annotations

import argparse
import getpass
import json
import re
import secrets
from typing import TextIO

import argon2
import bcrypt

from bucketdav.access.credentials import BCRYPT_MAX, TOKEN_PREFIX, token_digest
from bucketdav.access.rules import name_problem

# 32 random bytes: guessing is hopeless, so a plain SHA-256 of it is safe to keep.
TOKEN_BYTES = 32
BCRYPT_COST = 12
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def add_arguments(token: argparse.ArgumentParser, passwd: argparse.ArgumentParser) -> None:
    """The arguments of the two subcommands."""
    token.add_argument("name", help="the pipeline's name in the access file ([tokens.NAME])")
    passwd.add_argument("name", help="the person's user name ([users.NAME])")
    passwd.add_argument(
        "--argon2id", action="store_true", help="hash with argon2id instead of bcrypt"
    )


def toml_key(name: str) -> str:
    """`name` as a TOML key: bare when it can be, else quoted."""
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def new_token(name: str) -> tuple[str, str]:
    """A new random token and the access-file lines that admit it (only its hash)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    digest = token_digest(token.encode("ascii")).hex()
    lines = (
        f"[tokens.{toml_key(name)}]\n"
        f'hash = "{TOKEN_PREFIX}{digest}"\n'
        "upload = true\n"
        f'replicas = ["{_folder(name)}/"]      # where its uploads may be filed, under replica/\n'
        "# read = []                  # path prefixes it may read besides anonymous\n"
        "# expires = 2027-06-30       # last day it works (UTC)\n"
    )
    return token, lines


def password_lines(name: str, password: str, *, use_argon2: bool = False) -> str:
    """The access-file lines for user `name` with a hash of `password`."""
    if use_argon2:
        hashed = argon2.PasswordHasher().hash(password)
    else:
        hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(BCRYPT_COST)).decode()
    return (
        f"[users.{toml_key(name)}]\n"
        f'password = "{hashed}"\n'
        'read = ["/"]\n'
        "# upload = true\n"
        '# replicas = ["user/' + _folder(name) + '/"]\n'
    )


def run_token(args: argparse.Namespace, *, stdout: TextIO, stderr: TextIO) -> int:
    """Print a new token on stderr (once) and the lines for the access file on stdout."""
    problem = name_problem(args.name, "tokens")
    if problem:
        print(f"bucketdav token: {problem}", file=stderr)
        return 2
    token, lines = new_token(args.name)
    # The secret goes to the terminal and the lines to stdout, so that
    # `bucketdav token NAME >> access.toml` keeps only the hash in the file.
    print(
        f"Token for {args.name} (shown only now; keep it in the pipeline's secrets):\n{token}\n"
        f"Use it as: curl -u {args.name}:TOKEN … or -H 'Authorization: Bearer TOKEN'.\n"
        "Add these lines to the access file:",
        file=stderr,
    )
    stdout.write(lines)
    return 0


def run_passwd(args: argparse.Namespace, *, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """Ask for a password (twice on a terminal, one line from a pipe); print the lines."""
    problem = name_problem(args.name, "users")
    if problem:
        print(f"bucketdav passwd: {problem}", file=stderr)
        return 2
    if stdin.isatty():
        password = getpass.getpass(f"Password for {args.name}: ")
        if getpass.getpass("Again: ") != password:
            print("bucketdav passwd: the two passwords differ", file=stderr)
            return 1
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        print("bucketdav passwd: empty password", file=stderr)
        return 1
    if not args.argon2id and len(password.encode("utf-8")) > BCRYPT_MAX:
        print(
            f"bucketdav passwd: bcrypt reads only {BCRYPT_MAX} bytes of a password; "
            "use --argon2id for a longer one",
            file=stderr,
        )
        return 1
    stdout.write(password_lines(args.name, password, use_argon2=args.argon2id))
    return 0


def _folder(name: str) -> str:
    """A replica folder name suggested for `name`."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", name) or "team"
