"""Independent-client interoperability: the client credentials grant (RFC 6749 §4.4)
with oauthlib / requests-oauthlib, the tokens checked with PyJWT.

Run by tests/interop/run.sh against a live token-issuer (no mock):

    INTEROP_BASE_URL=http://127.0.0.1:PORT INTEROP_CC_CLIENT_ID=interop-service \
    INTEROP_CC_CLIENT_SECRET=... python client_credentials.py

The client is run.sh's `interop-service` (kind "service", client_credentials = true,
audiences https://orders.example and https://billing.example, scopes orders:read and
billing:read). A stock OAuth 2.0 client, requests-oauthlib's OAuth2Session with
oauthlib's BackendApplicationClient, fetches the tokens (its default client
authentication: HTTP Basic, client_secret_basic); PyJWT's PyJWKClient verifies them
through the RFC 8414 metadata's `jwks_uri`.

Prints one line per test and ends with `python-cc: N passed, N failed`; exits 1 on any
failure.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

# Plain HTTP on a loopback address: oauthlib's documented switch for local testing.
os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")

import jwt  # noqa: E402  (PyJWT)
import requests  # noqa: E402
from oauthlib.oauth2 import BackendApplicationClient, InvalidClientError  # noqa: E402
from requests_oauthlib import OAuth2Session  # noqa: E402

BASE = os.environ["INTEROP_BASE_URL"].rstrip("/")
CLIENT_ID = os.environ.get("INTEROP_CC_CLIENT_ID", "")
SECRET = os.environ.get("INTEROP_CC_CLIENT_SECRET", "")
ORDERS = "https://orders.example"
BILLING = "https://billing.example"
TIMEOUT = 10
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


class Ctx:
    metadata: dict
    jwks: jwt.PyJWKClient


ctx = Ctx()


def verify(token: str, audience: str) -> dict:
    """How a resource server verifies our access tokens with PyJWT (RFC 9068)."""
    key = ctx.jwks.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key,
        algorithms=["RS256"],
        issuer=ctx.metadata["issuer"],
        audience=audience,
        options={"require": REQUIRED_CLAIMS},
    )
    typ = jwt.get_unverified_header(token).get("typ", "")
    if typ.lower() not in ("at+jwt", "application/at+jwt"):
        raise jwt.InvalidTokenError(f"typ is {typ!r}, not at+jwt")
    return claims


def auds(claims: dict) -> set:
    aud = claims["aud"]
    return set(aud if isinstance(aud, list) else [aud])


def fetch(secret: str, **kwargs) -> dict:
    session = OAuth2Session(client=BackendApplicationClient(client_id=CLIENT_ID))
    return session.fetch_token(
        token_url=ctx.metadata["token_endpoint"],
        client_id=CLIENT_ID,
        client_secret=secret,
        timeout=TIMEOUT,
        **kwargs,
    )


def assert_service_token(tok: dict, audience: str) -> dict:
    assert tok["token_type"].lower() == "bearer", tok
    assert int(tok["expires_in"]) > 0, tok
    assert "refresh_token" not in tok, f"a refresh token for client credentials: {tok}"
    claims = verify(tok["access_token"], audience)
    assert claims["sub"] == CLIENT_ID, claims
    assert claims.get("client_id") == CLIENT_ID, claims
    assert "sid" not in claims, f"a sid in a client-credentials token: {claims}"
    return claims


@test
def metadata_lists_client_credentials():
    assert CLIENT_ID and SECRET, "INTEROP_CC_CLIENT_ID / INTEROP_CC_CLIENT_SECRET are not set"
    r = requests.get(f"{BASE}/.well-known/oauth-authorization-server", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    md = r.json()
    assert md["issuer"] == BASE, md["issuer"]
    assert "client_credentials" in md["grant_types_supported"], md["grant_types_supported"]
    assert {"client_secret_basic", "client_secret_post"} <= set(md["token_endpoint_auth_methods_supported"]), md
    ctx.metadata = md
    ctx.jwks = jwt.PyJWKClient(md["jwks_uri"], cache_jwk_set=True, lifespan=60, timeout=TIMEOUT)


@test
def backend_application_client_token_verified_by_pyjwt():
    tok = fetch(SECRET)
    claims = assert_service_token(tok, ORDERS)
    assert auds(claims) == {ORDERS, BILLING}, claims["aud"]
    assert set(claims["scope"].split()) == {"orders:read", "billing:read"}, claims
    # oauthlib parsed the response's scope into a list.
    assert set(tok["scope"]) == {"orders:read", "billing:read"}, tok


@test
def backend_application_client_resource_and_scope_narrow_the_token():
    tok = fetch(SECRET, scope=["billing:read"], resource=BILLING)
    claims = assert_service_token(tok, BILLING)
    assert auds(claims) == {BILLING}, f"aud not narrowed to the resource: {claims['aud']}"
    assert claims["scope"] == "billing:read", claims
    try:
        verify(tok["access_token"], ORDERS)
    except jwt.InvalidAudienceError:
        pass
    else:
        raise AssertionError("PyJWT accepted a billing-only token for orders")


@test
def backend_application_client_wrong_secret_is_invalid_client():
    try:
        tok = fetch(SECRET + "x")
    except InvalidClientError as e:
        assert e.status_code == 401, e.status_code
    else:
        raise AssertionError(f"a wrong secret got a token: {tok}")


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
            if fn.__name__ == "metadata_lists_client_credentials":
                print("python-cc: setup failed; the remaining tests need it")
                failed += len(TESTS) - TESTS.index(fn) - 1
                break
        else:
            passed += 1
            print(f"ok   {fn.__name__} ({(time.monotonic() - started) * 1000:.0f} ms)")
        sys.stdout.flush()
    print(f"python-cc: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
