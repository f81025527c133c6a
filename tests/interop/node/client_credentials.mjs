// Independent-client interoperability: the client credentials grant (RFC 6749 §4.4)
// as panva's openid-client 6 (on oauth4webapi 3) makes it, with the library's own API
// (discovery, ClientSecretBasic / ClientSecretPost, clientCredentialsGrant,
// tokenIntrospection).
//
// Run by tests/interop/run.sh against a live server (no mock):
//   INTEROP_BASE_URL=http://127.0.0.1:PORT INTEROP_CC_CLIENT_ID=interop-service \
//   INTEROP_CC_CLIENT_SECRET=... node client_credentials.mjs
//
// The client is run.sh's `interop-service`: kind "service", client_credentials = true,
// audiences https://orders.example and https://billing.example, scopes orders:read and
// billing:read, introspection_audiences ["*"]. The access tokens are verified with
// jose against the JWKS the metadata names (RS256, iss, aud, typ at+jwt).
//
// Prints one line per test and ends with `node-cc: N passed, N failed`; exits 1 on
// failure.

import { createRemoteJWKSet, jwtVerify } from 'jose';
import * as client from 'openid-client';

const BASE = process.env.INTEROP_BASE_URL.replace(/\/+$/, '');
const CLIENT_ID = process.env.INTEROP_CC_CLIENT_ID;
const SECRET = process.env.INTEROP_CC_CLIENT_SECRET;
const ORDERS = 'https://orders.example';
const BILLING = 'https://billing.example';
const TIMEOUT_S = 10;

// ----------------------------------------------------------------------------- harness

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

const ctx = {};
const url = (path) => new URL(`${BASE}${path}`);

const discover = (auth) =>
  client.discovery(url('/'), CLIENT_ID, undefined, auth, {
    algorithm: 'oauth2',
    execute: [client.allowInsecureRequests], // plain http on loopback only
    timeout: TIMEOUT_S,
  });

// How a resource server verifies the token (RFC 9068): signature through the JWKS,
// RS256 only, iss, the audience it is, typ at+jwt.
async function verify(token, audience) {
  const { payload, protectedHeader } = await jwtVerify(token, ctx.jwks, {
    issuer: BASE,
    audience,
    algorithms: ['RS256'],
    typ: 'at+jwt',
    requiredClaims: ['exp', 'iat', 'sub', 'jti'],
  });
  assert(protectedHeader.alg === 'RS256', `alg ${protectedHeader.alg}`);
  return payload;
}

const sameSet = (a, b) => a.length === b.length && a.every((x) => b.includes(x));
const scopes = (s) => (s ?? '').split(' ').filter(Boolean);
const auds = (aud) => (Array.isArray(aud) ? aud : [aud]);

// The claims every client-credentials token has: the client is the subject, no session.
function assertServiceClaims(claims) {
  assert(claims.sub === CLIENT_ID, `sub ${claims.sub}`);
  assert(claims.client_id === CLIENT_ID, `client_id ${claims.client_id}`);
  assert(!('sid' in claims), `a sid in a client-credentials token: ${JSON.stringify(claims)}`);
}

function assertTokenResponse(tokens) {
  assert(typeof tokens.access_token === 'string' && tokens.access_token, JSON.stringify(tokens));
  assert(tokens.token_type === 'bearer', `token_type ${tokens.token_type}`);
  assert(Number.isInteger(tokens.expires_in) && tokens.expires_in > 0, `expires_in ${tokens.expires_in}`);
  assert(tokens.refresh_token === undefined, `a refresh token (RFC 6749 §4.4.3 says SHOULD NOT): ${JSON.stringify(tokens)}`);
}

// The wrong-secret refusal: RFC 6749 §5.2, 401 invalid_client. With Basic the server
// must answer `WWW-Authenticate`, so oauth4webapi throws its challenge error before it
// reads the body; the body (still unread) must say invalid_client either way.
async function invalidClient(promise) {
  let value;
  try {
    value = await promise;
  } catch (e) {
    let error;
    if (e instanceof client.ResponseBodyError) {
      error = e.error;
    } else if (e instanceof client.WWWAuthenticateChallengeError) {
      assert(e.cause.some((c) => c.scheme === 'basic'), `challenges ${JSON.stringify(e.cause)}`);
      error = (await e.response.json()).error;
    } else {
      throw new Error(`expected an invalid_client refusal, got ${e?.name}: ${e?.message}`, { cause: e });
    }
    assert(e.status === 401, `status ${e.status}`);
    assert(error === 'invalid_client', `error ${error}`);
    return e;
  }
  throw new Error(`a wrong secret got a token: ${JSON.stringify(value)}`);
}

// -------------------------------------------------------------------------------- tests

test('discovery_lists_client_credentials_and_secret_auth', async () => {
  assert(CLIENT_ID && SECRET, 'INTEROP_CC_CLIENT_ID / INTEROP_CC_CLIENT_SECRET are not set');
  ctx.basic = await discover(client.ClientSecretBasic(SECRET));
  const md = ctx.basic.serverMetadata();
  assert(md.issuer === BASE, `issuer ${md.issuer}`);
  assert(md.token_endpoint === `${BASE}/oauth/token`, `token_endpoint ${md.token_endpoint}`);
  assert(md.grant_types_supported?.includes('client_credentials'), JSON.stringify(md.grant_types_supported));
  for (const m of ['client_secret_basic', 'client_secret_post']) {
    assert(md.token_endpoint_auth_methods_supported?.includes(m), `${m}: ${md.token_endpoint_auth_methods_supported}`);
  }
  assert(md.introspection_endpoint === `${BASE}/oauth/introspect`, `introspection_endpoint ${md.introspection_endpoint}`);
  ctx.jwks = createRemoteJWKSet(new URL(md.jwks_uri));
  ctx.post = await discover(client.ClientSecretPost(SECRET));
});

test('client_secret_basic_token_has_every_audience_and_scope', async () => {
  const seen = [];
  // Watch the request: the library must have used HTTP Basic, not the body.
  ctx.basic[client.customFetch] = (u, options) => {
    seen.push({ auth: new Headers(options.headers).get('authorization'), body: String(options.body) });
    return fetch(u, options);
  };
  let tokens;
  try {
    tokens = await client.clientCredentialsGrant(ctx.basic);
  } finally {
    delete ctx.basic[client.customFetch];
  }
  assert(seen.length === 1 && seen[0].auth?.startsWith('Basic '), `requests ${JSON.stringify(seen)}`);
  assert(!seen[0].body.includes('client_secret'), `secret in the body: ${seen[0].body}`);
  assertTokenResponse(tokens);
  assert(sameSet(scopes(tokens.scope), ['orders:read', 'billing:read']), `scope ${tokens.scope}`);
  const claims = await verify(tokens.access_token, ORDERS);
  assertServiceClaims(claims);
  assert(sameSet(auds(claims.aud), [ORDERS, BILLING]), `aud ${JSON.stringify(claims.aud)}`);
  assert(sameSet(scopes(claims.scope), ['orders:read', 'billing:read']), `claims scope ${claims.scope}`);
  ctx.basicToken = tokens.access_token;
});

test('client_secret_post_token_narrowed_by_resource_and_scope', async () => {
  const seen = [];
  ctx.post[client.customFetch] = (u, options) => {
    seen.push({ auth: new Headers(options.headers).get('authorization'), body: String(options.body) });
    return fetch(u, options);
  };
  let tokens;
  try {
    tokens = await client.clientCredentialsGrant(ctx.post, { resource: BILLING, scope: 'billing:read' });
  } finally {
    delete ctx.post[client.customFetch];
  }
  assert(seen.length === 1 && seen[0].auth === null, `requests ${JSON.stringify(seen)}`);
  const body = new URLSearchParams(seen[0].body);
  assert(body.get('client_id') === CLIENT_ID && body.get('client_secret') === SECRET, `body ${seen[0].body}`);
  assertTokenResponse(tokens);
  assert(tokens.scope === 'billing:read', `scope ${tokens.scope}`);
  const claims = await verify(tokens.access_token, BILLING);
  assertServiceClaims(claims);
  assert(sameSet(auds(claims.aud), [BILLING]), `aud not narrowed to the resource: ${JSON.stringify(claims.aud)}`);
  assert(claims.scope === 'billing:read', `claims scope ${claims.scope}`);
  // A resource server of the other audience refuses it.
  let refused = false;
  try {
    await verify(tokens.access_token, ORDERS);
  } catch (e) {
    refused = e?.code === 'ERR_JWT_CLAIM_VALIDATION_FAILED' && e?.claim === 'aud';
    if (!refused) throw e;
  }
  assert(refused, 'a billing-only token verified for orders');
});

test('resource_outside_the_audiences_is_invalid_target', async () => {
  let e;
  try {
    await client.clientCredentialsGrant(ctx.basic, { resource: 'https://other.example' });
  } catch (err) {
    e = err;
  }
  assert(e instanceof client.ResponseBodyError, `expected ResponseBodyError, got ${e?.name}: ${e?.message}`);
  assert(e.status === 400 && e.error === 'invalid_target', `got ${e.status} ${e.error}`);
});

test('wrong_secret_basic_is_invalid_client', async () => {
  const wrong = await discover(client.ClientSecretBasic(`${SECRET}x`));
  await invalidClient(client.clientCredentialsGrant(wrong));
});

test('wrong_secret_post_is_invalid_client', async () => {
  const wrong = await discover(client.ClientSecretPost(`${SECRET}x`));
  await invalidClient(client.clientCredentialsGrant(wrong));
});

test('token_introspection_answers_active_for_the_client', async () => {
  for (const [config, token] of [
    [ctx.basic, ctx.basicToken],
    [ctx.post, ctx.basicToken],
  ]) {
    const r = await client.tokenIntrospection(config, token);
    assert(r.active === true, `not active: ${JSON.stringify(r)}`);
    assert(r.sub === CLIENT_ID && r.client_id === CLIENT_ID, `sub/client_id ${JSON.stringify(r)}`);
    assert(sameSet(auds(r.aud), [ORDERS, BILLING]), `aud ${JSON.stringify(r.aud)}`);
  }
  // Control: a token that is not ours is not active.
  const r = await client.tokenIntrospection(ctx.basic, `${ctx.basicToken.slice(0, -4)}AAAA`);
  assert(r.active === false, `a tampered token is active: ${JSON.stringify(r)}`);
});

// --------------------------------------------------------------------------------- main

const SETUP = new Set(['discovery_lists_client_credentials_and_secret_auth', 'client_secret_basic_token_has_every_audience_and_scope']);
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
      console.log('node-cc: setup failed; the remaining tests need it');
      failed += tests.length - i - 1;
      break;
    }
  }
}
console.log(`node-cc: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
