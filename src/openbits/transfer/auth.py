"""HTTP authentication, sans I/O: the challenges a server (401) or proxy (407) sends, the
scheme that answers them, and the header values of each leg (SPEC §7 "How they are used").

- Challenges are parsed as RFC 9110 §11 writes them: several per header and several
  headers, each a scheme with a token68 or auth-params (tokens or quoted strings).
- The strongest offered scheme that has a usable credential of the target answers:
  Negotiate > NTLM > Digest > Basic.  Nothing is sent before a challenge asks for it.
- Basic is RFC 7617 (UTF-8); Digest is RFC 7616 (MD5, SHA-256 and SHA-512-256, their
  ``-sess`` variants, qop=auth, ``stale=true`` answered once more with the same credential,
  ``userhash``); NTLM and Negotiate are pyspnego's contexts (Negotiate tries Kerberos and
  falls back to NTLM), whose tokens go back and forth over ONE connection: the caller tells
  the :class:`Authenticator` when the connection changed (:meth:`Authenticator.connection_lost`),
  and the handshake starts again.

One :class:`Authenticator` serves one request exchange with one target (a server origin, or a
proxy): the caller feeds it each 401/407 (``answer``) and the final answer (``verify``:
Negotiate's mutual authentication).  When it gives up, ``problem`` says why, in words that
never hold a secret.  pyspnego's errors are translated here, at their edge.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from multidict import MultiMapping

from openbits.model import AuthScheme, AuthTarget, Credential
from openbits.transfer.tickets import PROCESS, DefaultCredentials

if TYPE_CHECKING:  # pyspnego is imported on first use: most jobs never need it
    from spnego import ContextProxy

__all__ = [
    "PREFERENCE",
    "Authenticator",
    "Challenge",
    "basic_value",
    "choose",
    "digest_value",
    "parse_challenges",
]

#: the schemes that answer, strongest first (SPEC §7)
PREFERENCE = (AuthScheme.NEGOTIATE, AuthScheme.NTLM, AuthScheme.DIGEST, AuthScheme.BASIC)
#: the schemes whose handshake is bound to one connection
CONNECTION_BOUND = frozenset({AuthScheme.NTLM, AuthScheme.NEGOTIATE})
#: the names the schemes go by on the wire (matched case-insensitively)
SCHEME_NAMES = {
    AuthScheme.BASIC: "Basic",
    AuthScheme.DIGEST: "Digest",
    AuthScheme.NTLM: "NTLM",
    AuthScheme.NEGOTIATE: "Negotiate",
}
_BY_NAME = {name.lower(): scheme for scheme, name in SCHEME_NAMES.items()}
#: answers one exchange may give (NTLM needs 2, a restarted handshake 2 more, stale Digest 1)
MAX_LEGS = 8
#: Digest ``stale=true`` re-tries with the same credential
MAX_STALE = 2

#: Digest algorithms by strength, and their hash functions
_DIGEST_ALGORITHMS = {"sha-512-256": "sha512_256", "sha-256": "sha256", "md5": "md5"}
_DIGEST_RANK = ("sha-512-256", "sha-256", "md5")

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_OWS = re.compile(r"[ \t]*")
_LIST_SEP = re.compile(r"[ \t,]*")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge: the scheme (lower case), and a token68 or the auth-params (names in
    lower case, values unquoted; the first of a repeated name wins)."""

    scheme: str
    token68: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """The challenges of WWW-Authenticate (or Proxy-Authenticate) header values, in order.
    A malformed part ends the parse of its header value; what came before it stands."""
    found: list[Challenge] = []
    for value in values:
        found.extend(_parse_value(value))
    return found


def _parse_value(text: str) -> list[Challenge]:
    out: list[Challenge] = []
    pos = _LIST_SEP.match(text, 0).end()  # type: ignore[union-attr]
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            break
        scheme = m.group().lower()
        pos = m.end()
        after = _OWS.match(text, pos).end()  # type: ignore[union-attr]
        if after == pos or after >= len(text) or text[after] == ",":
            out.append(Challenge(scheme))  # no parameters
            pos = _LIST_SEP.match(text, after).end()  # type: ignore[union-attr]
            continue
        pos = after
        t68 = _TOKEN68.match(text, pos)
        if t68 is not None:
            end = _OWS.match(text, t68.end()).end()  # type: ignore[union-attr]
            if end >= len(text) or text[end] == ",":
                out.append(Challenge(scheme, token68=t68.group()))
                pos = _LIST_SEP.match(text, end).end()  # type: ignore[union-attr]
                continue
        params, pos, ok = _parse_params(text, pos)
        out.append(Challenge(scheme, params=params))
        if not ok:
            break
    return out


def _parse_params(text: str, pos: int) -> tuple[dict[str, str], int, bool]:
    """auth-params from ``pos`` up to the next challenge: (params, where it starts, whether
    the text was well formed)."""
    params: dict[str, str] = {}
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            return params, pos, False
        eq = _OWS.match(text, m.end()).end()  # type: ignore[union-attr]
        if eq >= len(text) or text[eq] != "=":
            return params, pos, True  # a token not followed by '=': the next challenge
        name = m.group().lower()
        pos = _OWS.match(text, eq + 1).end()  # type: ignore[union-attr]
        if pos < len(text) and text[pos] == '"':
            value, pos = _quoted(text, pos)
            if value is None:
                return params, len(text), False
        else:
            v = _TOKEN.match(text, pos)
            if v is None:
                return params, pos, False
            value, pos = v.group(), v.end()
        params.setdefault(name, value)
        pos = _OWS.match(text, pos).end()  # type: ignore[union-attr]
        if pos < len(text) and text[pos] != ",":
            return params, pos, False
        pos = _LIST_SEP.match(text, pos).end()  # type: ignore[union-attr]
    return params, pos, True


def _quoted(text: str, pos: int) -> tuple[str | None, int]:
    """The quoted-string at ``pos`` (RFC 9110 §5.6.4: ``\\`` quotes the next character)
    unquoted, and where it ends; None when it is not closed."""
    chars: list[str] = []
    i = pos + 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            chars.append(text[i + 1])
            i += 2
        elif c == '"':
            return "".join(chars), i + 1
        else:
            chars.append(c)
            i += 1
    return None, len(text)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def usable(credential: Credential) -> bool:
    """The credential can answer: not lost with the key file, and Basic and Digest have both
    names (NTLM and Negotiate without names use the default credentials)."""
    if credential.missing:
        return False
    if credential.scheme in (AuthScheme.BASIC, AuthScheme.DIGEST):
        return credential.user_name is not None and credential.password is not None
    return credential.scheme in CONNECTION_BOUND


def offered(challenges: Sequence[Challenge]) -> dict[AuthScheme, Challenge]:
    """The schemes we speak among ``challenges``, each with its challenge (for Digest the
    one of the strongest algorithm we support; else the first)."""
    found: dict[AuthScheme, Challenge] = {}
    for challenge in challenges:
        scheme = _BY_NAME.get(challenge.scheme)
        if scheme is None:
            continue
        if scheme == AuthScheme.DIGEST:
            if _digest_algorithm(challenge) is None:
                continue
            best = found.get(scheme)
            if best is not None and _digest_rank(best) <= _digest_rank(challenge):
                continue
        elif scheme in found:
            continue
        found[scheme] = challenge
    return found


def choose(schemes: Iterable[AuthScheme], credentials: Mapping[AuthScheme, Credential]) -> AuthScheme | None:
    """The strongest of ``schemes`` with a usable credential in ``credentials``."""
    offered_set = set(schemes)
    for scheme in PREFERENCE:
        credential = credentials.get(scheme)
        if scheme in offered_set and credential is not None and usable(credential):
            return scheme
    return None


# -- Basic and Digest -------------------------------------------------------------------------


def basic_value(user: str, password: str) -> str:
    """``Basic`` credentials, RFC 7617 with charset UTF-8."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _digest_algorithm(challenge: Challenge) -> tuple[str, bool] | None:
    """(algorithm, session variant) of a Digest challenge we can answer; None if we cannot
    (an unknown algorithm, or a qop list without ``auth``)."""
    name = challenge.params.get("algorithm", "MD5").lower()
    session = name.endswith("-sess")
    base = name[: -len("-sess")] if session else name
    if base not in _DIGEST_ALGORITHMS or "nonce" not in challenge.params:
        return None
    qop = challenge.params.get("qop")
    if qop is not None and "auth" not in {q.strip().lower() for q in qop.split(",")}:
        return None
    return base, session


def _digest_rank(challenge: Challenge) -> int:
    algorithm = _digest_algorithm(challenge)
    return _DIGEST_RANK.index(algorithm[0]) if algorithm else len(_DIGEST_RANK)


def digest_value(
    challenge: Challenge, user: str, password: str, method: str, uri: str, cnonce: str, nc: int
) -> str:
    """The ``Digest`` credentials answering ``challenge`` (RFC 7616 §3.4) for ``method`` on
    the request-target ``uri``, with the client nonce ``cnonce`` and nonce count ``nc``."""
    algorithm = _digest_algorithm(challenge)
    if algorithm is None:
        raise ValueError("a Digest challenge we cannot answer")
    base, session = algorithm
    hash_name = _DIGEST_ALGORITHMS[base]

    def h(text: str) -> str:
        return hashlib.new(hash_name, text.encode()).hexdigest()

    params = challenge.params
    realm, nonce = params.get("realm", ""), params["nonce"]
    ha1 = h(f"{user}:{realm}:{password}")
    if session:
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    qop = "auth" if "qop" in params else None
    count = f"{nc:08x}"
    # (without qop: RFC 2069 compatibility)
    response = h(f"{ha1}:{nonce}:{ha2}" if qop is None else f"{ha1}:{nonce}:{count}:{cnonce}:{qop}:{ha2}")
    userhash = params.get("userhash", "").lower() == "true"
    parts = [_digest_username(user, realm, userhash, h)]
    parts.append(f"realm={_quote(realm)}")
    parts.append(f"uri={_quote(uri)}")
    parts.append(f"algorithm={params.get('algorithm', 'MD5')}")
    parts.append(f"nonce={_quote(nonce)}")
    if qop is not None:
        parts.extend((f"nc={count}", f"cnonce={_quote(cnonce)}", f"qop={qop}"))
    parts.append(f"response={_quote(response)}")
    if "opaque" in params:
        parts.append(f"opaque={_quote(params['opaque'])}")
    if userhash:
        parts.append("userhash=true")
    return "Digest " + ", ".join(parts)


def _digest_username(user: str, realm: str, userhash: bool, h: Callable[[str], str]) -> str:
    """``username=…`` (hashed with the realm when the server asked for ``userhash``), or
    ``username*=UTF-8''…`` for a name a quoted string cannot carry (RFC 7616 §3.4.4)."""
    if userhash:
        return f"username={_quote(h(f'{user}:{realm}'))}"
    if user.isascii() and user.isprintable():
        return f"username={_quote(user)}"
    return "username*=UTF-8''" + urllib.parse.quote(user, safe="")


def tls_server_end_point(certificate_der: bytes) -> bytes:
    """The ``tls-server-end-point`` channel binding of a server certificate (RFC 5929 §4.1):
    its hash by its signature's hash algorithm, SHA-256 for MD5 and SHA-1 (or none known)."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes

    try:
        algorithm = x509.load_der_x509_certificate(certificate_der).signature_hash_algorithm
    except (ValueError, UnsupportedAlgorithm):
        algorithm = None
    if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate_der)
    return b"tls-server-end-point:" + digest.finalize()


def new_cnonce() -> str:
    return base64.b64encode(os.urandom(24)).decode("ascii")


# -- the exchange -----------------------------------------------------------------------------


class Authenticator:
    """The authentication of one request exchange with one target: ``answer`` each 401
    (407 for a proxy) with the value of ``header_name``, or None to stop (no usable
    credential for the offered schemes, or the credential was refused: ``problem`` says
    which); ``verify`` the final answer; ``connection_lost`` when the next leg goes over
    another connection.  ``negotiated_protocol`` is what NTLM/Negotiate settled on
    ("kerberos" or "ntlm"), for logs and tests."""

    __slots__ = (
        "_context",
        "_credentials",
        "_defaults",
        "_legs",
        "_nc",
        "_no_default",
        "_stale",
        "basic_in_clear",
        "challenge_header",
        "header_name",
        "host",
        "negotiated_protocol",
        "problem",
        "scheme",
        "secure",
        "server_certificate",
        "status",
        "target",
        "verified",
    )

    def __init__(
        self,
        target: AuthTarget,
        credentials: Iterable[Credential],
        host: str,
        *,
        secure: bool,
        defaults: DefaultCredentials = PROCESS,
    ) -> None:
        """``credentials``: the job's (those of other targets are ignored); ``host``: the
        server's (or proxy's) host name, Kerberos' service principal is HTTP/host; ``secure``:
        the exchange is inside TLS (Basic in the clear is worth a warning);
        ``defaults``: what NTLM/Negotiate credentials with no names use: the process's own
        (its KRB5CCNAME) only when it runs as the job's owner, else a copy of the owner's
        Kerberos ticket cache (``tickets.OwnerTickets``; Negotiate only), else nothing."""
        self.target = target
        proxy = target == AuthTarget.PROXY
        self.status = 407 if proxy else 401
        self.header_name = "Proxy-Authorization" if proxy else "Authorization"
        self.challenge_header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        mine = [c for c in credentials if c.target == target]
        self._defaults = defaults
        unusable = not defaults.usable or defaults.ccache is not None  # (NTLM: no ticket will do)
        self._no_default = {
            c.scheme
            for c in mine
            if c.uses_default and (unusable if c.scheme == AuthScheme.NTLM else not defaults.usable)
        }
        self._credentials = {c.scheme: c for c in mine if c.scheme not in self._no_default}
        self.host, self.secure = host, secure
        #: the TLS server's certificate (DER), set by the transport: NTLM and Negotiate bind
        #: their tokens to it (channel bindings, as Windows' Extended Protection asks)
        self.server_certificate: bytes | None = None
        self.scheme: AuthScheme | None = None
        self.problem: str | None = None
        self.negotiated_protocol: str | None = None
        self.basic_in_clear = False
        #: False once the final answer failed Negotiate's mutual authentication (``verify``)
        self.verified = True
        self._context: ContextProxy | None = None
        self._legs = 0
        self._nc = 0
        self._stale = 0

    def answer(self, status: int, headers: MultiMapping[str], method: str, uri: str) -> str | None:
        """The header value that answers this 401/407 to ``method uri``, or None: stop."""
        if status != self.status:
            return None
        self._legs += 1
        if self._legs > MAX_LEGS:
            return self._stop(f"the {self._who()} kept asking for credentials")
        values = headers.getall(self.challenge_header, [])
        schemes = offered(parse_challenges(values))
        if self.scheme is None:
            return self._start(schemes, method, uri)
        return self._continue(schemes, method, uri)

    def connection_lost(self) -> None:
        """The next leg goes over a new connection: an NTLM/Negotiate handshake starts again."""
        if self.scheme in CONNECTION_BOUND:
            self._context = None

    def verify(self, status: int, headers: MultiMapping[str]) -> bool:
        """Check the final (not 401/407) answer: Negotiate's last token, when the server sends
        one, must complete the context (mutual authentication).  False: it failed (``problem``)."""
        context = self._context
        if self.scheme != AuthScheme.NEGOTIATE or context is None or context.complete:
            return True
        values = headers.getall(self.challenge_header, [])
        challenge = offered(parse_challenges(values)).get(AuthScheme.NEGOTIATE)
        if challenge is None or challenge.token68 is None:
            return True  # no final token: nothing to check (RFC 4559 makes it optional)
        self._step(challenge.token68)
        if self._context is None or not context.complete:  # (_step drops a context that failed)
            self.problem = f"the {self._who()} failed Negotiate's mutual authentication"
            self.verified = False
            return False
        return True

    # -- legs -------------------------------------------------------------------------------

    def _start(self, schemes: Mapping[AuthScheme, Challenge], method: str, uri: str) -> str | None:
        tried = dict(self._credentials)
        while True:
            scheme = choose(schemes, tried)
            if scheme is None:
                return self._stop(self._none_usable(schemes))
            self.scheme = scheme
            value = self._first(scheme, tried[scheme], schemes[scheme], method, uri)
            if value is not None:
                self.problem = None
                return value
            del tried[scheme]  # (a Negotiate without a ticket may still do NTLM, say)

    def _first(
        self, scheme: AuthScheme, credential: Credential, challenge: Challenge, method: str, uri: str
    ) -> str | None:
        user = credential.user_name
        password = credential.password.reveal() if credential.password is not None else None
        if scheme == AuthScheme.BASIC:
            assert user is not None and password is not None
            self.basic_in_clear = not self.secure
            return basic_value(user, password)
        if scheme == AuthScheme.DIGEST:
            assert user is not None and password is not None
            self._nc += 1
            return digest_value(challenge, user, password, method, uri, new_cnonce(), self._nc)
        self._context = self._new_context(scheme, user, password)
        if self._context is None:
            return None
        token = self._step(None)
        return None if token is None else f"{SCHEME_NAMES[scheme]} {token}"

    def _continue(self, schemes: Mapping[AuthScheme, Challenge], method: str, uri: str) -> str | None:
        scheme = self.scheme
        assert scheme is not None
        challenge = schemes.get(scheme)
        credential = self._credentials[scheme]
        stale = challenge is not None and challenge.params.get("stale", "").lower() == "true"
        if scheme == AuthScheme.DIGEST and challenge is not None and stale and self._stale < MAX_STALE:
            self._stale += 1  # a new nonce for the same credential
            return self._first(scheme, credential, challenge, method, uri)
        if scheme not in CONNECTION_BOUND or challenge is None:
            return self._refused()
        if self._context is None:  # a new connection: the handshake starts again
            return self._first(scheme, credential, challenge, method, uri)
        if challenge.token68 is None:
            return self._refused()  # the server started over: our last token was refused
        token = self._step(challenge.token68)
        return self._refused() if token is None else f"{SCHEME_NAMES[scheme]} {token}"

    def _new_context(self, scheme: AuthScheme, user: str | None, password: str | None) -> ContextProxy | None:
        import spnego
        import spnego.exceptions

        protocol = "ntlm" if scheme == AuthScheme.NTLM else "negotiate"
        bindings = None
        if self.server_certificate is not None:
            from spnego.channel_bindings import GssChannelBindings

            bindings = GssChannelBindings(application_data=tls_server_end_point(self.server_certificate))
        who: str | spnego.KerberosCCache | None = user
        if password is None and self._defaults.ccache is not None:  # (the owner's tickets)
            who = spnego.KerberosCCache(self._defaults.ccache, principal=user)
        try:
            return spnego.client(
                who,
                password,
                hostname=self.host,
                service="HTTP",
                protocol=protocol,
                channel_bindings=bindings,
            )
        except (spnego.exceptions.SpnegoError, ValueError) as e:
            self.problem = f"cannot start {SCHEME_NAMES[scheme]} with the {self._who()} credential: {e}"
            return None

    def _step(self, token: str | None) -> str | None:
        """One step of the NTLM/Negotiate context: our next token (base64), or None when the
        context failed or has nothing more to say."""
        import spnego.exceptions

        context = self._context
        assert context is not None
        try:
            incoming = base64.b64decode(token, validate=True) if token is not None else None
            out = context.step(incoming)
        except (spnego.exceptions.SpnegoError, ValueError) as e:
            scheme = SCHEME_NAMES[self.scheme] if self.scheme is not None else ""
            if token is None:
                self.problem = f"cannot start {scheme} with the {self._who()} credential ({_short(e)})"
            else:
                self.problem = (
                    f"the {self._who()} refused the {self._who()} {scheme} credential ({_short(e)})"
                )
            self._context = None
            return None
        if context.complete or self.negotiated_protocol is None:
            self.negotiated_protocol = _protocol_of(context)
        return base64.b64encode(out).decode("ascii") if out else None

    # -- giving up --------------------------------------------------------------------------

    def _refused(self) -> str | None:
        """Stop: the credential was refused (the value to return from ``answer``: None)."""
        scheme = SCHEME_NAMES[self.scheme] if self.scheme is not None else "its"
        if self.problem is None or self.scheme not in CONNECTION_BOUND:
            self.problem = f"the {self._who()} refused the {self._who()} {scheme} credential"
        return None

    def _stop(self, problem: str) -> str | None:
        """Stop, for ``problem`` (the value to return from ``answer``: None)."""
        self.problem = problem
        return None

    def _none_usable(self, schemes: Mapping[AuthScheme, Challenge]) -> str:
        if self.problem is not None:
            return self.problem  # (a context that could not start says why)
        names = ", ".join(SCHEME_NAMES[s] for s in PREFERENCE if s in schemes) or "no scheme we speak"
        if self._no_default & set(schemes):
            why = self._defaults.why or "NTLM cannot use his Kerberos ticket cache"
            return (
                f"the {self._who()} {names} credential has no password, and the owner's default "
                f"credentials are not usable here: {why}"
            )
        for scheme in PREFERENCE:
            credential = self._credentials.get(scheme)
            if scheme in schemes and credential is not None and credential.missing:
                return (
                    f"the password of the {self._who()} {SCHEME_NAMES[scheme]} credential "
                    "was lost (the store was opened without its key file): set the credential again"
                )
        return f"no {self._who()} credential for the schemes the {self._who()} offered ({names})"

    def _who(self) -> str:
        """Who asks, and whose credential answers: "server" or "proxy"."""
        return "proxy" if self.target == AuthTarget.PROXY else "server"


def _protocol_of(context: ContextProxy) -> str | None:
    try:
        return context.negotiated_protocol
    except Exception:  # (not known before the context settles, in some versions)
        return None


def _short(e: BaseException) -> str:
    """An error's first line, bounded (pyspnego's messages name no secret)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]
