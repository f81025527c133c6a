// Independent-client interoperability: a DPoP client (RFC 9449) made of panva's
// openid-client 6 (on oauth4webapi 3), using the libraries' own DPoP support.
//
// Run by tests/interop/run.sh against a live server (no mock):
//   INTEROP_BASE_URL=http://127.0.0.1:PORT node dpop.mjs
//
// The client finds the server through the RFC 8414 metadata, logs in with the password
// grant and refreshes with a DPoP handle (an ES256 key pair whose private key is not
// extractable), calls /v1 with `Authorization: DPoP`, and ends sessions with logout and
// RFC 7009 revocation. openid-client checks every response the way it would with any
// server (issuer byte for byte, token_type, content types, WWW-Authenticate syntax),
// and, given a DPoP handle, retries once by itself when a server asks for a nonce
// (`use_dpop_nonce`, RFC 9449 §8 and §9), so nothing here handles nonces: with the
// client `dev-nonce` (run.sh's configuration: `dpop_nonce = "required"`) the tests only
// watch, through a custom fetch, that the library's retry is what made the call work.
// Besides the client's view, oauth4webapi's validateJwtAccessToken checks the bound
// access token and the library's own proof the way a resource server would (RFC 9068
// and §7.1).
//
// Prints one line per test and ends with `node-dpop: N passed, N failed`; exits 1 on
// failure.

import { randomBytes, randomUUID } from 'node:crypto';

import { calculateJwkThumbprint, decodeJwt, exportJWK } from 'jose';
import * as oauth from 'oauth4webapi';
import * as client from 'openid-client';

const BASE = process.env.INTEROP_BASE_URL.replace(/\/+$/, '');
const CLIENT_ID = 'dev'; // the built-in development config's body-mode (mobile) client, public
const NONCE_CLIENT_ID = 'dev-nonce'; // run.sh's third client: mobile, body, dpop_nonce = "required"
const TIMEOUT_S = 10;

// ----------------------------------------------------------------------------- harness

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

const ctx = {};
const url = (path) => new URL(`${BASE}${path}`);

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
async function tokenRefusal(promise, error, reason) {
  const e = await refusal(promise, client.ResponseBodyError);
  assert(e.status === 400 && e.error === error, `expected 400 ${error}, got ${e.status} ${JSON.stringify(e.cause)}`);
  if (reason) assert(e.cause.error_reason === reason, `error_reason ${JSON.stringify(e.cause)}`);
  return e;
}

// A protected-resource refusal as openid-client reports it: a 401 whose WWW-Authenticate
// the library parsed into challenges ({ scheme, parameters }, scheme lower-cased).
async function resourceRefusal(promise, error, scheme = 'dpop') {
  const e = await refusal(promise, client.WWWAuthenticateChallengeError);
  assert(e.status === 401, `status ${e.status}`);
  const by = Object.fromEntries(e.cause.map((c) => [c.scheme, c.parameters]));
  assert(by[scheme]?.error === error, `expected ${scheme} error=${error}: ${JSON.stringify(e.cause)}`);
  const algs = new Set(by.dpop?.algs?.split(' '));
  assert(algs.has('ES256') && algs.has('EdDSA'), `DPoP algs: ${JSON.stringify(e.cause)}`);
  return by;
}

const login = (dpop) =>
  client.genericGrantRequest(ctx.config, 'password', { username: ctx.email, password: ctx.password }, { DPoP: dpop });

const refresh = (refreshToken, dpop) => client.refreshTokenGrant(ctx.config, refreshToken, undefined, { DPoP: dpop });

const call = (accessToken, method, path, dpop) =>
  client.fetchProtectedResource(ctx.config, accessToken, url(path), method, undefined, undefined, { DPoP: dpop });

async function newHandle() {
  const keyPair = await client.randomDPoPKeyPair('ES256');
  assert(!keyPair.privateKey.extractable, 'the private key is not extractable');
  const jkt = await calculateJwkThumbprint(await exportJWK(keyPair.publicKey), 'sha256');
  return { dpop: client.getDPoPHandle(ctx.config, keyPair), jkt };
}

// What a bound token response must be: token_type DPoP (the library lower-cases it),
// an access token whose cnf.jkt is our key's RFC 7638 thumbprint, a refresh token.
function assertBound(tokens, key) {
  assert(tokens.token_type === 'dpop', `token_type ${tokens.token_type}`);
  assert(tokens.refresh_token, 'no refresh token');
  const claims = decodeJwt(tokens.access_token);
  assert(claims.cnf?.jkt === key.jkt, `cnf ${JSON.stringify(claims.cnf)} != our thumbprint ${key.jkt}`);
  return claims;
}

// Runs `fn` with the configuration's fetch replaced (openid-client's customFetch).
async function withFetch(fetchImpl, fn, config = ctx.config) {
  config[client.customFetch] = fetchImpl;
  try {
    return await fn();
  } finally {
    config[client.customFetch] = undefined;
  }
}

// Runs `fn` with every exchange of `config` recorded: [{ proof (its claims, or
// undefined), status, nonce (the answer's DPoP-Nonce), challenge (WWW-Authenticate) }].
async function recorded(config, fn) {
  const sent = [];
  const recorder = async (input, init) => {
    const proof = new Request(input, init).headers.get('dpop');
    const res = await fetch(input, init);
    sent.push({
      proof: proof ? decodeJwt(proof) : undefined,
      status: res.status,
      nonce: res.headers.get('dpop-nonce'),
      challenge: res.headers.get('www-authenticate'),
    });
    return res;
  };
  const result = await withFetch(recorder, fn, config);
  return { result, sent };
}

// RFC 9449 §8.1: DPoP-Nonce = *nchar; nchar = %x21 / %x23-5B / %x5D-7E (we want one).
const NONCE_SYNTAX = /^[\x21\x23-\x5b\x5d-\x7e]+$/;

// The library's nonce retry, as recorded: two exchanges, the first refused with
// `refusal` (status) and a DPoP-Nonce, its proof without a nonce (or with `firstNonce`),
// the second's proof carrying exactly that DPoP-Nonce.
function assertNonceRetry(sent, refusal, firstNonce = undefined) {
  const what = JSON.stringify(sent);
  assert(sent.length === 2, `expected the refused request and the library's retry: ${what}`);
  const [first, second] = sent;
  assert(first.status === refusal, `first answer ${first.status}, expected ${refusal}: ${what}`);
  assert(first.proof.nonce === firstNonce, `first proof's nonce: ${what}`);
  assert(NONCE_SYNTAX.test(first.nonce ?? ''), `the refusal's DPoP-Nonce: ${what}`);
  assert(second.proof.nonce === first.nonce, `the retry's proof must carry the DPoP-Nonce: ${what}`);
  assert(second.proof.jti !== first.proof.jti, `the retry is a new proof: ${what}`);
  assert(NONCE_SYNTAX.test(second.nonce ?? ''), `the retry's answer has a DPoP-Nonce too: ${what}`);
}

// A handle whose first proof carries `nonce` instead of the library's own (none, or the
// cached one), through oauth4webapi's modifyAssertion hook; later proofs are untouched.
function handleWithFirstNonce(keyPair, nonce) {
  let first = true;
  return client.getDPoPHandle(ctx.nonceConfig, keyPair, {
    [client.modifyAssertion]: (_header, payload) => {
      if (first) payload.nonce = nonce;
      first = false;
    },
  });
}

// -------------------------------------------------------------------------------- tests

test('discovery_through_rfc8414_metadata', async () => {
  ctx.config = await client.discovery(url('/'), CLIENT_ID, undefined, client.None(), {
    algorithm: 'oauth2',
    execute: [client.allowInsecureRequests], // plain http on loopback only
    timeout: TIMEOUT_S,
  });
  const md = ctx.config.serverMetadata();
  assert(md.issuer === BASE, `issuer ${md.issuer}`);
  assert(md.token_endpoint === `${BASE}/oauth/token`, `token_endpoint ${md.token_endpoint}`);
  assert(md.dpop_signing_alg_values_supported?.includes('ES256'), JSON.stringify(md));

  ctx.email = `interop-dpop-node-${randomUUID().slice(0, 12)}@example.com`;
  ctx.password = `interop dpop ${randomBytes(18).toString('base64url')}`;
  const reg = await fetch(`${BASE}/v1/users`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: ctx.email, password: ctx.password }),
    signal: AbortSignal.timeout(TIMEOUT_S * 1000),
  });
  const user = await reg.json();
  assert(reg.status === 201, `register: ${reg.status} ${JSON.stringify(user)}`);
  ctx.userId = user.id;
});

test('password_grant_with_a_dpop_handle_binds_the_tokens', async () => {
  ctx.key = await newHandle();
  assert((await ctx.key.dpop.calculateThumbprint()) === ctx.key.jkt, "the library's thumbprint is jose's");
  const tokens = await login(ctx.key.dpop);
  const claims = assertBound(tokens, ctx.key);
  assert(claims.sub === ctx.userId && claims.client_id === CLIENT_ID, JSON.stringify(claims));
  ctx.tokens = tokens;
});

test('refresh_grant_with_the_handle_rotates_and_stays_bound', async () => {
  const sid = decodeJwt(ctx.tokens.access_token).sid;
  const seen = new Set([ctx.tokens.refresh_token]);
  let tokens = ctx.tokens;
  for (let i = 0; i < 3; i += 1) {
    tokens = await refresh(tokens.refresh_token, ctx.key.dpop);
    assert(assertBound(tokens, ctx.key).sid === sid, 'a refresh must stay in the same session');
    assert(!seen.has(tokens.refresh_token), 'the refresh token did not rotate');
    seen.add(tokens.refresh_token);
  }
  ctx.tokens = tokens;
});

test('protected_resource_request_with_the_dpop_scheme', async () => {
  const sent = [];
  const res = await withFetch(
    (input, init) => {
      sent.push(new Request(input, init));
      return fetch(input, init);
    },
    () => call(ctx.tokens.access_token, 'GET', '/v1/me', ctx.key.dpop),
  );
  const body = await res.text();
  assert(res.status === 200, `GET /v1/me: ${res.status} ${body}`);
  const me = JSON.parse(body);
  assert(me.id === ctx.userId && me.email === ctx.email, JSON.stringify(me));
  assert(sent.length === 1 && sent[0].headers.get('authorization').startsWith('DPoP '), 'one DPoP request');

  // The same request, checked by oauth4webapi as a resource server would: the token
  // (typ at+jwt, RS256 from the JWKS, iss, aud, client_id, cnf) and the library's proof
  // (htm, htu, ath, and its key is the one cnf.jkt names).
  const claims = await oauth.validateJwtAccessToken(ctx.config.serverMetadata(), sent[0], BASE, {
    signingAlgorithms: ['RS256', 'ES256'], // one list for both: the token's and the proof's
    requireDPoP: true,
    [oauth.allowInsecureRequests]: true,
  });
  assert(claims.cnf.jkt === ctx.key.jkt && claims.sub === ctx.userId, JSON.stringify(claims));

  const sessions = await call(ctx.tokens.access_token, 'GET', '/v1/sessions', ctx.key.dpop);
  assert(sessions.status === 200, `GET /v1/sessions: ${sessions.status}`);
  const current = (await sessions.json()).filter((s) => s.current).map((s) => s.id);
  assert(current.length === 1 && current[0] === claims.sid, `current sessions ${current}`);
});

test('replayed_proof_is_refused_by_the_resource', async () => {
  // The library's request is sent twice, proof and all; the library sees the second answer.
  const replaying = async (input, init) => {
    const first = await fetch(input, init);
    assert(first.status === 200, `the first request: ${first.status}`);
    await first.arrayBuffer();
    return fetch(input, init);
  };
  await withFetch(replaying, () =>
    resourceRefusal(call(ctx.tokens.access_token, 'GET', '/v1/me', ctx.key.dpop), 'invalid_dpop_proof'),
  );
});

test('bound_access_token_as_bearer_is_refused', async () => {
  // Without the handle the library sends `Authorization: Bearer`.
  const refused = call(ctx.tokens.access_token, 'GET', '/v1/me', undefined);
  const by = await resourceRefusal(refused, 'invalid_token', 'bearer');
  assert(by.bearer.realm === 'token-issuer', JSON.stringify(by));
});

test('proof_of_another_key_is_refused_by_the_resource', async () => {
  const other = await newHandle();
  await resourceRefusal(call(ctx.tokens.access_token, 'GET', '/v1/me', other.dpop), 'invalid_token');
});

test('refresh_without_the_handle_is_refused_and_the_token_kept', async () => {
  const rt = ctx.tokens.refresh_token;
  await tokenRefusal(refresh(rt, undefined), 'invalid_grant', 'dpop_key_mismatch');
  const tokens = await refresh(rt, ctx.key.dpop);
  assertBound(tokens, ctx.key);
  assert(tokens.refresh_token !== rt, 'rotated');
  ctx.tokens = tokens;
});

test('refresh_with_another_keys_handle_is_refused_and_the_token_kept', async () => {
  const rt = ctx.tokens.refresh_token;
  const thief = await newHandle();
  await tokenRefusal(refresh(rt, thief.dpop), 'invalid_grant', 'dpop_key_mismatch');
  const tokens = await refresh(rt, ctx.key.dpop);
  assertBound(tokens, ctx.key);
  ctx.tokens = tokens;
});

test('logout_with_the_dpop_scheme_ends_the_session', async () => {
  const { access_token: at, refresh_token: rt } = ctx.tokens;
  // The query is not part of the proof's htu (RFC 9449 §4.2); the library leaves it out.
  const res = await call(at, 'POST', '/v1/logout?scope=this', ctx.key.dpop);
  const body = await res.text();
  assert(res.status === 204 && body === '', `POST /v1/logout: ${res.status} ${body}`);
  await tokenRefusal(refresh(rt, ctx.key.dpop), 'invalid_grant', 'revoked');
  await resourceRefusal(call(at, 'GET', '/v1/me', ctx.key.dpop), 'invalid_token');
});

test('rfc7009_revocation_ends_a_bound_session', async () => {
  const key = await newHandle();
  const tokens = await login(key.dpop);
  assertBound(tokens, key);
  // RFC 9449 asks no proof of the revocation endpoint; None() sends the client_id.
  await client.tokenRevocation(ctx.config, tokens.refresh_token, { token_type_hint: 'refresh_token' });
  await tokenRefusal(refresh(tokens.refresh_token, key.dpop), 'invalid_grant', 'revoked');
  await resourceRefusal(call(tokens.access_token, 'GET', '/v1/me', key.dpop), 'invalid_token');
});

// --------------------------------------------------------- server nonces (§8 and §9)
//
// openid-client's grant functions and fetchProtectedResource catch the library's
// isDPoPNonceError (a ResponseBodyError `use_dpop_nonce` from the token endpoint, a
// WWWAuthenticateChallengeError whose DPoP challenge has error="use_dpop_nonce" from a
// resource) and call themselves once more (flag `retry`); the handle caches the last
// DPoP-Nonce per origin (cacheNonce, after every response) and puts it in its next
// proof (addProof).

// The configuration of `dev-nonce`, found like `dev`'s.
async function nonceConfig() {
  ctx.nonceConfig ??= await client.discovery(url('/'), NONCE_CLIENT_ID, undefined, client.None(), {
    algorithm: 'oauth2',
    execute: [client.allowInsecureRequests],
    timeout: TIMEOUT_S,
  });
  return ctx.nonceConfig;
}

// `dev-nonce`'s key and bound tokens: those the test before left, or (when it failed
// before that) a login of its own, so each test fails for what it checks itself.
async function nonceSession() {
  await nonceConfig();
  if (!ctx.nonceKey) {
    const keyPair = await client.randomDPoPKeyPair('ES256');
    const jkt = await calculateJwkThumbprint(await exportJWK(keyPair.publicKey), 'sha256');
    const dpop = client.getDPoPHandle(ctx.nonceConfig, keyPair);
    ctx.nonceTokens = await client.genericGrantRequest(
      ctx.nonceConfig,
      'password',
      { username: ctx.email, password: ctx.password },
      { DPoP: dpop },
    );
    ctx.nonceKey = { keyPair, jkt, dpop };
  }
  return ctx.nonceKey;
}

test('nonce_client_password_grant_is_retried_with_the_servers_nonce', async () => {
  await nonceConfig();
  const keyPair = await client.randomDPoPKeyPair('ES256');
  const jkt = await calculateJwkThumbprint(await exportJWK(keyPair.publicKey), 'sha256');
  const dpop = client.getDPoPHandle(ctx.nonceConfig, keyPair);
  const { result: tokens, sent } = await recorded(ctx.nonceConfig, () =>
    client.genericGrantRequest(
      ctx.nonceConfig,
      'password',
      { username: ctx.email, password: ctx.password },
      { DPoP: dpop },
    ),
  );
  assertNonceRetry(sent, 400);
  const claims = assertBound(tokens, { jkt });
  assert(claims.client_id === NONCE_CLIENT_ID && claims.sub === ctx.userId, JSON.stringify(claims));
  ctx.nonceKey = { keyPair, jkt, dpop };
  ctx.nonceTokens = tokens;
});

test('nonce_client_refresh_uses_the_nonce_of_the_last_answer', async () => {
  await nonceSession();
  const rt = ctx.nonceTokens.refresh_token;
  const { result: tokens, sent } = await recorded(ctx.nonceConfig, () =>
    client.refreshTokenGrant(ctx.nonceConfig, rt, undefined, { DPoP: ctx.nonceKey.dpop }),
  );
  // The handle kept the DPoP-Nonce of the password grant's answer: no refusal this time.
  assert(sent.length === 1 && sent[0].status === 200, JSON.stringify(sent));
  assert(NONCE_SYNTAX.test(sent[0].proof.nonce ?? ''), `the proof's nonce: ${JSON.stringify(sent)}`);
  assert(NONCE_SYNTAX.test(sent[0].nonce ?? ''), `the answer's DPoP-Nonce: ${JSON.stringify(sent)}`);
  assertBound(tokens, ctx.nonceKey);
  assert(tokens.refresh_token !== rt, 'the refresh token did not rotate');
  ctx.nonceTokens = tokens;
});

test('nonce_client_resource_challenge_is_retried_with_the_servers_nonce', async () => {
  // A new handle of the same key has no nonce yet (the cache is the handle's): its first
  // call is answered 401 `WWW-Authenticate: DPoP error="use_dpop_nonce"`.
  const { keyPair } = await nonceSession();
  const dpop = client.getDPoPHandle(ctx.nonceConfig, keyPair);
  const at = ctx.nonceTokens.access_token;
  const { result: res, sent } = await recorded(ctx.nonceConfig, () =>
    client.fetchProtectedResource(ctx.nonceConfig, at, url('/v1/me'), 'GET', undefined, undefined, { DPoP: dpop }),
  );
  assertNonceRetry(sent, 401);
  assert(/^DPoP\b.*\berror="use_dpop_nonce"/.test(sent[0].challenge ?? ''), `challenge: ${sent[0].challenge}`);
  const body = await res.text();
  assert(res.status === 200 && JSON.parse(body).id === ctx.userId, `GET /v1/me: ${res.status} ${body}`);
  // The handle now has a nonce: the next call goes through at once.
  const again = await recorded(ctx.nonceConfig, () =>
    client.fetchProtectedResource(ctx.nonceConfig, at, url('/v1/sessions'), 'GET', undefined, undefined, {
      DPoP: dpop,
    }),
  );
  assert(again.sent.length === 1 && again.result.status === 200, JSON.stringify(again.sent));
});

test('nonce_client_stale_nonce_is_answered_use_dpop_nonce_and_retried', async () => {
  // A nonce the server never gave (it stands in for a stale one: the server's clock
  // cannot be moved from here) is a request for a fresh nonce, not a bad proof: the
  // library retries with the DPoP-Nonce and the call works.
  const stale = 'stale-nonce-stand-in';
  const { keyPair } = await nonceSession();
  const rt = ctx.nonceTokens.refresh_token;
  const refreshed = await recorded(ctx.nonceConfig, () =>
    client.refreshTokenGrant(ctx.nonceConfig, rt, undefined, { DPoP: handleWithFirstNonce(keyPair, stale) }),
  );
  // The retry presented the same refresh token: `dev-nonce` has no grace window in
  // run.sh, so had the refused attempt used it up, the retry would be reuse.
  assertNonceRetry(refreshed.sent, 400, stale);
  assertBound(refreshed.result, ctx.nonceKey);
  assert(refreshed.result.refresh_token !== rt, 'the retry rotated the refresh token');
  ctx.nonceTokens = refreshed.result;

  const at = ctx.nonceTokens.access_token;
  const dpop = handleWithFirstNonce(keyPair, stale);
  const fetched = await recorded(ctx.nonceConfig, () =>
    client.fetchProtectedResource(ctx.nonceConfig, at, url('/v1/me'), 'GET', undefined, undefined, { DPoP: dpop }),
  );
  assertNonceRetry(fetched.sent, 401, stale);
  assert(fetched.result.status === 200, `GET /v1/me: ${fetched.result.status}`);

  // Always stale: the library retries once, then reports the server's use_dpop_nonce
  // (isDPoPNonceError), and nothing was used up (the token refreshes afterwards).
  const alwaysStale = client.getDPoPHandle(ctx.nonceConfig, keyPair, {
    [client.modifyAssertion]: (_header, payload) => {
      payload.nonce = stale;
    },
  });
  const rt2 = ctx.nonceTokens.refresh_token;
  const refused = await recorded(ctx.nonceConfig, () =>
    tokenRefusal(
      client.refreshTokenGrant(ctx.nonceConfig, rt2, undefined, { DPoP: alwaysStale }),
      'use_dpop_nonce',
    ),
  );
  assert(refused.sent.length === 2 && refused.sent.every((x) => x.status === 400), JSON.stringify(refused.sent));
  assert(oauth.isDPoPNonceError(refused.result), 'the library sees a nonce error');
  const tokens = await client.refreshTokenGrant(ctx.nonceConfig, rt2, undefined, { DPoP: ctx.nonceKey.dpop });
  assertBound(tokens, ctx.nonceKey);
  ctx.nonceTokens = tokens;
});

// --------------------------------------------------------------------------------- main

const SETUP = new Set(['discovery_through_rfc8414_metadata', 'password_grant_with_a_dpop_handle_binds_the_tokens']);
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
      console.log('node-dpop: setup failed; the remaining tests need it');
      failed += tests.length - i - 1;
      break;
    }
  }
}
console.log(`node-dpop: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
