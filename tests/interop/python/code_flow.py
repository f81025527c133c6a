"""Independent-client interoperability: Authlib's requests client (OAuth2Session) with
the authorization code flow and PKCE (RFC 6749 §4.1, RFC 7636) through a real loopback
redirect (RFC 8252 §7.3), and with the client credentials grant (client_secret_basic,
client_secret_post, private_key_jwt).

Run by tests/interop/run.sh against a live token-issuer (no mock):

    INTEROP_BASE_URL=http://127.0.0.1:PORT INTEROP_CC_CLIENT_ID=interop-service \
    INTEROP_CC_CLIENT_SECRET=... INTEROP_JWT_CLIENT_ID=interop-jwt \
    INTEROP_JWT_KEY_FILE=key.pem INTEROP_JWT_KID=... python code_flow.py

The code flow is the native app's: `dev-native` (first-party, loopback redirect on any
port) listens on 127.0.0.1 on a port the system picks (an `http.server` in a thread),
Authlib makes the authorization URL, `requests` plays the browser on the hosted sign-in
page (the `__Host-` cookies are Secure, which no cookie jar sends over plain http, so
they are kept by hand), the 303 is followed with a real GET to the listener, and the URL
the listener received goes to Authlib's fetch_token. Authlib does not check RFC 9207's
`iss` itself; the test does. The client credentials tests use run.sh's
`interop-service` (a secret) and `interop-jwt` (an EC P-256 key whose public half is
its `jwks`). Tokens are checked with PyJWT through the metadata's `jwks_uri`.

Prints one line per test and ends with `python-code: N passed, N failed`; exits 1 on
any failure.
"""

from __future__ import annotations

import base64
import os
import queue
import secrets
import sys
import threading
import time
import traceback
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urljoin, urlsplit

import jwt  # PyJWT
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oauth2.rfc6749 import MismatchingStateException
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from joserfc.jwk import ECKey

BASE = os.environ["INTEROP_BASE_URL"].rstrip("/")
CC_CLIENT_ID = os.environ.get("INTEROP_CC_CLIENT_ID", "")
CC_SECRET = os.environ.get("INTEROP_CC_CLIENT_SECRET", "")
JWT_CLIENT_ID = os.environ.get("INTEROP_JWT_CLIENT_ID", "")
JWT_KEY_FILE = os.environ.get("INTEROP_JWT_KEY_FILE", "")
JWT_KID = os.environ.get("INTEROP_JWT_KID", "")
NATIVE = "dev-native"
ORDERS = "https://orders.example"
BILLING = "https://billing.example"
TIMEOUT = 10
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]

# --------------------------------------------------------------------------- harness

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


class Ctx:
    metadata: dict
    jwks: jwt.PyJWKClient
    email: str
    password: str
    user_id: str
    listener: "Listener"
    oauth: OAuth2Session
    token: dict


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
    assert typ.lower() in ("at+jwt", "application/at+jwt"), f"typ is {typ!r}, not at+jwt"
    return claims


def auds(claims: dict) -> set:
    aud = claims["aud"]
    return set(aud if isinstance(aud, list) else [aud])


def user_token_claims(tok: dict) -> dict:
    """A user's tokens for dev-native: bearer, a refresh token, the user's access token."""
    assert tok["token_type"].lower() == "bearer", tok
    assert tok.get("refresh_token"), f"no refresh token: {tok}"
    claims = verify(tok["access_token"], BASE)  # dev-native's audience: the issuer URL
    assert claims["sub"] == ctx.user_id, claims
    assert claims.get("client_id") == NATIVE, claims
    return claims


def service_token_claims(tok: dict, audience: str, client_id: str) -> dict:
    assert tok["token_type"].lower() == "bearer", tok
    assert "refresh_token" not in tok, f"a refresh token for client credentials: {tok}"
    claims = verify(tok["access_token"], audience)
    assert claims["sub"] == client_id and claims.get("client_id") == client_id, claims
    return claims


def watched(session: requests.Session) -> list:
    """The requests the session sends from now on (as prepared, headers and body)."""
    sent: list = []
    session.hooks["response"].append(lambda r, *args, **kwargs: sent.append(r.request))
    return sent


def body_of(request: requests.PreparedRequest) -> dict:
    body = request.body or ""
    return {k: v[0] for k, v in parse_qs(body if isinstance(body, str) else body.decode()).items()}


# ------------------------------------------------------------- the loopback redirect

class Listener:
    """The native app's loopback redirect endpoint: a real HTTP server on 127.0.0.1,
    port chosen by the system, that hands over each request it receives."""

    def __init__(self) -> None:
        received: queue.Queue = queue.Queue()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                received.put({"path": self.path, "host": self.headers.get("Host")})
                body = b"<!DOCTYPE html><title>Done</title><p>You can close this window."
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet
                pass

        self.received = received
        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.redirect_uri = f"http://127.0.0.1:{self.port}/callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arrived(self) -> str:
        """The URL of the request that reached the listener (waits for it)."""
        got = self.received.get(timeout=TIMEOUT)
        assert got["host"] == f"127.0.0.1:{self.port}", got
        return f"http://127.0.0.1:{self.port}{got['path']}"


# ------------------------------------------------------------------ the browser, by hand

class FormParser(HTMLParser):
    """The page's forms: action, method and the named inputs (hidden and visible)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action"), "method": a.get("method"), "fields": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = {"type": a.get("type"), "value": a.get("value") or ""}


def cookies_set(r: requests.Response) -> dict:
    """The cookies a response sets, by name; each must be a __Host- cookie, HttpOnly and
    SameSite=Lax (read from the raw headers: requests folds repeated Set-Cookie)."""
    out = {}
    for line in r.raw.headers.getlist("Set-Cookie"):
        pair, *attrs = [p.strip() for p in line.split(";")]
        name, _, value = pair.partition("=")
        lower = [a.lower() for a in attrs]
        assert name.startswith("__Host-"), line
        for a in ("secure", "httponly", "samesite=lax", "path=/"):
            assert a in lower, f"cookie without {a}: {line}"
        out[name] = value
    return out


def sign_in(auth_url: str) -> requests.Response:
    """The user signs in on the hosted page: GET the authorization URL, post the form back
    with the e-mail and password; the answer to the post (not followed)."""
    page = requests.get(auth_url, allow_redirects=False, timeout=TIMEOUT)
    assert page.status_code == 200, f"{page.status_code} {page.headers.get('Location')} {page.text[:300]}"
    assert page.headers["Content-Type"].startswith("text/html"), page.headers["Content-Type"]
    jar = cookies_set(page)
    assert "__Host-form" in jar, page.headers
    parser = FormParser()
    parser.feed(page.text)
    assert len(parser.forms) == 1, parser.forms
    form = parser.forms[0]
    assert form["method"] == "post" and form["fields"].get("password", {}).get("type") == "password", form
    fields = {n: f["value"] for n, f in form["fields"].items() if f["type"] == "hidden"}
    # The request travels in the hidden fields: they must carry it back unchanged.
    sent = {k: v[0] for k, v in parse_qs(urlsplit(auth_url).query).items()}
    for name in ("client_id", "redirect_uri", "state", "code_challenge", "code_challenge_method"):
        assert fields.get(name) == sent.get(name), f"hidden {name}={fields.get(name)!r}, sent {sent.get(name)!r}"
    assert fields.get("csrf"), fields
    fields.update(username=ctx.email, password=ctx.password)
    r = requests.post(
        urljoin(auth_url, form["action"]),
        data=fields,
        headers={"Cookie": "; ".join(f"{n}={v}" for n, v in jar.items()), "Origin": BASE},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    jar.update(cookies_set(r))
    assert "__Host-session" in jar, f"not signed in: {r.status_code} {r.headers}"
    return r


def native_session(**kwargs) -> OAuth2Session:
    return OAuth2Session(
        client_id=NATIVE,
        redirect_uri=ctx.listener.redirect_uri,
        code_challenge_method="S256",
        scope=None,
        **kwargs,
    )


# ----------------------------------------------------------------------------- tests

@test
def metadata_and_a_registered_user():
    assert CC_CLIENT_ID and CC_SECRET and JWT_CLIENT_ID and JWT_KEY_FILE and JWT_KID, "INTEROP_CC_* / INTEROP_JWT_* are not set"
    r = requests.get(f"{BASE}/.well-known/oauth-authorization-server", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    md = r.json()
    assert md["issuer"] == BASE, md["issuer"]
    assert md["authorization_endpoint"] == f"{BASE}/oauth/authorize", md
    assert md["code_challenge_methods_supported"] == ["S256"], md
    assert md["authorization_response_iss_parameter_supported"] is True, md
    assert "authorization_code" in md["grant_types_supported"], md
    ctx.metadata = md
    ctx.jwks = jwt.PyJWKClient(md["jwks_uri"], cache_jwk_set=True, lifespan=60, timeout=TIMEOUT)
    ctx.email = f"python-code-{secrets.token_hex(6)}@example.com"
    ctx.password = "python code flow " + secrets.token_urlsafe(12)
    r = requests.post(f"{BASE}/v1/users", json={"email": ctx.email, "password": ctx.password}, timeout=TIMEOUT)
    assert r.status_code == 201, f"{r.status_code} {r.text}"
    ctx.user_id = r.json()["id"]
    ctx.listener = Listener()


@test
def authorization_code_with_pkce_through_the_loopback_redirect():
    ctx.oauth = native_session()
    code_verifier = generate_token(64)
    uri, state = ctx.oauth.create_authorization_url(ctx.metadata["authorization_endpoint"], code_verifier=code_verifier)
    q = {k: v[0] for k, v in parse_qs(urlsplit(uri).query).items()}
    assert q.get("code_challenge_method") == "S256" and len(q.get("code_challenge", "")) == 43, q
    assert q.get("redirect_uri") == ctx.listener.redirect_uri and "scope" not in q, q

    r = sign_in(uri)
    assert r.status_code == 303, f"{r.status_code} {r.headers}"
    location = r.headers["Location"]
    assert location.startswith(ctx.listener.redirect_uri + "?"), location
    # The browser follows the redirect: a real request to the app's loopback port.
    done = requests.get(location, timeout=TIMEOUT)
    assert done.status_code == 200, done.status_code
    received = ctx.listener.arrived()
    assert received == location, f"the listener got {received}, the Location was {location}"

    params = {k: v[0] for k, v in parse_qs(urlsplit(received).query).items()}
    # RFC 9207: the response names its issuer, exactly the metadata's.
    assert params.get("iss") == ctx.metadata["issuer"] == BASE, params
    assert params.get("state") == state, params

    sent = watched(ctx.oauth)
    tok = ctx.oauth.fetch_token(
        ctx.metadata["token_endpoint"],
        authorization_response=received,
        code_verifier=code_verifier,
        state=state,
        timeout=TIMEOUT,
    )
    body = body_of(sent[-1])
    assert body.get("grant_type") == "authorization_code" and body.get("code") == params["code"], body
    assert body.get("code_verifier") == code_verifier and body.get("redirect_uri") == ctx.listener.redirect_uri, body
    assert body.get("client_id") == NATIVE and "client_secret" not in body, body
    assert "Authorization" not in sent[-1].headers, sent[-1].headers
    user_token_claims(tok)
    ctx.token = dict(tok)


@test
def authlib_refuses_a_mismatching_state():
    # A callback whose state is not the one this session sent: Authlib refuses it
    # before any request (a code of this flow, but the state changed).
    session = native_session()
    verifier = generate_token(64)
    uri, state = session.create_authorization_url(ctx.metadata["authorization_endpoint"], code_verifier=verifier)
    location = sign_in(uri).headers["Location"]
    requests.get(location, timeout=TIMEOUT)
    received = ctx.listener.arrived()
    sent = watched(session)
    try:
        session.fetch_token(ctx.metadata["token_endpoint"], authorization_response=received,
                            code_verifier=verifier, state=state + "x", timeout=TIMEOUT)
    except MismatchingStateException:
        pass
    else:
        raise AssertionError("Authlib accepted a callback with another state")
    assert not sent, "the code was sent despite the state"
    # Control: with its own state the same callback gets tokens.
    user_token_claims(session.fetch_token(ctx.metadata["token_endpoint"], authorization_response=received,
                                          code_verifier=verifier, state=state, timeout=TIMEOUT))


@test
def refresh_token_rotates_and_the_token_reaches_v1_me():
    old = ctx.token
    tok = ctx.oauth.refresh_token(ctx.metadata["token_endpoint"], timeout=TIMEOUT)
    claims = user_token_claims(tok)
    assert tok["refresh_token"] != old["refresh_token"], "the refresh token did not rotate"
    assert tok["access_token"] != old["access_token"], "the same access token again"
    assert claims.get("sid") == jwt.decode(old["access_token"], options={"verify_signature": False}).get("sid"), claims
    # The session now holds the new token; Authlib sends it as a bearer token.
    r = ctx.oauth.get(f"{BASE}/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    assert r.request.headers["Authorization"] == f"Bearer {tok['access_token']}", r.request.headers
    me = r.json()
    assert me["email"] == ctx.email and me["id"] == ctx.user_id, me


@test
def wrong_code_verifier_is_invalid_grant():
    session = native_session()
    verifier = generate_token(64)
    uri, state = session.create_authorization_url(ctx.metadata["authorization_endpoint"], code_verifier=verifier)
    location = sign_in(uri).headers["Location"]
    requests.get(location, timeout=TIMEOUT)
    received = ctx.listener.arrived()
    try:
        tok = session.fetch_token(ctx.metadata["token_endpoint"], authorization_response=received,
                                  code_verifier=generate_token(64), state=state, timeout=TIMEOUT)
    except OAuthError as e:
        assert e.error == "invalid_grant", e.error
    else:
        raise AssertionError(f"a wrong code_verifier got tokens: {tok}")


def cc_session(method: str) -> tuple[OAuth2Session, list]:
    session = OAuth2Session(CC_CLIENT_ID, CC_SECRET, token_endpoint_auth_method=method)
    return session, watched(session)


@test
def client_credentials_client_secret_basic():
    session, sent = cc_session("client_secret_basic")
    tok = session.fetch_token(ctx.metadata["token_endpoint"], grant_type="client_credentials", timeout=TIMEOUT)
    req = sent[-1]
    expected = base64.b64encode(f"{CC_CLIENT_ID}:{CC_SECRET}".encode()).decode()
    assert req.headers.get("Authorization") == f"Basic {expected}", req.headers
    assert "client_secret" not in body_of(req), body_of(req)
    claims = service_token_claims(tok, ORDERS, CC_CLIENT_ID)
    assert auds(claims) == {ORDERS, BILLING}, claims["aud"]
    assert set(claims["scope"].split()) == {"orders:read", "billing:read"}, claims


@test
def client_credentials_client_secret_post():
    session, sent = cc_session("client_secret_post")
    tok = session.fetch_token(ctx.metadata["token_endpoint"], grant_type="client_credentials",
                              scope="billing:read", timeout=TIMEOUT)
    req = sent[-1]
    body = body_of(req)
    assert "Authorization" not in req.headers, req.headers
    assert body.get("client_id") == CC_CLIENT_ID and body.get("client_secret") == CC_SECRET, body
    claims = service_token_claims(tok, BILLING, CC_CLIENT_ID)
    assert claims["scope"] == "billing:read", claims


@test
def client_credentials_wrong_secret_is_invalid_client():
    for method in ("client_secret_basic", "client_secret_post"):
        session = OAuth2Session(CC_CLIENT_ID, CC_SECRET + "x", token_endpoint_auth_method=method)
        try:
            tok = session.fetch_token(ctx.metadata["token_endpoint"], grant_type="client_credentials", timeout=TIMEOUT)
        except OAuthError as e:
            assert e.error == "invalid_client", (method, e.error)
        else:
            raise AssertionError(f"{method}: a wrong secret got a token: {tok}")


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):
    """Authlib's PrivateKeyJWT signs assertions valid for an hour; the server takes at
    most five minutes (RFC 7523 leaves the bound to the server). Same claims, exp in 60 s."""

    def sign(self, auth, token_endpoint):
        return private_key_jwt_sign(auth.client_secret, client_id=auth.client_id, token_endpoint=token_endpoint,
                                    alg=self.alg, header=dict(self.headers or {}), expires_in=60)


def jwt_session(auth_method: PrivateKeyJWT) -> tuple[OAuth2Session, list]:
    with open(JWT_KEY_FILE, "rb") as f:
        key = ECKey.import_key(f.read())
    session = OAuth2Session(JWT_CLIENT_ID, key, token_endpoint_auth_method="private_key_jwt")
    session.register_client_auth_method(auth_method)
    return session, watched(session)


def fetch_with_assertion(session: OAuth2Session) -> dict:
    # WORKAROUND: Authlib's private_key_jwt sends no client_id (RFC 7521 §4.2: it is
    # OPTIONAL, the assertion's sub names the client), and the server answers
    # 400 invalid_request "client_id is required". Sent here until the server takes
    # the client from the assertion.
    return session.fetch_token(ctx.metadata["token_endpoint"], grant_type="client_credentials",
                               client_id=JWT_CLIENT_ID, timeout=TIMEOUT)


@test
def client_credentials_private_key_jwt_with_the_token_endpoint_as_aud():
    endpoint = ctx.metadata["token_endpoint"]
    session, sent = jwt_session(ShortLivedPrivateKeyJWT(endpoint, alg="ES256", headers={"kid": JWT_KID}))
    tok = fetch_with_assertion(session)
    body = body_of(sent[-1])
    assert body.get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", body
    header = jwt.get_unverified_header(body["client_assertion"])
    claims = jwt.decode(body["client_assertion"], options={"verify_signature": False})
    # Authlib's audience is the token endpoint (RFC 7523 §3), not the issuer.
    assert header["alg"] == "ES256" and header.get("kid") == JWT_KID, header
    assert claims["aud"] == endpoint and claims["iss"] == claims["sub"] == JWT_CLIENT_ID, claims
    token_claims = service_token_claims(tok, ORDERS, JWT_CLIENT_ID)
    assert token_claims["scope"] == "orders:read", token_claims


@test
def private_key_jwt_with_authlibs_hour_long_assertion_is_invalid_client():
    # Stock PrivateKeyJWT: exp an hour ahead, past the server's 5-minute bound.
    endpoint = ctx.metadata["token_endpoint"]
    session, sent = jwt_session(PrivateKeyJWT(endpoint, alg="ES256", headers={"kid": JWT_KID}))
    try:
        tok = fetch_with_assertion(session)
    except OAuthError as e:
        assert e.error == "invalid_client", e.error
    else:
        raise AssertionError(f"an assertion valid for an hour got a token: {tok}")
    claims = jwt.decode(body_of(sent[-1])["client_assertion"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3600, claims


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
            if fn.__name__ == "metadata_and_a_registered_user":
                print("python-code: setup failed; the remaining tests need it")
                failed += len(TESTS) - TESTS.index(fn) - 1
                break
        else:
            passed += 1
            print(f"ok   {fn.__name__} ({(time.monotonic() - started) * 1000:.0f} ms)")
        sys.stdout.flush()
    print(f"python-code: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
