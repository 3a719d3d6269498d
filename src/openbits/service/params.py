"""Method parameters and their validation: pure functions, no I/O but ``os.path``."""

from __future__ import annotations

import itertools
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from openbits.digest import parse_digest
from openbits.errors import (
    HResult,
    InvalidArgument,
    InvalidRange,
    NotImplementedValue,
    OverlappingRanges,
    StringTooLong,
    TooManyRangesInFile,
)
from openbits.model import (
    BG_LENGTH_TO_EOF,
    LOCAL_FILE_MAX,
    REDIRECT_POLICY_MASK,
    REMOTE_URL_MAX,
    UINT32_MAX,
    AuthScheme,
    AuthTarget,
    Credential,
    ProxyUsage,
    Secret,
    SecurityFlags,
    parse_custom_headers,
)
from openbits.transfer.proxylist import LIST_MAX_CHARS, parse_bypass_list, parse_proxy_list

_CONTROL = re.compile(r"[\x00-\x20\x7f]")

#: SetNotifyCmdLine's limits (bits-spec §4.2: MAX_PATH and 4,000 characters)
NOTIFY_PROGRAM_MAX = 260
NOTIFY_PARAMETERS_MAX = 4000
#: every defined notify flag (bits-spec §2.9); others are E_NOTIMPL
NOTIFY_FLAGS_ALL = 0x3F
#: how many origins a ``known_origins`` set remembers
KNOWN_ORIGINS_MAX = 1024
#: SetCredentials' limits (bits-spec §4.2: BG_BASIC_CREDENTIALS; D8 for the password)
USER_NAME_MAX = 300
PASSWORD_MAX = 65_535
#: CreateJob's ProxyEnvironment: the variables it takes (either case), each this long at most
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
PROXY_VARIABLE_MAX = LIST_MAX_CHARS


class Params:
    """Method parameters matched case-insensitively (SPEC §6), typed on the way out."""

    def __init__(self, raw: Mapping[str, Any] | None, allowed: Iterable[str]) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise InvalidArgument("the request body must be a JSON object")
        self._names = {n.lower(): n for n in allowed}
        self._values: dict[str, Any] = {}
        for key, value in raw.items():
            name = self._names.get(str(key).lower())
            if name is None:
                raise InvalidArgument(
                    f"unknown parameter {key!r}; expected one of: {', '.join(self._names.values())}"
                )
            if name in self._values:
                raise InvalidArgument(f"{name} is given twice")
            self._values[name] = value

    def __contains__(self, name: str) -> bool:
        return self._values.get(name) is not None

    def value(self, name: str) -> Any:
        """The raw JSON value (None when absent)."""
        return self._values.get(name)

    def string(self, name: str, limit: int, *, default: str | None = None) -> str | None:
        value = self._values.get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise InvalidArgument(f"{name} must be a string")
        if "\x00" in value:
            raise InvalidArgument(f"{name} must not contain NUL characters")
        if len(value) > limit:
            raise StringTooLong(f"{name} is longer than {limit} characters")
        return value

    def uint(self, name: str, *, maximum: int = UINT32_MAX, default: int | None = None) -> int | None:
        value = self._values.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"{name} must be an unsigned integer")
        if value < 0 or value > maximum:
            raise InvalidArgument(f"{name} must be between 0 and {maximum}")
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self._values.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidArgument(f"{name} must be true or false")
        return value


def enum_value(enum: type[Any], name: str, value: int) -> Any:
    """An enum member, or E_NOTIMPL for an unknown value (SPEC §6)."""
    try:
        return enum(value)
    except ValueError:
        raise NotImplementedValue(f"{value} is not a valid {name}") from None


def validate_remote_url(url: str, known_origins: set[str] | None = None) -> str:
    """http(s)://, file:// or an absolute path (SPEC §3); E_INVALIDARG otherwise.
    ``known_origins``: the "scheme://host:port" parts of HTTP(S) URLs already found valid,
    kept by the caller (AddFileSet: thousands of URLs on one server); valid ones are added."""
    if not url:
        raise InvalidArgument("RemoteUrl must not be empty")
    if url.startswith("/"):
        return url
    if _CONTROL.search(url):
        raise InvalidArgument("RemoteUrl must not contain spaces or control characters")
    scheme_end = url.find("://")
    path_start = url.find("/", scheme_end + 3) if scheme_end > 0 else -1
    if path_start > 0 and known_origins is not None and url[:path_start] in known_origins:
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InvalidArgument(f"RemoteUrl is not a valid URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise InvalidArgument("RemoteUrl has no host name")
        if port == 0:
            raise InvalidArgument("RemoteUrl has an invalid port")
        if path_start > 0 and known_origins is not None and len(known_origins) < KNOWN_ORIGINS_MAX:
            known_origins.add(url[:path_start])
        return url
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidArgument("file:// URLs must name a local path (file:///path)")
        if not parts.path.startswith("/"):
            raise InvalidArgument("file:// URLs must hold an absolute path")
        return url
    if not scheme:
        raise InvalidArgument("RemoteUrl must be an http://, https:// or file:// URL or an absolute path")
    raise InvalidArgument(f"the URL scheme {scheme!r} is not supported (http, https, file)")


#: the longest Digest string taken (a sha-512 in hex, with room for spaces)
DIGEST_MAX = 200


def file_pair(raw: Any, method: str) -> tuple[str, str]:
    """``{RemoteUrl, LocalFile}``, both required, as (remote, local)."""
    remote, local, _ = file_entry(raw, method, digest=False)
    return remote, local


def file_entry(raw: Any, method: str, *, digest: bool = True) -> tuple[str, str, str | None]:
    """``{RemoteUrl, LocalFile[, Digest]}`` as (remote, local, canonical digest or None)."""
    quick = _plain_file_entry(raw, digest)
    if quick is not None:
        return quick
    p = Params(raw, ("RemoteUrl", "LocalFile", "Digest") if digest else ("RemoteUrl", "LocalFile"))
    remote = p.string("RemoteUrl", REMOTE_URL_MAX)
    local = p.string("LocalFile", LOCAL_FILE_MAX)
    if remote is None or local is None:
        raise InvalidArgument(f"{method} needs RemoteUrl and LocalFile")
    return remote, local, validate_digest(p.string("Digest", DIGEST_MAX))


def _plain(value: Any, limit: int) -> TypeGuard[str]:
    return type(value) is str and len(value) <= limit and "\x00" not in value


def _plain_file_entry(raw: Any, digest: bool) -> tuple[str, str, str | None] | None:
    """``file_entry`` of the usual entry (AddFileSet: thousands of them), without a
    :class:`Params` each: keys spelled as documented, plain valid strings.  None for any
    other entry, which ``file_entry`` then checks in full (and raises its error)."""
    if type(raw) is not dict or not 2 <= len(raw) <= 3:
        return None
    remote = raw.get("RemoteUrl")
    local = raw.get("LocalFile")
    if not (_plain(remote, REMOTE_URL_MAX) and _plain(local, LOCAL_FILE_MAX)):
        return None
    if len(raw) == 2:
        return remote, local, None
    if not digest or "Digest" not in raw:
        return None
    text = raw["Digest"]
    if text is not None and not _plain(text, DIGEST_MAX):
        return None
    return remote, local, validate_digest(text)


def validate_digest(text: str | None) -> str | None:
    """An expected digest (SPEC §9) in its canonical form ``sha-256=:<base64>:``; E_INVALIDARG
    for bad syntax or an algorithm other than sha-256 and sha-512."""
    if text is None:
        return None
    try:
        return parse_digest(text).canonical()
    except ValueError as e:
        raise InvalidArgument(str(e)) from None


def validate_ranges(value: Any, limit: int) -> list[tuple[int, int]]:
    """[{InitialOffset, Length}, ...] -> [(offset, length)]: non-empty, at most ``limit``,
    lengths > 0 (BG_LENGTH_TO_EOF runs to the end), no two overlapping."""
    if not isinstance(value, list) or not value:
        raise InvalidArgument("Ranges must be a non-empty array of {InitialOffset, Length}")
    if len(value) > limit:
        raise TooManyRangesInFile(f"{len(value)} ranges; a file may have {limit}")
    ranges: list[tuple[int, int]] = []
    for item in value:
        p = Params(item, ("InitialOffset", "Length"))
        offset = p.uint("InitialOffset", maximum=BG_LENGTH_TO_EOF - 1)
        length = p.uint("Length", maximum=BG_LENGTH_TO_EOF)
        if offset is None or length is None:
            raise InvalidArgument("each range needs InitialOffset and Length")
        if length == 0:
            raise InvalidRange("a range of length 0")
        ranges.append((offset, length))
    ordered = sorted(ranges)
    for (a, n), (b, _) in itertools.pairwise(ordered):
        if n == BG_LENGTH_TO_EOF or a + n > b:
            raise OverlappingRanges("two ranges overlap")
    return ranges


def check_security_flags(flags: int) -> None:
    """Known bits only, one redirect policy; CRL checking is refused (no CRL fetching yet)."""
    known = 0
    for flag in SecurityFlags:
        known |= int(flag)
    if flags & ~known:
        raise NotImplementedValue(f"SecurityFlags 0x{flags:X} has unknown bits")
    if flags & REDIRECT_POLICY_MASK not in (0, 0x100, 0x200):
        raise NotImplementedValue(f"0x{flags & REDIRECT_POLICY_MASK:X} is not a redirect policy")
    if flags & SecurityFlags.ENABLE_CRL_CHECK:
        raise NotImplementedValue("certificate revocation (CRL) checking is not supported yet")


def validate_local_file(path: str) -> str:
    if not path.startswith("/"):
        raise InvalidArgument(f"LocalFile must be an absolute path, not {path!r}")
    if len(path) > LOCAL_FILE_MAX:
        raise StringTooLong(f"LocalFile is longer than {LOCAL_FILE_MAX} characters")
    segments = path.split("/")
    if ".." in segments or "." in segments:
        raise InvalidArgument("LocalFile must not contain '.' or '..' components")
    name = segments[-1]
    if not name:
        raise InvalidArgument("LocalFile must name a file, not a directory")
    if len(name) * 4 > 255 and len(name.encode()) > 255:  # (a character is 4 bytes at most)
        raise StringTooLong("the file name in LocalFile is longer than 255 bytes")
    # (with no '.', '..' or empty name, only doubled slashes are left to normalise)
    return os.path.normpath(path) if "//" in path else path


def check_custom_headers(text: str | None) -> None:
    """SetCustomHeaders: 'Name: value' lines (an empty text clears them)."""
    if text:
        try:
            parse_custom_headers(text)
        except ValueError as e:
            raise InvalidArgument(f"CustomHeaders: {e}") from None


def validate_notify_cmd_line(program: str | None, parameters: str | None) -> str | None:
    """SetNotifyCmdLine: an absolute Program, Parameters split as a POSIX shell splits words
    (both null: none).  The Parameters to keep (None when they hold no word)."""
    if program is None:
        if parameters is not None:
            raise InvalidArgument("SetNotifyCmdLine: Parameters without a Program")
        return None
    if not os.path.isabs(program):
        raise InvalidArgument(f"SetNotifyCmdLine: the Program must be an absolute path: {program!r}")
    if parameters is not None:
        try:
            words = shlex.split(parameters)
        except ValueError as e:
            raise InvalidArgument(f"SetNotifyCmdLine: Parameters: {e}") from None
        if not words:
            return None
    return parameters


def check_notify_url(url: str | None) -> None:
    """SetNotifyUrl: an http:// or https:// URL with a host (an empty one removes it)."""
    if not url:
        return
    try:
        parts = urlsplit(url)
        port = parts.port  # (raises for a port out of range)
    except ValueError as e:
        raise InvalidArgument(f"NotifyUrl is not a valid URL: {e}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == 0:
        raise InvalidArgument("NotifyUrl must be an http:// or https:// URL with a host")
    if _CONTROL.search(url):
        raise InvalidArgument("NotifyUrl must not contain spaces or control characters")


# -- identity (SPEC §7) ------------------------------------------------------------------------


def auth_target_scheme(p: Params) -> tuple[AuthTarget, AuthScheme]:
    """``Target`` and ``Scheme`` (both required): BG_E_INVALID_AUTH_TARGET and
    BG_E_INVALID_AUTH_SCHEME for values BITS does not define."""
    target, scheme = p.uint("Target"), p.uint("Scheme")
    if target is None or scheme is None:
        raise InvalidArgument("Target and Scheme are required")
    try:
        auth_target = AuthTarget(target)
    except ValueError:
        raise InvalidArgument(
            f"{target} is not a Target (0 server, 1 proxy)", hresult=HResult.BG_E_INVALID_AUTH_TARGET
        ) from None
    try:
        auth_scheme = AuthScheme(scheme)
    except ValueError:
        raise InvalidArgument(
            f"{scheme} is not a Scheme (0 Basic, 1 Digest, 2 NTLM, 3 Negotiate, 4 Passport)",
            hresult=HResult.BG_E_INVALID_AUTH_SCHEME,
        ) from None
    return auth_target, auth_scheme


def validate_credential(raw: Mapping[str, Any] | None) -> Credential:
    """SetCredentials' parameters as a Credential (SPEC §7).  Basic and Digest need a
    UserName and a Password (it may be empty); NTLM and Negotiate take both, or neither
    (the owner's default credentials); Passport is E_NOTIMPL.  No message quotes a value."""
    p = Params(raw, ("Target", "Scheme", "UserName", "Password"))
    target, scheme = auth_target_scheme(p)
    if scheme is AuthScheme.PASSPORT:
        raise NotImplementedValue("Passport authentication is not supported")
    user = _bounded(p, "UserName", USER_NAME_MAX, HResult.BG_E_USERNAME_TOO_LARGE)
    password = _bounded(p, "Password", PASSWORD_MAX, HResult.BG_E_PASSWORD_TOO_LARGE)
    if scheme in (AuthScheme.BASIC, AuthScheme.DIGEST):
        if not user or password is None:
            raise InvalidArgument(f"{scheme.name.title()} credentials need a UserName and a Password")
    elif user is None and password is not None:
        raise InvalidArgument("a Password needs a UserName (both null: the default credentials)")
    elif user is not None and password is None:
        raise InvalidArgument(f"{scheme.name} credentials with a UserName need a Password (it may be empty)")
    elif user == "":
        raise InvalidArgument("UserName must not be empty (both null: the default credentials)")
    return Credential(target, scheme, user, None if password is None else Secret(password))


def _bounded(p: Params, name: str, limit: int, code: HResult) -> str | None:
    """A string parameter whose length has its own HRESULT."""
    value = p.string(name, UINT32_MAX)
    if value is not None and len(value) > limit:
        raise InvalidArgument(f"{name} is longer than {limit} characters", hresult=code)
    return value


def validate_proxy_settings(raw: Mapping[str, Any] | None) -> tuple[ProxyUsage, str | None, str | None]:
    """SetProxySettings' (ProxyUsage, ProxyList, ProxyBypassList), the lists as given: only
    with OVERRIDE, which needs a ProxyList (SPEC §7); each list parses and is 32 KiB at most."""
    p = Params(raw, ("ProxyUsage", "ProxyList", "ProxyBypassList"))
    value = p.uint("ProxyUsage")
    if value is None:
        raise InvalidArgument("ProxyUsage is required")
    usage = enum_value(ProxyUsage, "ProxyUsage", value)
    proxies = _bounded(p, "ProxyList", LIST_MAX_CHARS, HResult.BG_E_PROXY_LIST_TOO_LARGE)
    bypass = _bounded(p, "ProxyBypassList", LIST_MAX_CHARS, HResult.BG_E_PROXY_BYPASS_LIST_TOO_LARGE)
    if usage is not ProxyUsage.OVERRIDE:
        if proxies is not None or bypass is not None:
            raise InvalidArgument(f"ProxyList and ProxyBypassList go with OVERRIDE only, not {usage.name}")
        return usage, None, None
    if proxies is None:
        raise InvalidArgument("OVERRIDE needs a ProxyList")
    try:
        parse_proxy_list(proxies)
        if bypass:
            parse_bypass_list(bypass)
    except ValueError as e:
        raise InvalidArgument(f"SetProxySettings: {e}") from None
    return usage, proxies, bypass or None


def validate_proxy_environment(value: Any) -> dict[str, str] | None:
    """CreateJob's ProxyEnvironment: the caller's http_proxy, https_proxy, all_proxy and
    no_proxy (either case; the lower-case one wins, as in curl), keyed in lower case; empty
    values are left out.  None when nothing is left."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidArgument("ProxyEnvironment must be an object of proxy variables")
    found: dict[str, str] = {}
    for key, text in value.items():
        name = str(key).lower()
        if name not in PROXY_VARIABLES or str(key) not in (name, name.upper()):
            raise InvalidArgument(
                f"ProxyEnvironment takes {', '.join(PROXY_VARIABLES)} (or upper case), not {str(key)[:64]!r}"
            )
        if text is None:
            continue
        if not isinstance(text, str) or "\x00" in text:
            raise InvalidArgument(f"ProxyEnvironment: {key} must be a string without NUL characters")
        if len(text) > PROXY_VARIABLE_MAX:
            raise StringTooLong(f"ProxyEnvironment: {key} is longer than {PROXY_VARIABLE_MAX} characters")
        if text and (str(key) == name or name not in found):
            found[name] = text
    return found or None
