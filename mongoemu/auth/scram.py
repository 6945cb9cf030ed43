"""SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802, RFC 7677): stored credentials and the server side
of one authentication conversation, in the flavour MongoDB servers speak."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from pymongo.saslprep import saslprep

from mongoemu.errors import CommandError

SCRAM_SHA_1 = "SCRAM-SHA-1"
SCRAM_SHA_256 = "SCRAM-SHA-256"
# MongoDB's order when it lists a user's mechanisms (hello.saslSupportedMechs, usersInfo).
MECHANISMS: tuple[str, ...] = (SCRAM_SHA_1, SCRAM_SHA_256)

# Server defaults (scramIterationCount / scramSHA256IterationCount) and salt sizes.
_HASHES = {SCRAM_SHA_1: hashlib.sha1, SCRAM_SHA_256: hashlib.sha256}
DEFAULT_ITERATIONS = {SCRAM_SHA_1: 10000, SCRAM_SHA_256: 15000}
_SALT_BYTES = {SCRAM_SHA_1: 16, SCRAM_SHA_256: 28}
_SERVER_NONCE_BYTES = 24

# A failing conversation never says why: the reply must not reveal whether the user exists.
AUTH_FAILED_MESSAGE = "Authentication failed."


def auth_failed() -> CommandError:
    return CommandError(18, AUTH_FAILED_MESSAGE)


def _b64(data: bytes) -> str:
    return base64.standard_b64encode(data).decode("ascii")


@dataclass(frozen=True)
class ScramCredential:
    """What a server keeps for one mechanism of one user: enough to verify, not to log in."""

    mechanism: str
    iteration_count: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def to_document(self) -> dict[str, Any]:
        """The ``credentials.<mechanism>`` sub-document of ``admin.system.users``."""
        return {"iterationCount": self.iteration_count, "salt": _b64(self.salt),
                "storedKey": _b64(self.stored_key), "serverKey": _b64(self.server_key)}


def derive_credential(mechanism: str, secret: bytes, salt: bytes,
                      iterations: int) -> ScramCredential:
    """RFC 5802 key derivation from the already-normalised secret the client will also use."""
    digest = _HASHES[mechanism]
    salted = hashlib.pbkdf2_hmac(digest().name, secret, salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", digest)
    server_key = hmac.digest(salted, b"Server Key", digest)
    return ScramCredential(mechanism, iterations, salt, digest(client_key).digest(), server_key)


def scram_secret(mechanism: str, user: str, password: str) -> bytes:
    """The PBKDF2 input MongoDB drivers use: SASLprep'd password for SHA-256, and for SHA-1 the
    legacy hex MD5 of ``user:mongo:password`` (drivers do not SASLprep it)."""
    if mechanism == SCRAM_SHA_256:
        return saslprep(password).encode("utf-8")
    return hashlib.md5(f"{user}:mongo:{password}".encode("utf-8")).hexdigest().encode("ascii")


def make_credential(mechanism: str, user: str, password: str, *,
                    iterations: int | None = None) -> ScramCredential:
    """A fresh credential (random salt) for ``createUser`` / ``updateUser``."""
    if mechanism not in _HASHES:
        raise ValueError(f"unsupported mechanism {mechanism!r}")
    return derive_credential(mechanism, scram_secret(mechanism, user, password),
                             os.urandom(_SALT_BYTES[mechanism]),
                             iterations or DEFAULT_ITERATIONS[mechanism])


# saslname escaping (RFC 5802 §5.1): only "=2C" and "=3D" may follow "=".
_BAD_ESCAPE = re.compile(r"=(?!2C|3D)")


def _unescape_name(value: str) -> str:
    if _BAD_ESCAPE.search(value):
        raise auth_failed()
    return value.replace("=2C", ",").replace("=3D", "=")


def _valid_nonce(nonce: str) -> bool:
    # RFC 5802 "printable": %x21-7E except ",".
    return bool(nonce) and all(0x21 <= ord(ch) <= 0x7E and ch != "," for ch in nonce)


def _text(payload: bytes) -> str:
    try:
        return bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        raise auth_failed() from None


class ScramServer:
    """One SCRAM conversation: ``start`` answers client-first, ``continue_`` answers
    client-final and, when the client did not ask to skip it, the trailing empty message.

    ``lookup`` maps the user name from client-first to that user's credential for this
    mechanism, or None; a missing user fails exactly like a wrong password.
    """

    _EXPECT_FIRST, _EXPECT_FINAL, _EXPECT_EMPTY, _DONE = range(4)

    def __init__(self, mechanism: str, lookup: Callable[[str], ScramCredential | None], *,
                 skip_empty_exchange: bool = False, server_nonce: str | None = None) -> None:
        if mechanism not in _HASHES:
            raise ValueError(f"unsupported mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._digest = _HASHES[mechanism]
        self._lookup = lookup
        self._skip_empty_exchange = skip_empty_exchange
        # Fixed only by tests replaying RFC test vectors.
        self._server_nonce = server_nonce or _b64(os.urandom(_SERVER_NONCE_BYTES))
        self._state = self._EXPECT_FIRST
        self.user: str | None = None
        self._credential: ScramCredential | None = None
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""

    @property
    def authenticated(self) -> bool:
        """True once the proof checked out and nothing more is expected from the client."""
        return self._state == self._DONE and self.user is not None

    def start(self, payload: bytes) -> bytes:
        """client-first-message → server-first-message."""
        if self._state != self._EXPECT_FIRST:
            raise auth_failed()
        self._state = self._DONE  # any failure below leaves a dead conversation
        text = _text(payload)
        parts = text.split(",", 2)
        # GS2 header: no channel binding ("p=") and no authorization identity ("a=").
        if len(parts) != 3 or parts[0] not in ("n", "y") or parts[1] != "":
            raise auth_failed()
        self._gs2_header = f"{parts[0]},,"
        self._client_first_bare = parts[2]
        attrs = parts[2].split(",")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise auth_failed()  # also rejects a mandatory extension "m=" in front
        user = _unescape_name(attrs[0][2:])
        client_nonce = attrs[1][2:]
        if not user or not _valid_nonce(client_nonce):
            raise auth_failed()
        credential = self._lookup(user)
        if credential is None or credential.mechanism != self.mechanism:
            raise auth_failed()
        self.user = user
        self._credential = credential
        self._nonce = client_nonce + self._server_nonce
        self._server_first = (f"r={self._nonce},s={_b64(credential.salt)},"
                              f"i={credential.iteration_count}")
        self._state = self._EXPECT_FINAL
        return self._server_first.encode("ascii")

    def continue_(self, payload: bytes) -> bytes:
        """client-final-message → server-final-message; then empty → empty (final step)."""
        if self._state == self._EXPECT_EMPTY:
            if bytes(payload):
                self._state = self._DONE
                self.user = None
                raise auth_failed()
            self._state = self._DONE
            return b""
        if self._state != self._EXPECT_FINAL:
            raise auth_failed()
        self._state = self._DONE
        user, self.user = self.user, None  # only restored once the proof checks out
        credential = self._credential
        assert credential is not None
        text = _text(payload)
        cut = text.rfind(",p=")
        if cut < 0:
            raise auth_failed()
        without_proof = text[:cut]
        attrs = without_proof.split(",")
        expected_binding = "c=" + _b64(self._gs2_header.encode("ascii"))
        if len(attrs) < 2 or attrs[0] != expected_binding or attrs[1] != "r=" + self._nonce:
            raise auth_failed()
        try:
            proof = base64.b64decode(text[cut + 3:], validate=True)
        except (binascii.Error, ValueError):
            raise auth_failed() from None
        if len(proof) != self._digest().digest_size:
            raise auth_failed()
        auth_message = ",".join(
            (self._client_first_bare, self._server_first, without_proof)).encode("utf-8")
        client_signature = hmac.digest(credential.stored_key, auth_message, self._digest)
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
        if not hmac.compare_digest(self._digest(client_key).digest(), credential.stored_key):
            raise auth_failed()
        self.user = user
        self._state = self._DONE if self._skip_empty_exchange else self._EXPECT_EMPTY
        server_signature = hmac.digest(credential.server_key, auth_message, self._digest)
        return f"v={_b64(server_signature)}".encode("ascii")
