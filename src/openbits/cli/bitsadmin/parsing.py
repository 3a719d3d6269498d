"""bitsadmin's arguments: numbers, priorities, NULL, ACL letters, ranges, file sets and
certificate store locations."""

from __future__ import annotations

from openbits.cli.bitsadmin.usage import Usage
from openbits.model import BG_LENGTH_TO_EOF, JobPriority

_JOB_TYPES = {"/DOWNLOAD": 0, "/UPLOAD": 1, "/UPLOAD-REPLY": 2}


#: WMI encodings (bits-spec §1.3): Target 0 server, 1 proxy; Scheme 0 Basic … 4 Passport.
_TARGETS = {"SERVER": 0, "PROXY": 1}
_SCHEMES = {"BASIC": 0, "DIGEST": 1, "NTLM": 2, "NEGOTIATE": 3, "PASSPORT": 4}
#: bitsadmin's store locations are 1-based (WSD:bitsadmin-setclientcertificatebyid.md); the
#: WMI CertStoreLocation is BG_CERT_STORE_LOCATION, 0-based (bits-spec §2.7).
_STORE_LOCATIONS = (
    "CURRENT_USER",
    "LOCAL_MACHINE",
    "CURRENT_SERVICE",
    "SERVICES",
    "USERS",
    "CURRENT_USER_GROUP_POLICY",
    "LOCAL_MACHINE_GROUP_POLICY",
    "LOCAL_MACHINE_ENTERPRISE",
)
_ACL_LETTERS = {"O": 1, "G": 2, "D": 4, "S": 8}  # BG_COPY_FILE_OWNER, GROUP, DACL, SACL


def _nargs(args: list[str], *counts: int) -> None:
    if len(args) not in counts:
        raise Usage("Invalid number of arguments.")


def _ulong(text: str) -> int:
    """A uint32 as bitsadmin reads it: decimal, or hexadecimal with 0x."""
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise Usage(f"'{text}' is not a valid number.") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise Usage(f"'{text}' is out of range.")
    return value


def _priority(text: str) -> int:
    try:
        return int(JobPriority[text.upper()])
    except KeyError:
        raise Usage("Invalid priority.") from None


def _null(text: str) -> str | None:
    return None if text.upper() == "NULL" else text


def _acl_flags(text: str) -> int:
    flags = 0
    for letter in text.upper():
        if letter not in _ACL_LETTERS:
            raise Usage(f"'{text}' is not a valid ACL flag set: use the letters O, G, D and S.")
        flags |= _ACL_LETTERS[letter]
    return flags


def parse_ranges(text: str) -> list[dict[str, int]]:
    """``offset:length[,offset:length…]``, length ``eof`` = to the end of the file."""
    ranges = []
    for part in text.split(","):
        offset, sep, length = part.strip().partition(":")
        if not sep:
            raise Usage(f"'{part}' is not a range: use offset:length or offset:eof.")
        try:
            start = int(offset, 10)
            count = BG_LENGTH_TO_EOF if length.strip().lower() == "eof" else int(length, 10)
        except ValueError:
            raise Usage(f"'{part}' is not a range: use offset:length or offset:eof.") from None
        if start < 0 or count < 0:
            raise Usage(f"'{part}' is not a range: offsets and lengths are not negative.")
        ranges.append({"InitialOffset": start, "Length": count})
    return ranges


def parse_file_set(text: str) -> list[tuple[str, str]]:
    """bitsadmin's /ADDFILESET file: ``remote local`` per line, ``#`` comments, blank lines."""
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        words = stripped.split()
        if len(words) != 2:
            raise Usage(f"Line {number} of the file set is not 'remote_url local_name': {stripped}")
        pairs.append((words[0], words[1]))
    return pairs


def _store_location(text: str) -> int:
    name = text.upper().removeprefix("BG_CERT_STORE_LOCATION_")
    if name in _STORE_LOCATIONS:
        return _STORE_LOCATIONS.index(name)
    if name.isascii() and name.isdigit() and 1 <= int(name) <= len(_STORE_LOCATIONS):
        return int(name) - 1
    raise Usage(f"'{text}' is not a certificate store location.")
