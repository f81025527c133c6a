"""Independent-client interoperability: PyJWT and oauthlib / requests-oauthlib.

Run by tests/interop/run.sh against a live token-issuer (no mock):

    INTEROP_BASE_URL=http://127.0.0.1:PORT INTEROP_KEYS_DIR=/path/to/keys python clients.py

- PyJWT's PyJWKClient finds the JWKS through the RFC 8414 metadata (`jwks_uri`) and
  verifies minted access tokens pinned to RS256, with `iss` and `aud` required; it
  refuses forged ones. Each forgery is also sent to the server (`GET /v1/me`), which
  must refuse it too, so the two verifiers are checked against each other.
- A stock OAuth 2.0 client (requests-oauthlib's OAuth2Session with oauthlib's
  LegacyApplicationClient) runs the password grant, the refresh grant (rotation), its
  own auto-refresh of an expired token, and RFC 7009 revocation.

INTEROP_KEYS_DIR is the server's key directory: the "signed with our real key" cases
read the active private key to mint tokens whose signature is valid but whose claims
are wrong, which is the only way to show that the client checks the claims and not
just the signature.

Prints one line per test and ends with `python: N passed, N failed`; exits 1 on any
failure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
import traceback
import uuid
from pathlib import Path

# The server under test speaks plain HTTP on a loopback address (the README allows
# `http` for loopback issuers only). oauthlib refuses anything but https unless told
# otherwise; this is the documented switch for local testing, not a protocol change.
os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")

import jwt  # noqa: E402  (PyJWT)
import requests  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from oauthlib.oauth2 import (  # noqa: E402
    InvalidGrantError,
    LegacyApplicationClient,
)
from requests_oauthlib import OAuth2Session  # noqa: E402

BASE = os.environ["INTEROP_BASE_URL"].rstrip("/")
KEYS_DIR = os.environ.get("INTEROP_KEYS_DIR")
CLIENT_ID = "dev"  # the built-in development config's body-mode (mobile) client
TIMEOUT = 10
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]


# --------------------------------------------------------------------------- harness

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


class Ctx:
    """What the tests share: the metadata, a user, the tokens of its session."""

    metadata: dict
    issuer: str
    audience: str
    jwks: jwt.PyJWKClient
    email: str
    password: str
    user_id: str
    oauth: OAuth2Session
    token: dict


ctx = Ctx()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def segment(token: str, i: int) -> dict:
    part = token.split(".")[i]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def verify(token: str, *, audience: str | None = None, issuer: str | None = None) -> dict:
    """How a resource server should verify our access tokens with PyJWT (RFC 9068)."""
    signing_key = ctx.jwks.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        signing_key,
        algorithms=["RS256"],
        issuer=issuer or ctx.issuer,
        audience=audience or ctx.audience,
        options={"require": REQUIRED_CLAIMS, "verify_signature": True},
    )
    # PyJWT has no `typ` option; RFC 9068 §4 requires the check, so do it here.
    typ = jwt.get_unverified_header(token).get("typ", "")
    if typ.lower() not in ("at+jwt", "application/at+jwt"):
        raise jwt.InvalidTokenError(f"typ is {typ!r}, not at+jwt")
    return claims


def expect_refused_by_client(token: str, *errors: type[Exception], **kw) -> Exception:
    try:
        claims = verify(token, **kw)
    except errors as e:  # the refusal we expect
        return e
    except Exception as e:  # refused, but not for the reason the case is about
        raise AssertionError(f"refused with {type(e).__name__}: {e}, expected one of {errors}") from e
    raise AssertionError(f"PyJWT accepted a forged token: {claims}")


def expect_refused_by_server(token: str) -> None:
    r = requests.get(f"{BASE}/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
    assert r.status_code == 401, f"server answered {r.status_code} to a forged token: {r.text}"
    assert r.json()["error"] == "invalid_token", r.text
    assert 'error="invalid_token"' in r.headers.get("WWW-Authenticate", ""), r.headers


def our_private_key():
    """The server's active signing key (PKCS#8 PEM named after its kid)."""
    assert KEYS_DIR, "INTEROP_KEYS_DIR is not set"
    kid = segment(ctx.token["access_token"], 0)["kid"]
    pem = (Path(KEYS_DIR) / f"{kid}.pem").read_bytes()
    return kid, serialization.load_pem_private_key(pem, password=None)


def sign_with_our_key(claims: dict, header_overrides: dict | None = None) -> str:
    kid, key = our_private_key()
    headers = {"typ": "at+jwt", "kid": kid, **(header_overrides or {})}
    return jwt.encode(claims, key, algorithm="RS256", headers=headers)


def genuine_claims() -> dict:
    return segment(ctx.token["access_token"], 1)


def new_session() -> OAuth2Session:
    return OAuth2Session(client=LegacyApplicationClient(client_id=CLIENT_ID))


def password_grant(session: OAuth2Session) -> dict:
    # `dev` is a public client (no secret): it identifies itself with the `client_id`
    # body parameter (RFC 6749 §3.2.1), which is what `include_client_id=True` sends.
    # requests-oauthlib's default, HTTP Basic `dev:` with an empty password, is
    # accepted too (`oauthlib_stock_password_grant_with_basic`).
    return session.fetch_token(
        token_url=ctx.metadata["token_endpoint"],
        username=ctx.email,
        password=ctx.password,
        include_client_id=True,
        timeout=TIMEOUT,
    )


# --------------------------------------------------------------------------- tests


@test
def rfc8414_metadata_names_the_jwks_uri():
    r = requests.get(f"{BASE}/.well-known/oauth-authorization-server", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    md = r.json()
    assert md["issuer"] == BASE, f"issuer {md['issuer']!r} != {BASE!r}"
    for field in ("jwks_uri", "token_endpoint", "revocation_endpoint"):
        assert md[field].startswith(BASE + "/"), (field, md[field])
    assert "response_types_supported" in md, md
    assert {"password", "refresh_token"} <= set(md["grant_types_supported"]), md
    # Public clients: no client authentication, the client_id goes in the body.
    assert "none" in md["token_endpoint_auth_methods_supported"], md
    ctx.metadata = md
    ctx.issuer = md["issuer"]
    ctx.audience = os.environ.get("INTEROP_AUDIENCE", md["issuer"])
    ctx.jwks = jwt.PyJWKClient(md["jwks_uri"], cache_jwk_set=True, lifespan=60, timeout=TIMEOUT)
    keys = ctx.jwks.get_signing_keys()
    assert keys and all(k.key_type == "RSA" for k in keys), keys


@test
def oauthlib_password_grant():
    ctx.email = f"interop-py-{uuid.uuid4().hex[:12]}@example.com"
    ctx.password = "interop python " + secrets.token_urlsafe(18)
    r = requests.post(
        f"{BASE}/v1/users", json={"email": ctx.email, "password": ctx.password}, timeout=TIMEOUT
    )
    assert r.status_code == 201, r.text
    ctx.user_id = r.json()["id"]

    ctx.oauth = new_session()
    tok = password_grant(ctx.oauth)
    assert tok["token_type"].lower() == "bearer", tok
    assert 300 <= int(tok["expires_in"]) <= 900, tok
    assert tok.get("refresh_token"), "no refresh token for the body-mode client"
    ctx.token = tok


@test
def pyjwt_verifies_a_minted_access_token_through_discovery():
    at = ctx.token["access_token"]
    header = jwt.get_unverified_header(at)
    assert header["alg"] == "RS256" and header["typ"] == "at+jwt" and header.get("kid"), header
    claims = verify(at)
    assert claims["sub"] == ctx.user_id, claims
    assert claims["client_id"] == CLIENT_ID, claims
    assert claims.get("sid"), claims
    assert claims["exp"] - claims["iat"] == int(ctx.token["expires_in"]), claims
    # The kid the client picked is one the JWKS publishes.
    assert header["kid"] in {k.key_id for k in ctx.jwks.get_signing_keys()}


@test
def oauth2session_calls_a_protected_endpoint():
    r = ctx.oauth.get(f"{BASE}/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["email"] == ctx.email and r.json()["id"] == ctx.user_id, r.text


@test
def oauthlib_refresh_grant_rotates_the_refresh_token():
    old = dict(ctx.token)
    # A public client identifies itself with client_id in the body (RFC 6749 §3.2.1);
    # requests-oauthlib sends it on refresh only when told (kwargs or auto_refresh_kwargs).
    new = ctx.oauth.refresh_token(
        ctx.metadata["token_endpoint"], refresh_token=old["refresh_token"], client_id=CLIENT_ID, timeout=TIMEOUT
    )
    assert new["refresh_token"] != old["refresh_token"], "the refresh token did not rotate"
    assert new["access_token"] != old["access_token"]
    new_claims, old_claims = verify(new["access_token"]), verify(old["access_token"])
    assert new_claims["sid"] == old_claims["sid"], "a refresh must stay in the same session"
    assert new_claims["jti"] != old_claims["jti"]
    assert new_claims["sub"] == ctx.user_id
    # The rotated token works in turn.
    newer = new_session().refresh_token(
        ctx.metadata["token_endpoint"], refresh_token=new["refresh_token"], client_id=CLIENT_ID, timeout=TIMEOUT
    )
    assert newer["refresh_token"] not in (new["refresh_token"], old["refresh_token"])
    verify(newer["access_token"])
    ctx.token = newer
    ctx.oauth.token = newer


@test
def grace_window_replay_returns_the_same_successor():
    start = dict(ctx.token)
    first = new_session().refresh_token(
        ctx.metadata["token_endpoint"], refresh_token=start["refresh_token"], client_id=CLIENT_ID, timeout=TIMEOUT
    )
    # Presented again at once (a lost response): the same successor, a fresh access token.
    again = new_session().refresh_token(
        ctx.metadata["token_endpoint"], refresh_token=start["refresh_token"], client_id=CLIENT_ID, timeout=TIMEOUT
    )
    assert again["refresh_token"] == first["refresh_token"], "grace replay gave another successor"
    verify(again["access_token"])
    ctx.token = first
    ctx.oauth.token = first


@test
def oauth2session_auto_refreshes_an_expired_token():
    updates = []
    expired = dict(ctx.token)
    expired["expires_in"] = -30
    expired.pop("expires_at", None)
    session = OAuth2Session(
        client=LegacyApplicationClient(client_id=CLIENT_ID),
        token=expired,
        auto_refresh_url=ctx.metadata["token_endpoint"],
        auto_refresh_kwargs={"client_id": CLIENT_ID},
        token_updater=updates.append,
    )
    r = session.get(f"{BASE}/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert len(updates) == 1, "the session did not refresh"
    assert updates[0]["refresh_token"] != ctx.token["refresh_token"]
    verify(updates[0]["access_token"])
    ctx.token = updates[0]
    ctx.oauth.token = updates[0]


@test
def oauthlib_stock_password_grant_with_basic():
    # No include_client_id, no auth: requests-oauthlib sends `Authorization: Basic
    # dev:` (an empty secret) and no client_id in the body.
    token = new_session().fetch_token(
        token_url=ctx.metadata["token_endpoint"],
        username=ctx.email,
        password=ctx.password,
        timeout=TIMEOUT,
    )
    claims = verify(token["access_token"])
    assert claims["client_id"] == CLIENT_ID, claims
    assert token["refresh_token"]


@test
def oauthlib_parses_invalid_grant_for_a_wrong_password():
    session = new_session()
    try:
        session.fetch_token(
            token_url=ctx.metadata["token_endpoint"],
            username=ctx.email,
            password="not the password at all, sorry",
            include_client_id=True,
            timeout=TIMEOUT,
        )
    except InvalidGrantError as e:
        assert e.status_code == 400, e.status_code
        return
    raise AssertionError("a wrong password was accepted")


# Forgeries: each must be refused by PyJWT *and* by the server.


@test
def forged_resigned_with_a_foreign_rsa_key_under_our_kid():
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = segment(ctx.token["access_token"], 0)["kid"]
    forged = jwt.encode(genuine_claims(), foreign, algorithm="RS256", headers={"typ": "at+jwt", "kid": kid})
    expect_refused_by_client(forged, jwt.InvalidSignatureError)
    expect_refused_by_server(forged)


@test
def forged_unknown_kid():
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(genuine_claims(), foreign, algorithm="RS256", headers={"typ": "at+jwt", "kid": "attacker"})
    expect_refused_by_client(forged, jwt.PyJWKClientError)
    expect_refused_by_server(forged)


@test
def forged_payload_tampered_signature_kept():
    h, _, s = ctx.token["access_token"].split(".")
    claims = genuine_claims()
    claims["sub"] = str(uuid.uuid4())
    forged = f"{h}.{b64url_json(claims)}.{s}"
    expect_refused_by_client(forged, jwt.InvalidSignatureError)
    expect_refused_by_server(forged)


@test
def forged_alg_none():
    kid = segment(ctx.token["access_token"], 0)["kid"]
    for alg in ("none", "None", "NONE"):
        forged = f"{b64url_json({'alg': alg, 'typ': 'at+jwt', 'kid': kid})}.{b64url_json(genuine_claims())}."
        expect_refused_by_client(forged, jwt.InvalidAlgorithmError, jwt.DecodeError)
        expect_refused_by_server(forged)


@test
def forged_hs256_keyed_with_our_public_key():
    kid = segment(ctx.token["access_token"], 0)["kid"]
    public_pem = ctx.jwks.get_signing_key(kid).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwks_json = requests.get(ctx.metadata["jwks_uri"], timeout=TIMEOUT).content
    for secret in (public_pem, public_pem.strip(), jwks_json):
        signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'at+jwt', 'kid': kid})}.{b64url_json(genuine_claims())}"
        sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        forged = f"{signing_input}.{b64url(sig)}"
        expect_refused_by_client(forged, jwt.InvalidAlgorithmError)
        expect_refused_by_server(forged)


@test
def wrong_audience_or_issuer_expected_by_the_verifier():
    # A genuine token presented to a verifier that expects another audience / issuer.
    expect_refused_by_client(
        ctx.token["access_token"], jwt.InvalidAudienceError, audience="https://orders.example.com"
    )
    expect_refused_by_client(ctx.token["access_token"], jwt.InvalidIssuerError, issuer="https://evil.example.com")


@test
def signed_with_our_key_but_wrong_aud():
    forged = sign_with_our_key({**genuine_claims(), "aud": "https://orders.example.com"})
    expect_refused_by_client(forged, jwt.InvalidAudienceError)
    expect_refused_by_server(forged)


@test
def signed_with_our_key_but_wrong_iss():
    forged = sign_with_our_key({**genuine_claims(), "iss": "https://evil.example.com"})
    expect_refused_by_client(forged, jwt.InvalidIssuerError)
    expect_refused_by_server(forged)


@test
def signed_with_our_key_but_expired():
    now = int(time.time())
    forged = sign_with_our_key({**genuine_claims(), "iat": now - 3600, "nbf": now - 3600, "exp": now - 1200})
    expect_refused_by_client(forged, jwt.ExpiredSignatureError)
    expect_refused_by_server(forged)


@test
def signed_with_our_key_but_without_exp():
    claims = genuine_claims()
    del claims["exp"]
    forged = sign_with_our_key(claims)
    expect_refused_by_client(forged, jwt.MissingRequiredClaimError)
    expect_refused_by_server(forged)


@test
def signed_with_our_key_but_typ_jwt():
    forged = sign_with_our_key(genuine_claims(), {"typ": "JWT"})
    expect_refused_by_client(forged, jwt.InvalidTokenError)
    expect_refused_by_server(forged)


@test
def control_signed_with_our_key_is_accepted():
    # The forging helper itself makes tokens both verifiers accept, so each refusal
    # above is caused by the one thing the case changed.
    token = sign_with_our_key(genuine_claims())
    verify(token)
    r = requests.get(f"{BASE}/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text


@test
def rfc7009_revocation_ends_the_session():
    client = LegacyApplicationClient(client_id=CLIENT_ID)
    url, headers, body = client.prepare_token_revocation_request(
        ctx.metadata["revocation_endpoint"],
        ctx.token["refresh_token"],
        token_type_hint="refresh_token",
        client_id=CLIENT_ID,
    )
    r = requests.post(url, headers=headers, data=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    # The revoked refresh token is refused, and oauthlib maps the error.
    try:
        new_session().refresh_token(
            ctx.metadata["token_endpoint"],
            refresh_token=ctx.token["refresh_token"],
            client_id=CLIENT_ID,
            timeout=TIMEOUT,
        )
    except InvalidGrantError:
        pass
    else:
        raise AssertionError("a revoked refresh token was accepted")
    # The session's access token is refused by the server at once (offline verifiers
    # keep accepting it until `exp`: that is the design of short-lived JWTs).
    expect_refused_by_server(ctx.token["access_token"])
    verify(ctx.token["access_token"])


# --------------------------------------------------------------------------- main


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
            if fn.__name__ in ("rfc8414_metadata_names_the_jwks_uri", "oauthlib_password_grant"):
                print("python: setup failed; the remaining tests need it")
                failed += len(TESTS) - TESTS.index(fn) - 1
                break
        else:
            passed += 1
            print(f"ok   {fn.__name__} ({(time.monotonic() - started) * 1000:.0f} ms)")
        sys.stdout.flush()
    print(f"python: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
