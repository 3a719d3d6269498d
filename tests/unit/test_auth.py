"""transfer/auth.py without a network: challenge parsing (RFC 9110 §11), scheme choice,
Basic (RFC 7617), Digest against RFC 7616's worked examples, and the Authenticator's legs."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from openbits.model import AuthScheme, AuthTarget, Credential, Secret
from openbits.transfer.auth import (
    Authenticator,
    Challenge,
    basic_value,
    choose,
    digest_value,
    offered,
    parse_challenges,
)
from openbits.transfer.tickets import DefaultCredentials


def cred(scheme: AuthScheme, user: str | None = "u", password: str | None = "p", **kw: object) -> Credential:
    secret = Secret(password) if password is not None else None
    return Credential(AuthTarget.SERVER, scheme, user, secret, **kw)  # type: ignore[arg-type]


# -- parsing --------------------------------------------------------------------------------


def test_one_header_several_challenges_with_params_and_token68() -> None:
    got = parse_challenges(
        ['Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"']
    )
    assert got == [
        Challenge("newauth", params={"realm": "apps", "type": "1", "title": 'Login to "apps"'}),
        Challenge("basic", params={"realm": "simple"}),
    ]


def test_several_headers_and_bare_schemes() -> None:
    got = parse_challenges(["Negotiate", "NTLM", 'Basic realm="x"'])
    assert [c.scheme for c in got] == ["negotiate", "ntlm", "basic"]
    assert got[0] == Challenge("negotiate")


def test_token68_is_told_from_params() -> None:
    got = parse_challenges(["NTLM TlRMTVNTUAACAAAA==, Negotiate YIIBhg==", "Foo a=b"])
    assert got == [
        Challenge("ntlm", token68="TlRMTVNTUAACAAAA=="),
        Challenge("negotiate", token68="YIIBhg=="),
        Challenge("foo", params={"a": "b"}),
    ]


def test_tricky_quoting_commas_and_spaces() -> None:
    value = (
        ' ,Digest realm = "a, b\\\\c" ,nonce="n=1,2" , qop="auth,auth-int",'
        ' algorithm=SHA-256 ,  , Basic realm="r" '
    )
    got = parse_challenges([value])
    assert got[0] == Challenge(
        "digest",
        params={"realm": "a, b\\c", "nonce": "n=1,2", "qop": "auth,auth-int", "algorithm": "SHA-256"},
    )
    assert got[1] == Challenge("basic", params={"realm": "r"})


def test_param_names_are_case_insensitive_and_the_first_wins() -> None:
    (got,) = parse_challenges(['BASIC Realm="one", REALM="two"'])
    assert got == Challenge("basic", params={"realm": "one"})


@pytest.mark.parametrize(
    "value",
    ['Basic realm="never closed', "Basic realm=", "Basic realm=@", '"quoted", Basic', "Basic a=b c=d"],
)
def test_malformed_values_do_not_raise(value: str) -> None:
    parse_challenges([value])  # what parses stands, the rest is dropped


def test_unclosed_quote_keeps_what_came_before() -> None:
    got = parse_challenges(['Basic realm="r", Digest realm="never closed'])
    assert got[0] == Challenge("basic", params={"realm": "r"})


# -- choice ---------------------------------------------------------------------------------


def test_the_strongest_offered_scheme_with_a_credential_answers() -> None:
    creds = {s: cred(s) for s in (AuthScheme.BASIC, AuthScheme.DIGEST, AuthScheme.NTLM)}
    every = list(AuthScheme)
    assert choose(every, creds) == AuthScheme.NTLM
    assert choose([AuthScheme.BASIC, AuthScheme.DIGEST], creds) == AuthScheme.DIGEST
    assert choose([AuthScheme.NEGOTIATE], creds) is None
    assert choose([AuthScheme.BASIC], {AuthScheme.BASIC: cred(AuthScheme.BASIC, missing=True)}) is None
    assert choose([AuthScheme.BASIC], {AuthScheme.BASIC: cred(AuthScheme.BASIC, user=None)}) is None


def test_digest_prefers_its_strongest_algorithm() -> None:
    challenges = parse_challenges(
        [
            'Digest realm="r", nonce="1", algorithm=MD5, qop="auth"',
            'Digest realm="r", nonce="2", algorithm=SHA-256, qop="auth"',
            'Digest realm="r", nonce="3", algorithm=SHA3-512, qop="auth"',
            'Digest realm="r", nonce="4", algorithm=SHA-256, qop="auth-int"',
        ]
    )
    assert offered(challenges)[AuthScheme.DIGEST].params["nonce"] == "2"


# -- Basic and Digest -----------------------------------------------------------------------


def test_basic_is_utf8() -> None:
    assert basic_value("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    assert basic_value("test", "123\u00a3") == "Basic dGVzdDoxMjPCow=="  # RFC 7617 §2.1


RFC7616_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)


@pytest.mark.parametrize(
    ("alg", "response"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_digest_matches_rfc7616_section_3_9_1(alg: str, response: str) -> None:
    (challenge,) = parse_challenges([RFC7616_CHALLENGE.format(alg=alg)])
    value = digest_value(
        challenge,
        "Mufasa",
        "Circle of Life",
        "GET",
        "/dir/index.html",
        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        1,
    )
    (answer,) = parse_challenges([value])
    assert answer.scheme == "digest"
    assert answer.params == {
        "username": "Mufasa",
        "realm": "http-auth@example.org",
        "uri": "/dir/index.html",
        "algorithm": alg,
        "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "nc": "00000001",
        "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        "qop": "auth",
        "response": response,
        "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    }


def test_digest_userhash_matches_rfc7616_section_3_9_2() -> None:
    """The example's printed hashes are wrong (RFC errata 4897): these are the corrected ones."""
    (challenge,) = parse_challenges(
        [
            'Digest realm="api@example.org", qop="auth", algorithm=SHA-512-256, '
            'nonce="5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK", '
            'opaque="HRPCssKJSGjCrkzDg8OhwpzCiGPChXYjwrI2QmXDnsOS", charset=UTF-8, userhash=true'
        ]
    )
    value = digest_value(
        challenge,
        "J\u00e4s\u00f8n Doe",
        "Secret, or not?",
        "GET",
        "/doe.json",
        "NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v",
        1,
    )
    (answer,) = parse_challenges([value])
    assert answer.params["username"] == "793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b"
    assert answer.params["userhash"] == "true"
    assert answer.params["response"] == "3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5"


def test_digest_session_variant_and_non_ascii_user_name() -> None:
    (challenge,) = parse_challenges(['Digest realm="r", nonce="n", algorithm=MD5-sess, qop=auth'])
    value = digest_value(challenge, "J\u00e4s\u00f8n", "pw", "GET", "/", "c", 2)
    (answer,) = parse_challenges([value])
    assert answer.params["username*"] == "UTF-8''J%C3%A4s%C3%B8n"
    assert answer.params["nc"] == "00000002"
    value.encode("latin-1")  # goes into a request head


# -- the Authenticator ----------------------------------------------------------------------


def heads(*challenges: str) -> CIMultiDict[str]:
    return CIMultiDict(("WWW-Authenticate", c) for c in challenges)


def test_basic_answers_once_then_counts_as_refused() -> None:
    auth = Authenticator(AuthTarget.SERVER, [cred(AuthScheme.BASIC)], "h", secure=False)
    first = auth.answer(401, heads('Basic realm="r"'), "GET", "/f")
    assert first == basic_value("u", "p")
    assert auth.basic_in_clear
    assert auth.answer(401, heads('Basic realm="r"'), "GET", "/f") is None
    assert auth.problem == "the server refused the server Basic credential"


def test_no_credential_for_the_offered_schemes() -> None:
    auth = Authenticator(AuthTarget.SERVER, [cred(AuthScheme.DIGEST)], "h", secure=True)
    assert auth.answer(401, heads('Basic realm="r"'), "GET", "/") is None
    assert auth.problem is not None and "offered (Basic)" in auth.problem


def test_proxy_credentials_do_not_answer_a_server() -> None:
    proxy = Credential(AuthTarget.PROXY, AuthScheme.BASIC, "u", Secret("p"))
    auth = Authenticator(AuthTarget.SERVER, [proxy], "h", secure=True)
    assert auth.answer(401, heads('Basic realm="r"'), "GET", "/") is None
    proxy_auth = Authenticator(AuthTarget.PROXY, [proxy], "h", secure=True)
    assert proxy_auth.header_name == "Proxy-Authorization"
    value = proxy_auth.answer(407, CIMultiDict({"Proxy-Authenticate": "Basic"}), "GET", "http://x/")
    assert value == basic_value("u", "p")


def test_a_lost_password_says_so() -> None:
    lost = cred(AuthScheme.BASIC, password=None, missing=True)
    auth = Authenticator(AuthTarget.SERVER, [lost], "h", secure=True)
    assert auth.answer(401, heads('Basic realm="r"'), "GET", "/") is None
    assert auth.problem is not None and "password" in auth.problem and "lost" in auth.problem


def test_digest_stale_retries_with_the_new_nonce_then_stops() -> None:
    auth = Authenticator(AuthTarget.SERVER, [cred(AuthScheme.DIGEST)], "h", secure=True)
    first = auth.answer(401, heads('Digest realm="r", nonce="a", qop="auth"'), "GET", "/")
    assert first is not None and 'nonce="a"' in first
    again = auth.answer(401, heads('Digest realm="r", nonce="b", qop="auth", stale=true'), "GET", "/")
    assert again is not None and 'nonce="b"' in again
    assert auth.answer(401, heads('Digest realm="r", nonce="c", qop="auth"'), "GET", "/") is None


def test_the_secret_never_shows_in_problems() -> None:
    auth = Authenticator(AuthTarget.SERVER, [cred(AuthScheme.BASIC, password="hunter2")], "h", secure=True)
    auth.answer(401, heads("Basic"), "GET", "/")
    auth.answer(401, heads("Basic"), "GET", "/")
    assert auth.problem is not None and "hunter2" not in auth.problem


def test_ntlm_legs_against_pyspnego_acceptor() -> None:
    """Two legs of NTLM, the server side a pyspnego acceptor with a user file (the tokens
    are real NTLM messages; the real server is Apache, tests/integration/test_auth.py)."""
    spnego = pytest.importorskip("spnego")
    import os
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".ntlm") as users:
        users.write("DOM:alice:s3cret\n")
        users.flush()
        old = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = users.name
        try:
            server = spnego.server(protocol="ntlm")
            auth = Authenticator(
                AuthTarget.SERVER, [cred(AuthScheme.NTLM, "DOM\\alice", "s3cret")], "h", secure=True
            )
            negotiate = auth.answer(401, heads("NTLM", 'Basic realm="r"'), "GET", "/")
            assert negotiate is not None and negotiate.startswith("NTLM ")
            challenge = server.step(base64.b64decode(negotiate[5:]))
            assert challenge is not None
            authenticate = auth.answer(401, heads("NTLM " + base64.b64encode(challenge).decode()), "GET", "/")
            assert authenticate is not None
            server.step(base64.b64decode(authenticate[5:]))
            assert server.complete
            assert auth.negotiated_protocol == "ntlm"
        finally:
            if old is None:
                del os.environ["NTLM_USER_FILE"]
            else:
                os.environ["NTLM_USER_FILE"] = old


def test_default_credentials_only_for_a_daemon_running_as_the_owner() -> None:
    no_names = cred(AuthScheme.NEGOTIATE, user=None, password=None)
    defaults = DefaultCredentials(False, why="no ticket cache at /tmp/krb5cc_1001")
    auth = Authenticator(AuthTarget.SERVER, [no_names], "h", secure=True, defaults=defaults)
    assert auth.answer(401, heads("Negotiate"), "GET", "/") is None
    assert auth.problem is not None and "default credentials" in auth.problem
    assert "/tmp/krb5cc_1001" in auth.problem


def test_an_owners_ticket_cache_serves_negotiate_not_ntlm() -> None:
    """A copy of the owner's Kerberos tickets (the system daemon) can answer Negotiate only:
    NTLM with no names has nothing to use then, and says so."""
    ntlm = cred(AuthScheme.NTLM, user=None, password=None)
    defaults = DefaultCredentials(ccache="MEMORY:openbits-test")
    auth = Authenticator(AuthTarget.SERVER, [ntlm], "h", secure=True, defaults=defaults)
    assert auth.answer(401, heads("NTLM"), "GET", "/") is None
    assert auth.problem is not None and "NTLM cannot use his Kerberos ticket cache" in auth.problem


@pytest.mark.parametrize("tamper", [False, True], ids=["intact", "tampered"])
def test_negotiate_checks_the_servers_final_token(
    tamper: bool, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPNEGO (NTLM inside, against a pyspnego acceptor): the server's last token, sent with
    the 200, completes the context; a tampered one fails mutual authentication."""
    spnego = pytest.importorskip("spnego")
    import pathlib

    users = pathlib.Path(str(tmp_path)) / "users"
    users.write_text("DOM:alice:s3cret\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(users))
    monkeypatch.setenv("KRB5_CONFIG", str(users.with_name("no-krb5.conf")))
    server = spnego.server(protocol="negotiate")
    auth = Authenticator(
        AuthTarget.SERVER, [cred(AuthScheme.NEGOTIATE, "DOM\\alice", "s3cret")], "h", secure=True
    )
    value = auth.answer(401, heads("Negotiate"), "GET", "/")
    while True:
        assert value is not None and value.startswith("Negotiate ")
        out = server.step(base64.b64decode(value[10:]))
        assert out is not None
        token = base64.b64encode(out).decode()
        if server.complete:
            break
        value = auth.answer(401, heads("Negotiate " + token), "GET", "/")
    if tamper:
        raw = bytearray(out)
        raw[-8] ^= 0xFF  # (inside the mechListMIC checksum)
        token = base64.b64encode(bytes(raw)).decode()
    assert auth.verify(200, heads("Negotiate " + token)) is not tamper
    assert auth.verified is not tamper
    assert (auth.problem is not None and "mutual" in auth.problem) is tamper


@given(st.lists(st.text(max_size=200), max_size=4))
def test_any_header_text_parses_without_raising(values: list[str]) -> None:
    for challenge in parse_challenges(values):
        assert challenge.scheme == challenge.scheme.lower()


_tokens = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,8}", fullmatch=True)


@given(st.lists(st.tuples(_tokens, st.dictionaries(_tokens, st.text(max_size=20), max_size=4)), max_size=4))
def test_written_challenges_parse_back(written: list[tuple[str, dict[str, str]]]) -> None:
    """Challenges written with quoted values (quotes and backslashes escaped) come back."""
    parts = []
    for scheme, params in written:
        quoted = ", ".join(
            f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
            for k, v in params.items()
        )
        parts.append(f"{scheme} {quoted}".rstrip())
    got = parse_challenges([", ".join(parts)])
    expected = [
        Challenge(s.lower(), params={k.lower(): v for k, v in reversed(list(p.items()))}) for s, p in written
    ]
    assert [(c.scheme, dict(c.params)) for c in got] == [(c.scheme, dict(c.params)) for c in expected]


@pytest.mark.parametrize("same", [True, False], ids=["same-certificate", "other-certificate"])
def test_ntlm_binds_its_tokens_to_the_tls_certificate(
    same: bool, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 5929 tls-server-end-point: an acceptor expecting the bindings of the certificate
    it serves accepts our tokens; one behind another certificate (a relay) refuses them."""
    spnego = pytest.importorskip("spnego")
    trustme = pytest.importorskip("trustme")
    import hashlib
    import pathlib

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from spnego.channel_bindings import GssChannelBindings

    from openbits.transfer.auth import tls_server_end_point

    users = pathlib.Path(str(tmp_path)) / "users"
    users.write_text("DOM:alice:s3cret\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(users))
    ca = trustme.CA()
    ders = [
        x509.load_pem_x509_certificate(ca.issue_cert(name).cert_chain_pems[0].bytes()).public_bytes(
            Encoding.DER
        )
        for name in ("a.test", "b.test")
    ]
    assert tls_server_end_point(ders[0]) == b"tls-server-end-point:" + hashlib.sha256(ders[0]).digest()
    expected = GssChannelBindings(application_data=tls_server_end_point(ders[0 if same else 1]))
    server = spnego.server(protocol="ntlm", channel_bindings=expected)
    auth = Authenticator(AuthTarget.SERVER, [cred(AuthScheme.NTLM, "DOM\\alice", "s3cret")], "h", secure=True)
    auth.server_certificate = ders[0]
    first = auth.answer(401, heads("NTLM"), "GET", "/")
    assert first is not None
    challenge = server.step(base64.b64decode(first[5:]))
    assert challenge is not None
    last = auth.answer(401, heads("NTLM " + base64.b64encode(challenge).decode()), "GET", "/")
    assert last is not None
    if same:
        server.step(base64.b64decode(last[5:]))
        assert server.complete
    else:
        with pytest.raises(spnego.exceptions.SpnegoError):
            server.step(base64.b64decode(last[5:]))
