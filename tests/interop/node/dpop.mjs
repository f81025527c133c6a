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
// (`use_dpop_nonce`, RFC 9449 §8 and §9), so nothing here handles nonces. Besides the
// client's view, oauth4webapi's validateJwtAccessToken checks the bound access token
// and the library's own proof the way a resource server would (RFC 9068 and §7.1).
//
// Prints one line per test and ends with `node-dpop: N passed, N failed`; exits 1 on
// failure.

import { randomBytes, randomUUID } from 'node:crypto';

import { calculateJwkThumbprint, decodeJwt, exportJWK } from 'jose';
import * as oauth from 'oauth4webapi';
import * as client from 'openid-client';

const BASE = process.env.INTEROP_BASE_URL.replace(/\/+$/, '');
const CLIENT_ID = 'dev'; // the built-in development config's body-mode (mobile) client, public
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
async function withFetch(fetchImpl, fn) {
  ctx.config[client.customFetch] = fetchImpl;
  try {
    return await fn();
  } finally {
    ctx.config[client.customFetch] = undefined;
  }
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
