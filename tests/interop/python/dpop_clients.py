"""Independent-client interoperability: DPoP (RFC 9449) proofs made with `cryptography` + PyJWT.

Run by tests/interop/run.sh against a live token-issuer (no mock):

    INTEROP_BASE_URL=http://127.0.0.1:PORT python dpop_clients.py

A DPoP client written from the RFC, not from our server code: keys from `cryptography`
(EC P-256 for ES256, Ed25519 for EdDSA), their public JWK and RFC 7638 thumbprint built
here from the raw key numbers, proofs signed by PyJWT (`typ: dpop+jwt`, the `jwk` in the
header). It logs in and refreshes with proofs, calls `/v1` with `Authorization: DPoP`,
and checks that the server refuses what RFC 9449 says a server must refuse: replayed
proofs, proofs for another request or of another key, a bound token without its proof
(without using the token up), and the session after logout and RFC 7009 revocation.
With the client `dev-nonce` (run.sh's configuration: `dpop_nonce = "required"`) it
does the server-nonce dance of RFC 9449 §8 and §9 by hand: a proof without a nonce
is answered `use_dpop_nonce` with a `DPoP-Nonce` header and uses nothing up, the
retry with that nonce goes through.

Prints one line per test and ends with `python-dpop: N passed, N failed`; exits 1 on
any failure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import sys
import time
import traceback
import urllib.parse
import uuid
import warnings

import jwt  # PyJWT
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

BASE = os.environ["INTEROP_BASE_URL"].rstrip("/")
CLIENT_ID = "dev"  # the built-in development config's body-mode (mobile) client, public
NONCE_CLIENT_ID = "dev-nonce"  # run.sh's third client: mobile, body, dpop_nonce = "required"
KEYS_DIR = os.environ.get("INTEROP_KEYS_DIR")  # the server's key directory (dpop-nonce.key)
TIMEOUT = 10
ALGS = {"ES256", "EdDSA", "Ed25519", "RS256", "PS256"}  # what the README says the server accepts

# --------------------------------------------------------------------------- harness

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


class Ctx:
    """What the tests share: the metadata, a user, its ES256 key and bound tokens."""

    metadata: dict
    token_url: str
    jwks: jwt.PyJWKClient
    email: str
    password: str
    user_id: str
    key: Key
    tokens: dict
    nonce_key: Key  # dev-nonce: its key, bound tokens and the last DPoP-Nonce received
    nonce_tokens: dict
    nonce: str


ctx = Ctx()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_uint(n: int, length: int | None = None) -> str:
    return b64url(n.to_bytes(length or (n.bit_length() + 7) // 8, "big"))


# ----------------------------------------------------------------- the DPoP client


def public_jwk(public_key) -> dict:
    """The public JWK of a key, from its numbers (RFC 7518 §6.2, §6.3; RFC 8037 §2)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        assert isinstance(public_key.curve, ec.SECP256R1), public_key.curve
        nums = public_key.public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": b64url_uint(nums.x, 32), "y": b64url_uint(nums.y, 32)}
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    if isinstance(public_key, rsa.RSAPublicKey):
        nums = public_key.public_numbers()
        return {"kty": "RSA", "n": b64url_uint(nums.n), "e": b64url_uint(nums.e)}
    raise TypeError(f"no JWK for {type(public_key).__name__}")


# RFC 7638 §3.2 (and RFC 8037 §2 for OKP): the required members only.
THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


def jwk_thumbprint(jwk: dict) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, no whitespace; base64url."""
    members = {m: jwk[m] for m in THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def ath(access_token: str) -> str:
    """RFC 9449 §4.2: base64url SHA-256 of the ASCII access token."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


class Key:
    """A DPoP key pair and the proofs it signs (RFC 9449 §4.2)."""

    def __init__(self, private_key, alg: str):
        self.private_key = private_key
        self.alg = alg
        self.jwk = public_jwk(private_key.public_key())
        self.jkt = jwk_thumbprint(self.jwk)

    @classmethod
    def es256(cls) -> Key:
        return cls(ec.generate_private_key(ec.SECP256R1()), "ES256")

    @classmethod
    def eddsa(cls) -> Key:
        return cls(ed25519.Ed25519PrivateKey.generate(), "EdDSA")

    def proof(self, method: str, url: str, *, access_token: str | None = None, claims=None, header=None) -> str:
        """A fresh proof for `method url`; `claims` / `header` override (None drops a member)."""
        payload = {"jti": secrets.token_urlsafe(18), "htm": method, "htu": url, "iat": int(time.time())}
        if access_token is not None:
            payload["ath"] = ath(access_token)
        headers = {"typ": "dpop+jwt", "jwk": self.jwk}
        for name, value in (claims or {}).items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        for name, value in (header or {}).items():
            if value is None and name != "typ":  # PyJWT itself drops a falsy typ
                headers.pop(name, None)
            else:
                headers[name] = value
        return jwt.encode(payload, self.private_key, algorithm=self.alg, headers=headers)


def token_request(params: dict, proof: str | None, client_id: str = CLIENT_ID) -> requests.Response:
    headers = {"Accept": "application/json"}
    if proof is not None:
        headers["DPoP"] = proof
    return requests.post(ctx.token_url, data={"client_id": client_id, **params}, headers=headers, timeout=TIMEOUT)


def login(key: Key | None) -> dict:
    params = {"grant_type": "password", "username": ctx.email, "password": ctx.password}
    r = token_request(params, key.proof("POST", ctx.token_url) if key else None)
    assert r.status_code == 200, f"password grant: {r.status_code} {r.text}"
    return r.json()


def refresh(refresh_token: str, proof: str | None) -> requests.Response:
    return token_request({"grant_type": "refresh_token", "refresh_token": refresh_token}, proof)


def refreshed(refresh_token: str, key: Key) -> dict:
    r = refresh(refresh_token, key.proof("POST", ctx.token_url))
    assert r.status_code == 200, f"refresh with a proof: {r.status_code} {r.text}"
    return r.json()


def call(method: str, path: str, access_token: str, key: Key | None = None, *, proof: str | None = None, **kw):
    """`Authorization: DPoP` with a proof for this request (RFC 9449 §7.1)."""
    if proof is None and key is not None:
        proof = key.proof(method, BASE + path.split("?")[0], access_token=access_token)
    headers = {"Authorization": f"DPoP {access_token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return requests.request(method, BASE + path, headers=headers, timeout=TIMEOUT, **kw)


def claims_of(access_token: str) -> dict:
    """Verified like a resource server would (RFC 9068), with PyJWT and the JWKS."""
    signing_key = ctx.jwks.get_signing_key_from_jwt(access_token)
    claims = jwt.decode(
        access_token,
        signing_key,
        algorithms=["RS256"],
        issuer=ctx.metadata["issuer"],
        audience=ctx.metadata["issuer"],
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )
    assert jwt.get_unverified_header(access_token)["typ"] == "at+jwt"
    return claims


def assert_bound(tokens: dict, key: Key) -> dict:
    assert tokens["token_type"] == "DPoP", f"token_type {tokens['token_type']!r}, expected DPoP"
    assert tokens.get("refresh_token"), "no refresh token"
    claims = claims_of(tokens["access_token"])
    assert claims.get("cnf") == {"jkt": key.jkt}, f"cnf {claims.get('cnf')} != our thumbprint {key.jkt}"
    return claims


def assert_oauth_error(r: requests.Response, status: int, error: str, reason: str | None = None) -> dict:
    assert r.status_code == status, f"expected {status} {error}, got {r.status_code} {r.text}"
    body = r.json()
    assert body["error"] == error, body
    assert body.get("error_description"), f"no error_description: {body}"
    if reason is not None:
        assert body.get("error_reason") == reason, body
    return body


# One item of a WWW-Authenticate list: a scheme name, or a `name=value` parameter.
CHALLENGE_ITEM = re.compile(r'[\s,]*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*))?')


def challenges(r: requests.Response) -> dict[str, dict[str, str]]:
    """WWW-Authenticate parsed into {scheme: {param: value}} (RFC 9110 §11.6.1)."""
    header = r.headers.get("WWW-Authenticate", "")
    out: dict[str, dict[str, str]] = {}
    scheme = None
    pos = 0
    while header[pos:].strip(" ,"):
        m = CHALLENGE_ITEM.match(header, pos)
        assert m and m.end() > pos, f"cannot parse WWW-Authenticate at {pos}: {header!r}"
        name, value = m.group(1), m.group(2)
        if value is None:
            scheme = name.lower()
            assert scheme not in out, f"scheme {name} twice: {header!r}"
            out[scheme] = {}
        else:
            assert scheme is not None, f"a parameter before any scheme: {header!r}"
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            out[scheme][name.lower()] = value
        pos = m.end()
    return out


def assert_resource_refused(r: requests.Response, error: str, scheme: str = "dpop") -> dict:
    assert r.status_code == 401, f"expected 401 {error}, got {r.status_code} {r.text}"
    assert r.json()["error"] == error, r.text
    found = challenges(r)
    assert found.get(scheme, {}).get("error") == error, f"WWW-Authenticate: {r.headers.get('WWW-Authenticate')}"
    assert set(found.get("dpop", {}).get("algs", "").split()) == ALGS, r.headers.get("WWW-Authenticate")
    return found


# --------------------------------------------------------------------------- tests


@test
def rfc8414_metadata_lists_the_dpop_algorithms():
    r = requests.get(f"{BASE}/.well-known/oauth-authorization-server", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    md = r.json()
    assert md["issuer"] == BASE, md
    assert set(md.get("dpop_signing_alg_values_supported", [])) == ALGS, md
    ctx.metadata = md
    ctx.token_url = md["token_endpoint"]
    assert ctx.token_url == f"{BASE}/oauth/token", ctx.token_url
    ctx.jwks = jwt.PyJWKClient(md["jwks_uri"], cache_jwk_set=True, lifespan=60, timeout=TIMEOUT)

    ctx.email = f"interop-dpop-py-{uuid.uuid4().hex[:12]}@example.com"
    ctx.password = "interop dpop " + secrets.token_urlsafe(18)
    r = requests.post(f"{BASE}/v1/users", json={"email": ctx.email, "password": ctx.password}, timeout=TIMEOUT)
    assert r.status_code == 201, r.text
    ctx.user_id = r.json()["id"]


@test
def es256_password_grant_binds_the_tokens_to_the_key():
    ctx.key = Key.es256()
    tokens = login(ctx.key)
    claims = assert_bound(tokens, ctx.key)
    assert claims["sub"] == ctx.user_id and claims["client_id"] == CLIENT_ID, claims
    ctx.tokens = tokens


@test
def client_helpers_match_the_rfc_examples():
    # The cnf.jkt and ath comparisons below mean something only if our own helpers are
    # right: RFC 7638 §3.1's thumbprint and RFC 9449 §4.2 (Figure 3)'s ath.
    rfc7638_jwk = {
        "kty": "RSA",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPe"
        "bWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQ"
        "MicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcR"
        "wr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    }
    assert jwk_thumbprint(rfc7638_jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU") == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


@test
def refreshes_with_proofs_rotate_and_stay_bound():
    first = claims_of(ctx.tokens["access_token"])
    seen = {ctx.tokens["refresh_token"]}
    tokens = ctx.tokens
    for _ in range(3):
        tokens = refreshed(tokens["refresh_token"], ctx.key)
        claims = assert_bound(tokens, ctx.key)
        assert claims["sid"] == first["sid"], "a refresh must stay in the same session"
        assert tokens["refresh_token"] not in seen, "the refresh token did not rotate"
        seen.add(tokens["refresh_token"])
    ctx.tokens = tokens


@test
def dpop_scheme_reaches_protected_endpoints():
    at = ctx.tokens["access_token"]
    r = call("GET", "/v1/me", at, ctx.key)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == ctx.user_id and r.json()["email"] == ctx.email, r.text
    r = call("GET", "/v1/sessions", at, ctx.key)
    assert r.status_code == 200, r.text
    current = [s for s in r.json() if s["current"]]
    assert [s["id"] for s in current] == [claims_of(at)["sid"]], r.text


@test
def unauthenticated_request_is_offered_both_schemes():
    r = requests.get(f"{BASE}/v1/me", timeout=TIMEOUT)
    assert r.status_code == 401, r.text
    found = challenges(r)
    assert found.get("bearer", {}).get("realm") == "token-issuer", r.headers
    assert found.get("dpop", {}).get("realm") == "token-issuer", r.headers
    assert set(found["dpop"].get("algs", "").split()) == ALGS, r.headers
    assert "error" not in found["bearer"] and "error" not in found["dpop"], r.headers


@test
def replayed_proof_is_refused_by_the_resource():
    at = ctx.tokens["access_token"]
    proof = ctx.key.proof("GET", f"{BASE}/v1/me", access_token=at)
    r = call("GET", "/v1/me", at, proof=proof)
    assert r.status_code == 200, r.text
    assert_resource_refused(call("GET", "/v1/me", at, proof=proof), "invalid_dpop_proof")


@test
def proof_for_another_request_is_refused_by_the_resource():
    at = ctx.tokens["access_token"]
    other = login(Key.es256())["access_token"]
    bad = [
        ("htm POST for a GET", "htm", ctx.key.proof("POST", f"{BASE}/v1/me", access_token=at)),
        ("htu of another path", "htu", ctx.key.proof("GET", f"{BASE}/v1/sessions", access_token=at)),
        ("htu of another origin", "htu", ctx.key.proof("GET", "http://localhost:1/v1/me", access_token=at)),
        ("no ath", "ath", ctx.key.proof("GET", f"{BASE}/v1/me")),
        ("ath of another token", "ath", ctx.key.proof("GET", f"{BASE}/v1/me", access_token=other)),
        ("no proof at all", "proof", None),
    ]
    for why, word, proof in bad:
        try:
            found = assert_resource_refused(call("GET", "/v1/me", at, proof=proof), "invalid_dpop_proof")
            assert word in found["dpop"].get("error_description", ""), found
        except AssertionError as e:
            raise AssertionError(f"{why}: {e}") from e
    status, body = send_two_dpop_headers("GET", "/v1/me", {"Authorization": f"DPoP {at}"})
    assert status == 401 and body["error"] == "invalid_dpop_proof", (status, body)
    assert "one" in body["error_description"], body
    # The control: the same token with a proof for this request is accepted.
    assert call("GET", "/v1/me", at, ctx.key).status_code == 200


@test
def bound_access_token_as_bearer_is_refused():
    r = requests.get(
        f"{BASE}/v1/me", headers={"Authorization": f"Bearer {ctx.tokens['access_token']}"}, timeout=TIMEOUT
    )
    assert_resource_refused(r, "invalid_token", scheme="bearer")


@test
def proof_of_another_key_is_refused_by_the_resource():
    r = call("GET", "/v1/me", ctx.tokens["access_token"], Key.es256())
    assert_resource_refused(r, "invalid_token")


@test
def bearer_token_under_the_dpop_scheme_is_refused():
    bearer = login(None)
    assert bearer["token_type"] == "Bearer", bearer
    assert "cnf" not in claims_of(bearer["access_token"])
    assert_resource_refused(call("GET", "/v1/me", bearer["access_token"], ctx.key), "invalid_token")


@test
def bound_refresh_token_without_a_proof_is_refused_and_kept():
    rt = ctx.tokens["refresh_token"]
    assert_oauth_error(refresh(rt, None), 400, "invalid_grant", "dpop_key_mismatch")
    # Not used up: the key's holder refreshes with it.
    tokens = refreshed(rt, ctx.key)
    assert_bound(tokens, ctx.key)
    assert tokens["refresh_token"] != rt
    ctx.tokens = tokens


@test
def bound_refresh_token_with_a_proof_of_another_key_is_refused_and_kept():
    rt = ctx.tokens["refresh_token"]
    thief = Key.es256()
    assert_oauth_error(refresh(rt, thief.proof("POST", ctx.token_url)), 400, "invalid_grant", "dpop_key_mismatch")
    assert_oauth_error(
        refresh(rt, Key.eddsa().proof("POST", ctx.token_url)), 400, "invalid_grant", "dpop_key_mismatch"
    )
    tokens = refreshed(rt, ctx.key)
    assert_bound(tokens, ctx.key)
    ctx.tokens = tokens


@test
def replayed_proof_is_refused_by_the_token_endpoint():
    proof = ctx.key.proof("POST", ctx.token_url)
    r = refresh(ctx.tokens["refresh_token"], proof)
    assert r.status_code == 200, r.text
    tokens = r.json()
    # The same proof with the successor: refused, and the successor is not used up.
    assert_oauth_error(refresh(tokens["refresh_token"], proof), 400, "invalid_dpop_proof")
    ctx.tokens = refreshed(tokens["refresh_token"], ctx.key)


def send_two_dpop_headers(method: str, path: str, headers: dict, body: str = "") -> tuple[int, dict]:
    """A request with two `DPoP` headers, each a valid proof for it (RFC 9449 §4.3 asks
    for exactly one). requests folds headers into a dict; http.client sends each given."""
    base = urllib.parse.urlsplit(BASE)
    conn = http.client.HTTPConnection(base.hostname, base.port, timeout=TIMEOUT)
    try:
        conn.putrequest(method, path)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        at = headers.get("Authorization", "").partition(" ")[2] or None
        for _ in range(2):
            conn.putheader("DPoP", ctx.key.proof(method, BASE + path, access_token=at))
        conn.endheaders(body.encode())
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@test
def malformed_proofs_are_refused_by_the_token_endpoint():
    rt = ctx.tokens["refresh_token"]
    url = ctx.token_url
    now = int(time.time())
    key = ctx.key
    first, second = key.proof("POST", url), key.proof("POST", url)
    d = b64url_uint(key.private_key.private_numbers().private_value, 32)
    small_rsa = Key(rsa.generate_private_key(public_exponent=65537, key_size=1024), "RS256")
    with warnings.catch_warnings():  # PyJWT warns about the short key: that is the point
        warnings.simplefilter("ignore")
        small_rsa_proof = small_rsa.proof("POST", url)
    hs = jwt.encode(
        {"jti": "x", "htm": "POST", "htu": url, "iat": now},
        secrets.token_bytes(32),
        algorithm="HS256",
        headers={"typ": "dpop+jwt", "jwk": key.jwk},
    )
    # (what is wrong, a word the description must name so the refusal is for that, proof)
    bad = [
        ("typ JWT", "typ", key.proof("POST", url, header={"typ": "JWT"})),
        ("no typ", "typ", key.proof("POST", url, header={"typ": None})),
        ("alg HS256", "alg", hs),
        ("no jwk", "jwk", key.proof("POST", url, header={"jwk": None})),
        ("jwk of another key", "signature", key.proof("POST", url, header={"jwk": Key.es256().jwk})),
        ("private d in the jwk", "private", key.proof("POST", url, header={"jwk": {**key.jwk, "d": d}})),
        ("RSA key of 1024 bits", "RSA", small_rsa_proof),
        ("htm GET", "htm", key.proof("GET", url)),
        ("htu of another path", "htu", key.proof("POST", f"{BASE}/oauth/revoke")),
        ("htu of another host", "htu", key.proof("POST", url.replace("127.0.0.1", "localhost"))),
        ("no htu", "htu", key.proof("POST", url, claims={"htu": None})),
        ("no jti", "jti", key.proof("POST", url, claims={"jti": None})),
        ("no iat", "iat", key.proof("POST", url, claims={"iat": None})),
        ("iat ten minutes old", "old", key.proof("POST", url, claims={"iat": now - 600})),
        ("iat ten minutes ahead", "future", key.proof("POST", url, claims={"iat": now + 600})),
        ("signature of another proof", "signature", ".".join(first.split(".")[:2] + second.split(".")[2:])),
        ("not a JWS", "JWS", "not-a-proof"),
    ]
    for why, word, proof in bad:
        try:
            body = assert_oauth_error(refresh(rt, proof), 400, "invalid_dpop_proof")
            assert word.lower() in body["error_description"].lower(), body
        except AssertionError as e:
            raise AssertionError(f"{why}: {e}") from e
    form = urllib.parse.urlencode({"grant_type": "refresh_token", "client_id": CLIENT_ID, "refresh_token": rt})
    status, body = send_two_dpop_headers(
        "POST", "/oauth/token", {"Content-Type": "application/x-www-form-urlencoded"}, form
    )
    assert status == 400 and body["error"] == "invalid_dpop_proof", (status, body)
    assert "one" in body["error_description"], body
    # None of them used the refresh token up.
    tokens = refreshed(rt, ctx.key)
    assert_bound(tokens, ctx.key)
    ctx.tokens = tokens


@test
def eddsa_key_binds_a_session_too():
    key = Key.eddsa()
    tokens = login(key)
    assert key.jwk["kty"] == "OKP" and key.jkt != ctx.key.jkt
    first = assert_bound(tokens, key)
    tokens = refreshed(tokens["refresh_token"], key)
    assert assert_bound(tokens, key)["sid"] == first["sid"]
    r = call("GET", "/v1/me", tokens["access_token"], key)
    assert r.status_code == 200 and r.json()["id"] == ctx.user_id, r.text
    # Its proofs do not stand in for the ES256 session's, nor the other way round.
    assert_oauth_error(refresh(tokens["refresh_token"], ctx.key.proof("POST", ctx.token_url)), 400, "invalid_grant")
    assert_resource_refused(call("GET", "/v1/me", tokens["access_token"], ctx.key), "invalid_token")


@test
def logout_with_the_dpop_scheme_ends_the_session():
    tokens = ctx.tokens
    # The query is not part of htu (RFC 9449 §4.2): the proof names the path only.
    r = call("POST", "/v1/logout?scope=this", tokens["access_token"], ctx.key)
    assert r.status_code == 204, f"{r.status_code} {r.text}"
    proof = ctx.key.proof("POST", ctx.token_url)
    assert_oauth_error(refresh(tokens["refresh_token"], proof), 400, "invalid_grant", "revoked")
    assert_resource_refused(call("GET", "/v1/me", tokens["access_token"], ctx.key), "invalid_token")


@test
def rfc7009_revocation_ends_a_bound_session():
    key = Key.es256()
    tokens = login(key)
    assert_bound(tokens, key)
    # RFC 9449 asks no proof of the revocation endpoint; the client_id identifies the
    # public client (RFC 7009 §2.1).
    r = requests.post(
        ctx.metadata["revocation_endpoint"],
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token", "client_id": CLIENT_ID},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    proof = key.proof("POST", ctx.token_url)
    assert_oauth_error(refresh(tokens["refresh_token"], proof), 400, "invalid_grant", "revoked")
    assert_resource_refused(call("GET", "/v1/me", tokens["access_token"], key), "invalid_token")


# ------------------------------------------------------------ server nonces (§8, §9)

# RFC 9449 §8.1: DPoP-Nonce = *nchar; nchar = %x21 / %x23-5B / %x5D-7E (we want one).
NONCE_SYNTAX = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def dpop_nonce_of(r: requests.Response) -> str:
    """The `DPoP-Nonce` of an answer: there must be one, of RFC 9449 §8.1's syntax."""
    nonce = r.headers.get("DPoP-Nonce")
    assert nonce, f"no DPoP-Nonce header in the {r.status_code} answer: {dict(r.headers)}"
    assert NONCE_SYNTAX.fullmatch(nonce), f"DPoP-Nonce {nonce!r} is not *nchar (RFC 9449 §8.1)"
    return nonce


def nonce_session() -> Key:
    """`dev-nonce`'s key, with its bound tokens and last nonce in ctx: those the test
    before left, or (when it failed before that) a login of its own, so each test fails
    for what it checks itself."""
    if not hasattr(ctx, "nonce_key"):
        key = Key.es256()
        params = {"grant_type": "password", "username": ctx.email, "password": ctx.password}
        nonce = dpop_nonce_of(token_request(params, key.proof("POST", ctx.token_url), NONCE_CLIENT_ID))
        r = token_request(params, key.proof("POST", ctx.token_url, claims={"nonce": nonce}), NONCE_CLIENT_ID)
        assert r.status_code == 200, f"password grant with the nonce: {r.status_code} {r.text}"
        ctx.nonce_key, ctx.nonce_tokens, ctx.nonce = key, r.json(), dpop_nonce_of(r)
    return ctx.nonce_key


def nonce_refresh(refresh_token: str, key: Key, nonce: str | None) -> requests.Response:
    claims = {"nonce": nonce} if nonce is not None else {}
    params = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return token_request(params, key.proof("POST", ctx.token_url, claims=claims), NONCE_CLIENT_ID)


def assert_use_dpop_nonce_at_token_endpoint(r: requests.Response) -> str:
    """RFC 9449 §8: 400, error use_dpop_nonce, a DPoP-Nonce to retry with; no-store."""
    assert_oauth_error(r, 400, "use_dpop_nonce")
    assert "no-store" in r.headers.get("Cache-Control", ""), r.headers
    return dpop_nonce_of(r)


def assert_use_dpop_nonce_at_resource(r: requests.Response) -> str:
    """RFC 9449 §9: 401 with `WWW-Authenticate: DPoP error="use_dpop_nonce"` (the scheme
    the request used) and a DPoP-Nonce to retry with."""
    found = assert_resource_refused(r, "use_dpop_nonce")
    assert found["dpop"].get("realm") == "token-issuer", r.headers.get("WWW-Authenticate")
    assert found["dpop"].get("error_description"), r.headers.get("WWW-Authenticate")
    return dpop_nonce_of(r)


@test
def nonce_client_password_grant_asks_for_a_nonce_then_binds():
    key = Key.es256()
    params = {"grant_type": "password", "username": ctx.email, "password": ctx.password}
    proof = key.proof("POST", ctx.token_url)
    nonce = assert_use_dpop_nonce_at_token_endpoint(token_request(params, proof, NONCE_CLIENT_ID))
    # Nothing used up, the refused proof's jti neither (README: use_dpop_nonce "nothing
    # used up"): the retry may even reuse it, with the nonce added.
    jti = jwt.decode(proof, options={"verify_signature": False})["jti"]
    retry = key.proof("POST", ctx.token_url, claims={"jti": jti, "nonce": nonce})
    r = token_request(params, retry, NONCE_CLIENT_ID)
    assert r.status_code == 200, f"the retry with the nonce: {r.status_code} {r.text}"
    fresh = dpop_nonce_of(r)  # a success answers a DPoP-Nonce too (§8.2)
    claims = assert_bound(r.json(), key)
    assert claims["client_id"] == NONCE_CLIENT_ID and claims["sub"] == ctx.user_id, claims
    # The nonce given with the success is good for the next request.
    r = nonce_refresh(r.json()["refresh_token"], key, fresh)
    assert r.status_code == 200, f"refresh with the nonce of the last answer: {r.status_code} {r.text}"
    ctx.nonce_key, ctx.nonce_tokens, ctx.nonce = key, r.json(), dpop_nonce_of(r)


@test
def nonce_client_refresh_without_a_nonce_is_refused_and_the_token_kept():
    key, rt = nonce_session(), ctx.nonce_tokens["refresh_token"]
    nonce = assert_use_dpop_nonce_at_token_endpoint(nonce_refresh(rt, key, None))
    # The refresh token presented with the refused proof still works: not used up
    # (`dev-nonce` has no grace window in run.sh: a used one would be reuse here).
    r = nonce_refresh(rt, key, nonce)
    assert r.status_code == 200, f"the retry with the nonce: {r.status_code} {r.text}"
    assert r.json()["refresh_token"] != rt, "the refresh token did not rotate"
    assert_bound(r.json(), key)
    ctx.nonce_tokens, ctx.nonce = r.json(), dpop_nonce_of(r)


@test
def nonce_client_resource_asks_for_a_nonce_then_answers():
    key, at = nonce_session(), ctx.nonce_tokens["access_token"]
    r = call("GET", "/v1/me", at, key)  # a proof without a nonce
    nonce = assert_use_dpop_nonce_at_resource(r)
    r = call("GET", "/v1/me", at, proof=key.proof("GET", f"{BASE}/v1/me", access_token=at, claims={"nonce": nonce}))
    assert r.status_code == 200, f"GET /v1/me with the nonce: {r.status_code} {r.text}"
    assert r.json()["id"] == ctx.user_id, r.text
    dpop_nonce_of(r)


@test
def nonce_client_garbage_nonces_are_answered_use_dpop_nonce():
    # A nonce the server never handed out stands in for a stale one (its clock cannot
    # be moved from here; see the next test for a truly stale one): not a malformed
    # proof (invalid_dpop_proof) but a request to retry with a current nonce.
    key, tokens = nonce_session(), ctx.nonce_tokens
    at, rt = tokens["access_token"], tokens["refresh_token"]
    current = ctx.nonce
    flipped = current[:-2] + ("AA" if current[-2:] != "AA" else "BB")
    for why, nonce in [("garbage", "not-a-nonce"), ("empty", ""), ("one of ours, altered", flipped)]:
        try:
            assert_use_dpop_nonce_at_token_endpoint(nonce_refresh(rt, key, nonce))
            proof = key.proof("GET", f"{BASE}/v1/me", access_token=at, claims={"nonce": nonce})
            assert_use_dpop_nonce_at_resource(call("GET", "/v1/me", at, proof=proof))
        except AssertionError as e:
            raise AssertionError(f"{why} nonce {nonce!r}: {e}") from e
    # None of them used the refresh token up (no grace window: it would be reuse).
    r = nonce_refresh(rt, key, current)
    assert r.status_code == 200, f"refresh with a current nonce: {r.status_code} {r.text}"
    ctx.nonce_tokens, ctx.nonce = r.json(), dpop_nonce_of(r)


def minted_nonce(step: int) -> str:
    """A nonce of the server's own making for `step` (white box, like clients.py's
    tokens signed with the server's key): base64url(step as 8 bytes big-endian ‖
    HMAC-SHA256(dpop-nonce.key, "token-issuer dpop nonce" ‖ step)[:16]), the format of
    src/crypto/dpop.rs; the test checks it against the header before relying on it."""
    with open(os.path.join(KEYS_DIR, "dpop-nonce.key")) as f:
        secret = base64.b64decode(f.read().strip())
    raw = step.to_bytes(8, "big")
    mac = hmac.new(secret, b"token-issuer dpop nonce" + raw, hashlib.sha256).digest()[:16]
    return b64url(raw + mac)


@test
def nonce_client_stale_nonce_is_answered_use_dpop_nonce():
    # README: nonces are "good for one to two minutes": a nonce of the minute before is
    # accepted, one of two minutes before is stale. Minted with the server's nonce key.
    assert KEYS_DIR, "INTEROP_KEYS_DIR is not set"
    key = nonce_session()
    if time.time() % 60 > 55:  # the control below wants its request and answer in one minute
        time.sleep(60.5 - time.time() % 60)
    step = int(time.time()) // 60
    r = nonce_refresh(ctx.nonce_tokens["refresh_token"], key, minted_nonce(step))
    assert r.status_code == 200, f"refresh with our own minting of this minute's nonce: {r.status_code} {r.text}"
    assert dpop_nonce_of(r) == minted_nonce(step), "the nonce format is not what minted_nonce makes"
    tokens = r.json()
    rt = tokens["refresh_token"]
    assert_use_dpop_nonce_at_token_endpoint(nonce_refresh(rt, key, minted_nonce(step - 2)))
    at = tokens["access_token"]
    stale = key.proof("GET", f"{BASE}/v1/me", access_token=at, claims={"nonce": minted_nonce(step - 2)})
    assert_use_dpop_nonce_at_resource(call("GET", "/v1/me", at, proof=stale))
    # Last minute's is still good (and the stale tries used nothing up).
    r = nonce_refresh(rt, key, minted_nonce(int(time.time()) // 60 - 1))
    assert r.status_code == 200, f"refresh with last minute's nonce: {r.status_code} {r.text}"
    ctx.nonce_tokens, ctx.nonce = r.json(), dpop_nonce_of(r)


@test
def nonces_off_client_ignores_the_nonce_claim_and_still_gets_nonces():
    # `dev` requires no nonce: one in a proof, even one the server never made, is not
    # checked (README), and every answer to a request with a proof has a DPoP-Nonce.
    key = Key.es256()
    params = {"grant_type": "password", "username": ctx.email, "password": ctx.password}
    r = token_request(params, key.proof("POST", ctx.token_url, claims={"nonce": "anything at all"}))
    assert r.status_code == 200, f"password grant, proof with a nonce: {r.status_code} {r.text}"
    assert_bound(r.json(), key)
    dpop_nonce_of(r)
    tokens = r.json()
    r = refresh(tokens["refresh_token"], key.proof("POST", ctx.token_url, claims={"nonce": "x"}))
    assert r.status_code == 200, f"refresh, proof with a nonce: {r.status_code} {r.text}"
    dpop_nonce_of(r)
    tokens = r.json()
    at = tokens["access_token"]
    r = call("GET", "/v1/me", at, proof=key.proof("GET", f"{BASE}/v1/me", access_token=at, claims={"nonce": "y"}))
    assert r.status_code == 200, f"GET /v1/me, proof with a nonce: {r.status_code} {r.text}"
    dpop_nonce_of(r)
    r = call("GET", "/v1/me", at, key)  # and without one, as ever
    assert r.status_code == 200, r.text
    dpop_nonce_of(r)
    # Refusals of a request with a proof carry one too; a request without a proof none.
    r = refresh(tokens["refresh_token"], key.proof("GET", ctx.token_url))
    assert_oauth_error(r, 400, "invalid_dpop_proof")
    dpop_nonce_of(r)
    r = requests.get(f"{BASE}/v1/me", headers={"Authorization": f"Bearer {at}"}, timeout=TIMEOUT)
    assert r.status_code == 401 and "DPoP-Nonce" not in r.headers, (r.status_code, dict(r.headers))


# --------------------------------------------------------------------------- main

SETUP = ("rfc8414_metadata_lists_the_dpop_algorithms", "es256_password_grant_binds_the_tokens_to_the_key")


def main() -> int:
    passed = failed = 0
    for fn in TESTS:
        started = time.monotonic()
        try:
            fn()
        except Exception as e:
            failed += 1
            print(f"FAIL {fn.__name__}: {type(e).__name__}: {e}")
            traceback.print_exc(limit=4, file=sys.stdout)
            if fn.__name__ in SETUP:
                print("python-dpop: setup failed; the remaining tests need it")
                failed += len(TESTS) - TESTS.index(fn) - 1
                break
        else:
            passed += 1
            print(f"ok   {fn.__name__} ({(time.monotonic() - started) * 1000:.0f} ms)")
        sys.stdout.flush()
    print(f"python-dpop: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
