"""Expected digests of a file's content (SPEC §9 "Expected digests"): parsing and the
canonical form, pure (no I/O).

A digest is given as RFC 9530 syntax, ``sha-256=:<base64>:`` or ``sha-512=:<base64>:``, or
as ``sha256:<hex>`` / ``sha512:<hex>`` (what ``sha256sum`` prints, with its algorithm);
it is kept and shown in the canonical RFC 9530 form.  A server's ``Repr-Digest`` header
(RFC 9530 §3: a Structured Fields dictionary of byte sequences) is read by
:func:`parse_repr_digest`: its sha-256 and sha-512 members, others ignored.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

#: RFC 9530 algorithm key -> hashlib name, digest size in bytes
ALGORITHMS: dict[str, tuple[str, int]] = {"sha-256": ("sha256", 32), "sha-512": ("sha512", 64)}
_HEX_NAMES = {"sha256": "sha-256", "sha512": "sha-512"}
_SF = re.compile(r"^\s*([a-z0-9*_.-]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*$", re.ASCII)
_HEX = re.compile(r"^(sha256|sha512):([0-9A-Fa-f]+)$", re.ASCII)


@dataclass(frozen=True, slots=True)
class Digest:
    """An expected digest: the RFC 9530 algorithm key and the digest's bytes."""

    algorithm: str  # "sha-256" or "sha-512"
    value: bytes

    @property
    def hashlib_name(self) -> str:
        return ALGORITHMS[self.algorithm][0]

    def canonical(self) -> str:
        """``sha-256=:<base64>:``, as BitsClientFile shows it."""
        return f"{self.algorithm}=:{base64.b64encode(self.value).decode('ascii')}:"


def parse_digest(text: str) -> Digest:
    """A digest from ``sha-256=:<base64>:`` / ``sha-512=:<base64>:`` or ``sha256:<hex>`` /
    ``sha512:<hex>``; ValueError (with what is wrong) for anything else."""
    if not isinstance(text, str):
        raise ValueError("Digest must be a string")
    text = text.strip()
    m = _HEX.match(text)
    if m is not None:
        algorithm = _HEX_NAMES[m.group(1)]
        value = bytes.fromhex(m.group(2)) if len(m.group(2)) % 2 == 0 else b""
    else:
        m = _SF.match(text)
        if m is None:
            raise ValueError(
                "Digest must be sha-256=:<base64>:, sha-512=:<base64>:, sha256:<hex> or sha512:<hex>"
            )
        algorithm = m.group(1)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"Digest algorithm {algorithm!r} is not supported (sha-256, sha-512)")
        try:
            value = base64.b64decode(m.group(2), validate=True)
        except binascii.Error:
            raise ValueError("Digest's base64 value is not valid") from None
    size = ALGORITHMS[algorithm][1]
    if len(value) != size:
        raise ValueError(f"a {algorithm} digest is {size} bytes, not {len(value)}")
    return Digest(algorithm, value)


def parse_repr_digest(header: str | None) -> list[Digest]:
    """The sha-256 and sha-512 members of a ``Repr-Digest`` header (a dictionary of byte
    sequences); members of other algorithms, and members that do not parse, are ignored."""
    found: list[Digest] = []
    if not header:
        return found
    for member in header.split(","):
        member = member.split(";", 1)[0]  # (parameters, if any, mean nothing to us)
        m = _SF.match(member)
        if m is None or m.group(1) not in ALGORITHMS:
            continue
        try:
            found.append(parse_digest(f"{m.group(1)}=:{m.group(2)}:"))
        except ValueError:
            continue
    return found
