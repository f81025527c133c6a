// Independent-client interoperability: the authorization code flow with PKCE (RFC 6749
// §4.1, RFC 7636, RFC 8252 loopback redirects, RFC 9207 `iss`) and private_key_jwt
// client authentication (RFC 7523) as panva's openid-client 6 (on oauth4webapi 3)
// does them, with the library's own API (discovery, buildAuthorizationUrl,
// authorizationCodeGrant, refreshTokenGrant, PrivateKeyJwt, clientCredentialsGrant).
//
// Run by tests/interop/run.sh against a live server (no mock):
//   INTEROP_BASE_URL=http://127.0.0.1:PORT INTEROP_THIRD_PARTY_CLIENT_ID=interop-third-party \
//   INTEROP_JWT_CLIENT_ID=interop-jwt INTEROP_JWT_KEY_FILE=key.pem INTEROP_JWT_KID=... \
//   node code_flow.mjs
//
// The browser is played by fetch: it reads the sign-in and consent pages' forms and
// posts them back as a browser would (same-origin `Origin`). The pages' cookies are
// `__Host-` and Secure, which no cookie jar sends over http://127.0.0.1, so they are
// kept by hand (`Jar`). The clients: `dev-native` (a first-party native app, loopback
// redirect on any port), run.sh's `interop-third-party` (not first-party: the consent
// page) and `interop-jwt` (a service client whose jwks holds the public half of
// INTEROP_JWT_KEY_FILE, an EC P-256 key). Access tokens are verified with jose against
// the JWKS the metadata names.
//
// Prints one line per test and ends with `node-code: N passed, N failed`; exits 1 on
// failure.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader, generateKeyPair, importPKCS8, jwtVerify } from 'jose';
import * as client from 'openid-client';

const BASE = process.env.INTEROP_BASE_URL.replace(/\/+$/, '');
const NATIVE = 'dev-native';
const THIRD_PARTY = process.env.INTEROP_THIRD_PARTY_CLIENT_ID;
const JWT_CLIENT_ID = process.env.INTEROP_JWT_CLIENT_ID;
const JWT_KEY_FILE = process.env.INTEROP_JWT_KEY_FILE;
const JWT_KID = process.env.INTEROP_JWT_KID;
const ORDERS = 'https://orders.example'; // interop-jwt's audience (run.sh)
const TIMEOUT_S = 10;
// A loopback redirect: nothing listens there (the tests read the Location themselves);
// the port is arbitrary, and RFC 8252 §7.3 says any port must match.
const PORT = 20000 + (randomBytes(2).readUInt16BE() % 40000);
const REDIRECT = `http://127.0.0.1:${PORT}/callback`;

// ----------------------------------------------------------------------------- harness

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

const ctx = {};
const url = (path) => new URL(`${BASE}${path}`);

const discover = (clientId, auth = client.None(), algorithm = undefined) =>
  client.discovery(url('/'), clientId, undefined, auth, {
    algorithm,
    execute: [client.allowInsecureRequests], // plain http on loopback only
    timeout: TIMEOUT_S,
  });

// The error a call must fail with; anything else (or success) fails the test.
async function refusal(promise, ErrorClass) {
  let value;
  try {
    value = await promise;
  } catch (e) {
    if (e instanceof ErrorClass) return e;
    throw new Error(`expected ${ErrorClass.name}, got ${e?.name}: ${e?.message}`, { cause: e });
  }
  throw new Error(`expected ${ErrorClass.name}, the call succeeded: ${JSON.stringify(value)}`);
}

// A token endpoint refusal as openid-client reports it (RFC 6749 §5.2 body).
async function tokenRefusal(promise, error, status = 400) {
  const e = await refusal(promise, client.ResponseBodyError);
  assert(e.status === status && e.error === error, `expected ${status} ${error}, got ${e.status} ${JSON.stringify(e.cause)}`);
  return e;
}

// An error redirect (RFC 6749 §4.1.2.1) as openid-client reports it, after it checked
// the redirect's `iss` and `state`.
async function authorizationError(promise, error) {
  const e = await refusal(promise, client.AuthorizationResponseError);
  assert(e.error === error, `expected error=${error}, got ${e.error} (${e.error_description})`);
  return e;
}

// How a resource server verifies the token (RFC 9068): signature through the JWKS,
// RS256 only, iss, the audience it is, typ at+jwt.
async function verify(token, audience = BASE) {
  const { payload } = await jwtVerify(token, ctx.jwks, {
    issuer: BASE,
    audience,
    algorithms: ['RS256'],
    typ: 'at+jwt',
    requiredClaims: ['exp', 'iat', 'sub', 'jti'],
  });
  return payload;
}

// A user's token for `clientId`: a bearer access token for the issuer's audience, the
// user's, with a refresh token.
async function assertUserTokens(tokens, clientId) {
  assert(tokens.token_type === 'bearer', `token_type ${tokens.token_type}`);
  assert(typeof tokens.refresh_token === 'string' && tokens.refresh_token, `no refresh token: ${JSON.stringify(tokens)}`);
  assert(Number.isInteger(tokens.expires_in) && tokens.expires_in > 0, `expires_in ${tokens.expires_in}`);
  const claims = await verify(tokens.access_token);
  assert(claims.sub === ctx.userId, `sub ${claims.sub}, expected ${ctx.userId}`);
  assert(claims.client_id === clientId, `client_id ${claims.client_id}`);
  return claims;
}

// Runs `fn` with every request of `config` recorded: [{ url, body }].
async function recorded(config, fn) {
  const sent = [];
  config[client.customFetch] = (input, init) => {
    sent.push({ url: String(input), body: new URLSearchParams(String(init.body ?? '')) });
    return fetch(input, init);
  };
  try {
    return { result: await fn(), sent };
  } finally {
    config[client.customFetch] = undefined;
  }
}

// ------------------------------------------------------------------ the browser, by hand

// The cookies a browser would keep for the issuer, by name. Only the issuer's own
// cookies: every one must be `__Host-` (Secure, Path=/, no Domain), HttpOnly and Lax.
class Jar {
  cookies = new Map();

  take(res) {
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      const lower = attrs.map((a) => a.toLowerCase());
      assert(name.startsWith('__Host-'), `cookie ${line}`);
      for (const a of ['secure', 'httponly', 'samesite=lax', 'path=/']) {
        assert(lower.includes(a), `cookie without ${a}: ${line}`);
      }
      assert(!lower.some((a) => a.startsWith('domain=')), `a __Host- cookie with a Domain: ${line}`);
      if (value === '' || lower.includes('max-age=0')) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }

  header() {
    return [...this.cookies].map(([n, v]) => `${n}=${v}`).join('; ');
  }
}

const unescapeHtml = (s) =>
  s.replace(/&(amp|lt|gt|quot|#39|#x27);/g, (_, e) => ({ amp: '&', lt: '<', gt: '>', quot: '"', '#39': "'", '#x27': "'" })[e]);

// The page's one form: where it posts and its fields (hidden and visible, by name).
function parseForm(html, pageUrl) {
  const forms = [...html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/g)];
  assert(forms.length === 1, `expected one form, found ${forms.length}: ${html.slice(0, 500)}`);
  const attr = (tag, name) => {
    const m = tag.match(new RegExp(`\\b${name}="([^"]*)"`));
    return m ? unescapeHtml(m[1]) : undefined;
  };
  const [, formAttrs, body] = forms[0];
  assert(attr(formAttrs, 'method') === 'post', `form method ${formAttrs}`);
  const fields = {};
  for (const [tag] of body.matchAll(/<input\b[^>]*>/g)) {
    const name = attr(tag, 'name');
    if (name) fields[name] = { type: attr(tag, 'type'), value: attr(tag, 'value') ?? '' };
  }
  const buttons = [...body.matchAll(/<button\b[^>]*>/g)].map(([tag]) => ({ name: attr(tag, 'name'), value: attr(tag, 'value') }));
  return { action: new URL(attr(formAttrs, 'action'), pageUrl), fields, buttons };
}

const hidden = (form) =>
  Object.fromEntries(Object.entries(form.fields).filter(([, f]) => f.type === 'hidden').map(([n, f]) => [n, f.value]));

// GET an authorization URL as the browser: the answer, not followed.
async function browse(jar, authUrl) {
  const res = await fetch(authUrl, { redirect: 'manual', headers: jar.cookies.size ? { cookie: jar.header() } : {} });
  jar.take(res);
  return res;
}

// A page of the flow (sign-in or consent): 200 text/html with its form.
async function page(jar, authUrl) {
  const res = await browse(jar, authUrl);
  const html = await res.text();
  assert(res.status === 200, `expected a page, got ${res.status} ${res.headers.get('location') ?? html.slice(0, 300)}`);
  assert(res.headers.get('content-type')?.startsWith('text/html'), `content-type ${res.headers.get('content-type')}`);
  return parseForm(html, authUrl);
}

// Posts a page's form back as the browser does: same-origin, with the cookies.
async function submit(jar, form, fields) {
  const res = await fetch(form.action, {
    method: 'POST',
    redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded', origin: BASE, cookie: jar.header() },
    body: new URLSearchParams({ ...hidden(form), ...fields }),
  });
  jar.take(res);
  return res;
}

// The redirect back to the client: its status and Location (a URL under `redirect`).
function redirectedTo(res, status, redirect = REDIRECT) {
  const location = res.headers.get('location');
  assert(res.status === status, `expected ${status}, got ${res.status} (Location ${location})`);
  assert(location?.startsWith(`${redirect}?`), `Location ${location} is not under ${redirect}`);
  return new URL(location);
}

// A fresh authorization request: PKCE S256 and state made by the library.
async function request(config, extra = {}) {
  const pkceCodeVerifier = client.randomPKCECodeVerifier();
  const expectedState = client.randomState();
  const authUrl = client.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT,
    code_challenge: await client.calculatePKCECodeChallenge(pkceCodeVerifier),
    code_challenge_method: 'S256',
    state: expectedState,
    ...extra,
  });
  return { authUrl, checks: { pkceCodeVerifier, expectedState } };
}

// A signed-in browser's request for a first-party client: the code at once (302).
async function ssoCode(jar, config, extra = {}) {
  const req = await request(config, extra);
  const res = await browse(jar, req.authUrl);
  return { ...req, callback: redirectedTo(res, 302, extra.redirect_uri ?? REDIRECT) };
}

// -------------------------------------------------------------------------------- tests

test('discovery_lists_the_code_flow_and_a_user_registers', async () => {
  assert(THIRD_PARTY && JWT_CLIENT_ID && JWT_KEY_FILE && JWT_KID, 'INTEROP_THIRD_PARTY_CLIENT_ID / INTEROP_JWT_* are not set');
  // The default discovery reads /.well-known/openid-configuration; the RFC 8414
  // document must say the same about the code flow.
  ctx.native = await discover(NATIVE);
  const oauth2 = (await discover(NATIVE, client.None(), 'oauth2')).serverMetadata();
  for (const md of [ctx.native.serverMetadata(), oauth2]) {
    assert(md.issuer === BASE, `issuer ${md.issuer}`);
    assert(md.authorization_endpoint === `${BASE}/oauth/authorize`, `authorization_endpoint ${md.authorization_endpoint}`);
    assert(JSON.stringify(md.response_types_supported) === '["code"]', `response_types ${md.response_types_supported}`);
    // S256 only: a client that reads this never falls back to plain.
    assert(JSON.stringify(md.code_challenge_methods_supported) === '["S256"]', `methods ${md.code_challenge_methods_supported}`);
    assert(md.authorization_response_iss_parameter_supported === true, 'iss parameter not announced');
    for (const g of ['authorization_code', 'refresh_token', 'client_credentials']) {
      assert(md.grant_types_supported?.includes(g), `${g}: ${md.grant_types_supported}`);
    }
    for (const m of ['none', 'private_key_jwt']) {
      assert(md.token_endpoint_auth_methods_supported?.includes(m), `${m}: ${md.token_endpoint_auth_methods_supported}`);
    }
    assert(md.token_endpoint_auth_signing_alg_values_supported?.includes('ES256'), `${md.token_endpoint_auth_signing_alg_values_supported}`);
  }
  ctx.jwks = createRemoteJWKSet(new URL(ctx.native.serverMetadata().jwks_uri));

  ctx.email = `node-code-${randomBytes(6).toString('hex')}@example.com`;
  ctx.password = `node code flow ${randomBytes(9).toString('base64url')}`;
  const res = await fetch(url('/v1/users'), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: ctx.email, password: ctx.password }),
  });
  const body = await res.json();
  assert(res.status === 201 && body.id, `registration: ${res.status} ${JSON.stringify(body)}`);
  ctx.userId = body.id;
});

test('wrong_password_shows_the_form_again_without_a_code', async () => {
  const jar = new Jar();
  const { authUrl } = await request(ctx.native);
  const form = await page(jar, authUrl);
  const res = await submit(jar, form, { username: ctx.email, password: `${ctx.password}x` });
  assert(res.status === 400, `status ${res.status} (Location ${res.headers.get('location')})`);
  assert(res.headers.get('content-type')?.startsWith('text/html'), `content-type ${res.headers.get('content-type')}`);
  assert(res.headers.get('location') === null, 'a redirect after a wrong password');
  assert(!jar.cookies.has('__Host-session'), 'signed in with a wrong password');
  // The form again, with the request still in it.
  const again = parseForm(await res.text(), form.action);
  assert(hidden(again).state === hidden(form).state && 'password' in again.fields, JSON.stringify(again.fields));
});

test('sign_in_form_then_authorization_code_grant_with_pkce', async () => {
  ctx.jar = new Jar();
  const { authUrl, checks } = await request(ctx.native);
  assert(authUrl.searchParams.get('code_challenge_method') === 'S256', String(authUrl));
  const form = await page(ctx.jar, authUrl);
  // The request travels in the form: the page must carry it back unchanged.
  const h = hidden(form);
  for (const name of ['response_type', 'client_id', 'redirect_uri', 'state', 'code_challenge', 'code_challenge_method']) {
    assert(h[name] === authUrl.searchParams.get(name), `hidden ${name}=${h[name]}, sent ${authUrl.searchParams.get(name)}`);
  }
  assert(h.csrf, 'no csrf field');
  assert(form.action.href === `${BASE}/oauth/authorize`, `form action ${form.action}`);
  assert(ctx.jar.cookies.has('__Host-form'), 'no __Host-form cookie');
  assert(form.fields.username && form.fields.password?.type === 'password', JSON.stringify(form.fields));

  const res = await submit(ctx.jar, form, { username: ctx.email, password: ctx.password });
  const callback = redirectedTo(res, 303);
  assert(ctx.jar.cookies.has('__Host-session'), 'no __Host-session cookie after signing in');
  // RFC 9207: iss byte for byte (the library checks it too); state unchanged.
  assert(callback.searchParams.get('iss') === BASE, `iss ${callback.searchParams.get('iss')}`);
  assert(callback.searchParams.get('state') === checks.expectedState, `state ${callback.searchParams.get('state')}`);

  const { result: tokens, sent } = await recorded(ctx.native, () => client.authorizationCodeGrant(ctx.native, callback, checks));
  // What the library sent: a public client's exchange (RFC 7636 §4.5).
  assert(sent.length === 1, `requests ${sent.length}`);
  const b = sent[0].body;
  assert(b.get('grant_type') === 'authorization_code' && b.get('code') === callback.searchParams.get('code'), String(b));
  assert(b.get('redirect_uri') === REDIRECT && b.get('client_id') === NATIVE, String(b));
  assert(b.get('code_verifier') === checks.pkceCodeVerifier && !b.has('client_secret'), String(b));
  const claims = await assertUserTokens(tokens, NATIVE);
  assert(claims.sid, `no sid in a user's token: ${JSON.stringify(claims)}`);
  ctx.callback = callback;
  ctx.checks = checks;
  ctx.tokens = tokens;
});

test('refresh_token_grant_rotates_and_the_token_reaches_v1_me', async () => {
  const tokens = await client.refreshTokenGrant(ctx.native, ctx.tokens.refresh_token);
  const claims = await assertUserTokens(tokens, NATIVE);
  assert(tokens.refresh_token !== ctx.tokens.refresh_token, 'the refresh token did not rotate');
  assert(claims.sid === decodeJwt(ctx.tokens.access_token).sid, 'a refresh started another session');
  const res = await client.fetchProtectedResource(ctx.native, tokens.access_token, url('/v1/me'), 'GET');
  const me = await res.json();
  assert(res.status === 200 && me.email === ctx.email && me.id === ctx.userId, `/v1/me ${res.status} ${JSON.stringify(me)}`);
  ctx.refreshed = tokens;
});

test('reused_code_is_invalid_grant_and_ends_what_it_gave', async () => {
  await tokenRefusal(client.authorizationCodeGrant(ctx.native, ctx.callback, ctx.checks), 'invalid_grant');
  // RFC 6749 §4.1.2 (SHOULD) and RFC 9700 §4.5: a code used twice may be stolen; the
  // session it started ends, its refresh tokens with it.
  await tokenRefusal(client.refreshTokenGrant(ctx.native, ctx.refreshed.refresh_token), 'invalid_grant');
});

test('wrong_state_is_refused_by_the_library_before_the_exchange', async () => {
  const { callback, checks } = await ssoCode(ctx.jar, ctx.native);
  const { result: e, sent } = await recorded(ctx.native, () =>
    refusal(client.authorizationCodeGrant(ctx.native, callback, { ...checks, expectedState: client.randomState() }), client.ClientError),
  );
  assert(e.code === 'OAUTH_INVALID_RESPONSE' && /state/.test(e.cause?.message), `${e.code}: ${e.cause?.message}`);
  assert(sent.length === 0, 'the library sent the code despite the wrong state');
  // The code was never spent: with the right state it works.
  await assertUserTokens(await client.authorizationCodeGrant(ctx.native, callback, checks), NATIVE);
});

test('prompt_none_with_the_session_cookie_answers_a_code_without_a_form', async () => {
  const { callback, checks } = await ssoCode(ctx.jar, ctx.native, { prompt: 'none' });
  assert(callback.searchParams.get('code') && !callback.searchParams.get('error'), String(callback));
  await assertUserTokens(await client.authorizationCodeGrant(ctx.native, callback, checks), NATIVE);
  // Control: the same request from a browser without the cookie is login_required,
  // redirected (with iss and state, which the library checks before the error).
  const req = await request(ctx.native, { prompt: 'none' });
  const res = await browse(new Jar(), req.authUrl);
  await authorizationError(client.authorizationCodeGrant(ctx.native, redirectedTo(res, 302), req.checks), 'login_required');
});

test('any_loopback_port_and_ipv6_loopback_match_another_path_does_not', async () => {
  const other = `http://127.0.0.1:${PORT === 65000 ? 65001 : PORT + 1}/callback`;
  const v6 = `http://[::1]:${PORT}/callback`;
  for (const redirect of [other, v6]) {
    const { callback, checks } = await ssoCode(ctx.jar, ctx.native, { redirect_uri: redirect });
    await assertUserTokens(await client.authorizationCodeGrant(ctx.native, callback, checks), NATIVE);
  }
  // Control: a path that is not registered is a page of the issuer, never a redirect.
  const req = await request(ctx.native, { redirect_uri: `http://127.0.0.1:${PORT}/elsewhere` });
  const res = await browse(ctx.jar, req.authUrl);
  assert(res.status === 400 && res.headers.get('location') === null, `status ${res.status} Location ${res.headers.get('location')}`);
  assert(res.headers.get('content-type')?.startsWith('text/html'), `content-type ${res.headers.get('content-type')}`);
});

test('third_party_client_asks_consent_remembers_it_and_forgets_it', async () => {
  const config = await discover(THIRD_PARTY);
  // Signed in already, but not first-party: the consent page, not a code.
  const req = await request(config);
  const form = await page(ctx.jar, req.authUrl);
  assert(!('password' in form.fields), 'a sign-in form for a signed-in browser');
  const decisions = form.buttons.filter((b) => b.name === 'decision').map((b) => b.value);
  assert(decisions.includes('allow') && decisions.includes('deny'), `buttons ${JSON.stringify(form.buttons)}`);
  const callback = redirectedTo(await submit(ctx.jar, form, { decision: 'allow' }), 303);
  const tokens = await client.authorizationCodeGrant(config, callback, req.checks);
  await assertUserTokens(tokens, THIRD_PARTY);

  // A native client is asked every time (RFC 8252 §8.6: any app on the device could
  // claim its id and a loopback port): prompt=none is consent_required, not a code.
  const again = await request(config, { prompt: 'none' });
  await authorizationError(client.authorizationCodeGrant(config, redirectedTo(await browse(ctx.jar, again.authUrl), 302), again.checks), 'consent_required');

  // The user sees it among their consents and takes it back.
  const mine = await client.fetchProtectedResource(config, tokens.access_token, url('/v1/me/consents'), 'GET');
  const list = await mine.json();
  assert(mine.status === 200 && list.some((c) => c.client_id === THIRD_PARTY), `consents ${mine.status} ${JSON.stringify(list)}`);
  const gone = await client.fetchProtectedResource(config, tokens.access_token, url(`/v1/me/consents/${THIRD_PARTY}`), 'DELETE');
  assert(gone.status === 204, `DELETE consent: ${gone.status} ${await gone.text()}`);
  // Taking it back ends the client's sessions of this user and forgets the consent.
  await tokenRefusal(client.refreshTokenGrant(config, tokens.refresh_token), 'invalid_grant');
  const fresh = await ssoCode(ctx.jar, ctx.native);
  const own = await client.authorizationCodeGrant(ctx.native, fresh.callback, fresh.checks);
  const mineNow = await client.fetchProtectedResource(ctx.native, own.access_token, url('/v1/me/consents'), 'GET');
  const left = await mineNow.json();
  assert(mineNow.status === 200 && !left.some((c) => c.client_id === THIRD_PARTY), `consents after DELETE ${mineNow.status} ${JSON.stringify(left)}`);
});

test('third_party_consent_denied_is_access_denied', async () => {
  const config = await discover(THIRD_PARTY);
  const req = await request(config);
  const form = await page(ctx.jar, req.authUrl);
  const res = await submit(ctx.jar, form, { decision: 'deny' });
  await authorizationError(client.authorizationCodeGrant(config, redirectedTo(res, 303), req.checks), 'access_denied');
});

// ------------------------------------------------------------------ private_key_jwt

// The key run.sh made; its public half is interop-jwt's jwks.
const jwtKey = async () => ({ key: await importPKCS8(readFileSync(JWT_KEY_FILE, 'utf8'), 'ES256'), kid: JWT_KID });

// The invalid_client refusal (RFC 6749 §5.2): 401 with the error in the body. A 401
// carries a WWW-Authenticate (RFC 9110 §11.6.1; here `Basic`), so oauth4webapi throws
// its challenge error before it reads the body; the body must say invalid_client.
async function invalidClient(promise) {
  let e;
  try {
    e = await promise;
  } catch (err) {
    e = err;
  }
  let error;
  if (e instanceof client.ResponseBodyError) {
    error = e.error;
  } else if (e instanceof client.WWWAuthenticateChallengeError) {
    error = (await e.response.json()).error;
  } else {
    throw new Error(`expected an invalid_client refusal, got ${e?.name ?? JSON.stringify(e)}: ${e?.message}`, { cause: e });
  }
  assert(e.status === 401 && error === 'invalid_client', `expected 401 invalid_client, got ${e.status} ${error}`);
}

test('private_key_jwt_client_credentials', async () => {
  ctx.jwtConfig = await discover(JWT_CLIENT_ID, client.PrivateKeyJwt(await jwtKey()));
  const { result: tokens, sent } = await recorded(ctx.jwtConfig, () => client.clientCredentialsGrant(ctx.jwtConfig));
  assert(sent.length === 1, `requests ${sent.length}`);
  const b = sent[0].body;
  assert(b.get('client_assertion_type') === 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', String(b));
  assert(!b.has('client_secret'), String(b));
  const header = decodeProtectedHeader(b.get('client_assertion'));
  const assertion = decodeJwt(b.get('client_assertion'));
  assert(header.alg === 'ES256' && header.kid === JWT_KID, `header ${JSON.stringify(header)}`);
  assert(assertion.iss === JWT_CLIENT_ID && assertion.sub === JWT_CLIENT_ID && assertion.jti, JSON.stringify(assertion));
  assert(tokens.token_type === 'bearer' && tokens.refresh_token === undefined, JSON.stringify(tokens));
  const claims = await verify(tokens.access_token, ORDERS);
  assert(claims.sub === JWT_CLIENT_ID && claims.client_id === JWT_CLIENT_ID, JSON.stringify(claims));
  assert(claims.scope === 'orders:read', `scope ${claims.scope}`);
  ctx.usedAssertion = { url: sent[0].url, body: String(b) };
});

test('replayed_assertion_jti_is_invalid_client', async () => {
  // The very request that got a token, sent again by hand: its jti is used up.
  const res = await fetch(ctx.usedAssertion.url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
    body: ctx.usedAssertion.body,
  });
  const body = await res.json();
  assert(res.status === 401 && body.error === 'invalid_client', `replay: ${res.status} ${JSON.stringify(body)}`);
  assert(body.access_token === undefined, 'a replayed assertion got a token');
});

test('assertion_aud_must_name_this_issuer_or_its_token_endpoint', async () => {
  const withAud = async (aud) =>
    discover(JWT_CLIENT_ID, client.PrivateKeyJwt(await jwtKey(), { [client.modifyAssertion]: (_h, p) => { p.aud = aud; } }));
  await invalidClient(client.clientCredentialsGrant(await withAud('https://other.example')));
  await invalidClient(client.clientCredentialsGrant(await withAud(`${BASE}/oauth/introspect`)));
  // Control: the token endpoint is the other audience RFC 7523 §3 allows.
  const tokens = await client.clientCredentialsGrant(await withAud(`${BASE}/oauth/token`));
  assert((await verify(tokens.access_token, ORDERS)).sub === JWT_CLIENT_ID, 'token endpoint aud');
});

test('assertion_signed_by_another_key_is_invalid_client', async () => {
  // The same kid, another key: only the configured public key verifies.
  const { privateKey } = await generateKeyPair('ES256');
  await invalidClient(client.clientCredentialsGrant(await discover(JWT_CLIENT_ID, client.PrivateKeyJwt({ key: privateKey, kid: JWT_KID }))));
});

// --------------------------------------------------------------------------------- main

const SETUP = new Set(['discovery_lists_the_code_flow_and_a_user_registers', 'sign_in_form_then_authorization_code_grant_with_pkce']);
let passed = 0;
let failed = 0;
for (const [i, { name, fn }] of tests.entries()) {
  const started = performance.now();
  try {
    await fn();
    passed += 1;
    console.log(`ok   ${name} (${Math.round(performance.now() - started)} ms)`);
  } catch (e) {
    failed += 1;
    const cause = e?.cause ? `\n  cause: ${JSON.stringify(e.cause, null, 1)?.slice(0, 2000)}` : '';
    console.log(`FAIL ${name}: ${e?.stack ?? e}${cause}`);
    if (SETUP.has(name)) {
      console.log('node-code: setup failed; the remaining tests need it');
      failed += tests.length - i - 1;
      break;
    }
  }
}
console.log(`node-code: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
