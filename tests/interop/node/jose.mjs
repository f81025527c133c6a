// Independent-client interoperability: npm `jose` verifies token-issuer's access tokens.
//
// Run by tests/interop/run.sh against a live server (no mock):
//   INTEROP_BASE_URL=http://127.0.0.1:PORT INTEROP_KEYS_DIR=/path/to/keys node jose.mjs
//
// The JWKS is found through the RFC 8414 metadata (`jwks_uri`) and fed to
// createRemoteJWKSet; jwtVerify is pinned to RS256 and requires our issuer, our
// audience and `typ: at+jwt` (RFC 9068). Forged tokens must be refused by jose and,
// sent to GET /v1/me, by the server too. The "signed with our key" cases read the
// server's active private key from INTEROP_KEYS_DIR to make tokens whose signature is
// valid but whose claims are wrong: only those show that the claims are checked.
//
// Prints one line per test and ends with `node: N passed, N failed`; exits 1 on failure.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createHmac, randomBytes, randomUUID } from 'node:crypto';

import {
  SignJWT,
  base64url,
  createRemoteJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  errors,
  exportSPKI,
  generateKeyPair,
  importJWK,
  importPKCS8,
  jwtVerify,
} from 'jose';

const BASE = process.env.INTEROP_BASE_URL.replace(/\/+$/, '');
const KEYS_DIR = process.env.INTEROP_KEYS_DIR;
const CLIENT_ID = 'dev'; // the built-in development config's body-mode (mobile) client
const TIMEOUT_MS = 10_000;

// ----------------------------------------------------------------------------- harness

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

const ctx = {};

const b64json = (obj) => base64url.encode(JSON.stringify(obj));

async function http(path, init = {}) {
  const url = path.startsWith('http') ? path : `${BASE}${path}`;
  return fetch(url, { ...init, signal: AbortSignal.timeout(TIMEOUT_MS) });
}

async function form(url, params) {
  const res = await http(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
    body: new URLSearchParams(params),
  });
  return { status: res.status, body: await res.json() };
}

// How a Node resource server should verify our access tokens (RFC 9068).
function verify(token, overrides = {}) {
  return jwtVerify(token, ctx.jwks, {
    algorithms: ['RS256'],
    issuer: ctx.issuer,
    audience: ctx.audience,
    typ: 'at+jwt',
    requiredClaims: ['exp', 'iat', 'nbf', 'iss', 'aud', 'sub', 'jti', 'client_id'],
    ...overrides,
  });
}

async function refusedByJose(token, codes, overrides = {}) {
  let result;
  try {
    result = await verify(token, overrides);
  } catch (e) {
    if (!codes.includes(e.code)) {
      throw new Error(`jose refused with ${e.code ?? e.name}: ${e.message}; expected one of ${codes}`);
    }
    return e;
  }
  throw new Error(`jose accepted a forged token: ${JSON.stringify(result.payload)}`);
}

async function refusedByServer(token) {
  const res = await http('/v1/me', { headers: { authorization: `Bearer ${token}` } });
  const body = await res.json();
  assert(res.status === 401, `server answered ${res.status} to a forged token: ${JSON.stringify(body)}`);
  assert(body.error === 'invalid_token', JSON.stringify(body));
  assert((res.headers.get('www-authenticate') ?? '').includes('error="invalid_token"'), 'WWW-Authenticate');
}

const kidOf = (token) => decodeProtectedHeader(token).kid;
const genuineClaims = () => decodeJwt(ctx.tokens.access_token);

async function ourPrivateKey() {
  assert(KEYS_DIR, 'INTEROP_KEYS_DIR is not set');
  const kid = kidOf(ctx.tokens.access_token);
  const pem = await readFile(join(KEYS_DIR, `${kid}.pem`), 'utf8');
  return { kid, key: await importPKCS8(pem, 'RS256') };
}

async function signWithOurKey(claims, header = {}) {
  const { kid, key } = await ourPrivateKey();
  return new SignJWT(claims).setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid, ...header }).sign(key);
}

// -------------------------------------------------------------------------------- tests

test('rfc8414_metadata_names_the_jwks_uri', async () => {
  const res = await http('/.well-known/oauth-authorization-server');
  assert(res.status === 200, `metadata status ${res.status}`);
  const md = await res.json();
  assert(md.issuer === BASE, `issuer ${md.issuer} != ${BASE}`);
  assert(md.jwks_uri?.startsWith(`${BASE}/`), `jwks_uri ${md.jwks_uri}`);
  assert(md.token_endpoint?.startsWith(`${BASE}/`), `token_endpoint ${md.token_endpoint}`);
  ctx.metadata = md;
  ctx.issuer = md.issuer;
  ctx.audience = process.env.INTEROP_AUDIENCE ?? md.issuer;
  ctx.jwks = createRemoteJWKSet(new URL(md.jwks_uri), { timeoutDuration: TIMEOUT_MS });
});

test('password_grant_for_a_new_user', async () => {
  ctx.email = `interop-node-${randomUUID().slice(0, 12)}@example.com`;
  ctx.password = `interop node ${randomBytes(18).toString('base64url')}`;
  const reg = await http('/v1/users', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: ctx.email, password: ctx.password }),
  });
  const user = await reg.json();
  assert(reg.status === 201, `register: ${reg.status} ${JSON.stringify(user)}`);
  ctx.userId = user.id;
  const { status, body } = await form(ctx.metadata.token_endpoint, {
    grant_type: 'password',
    client_id: CLIENT_ID,
    username: ctx.email,
    password: ctx.password,
  });
  assert(status === 200, `password grant: ${status} ${JSON.stringify(body)}`);
  assert(body.token_type === 'Bearer' && body.refresh_token, JSON.stringify(body));
  ctx.tokens = body;
});

test('jose_verifies_a_minted_access_token_through_discovery', async () => {
  const { payload, protectedHeader } = await verify(ctx.tokens.access_token);
  assert(protectedHeader.alg === 'RS256', `alg ${protectedHeader.alg}`);
  assert(protectedHeader.typ === 'at+jwt', `typ ${protectedHeader.typ}`);
  assert(protectedHeader.kid, 'kid');
  assert(payload.sub === ctx.userId, `sub ${payload.sub}`);
  assert(payload.client_id === CLIENT_ID, `client_id ${payload.client_id}`);
  assert(payload.sid, 'sid');
  assert(payload.exp - payload.iat === ctx.tokens.expires_in, 'exp - iat == expires_in');
});

test('refresh_rotates_and_the_new_access_token_verifies', async () => {
  const old = ctx.tokens;
  const { status, body } = await form(ctx.metadata.token_endpoint, {
    grant_type: 'refresh_token',
    client_id: CLIENT_ID,
    refresh_token: old.refresh_token,
  });
  assert(status === 200, `refresh: ${status} ${JSON.stringify(body)}`);
  assert(body.refresh_token && body.refresh_token !== old.refresh_token, 'the refresh token did not rotate');
  const [n, o] = await Promise.all([verify(body.access_token), verify(old.access_token)]);
  assert(n.payload.sid === o.payload.sid, 'a refresh must stay in the same session');
  assert(n.payload.jti !== o.payload.jti, 'a new jti');
  ctx.tokens = body;
});

test('verifier_expecting_another_audience_issuer_or_typ_refuses', async () => {
  const at = ctx.tokens.access_token;
  const claim = errors.JWTClaimValidationFailed.code;
  await refusedByJose(at, [claim], { audience: 'https://orders.example.com' });
  await refusedByJose(at, [claim], { issuer: 'https://evil.example.com' });
  await refusedByJose(at, [claim], { typ: 'JWT' });
});

// Forgeries: each must be refused by jose *and* by the server.

test('forged_resigned_with_a_foreign_rsa_key_under_our_kid', async () => {
  const { privateKey } = await generateKeyPair('RS256');
  const forged = await new SignJWT(genuineClaims())
    .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: kidOf(ctx.tokens.access_token) })
    .sign(privateKey);
  await refusedByJose(forged, [errors.JWSSignatureVerificationFailed.code]);
  await refusedByServer(forged);
});

test('forged_unknown_kid', async () => {
  const { privateKey } = await generateKeyPair('RS256');
  const forged = await new SignJWT(genuineClaims())
    .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: 'attacker' })
    .sign(privateKey);
  await refusedByJose(forged, [errors.JWKSNoMatchingKey.code]);
  await refusedByServer(forged);
});

test('forged_payload_tampered_signature_kept', async () => {
  const [h, , s] = ctx.tokens.access_token.split('.');
  const forged = `${h}.${b64json({ ...genuineClaims(), sub: randomUUID() })}.${s}`;
  await refusedByJose(forged, [errors.JWSSignatureVerificationFailed.code]);
  await refusedByServer(forged);
});

test('forged_alg_none', async () => {
  const kid = kidOf(ctx.tokens.access_token);
  for (const alg of ['none', 'None', 'NONE']) {
    const forged = `${b64json({ alg, typ: 'at+jwt', kid })}.${b64json(genuineClaims())}.`;
    await refusedByJose(forged, [errors.JOSEAlgNotAllowed.code, errors.JWSInvalid.code]);
    await refusedByServer(forged);
  }
});

test('forged_hs256_keyed_with_our_public_key', async () => {
  const kid = kidOf(ctx.tokens.access_token);
  const jwksText = await (await http(ctx.metadata.jwks_uri)).text();
  const jwk = JSON.parse(jwksText).keys.find((k) => k.kid === kid);
  const spki = await exportSPKI(await importJWK(jwk, 'RS256'));
  for (const secret of [spki, spki.trim(), jwksText]) {
    const input = `${b64json({ alg: 'HS256', typ: 'at+jwt', kid })}.${b64json(genuineClaims())}`;
    const forged = `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
    await refusedByJose(forged, [errors.JOSEAlgNotAllowed.code]);
    await refusedByServer(forged);
  }
});

test('signed_with_our_key_but_wrong_aud', async () => {
  const forged = await signWithOurKey({ ...genuineClaims(), aud: 'https://orders.example.com' });
  await refusedByJose(forged, [errors.JWTClaimValidationFailed.code]);
  await refusedByServer(forged);
});

test('signed_with_our_key_but_wrong_iss', async () => {
  const forged = await signWithOurKey({ ...genuineClaims(), iss: 'https://evil.example.com' });
  await refusedByJose(forged, [errors.JWTClaimValidationFailed.code]);
  await refusedByServer(forged);
});

test('signed_with_our_key_but_expired', async () => {
  const now = Math.floor(Date.now() / 1000);
  const forged = await signWithOurKey({ ...genuineClaims(), iat: now - 3600, nbf: now - 3600, exp: now - 1200 });
  await refusedByJose(forged, [errors.JWTExpired.code]);
  await refusedByServer(forged);
});

test('signed_with_our_key_but_typ_jwt', async () => {
  const forged = await signWithOurKey(genuineClaims(), { typ: 'JWT' });
  await refusedByJose(forged, [errors.JWTClaimValidationFailed.code]);
  await refusedByServer(forged);
});

test('signed_with_our_key_but_without_jti', async () => {
  const { jti, ...claims } = genuineClaims();
  assert(jti, 'the genuine token has a jti');
  const forged = await signWithOurKey(claims);
  await refusedByJose(forged, [errors.JWTClaimValidationFailed.code]);
  await refusedByServer(forged);
});

test('control_signed_with_our_key_is_accepted', async () => {
  // The forging helper itself makes tokens both verifiers accept, so each refusal
  // above is caused by the one thing the case changed.
  const token = await signWithOurKey(genuineClaims());
  await verify(token);
  const res = await http('/v1/me', { headers: { authorization: `Bearer ${token}` } });
  assert(res.status === 200, `server answered ${res.status} to the control token`);
});

// --------------------------------------------------------------------------------- main

const SETUP = new Set(['rfc8414_metadata_names_the_jwks_uri', 'password_grant_for_a_new_user']);
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
    console.log(`FAIL ${name}: ${e?.stack ?? e}`);
    if (SETUP.has(name)) {
      console.log('node: setup failed; the remaining tests need it');
      failed += tests.length - i - 1;
      break;
    }
  }
}
console.log(`node: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
