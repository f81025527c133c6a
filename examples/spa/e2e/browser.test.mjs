// The SPA in a real Chromium against a real token-issuer: no mocks, real HTTP.
// tests/browser/run.sh starts both and runs this; by hand:
//   ISSUER=http://localhost:8080 SPA_URL=http://localhost:5173 node e2e/browser.test.mjs
//
// Environment:
//   ISSUER      the issuer's origin, as the SPA's config.json names it (default http://localhost:8080)
//   SPA_URL     where the built SPA is served (default http://localhost:5173)
//   CHROMIUM    the browser (default /usr/bin/chromium, Debian's package)
//   ARTIFACTS   where the screenshots go (default target/browser-artifacts of the repository)
//
// The code flow's checks (the issuer's sign-in and consent pages) need the third-party
// client `third-party-spa` (redirect URI http://localhost:5173/third-party-callback,
// scope read, not first-party) that run.sh registers; axe-core (a devDependency) checks
// the issuer's pages for accessibility.
//
// Prints one line per check and `browser: N passed, N failed`; exits 1 on any failure.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ISSUER = process.env.ISSUER ?? 'http://localhost:8080';
const SPA_URL = process.env.SPA_URL ?? 'http://localhost:5173';
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = path.resolve(process.env.ARTIFACTS ?? path.join(HERE, '../../../target/browser-artifacts'));
const PASSWORD = 'plum kettle orbit 7 lantern';
const COOKIE = '__Host-refresh';
/** The issuer's refresh grace window, plus a margin. */
const PAST_GRACE_MS = 11_500;
/** Where the SPA keeps its DPoP key pair (src/dpop.ts): IndexedDB database, store, record. */
const KEY_DB = ['token-issuer-dpop', 'keys', 'current'];
/** A database of this test's own, on the SPA's origin, to keep a key aside. */
const STASH_DB = ['e2e-stash', 'keys', 'current'];
const ES256 = { name: 'ECDSA', namedCurve: 'P-256' };
const ES256_SIGN = { name: 'ECDSA', hash: 'SHA-256' };
/** The sign-in session cookie of the issuer's hosted pages (single sign-on). */
const SESSION_COOKIE = '__Host-session';
/** Where the issuer sends dev-spa's browser back (its one registered redirect URI). */
const CALLBACK = `${SPA_URL}/callback`;
/** The third-party client of run.sh's configuration, and its redirect URI. */
const THIRD_PARTY = 'third-party-spa';
const THIRD_PARTY_CALLBACK = `${SPA_URL}/third-party-callback`;
const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
/** PKCE verifiers and states: 43 base64url characters (32 random bytes). */
const B64URL_43 = /^[A-Za-z0-9_-]{43}$/;

let passed = 0;
let failed = 0;

/** The page a failing check screenshots (as `failed-N.png`). */
let current = null;

/** One line per check; a failing check does not stop the run. */
async function check(name, fn) {
  try {
    await fn();
    passed += 1;
    console.log(`ok   ${name}`);
  } catch (err) {
    failed += 1;
    await current?.screenshot({ path: path.join(ARTIFACTS, `failed-${failed}.png`), fullPage: true }).catch(() => {});
    console.log(`FAIL ${name}\n       ${String(err?.stack ?? err).split('\n').slice(0, 4).join('\n       ')}`);
  }
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

function assertEq(actual, expected, what) {
  if (actual !== expected) throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const cookieIn = (header) => (header ?? '').match(/__Host-refresh=([^;\s]*)/)?.[1];

// ------------------------------------------------------------------------------ DPoP

const b64url = (bytes) => Buffer.from(bytes).toString('base64url');
const sha256 = async (text) => b64url(await crypto.subtle.digest('SHA-256', Buffer.from(text)));
const jsonSegment = (segment) => JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'));
/** The claims of a JWT (an access token), unverified: the issuer's own tests verify them. */
const jwtClaims = (token) => jsonSegment(token.split('.')[1]);

/** RFC 7638 thumbprint of an EC public JWK, computed here in Node (the page computes its own). */
const thumbprint = ({ crv, kty, x, y }) => sha256(JSON.stringify({ crv, kty, x, y }));

/** Every proof `jti` seen: each proof the SPA makes must be new. */
const seenJtis = new Set();

/**
 * Checks a DPoP proof the SPA sent for one request (RFC 9449 §4.2), signature included,
 * and returns its key's thumbprint and its claims.
 */
async function checkProof(proof, { method, url, accessToken }, what) {
  assert(typeof proof === 'string', `${what}: no DPoP header`);
  const parts = proof.split('.');
  assertEq(parts.length, 3, `${what}: proof segments`);
  const header = jsonSegment(parts[0]);
  const claims = jsonSegment(parts[1]);
  assertEq(header.typ, 'dpop+jwt', `${what}: proof typ`);
  assertEq(header.alg, 'ES256', `${what}: proof alg`);
  assertEq(Object.keys(header.jwk ?? {}).sort().join(','), 'crv,kty,x,y', `${what}: the proof jwk's members`);
  assertEq(`${header.jwk.kty} ${header.jwk.crv}`, 'EC P-256', `${what}: the proof key`);
  assertEq(claims.htm, method, `${what}: htm`);
  assertEq(claims.htu, url, `${what}: htu`);
  assert(Number.isInteger(claims.iat), `${what}: iat ${claims.iat} is not an integer`);
  assert(typeof claims.jti === 'string' && claims.jti.length >= 16, `${what}: jti ${claims.jti}`);
  assert(!seenJtis.has(claims.jti), `${what}: jti ${claims.jti} was used before`);
  seenJtis.add(claims.jti);
  assertEq(claims.ath, accessToken === undefined ? undefined : await sha256(accessToken), `${what}: ath`);
  const key = await crypto.subtle.importKey('jwk', header.jwk, ES256, false, ['verify']);
  const signed = await crypto.subtle.verify(ES256_SIGN, key, Buffer.from(parts[2], 'base64url'), Buffer.from(`${parts[0]}.${parts[1]}`));
  assert(signed, `${what}: the proof's signature does not verify under its jwk`);
  return { jkt: await thumbprint(header.jwk), claims };
}

/** A DPoP proof made here, outside the browser, with a key of our own. */
async function makeProof(keyPair, { method, url, accessToken }) {
  const { crv, kty, x, y } = await crypto.subtle.exportKey('jwk', keyPair.publicKey);
  const claims = { jti: crypto.randomUUID(), htm: method, htu: url, iat: Math.floor(Date.now() / 1000) };
  if (accessToken !== undefined) claims.ath = await sha256(accessToken);
  const input = `${b64url(JSON.stringify({ typ: 'dpop+jwt', alg: 'ES256', jwk: { crv, kty, x, y } }))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${b64url(await crypto.subtle.sign(ES256_SIGN, keyPair.privateKey, Buffer.from(input)))}`;
}

/**
 * The SPA's key pair in the page's IndexedDB, described from inside the page: its public
 * JWK, the RFC 7638 thumbprint computed there, and whether the private key can be
 * exported. `null` when there is none.
 */
function idbKey(page) {
  return page.evaluate(async ([dbName, storeName, id]) => {
    const db = await new Promise((resolve, reject) => {
      const open = indexedDB.open(dbName);
      // Never create the SPA's database here (it would lack the SPA's store).
      open.onupgradeneeded = () => open.transaction.abort();
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => (open.error?.name === 'AbortError' ? resolve(null) : reject(open.error));
    });
    if (!db) return null;
    try {
      if (!db.objectStoreNames.contains(storeName)) return null;
      const pair = await new Promise((resolve, reject) => {
        const get = db.transaction(storeName).objectStore(storeName).get(id);
        get.onsuccess = () => resolve(get.result);
        get.onerror = () => reject(get.error);
      });
      if (!pair) return null;
      const { crv, kty, x, y } = await crypto.subtle.exportKey('jwk', pair.publicKey);
      const canonical = JSON.stringify({ crv, kty, x, y });
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(canonical)));
      const jkt = btoa(String.fromCharCode(...digest)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
      const exportAttempts = {};
      for (const format of ['jwk', 'pkcs8']) {
        try {
          await crypto.subtle.exportKey(format, pair.privateKey);
          exportAttempts[format] = 'exported';
        } catch (err) {
          exportAttempts[format] = err.name;
        }
      }
      return {
        jkt,
        publicJwk: { crv, kty, x, y },
        privateIsCryptoKey: pair.privateKey instanceof CryptoKey,
        extractable: pair.privateKey.extractable,
        algorithm: `${pair.privateKey.algorithm.name} ${pair.privateKey.algorithm.namedCurve}`,
        usages: [...pair.privateKey.usages].sort().join(','),
        exportAttempts,
      };
    } finally {
      db.close();
    }
  }, KEY_DB);
}

/**
 * Copies the record `[db, store, id]` of `from` to `to` in the page's IndexedDB (CryptoKey
 * objects clone as they are, non-extractable ones included), creating `to` if needed;
 * with `move`, deletes it from `from` then. Resolves to whether there was a record.
 */
function copyIdbRecord(page, from, to, { move = false } = {}) {
  return page.evaluate(async ([from, to, move]) => {
    const open = (name, store) =>
      new Promise((resolve, reject) => {
        const req = indexedDB.open(name, 1);
        req.onupgradeneeded = () => req.result.createObjectStore(store);
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
      });
    const run = (db, store, mode, use) =>
      new Promise((resolve, reject) => {
        const tx = db.transaction(store, mode);
        const req = use(tx.objectStore(store));
        tx.oncomplete = () => resolve(req.result);
        tx.onabort = () => reject(tx.error);
      });
    const src = await open(from[0], from[1]);
    try {
      const record = await run(src, from[1], 'readonly', (s) => s.get(from[2]));
      if (record === undefined) return false;
      const dst = await open(to[0], to[1]);
      await run(dst, to[1], 'readwrite', (s) => s.put(record, to[2]));
      dst.close();
      if (move) await run(src, from[1], 'readwrite', (s) => s.delete(from[2]));
      return true;
    } finally {
      src.close();
    }
  }, [from, to, move]);
}

/** The parts of an /oauth/token exchange that the checks look at, as the browser saw them. */
async function exchange(response) {
  const request = response.request();
  const sent = await request.allHeaders();
  const got = await response.allHeaders();
  let body = null;
  try {
    body = await response.json();
  } catch {
    // no readable body
  }
  return {
    status: response.status(),
    body,
    postData: request.postData() ?? '',
    origin: sent.origin,
    csrfHeader: sent['x-requested-with'],
    sentCookie: cookieIn(sent.cookie),
    proof: sent.dpop,
    setCookie: got['set-cookie'] ?? '',
    newCookie: cookieIn(got['set-cookie']),
  };
}

/** Runs `act` and returns the /oauth/token exchange (of `grant`) that it caused on `page`. */
async function tokenExchange(page, grant, act) {
  const [response] = await Promise.all([
    page.waitForResponse(
      (r) =>
        r.url() === `${ISSUER}/oauth/token` &&
        r.request().method() === 'POST' &&
        new URLSearchParams(r.request().postData() ?? '').get('grant_type') === grant,
    ),
    act(),
  ]);
  return exchange(response);
}

const state = (page) => page.evaluate(() => document.body.dataset.state);
async function waitState(page, expected) {
  await page.waitForFunction((s) => document.body.dataset.state === s, expected);
}

/** The refresh cookie in the browser's jar (what JavaScript must never see). */
async function jarCookie(context) {
  return (await context.cookies(ISSUER)).find((c) => c.name === COOKIE);
}

/** The refresh token is in the jar but invisible to the page's JavaScript and storage. */
async function assertHiddenFromJs(page, context) {
  const jar = await jarCookie(context);
  assert(jar, 'no __Host-refresh cookie in the jar: nothing to hide, the check would prove nothing');
  const seen = await page.evaluate(() => ({
    cookie: document.cookie,
    local: Object.keys(localStorage).length,
    session: Object.keys(sessionStorage).length,
  }));
  assert(!seen.cookie.includes(COOKIE), `document.cookie shows it: ${seen.cookie}`);
  assert(!seen.cookie.includes(jar.value), 'document.cookie holds the refresh token value');
  assertEq(seen.local, 0, 'localStorage entries');
  assertEq(seen.session, 0, 'sessionStorage entries');
}

/**
 * A cookie-mode token answer: 200, an access token, no refresh token, a rotated cookie;
 * and DPoP-bound: the request carried a fresh proof for it, the answer is token_type DPoP
 * and the access token's cnf.jkt is the proof's key (`jkt`, when given, must be that
 * key). Returns the key's thumbprint.
 */
async function assertCookieModeTokens(x, what, jkt) {
  assertEq(x.status, 200, `${what} status (body ${JSON.stringify(x.body)})`);
  assert(typeof x.body?.access_token === 'string', `${what}: no access_token`);
  assert(!('refresh_token' in x.body), `${what}: refresh_token in the body`);
  assertEq(x.csrfHeader, 'XMLHttpRequest', `${what}: X-Requested-With sent`);
  assertEq(x.origin, new URL(SPA_URL).origin, `${what}: Origin sent`);
  assert(x.newCookie, `${what}: no __Host-refresh Set-Cookie (${x.setCookie})`);
  for (const attr of ['HttpOnly', 'Secure', 'SameSite=Strict', 'Path=/']) {
    assert(x.setCookie.includes(attr), `${what}: Set-Cookie lacks ${attr}: ${x.setCookie}`);
  }
  const proof = await checkProof(x.proof, { method: 'POST', url: `${ISSUER}/oauth/token` }, what);
  if (jkt !== undefined) assertEq(proof.jkt, jkt, `${what}: the proof's key (thumbprint)`);
  assertEq(x.body.token_type, 'DPoP', `${what}: token_type`);
  assertEq(jwtClaims(x.body.access_token).cnf?.jkt, proof.jkt, `${what}: the access token's cnf.jkt`);
  return proof.jkt;
}

/**
 * The /v1 calls (but registration, which needs no token) that the pages of `context`
 * make, with the headers they sent.
 */
function apiCalls(context) {
  let calls = [];
  context.on('request', (r) => {
    const url = new URL(r.url());
    if (url.origin !== ISSUER || !url.pathname.startsWith('/v1/') || r.method() === 'OPTIONS') return;
    if (r.method() === 'POST' && url.pathname === '/v1/users') return;
    const call = { method: r.method(), url: url.origin + url.pathname };
    calls.push(
      r.allHeaders().then(
        (h) => ({ ...call, authorization: h.authorization, proof: h.dpop }),
        (err) => ({ ...call, error: String(err) }),
      ),
    );
  });
  return {
    all: () => Promise.all(calls),
    clear: () => {
      calls = [];
    },
  };
}

/**
 * Puts a refresh token back into the jar as the issuer had set it (as if it had been
 * copied away). Through the DevTools protocol: Playwright's addCookies always gives a
 * Domain, which a `__Host-` cookie must not have.
 */
async function putCookieBack(page, value) {
  const cdp = await page.context().newCDPSession(page);
  const { success } = await cdp.send('Network.setCookie', {
    name: COOKIE,
    value,
    url: ISSUER,
    path: '/',
    secure: true,
    httpOnly: true,
    sameSite: 'Strict',
  });
  await cdp.detach();
  assert(success, 'the browser refused the cookie');
}

/**
 * Every request `page` makes to the issuer, as the network stack saw it (DevTools
 * protocol): preflights, and answers that CORS hides from the page and from Playwright.
 */
async function networkLog(context, page) {
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  // The *ExtraInfo events (the headers as sent and received, cookies included) may come
  // before or after the main ones: collect everything by request id, filter when read.
  const byId = new Map();
  const entry = (id) => {
    if (!byId.has(id)) byId.set(id, { requestHeaders: {}, responseHeaders: {} });
    return byId.get(id);
  };
  const lower = (headers) => Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  cdp.on('Network.requestWillBeSent', (e) => {
    Object.assign(entry(e.requestId), { url: e.request.url, method: e.request.method, type: e.type });
  });
  cdp.on('Network.responseReceived', (e) => {
    const x = entry(e.requestId);
    Object.assign(x, { url: e.response.url, type: e.type });
    x.status ??= e.response.status;
    Object.assign(x.responseHeaders, lower(e.response.headers));
  });
  cdp.on('Network.requestWillBeSentExtraInfo', (e) => {
    Object.assign(entry(e.requestId).requestHeaders, lower(e.headers));
  });
  cdp.on('Network.responseReceivedExtraInfo', (e) => {
    const x = entry(e.requestId);
    x.status = e.statusCode;
    Object.assign(x.responseHeaders, lower(e.headers));
  });
  return {
    get entries() {
      return [...byId.values()].filter((x) => x.url?.startsWith(`${ISSUER}/`));
    },
    clear: () => byId.clear(),
  };
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

async function openSpa(context) {
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${page.url()}: ${err.message}`));
  await page.goto(SPA_URL);
  await page.waitForFunction(() => document.body.dataset.state !== 'loading');
  return page;
}

async function login(page, email) {
  await page.fill('#email', email);
  await page.fill('#password', PASSWORD);
  const x = await tokenExchange(page, 'password', () => page.click('#login'));
  await waitState(page, 'signed-in');
  return x;
}

/** A page on another origin (same site: localhost), served here. */
function otherOriginServer() {
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><title>another origin</title><h1>Another origin on localhost</h1>');
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

// ------------------------------------------------------------------- code flow helpers

/** Registers an account from here (the SPA's form is checked elsewhere). */
async function registerUser(email) {
  const resp = await fetch(`${ISSUER}/v1/users`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', origin: new URL(SPA_URL).origin },
    body: JSON.stringify({ email, password: PASSWORD }),
  });
  assertEq(resp.status, 201, `registering ${email} (body ${await resp.text()})`);
}

/** The issuer's cookie `name` in the jar of `context`. */
async function issuerCookie(context, name) {
  return (await context.cookies(ISSUER)).find((c) => c.name === name);
}

/** The query of a URL as a plain object. */
const queryOf = (url) => Object.fromEntries(new URL(url).searchParams);

/** The answer to a form post to /oauth/authorize on `page`, caused by `act`. */
async function authorizePost(page, act) {
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.url() === `${ISSUER}/oauth/authorize` && r.request().method() === 'POST'),
    act(),
  ]);
  return { status: resp.status(), headers: await resp.allHeaders() };
}

/** The answer to the GET /oauth/authorize that `act` makes `page` navigate to. */
async function authorizeGet(page, act) {
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.url().startsWith(`${ISSUER}/oauth/authorize?`) && r.request().method() === 'GET'),
    act(),
  ]);
  return { url: resp.url(), status: resp.status(), headers: await resp.allHeaders() };
}

/** A hosted page's answer: an HTML page, never framed, with the strict CSP. */
function assertHostedPageHeaders(headers, what) {
  assert((headers['content-type'] ?? '').startsWith('text/html'), `${what}: content-type ${headers['content-type']}`);
  const csp = headers['content-security-policy'] ?? '';
  for (const directive of ["default-src 'none'", "frame-ancestors 'none'", "base-uri 'none'"]) {
    assert(csp.includes(directive), `${what}: the CSP lacks ${directive}: ${csp}`);
  }
  assertEq(headers['cache-control'], 'no-store', `${what}: cache-control`);
}

/**
 * Watches the pages of `context` for Content-Security-Policy violations, both ways the
 * browser tells: the `securitypolicyviolation` DOM event (reported here through a
 * binding, installed before any page script) and the console error Chromium logs for
 * each refusal (which also covers what no DOM event reports, such as frame-ancestors).
 * Also lists the issuer's HTML pages loaded, so that "none" can be told from "none seen".
 */
async function cspWatch(context) {
  const violations = [];
  const consoleCsp = [];
  const issuerPages = [];
  const waiters = new Set();
  const notify = () => {
    for (const waiter of waiters) waiter();
  };
  await context.exposeBinding('__e2eCspViolation', ({ frame }, v) => {
    violations.push({ ...v, frameUrl: frame.url() });
    notify();
  });
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__e2eCspViolation({
        directive: e.effectiveDirective,
        blocked: e.blockedURI,
        documentURI: e.documentURI,
        sample: e.sample,
      });
    });
  });
  context.on('console', (msg) => {
    if (!/Content[- ]Security[- ]Policy/i.test(msg.text())) return;
    consoleCsp.push({ pageUrl: msg.page()?.url() ?? '', text: msg.text() });
    notify();
  });
  context.on('response', (r) => {
    const type = r.headers()['content-type'] ?? '';
    if (r.request().resourceType() === 'document' && r.url().startsWith(`${ISSUER}/oauth/`) && type.startsWith('text/html')) {
      issuerPages.push(`${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}`);
    }
  });
  return {
    violations,
    consoleCsp,
    issuerPages,
    /** Resolves once `pred()` holds (checked at every new report); rejects after `ms`. */
    until(pred, what, ms = 10_000) {
      if (pred()) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const waiter = () => {
          if (!pred()) return;
          clearTimeout(timer);
          waiters.delete(waiter);
          resolve();
        };
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`timed out waiting for ${what}`));
        }, ms);
        waiters.add(waiter);
      });
    },
  };
}

/** Every axe violation seen, by page: printed at the end of the run. */
const axeReport = [];

/**
 * Runs axe-core on the page as it is: injected through the DevTools protocol
 * (page.evaluate), which the issuer pages' CSP (no script at all) does not govern, as
 * it would an added <script>. Records every violation; throws on a serious or
 * critical one.
 */
async function runAxe(page, what) {
  if ((await page.evaluate(() => typeof window.axe)) !== 'object') await page.evaluate(AXE_SOURCE);
  const { violations, incomplete } = await page.evaluate(async () => {
    const result = await window.axe.run(document);
    const list = (results) =>
      results.map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target.join(' ')) }));
    return { violations: list(result.violations), incomplete: list(result.incomplete) };
  });
  axeReport.push({ page: what, violations, incomplete });
  const grave = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert(
    grave.length === 0,
    `${what}: axe found ${grave.map((v) => `${v.impact} ${v.id} (${v.help}) at ${v.targets.join(', ')}`).join('; ')}`,
  );
  return violations;
}

/** A PKCE pair made here: 32 random bytes as the verifier, its S256 challenge. */
async function pkcePair() {
  const verifier = b64url(randomBytes(32));
  return { verifier, challenge: await sha256(verifier) };
}

/** An authorization request of the third-party client. */
function thirdPartyUrl(state, challenge) {
  const url = new URL(`${ISSUER}/oauth/authorize`);
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: THIRD_PARTY,
    redirect_uri: THIRD_PARTY_CALLBACK,
    state,
    scope: 'read',
    code_challenge: challenge,
    code_challenge_method: 'S256',
  }).toString();
  return url.href;
}

/**
 * Adds an iframe of `src` to `host` and waits for its load event (which fires for a
 * refused frame too); returns the Playwright frame.
 */
async function frameIn(host, src, id) {
  await host.evaluate(
    ([src, id]) =>
      new Promise((resolve) => {
        const frame = document.createElement('iframe');
        frame.id = id;
        frame.title = id;
        frame.addEventListener('load', () => resolve(), { once: true });
        // Bounded: page.evaluate itself would wait for ever.
        setTimeout(() => resolve(), 10_000);
        frame.src = src;
        document.body.append(frame);
      }),
    [src, id],
  );
  const frame = await (await host.$(`#${id}`)).contentFrame();
  assert(frame, `no frame for #${id}`);
  return frame;
}

/**
 * The authorization code flow with PKCE, through the issuer's hosted pages, in a
 * browser of its own ("desktop") and with an account of its own (the other contexts'
 * session lists stay as they expect).
 */
async function codeFlowChecks(browser, OTHER_ORIGIN) {
  const desktop = await browser.newContext({ viewport: { width: 1000, height: 800 } });
  desktop.setDefaultTimeout(10_000);
  const csp = await cspWatch(desktop);
  /** Every code exchange the pages of this browser send. */
  const codeExchanges = [];
  desktop.on('request', (r) => {
    if (r.url() !== `${ISSUER}/oauth/token` || r.method() !== 'POST') return;
    if (new URLSearchParams(r.postData() ?? '').get('grant_type') === 'authorization_code') codeExchanges.push(r.url());
  });
  const email = `code-${Date.now()}@example.com`;
  await registerUser(email);
  const page = await openSpa(desktop);
  current = page;

  /** Clicks "Sign in" and returns the authorization request that the page navigated to. */
  const startSignIn = () => authorizeGet(page, () => page.click('#sign-in'));
  /** The same, waiting for the sign-in form to be there. */
  const toSignInForm = async () => {
    const get = await startSignIn();
    assertEq(get.status, 200, 'status of the authorization request');
    await page.waitForSelector('form input#username');
    return get;
  };

  await check('code flow: the SPA offers "Sign in" (the issuer\'s page) first and the password form as a second, labelled path', async () => {
    assertEq(await state(page), 'signed-out', 'state');
    const headings = await page.$$eval('#signed-out h2', (hs) => hs.map((h) => h.textContent.trim()));
    assertEq(headings.length, 2, `headings ${JSON.stringify(headings)}`);
    assertEq(headings[0], 'Sign in', 'the first way in');
    assert(/password form \(first-party only\)/.test(headings[1]), `the second way in: ${headings[1]}`);
    assert(await page.isVisible('#sign-in'), 'no visible "Sign in" button');
    assert(await page.isVisible('#credentials #login'), 'no visible password form');
  });

  let first;
  await check('code flow: "Sign in" reads the metadata and goes to its authorization endpoint (S256 challenge, state, dpop_jkt, /callback)', async () => {
    const [meta, get] = await Promise.all([
      page.waitForResponse(`${ISSUER}/.well-known/oauth-authorization-server`),
      startSignIn(),
    ]);
    first = get;
    assertEq(meta.status(), 200, 'the page\'s metadata request');
    // The same document, read here: the page's copy is gone with the navigation.
    const metadata = await (await fetch(meta.url())).json();
    assertEq(metadata.issuer, ISSUER, 'metadata issuer');
    assert(get.url.startsWith(`${metadata.authorization_endpoint}?`), `went to ${get.url}, not ${metadata.authorization_endpoint}`);
    const q = queryOf(get.url);
    assertEq(q.response_type, 'code', 'response_type');
    assertEq(q.client_id, 'dev-spa', 'client_id');
    assertEq(q.redirect_uri, CALLBACK, 'redirect_uri');
    assertEq(q.code_challenge_method, 'S256', 'code_challenge_method');
    assert(B64URL_43.test(q.code_challenge), `code_challenge ${q.code_challenge}`);
    assert(B64URL_43.test(q.state), `state ${q.state}`);
    assert(B64URL_43.test(q.dpop_jkt), `dpop_jkt ${q.dpop_jkt}`);
    assertEq(get.status, 200, 'status of the authorization request');
    assertHostedPageHeaders(get.headers, 'the sign-in page');
    const form = get.headers['set-cookie'] ?? '';
    assert(/__Host-form=[^;]+;.*HttpOnly/.test(form) && form.includes('Secure') && form.includes('SameSite=Lax'), `__Host-form Set-Cookie: ${form}`);
    await page.waitForSelector('form input#username[type=email]');
    assertEq((await page.textContent('h1')).trim(), 'Sign in', 'the page\'s heading');
    assert((await page.textContent('main')).includes('to continue to dev-spa'), 'the page names the client');
    assertEq(await page.inputValue('input[name=state]'), q.state, 'the state carried in the form');
    await shot(page, 'code-1-sign-in-page');
  });

  await check('axe: the sign-in page has no serious or critical violation', () => runAxe(page, 'sign-in page'));

  await check('code flow: a wrong password shows the form again (400) with an alert the fields point to', async () => {
    await page.fill('#username', email);
    await page.fill('#password', 'not the right password at all');
    const post = await authorizePost(page, () => page.click('button[type=submit]'));
    assertEq(post.status, 400, 'status');
    assertHostedPageHeaders(post.headers, 'the page after a wrong password');
    const alert = await page.waitForSelector('#form-error[role=alert]');
    assertEq((await alert.textContent()).trim(), 'Wrong e-mail address or password.', 'the alert');
    assertEq(await page.getAttribute('#username', 'aria-describedby'), 'form-error', 'aria-describedby of the e-mail field');
    assertEq(await issuerCookie(desktop, SESSION_COOKIE), undefined, 'a __Host-session after a wrong password');
    await shot(page, 'code-2-wrong-password');
  });

  await check('axe: the sign-in page with its error has no serious or critical violation', () =>
    runAxe(page, 'sign-in page, wrong password'),
  );

  let signIn;
  let firstX;
  await check('code flow: signing in answers 303 to /callback with code, the same state and iss, and sets __Host-session', async () => {
    await page.fill('#username', email);
    await page.fill('#password', PASSWORD);
    const [post, x] = await Promise.all([
      authorizePost(page, () => page.click('button[type=submit]')),
      tokenExchange(page, 'authorization_code', () => Promise.resolve()),
    ]);
    signIn = post;
    firstX = x;
    assertEq(post.status, 303, 'status');
    const location = new URL(post.headers.location);
    assertEq(location.origin + location.pathname, CALLBACK, 'redirected to');
    const back = queryOf(location);
    assert(typeof back.code === 'string' && back.code.length >= 20, `code ${back.code}`);
    assertEq(back.state, queryOf(first.url).state, 'state carried back');
    assertEq(back.iss, ISSUER, 'iss (RFC 9207)');
    const set = post.headers['set-cookie'] ?? '';
    for (const attr of [`${SESSION_COOKIE}=`, 'HttpOnly', 'Secure', 'SameSite=Lax', 'Path=/', 'Max-Age=']) {
      assert(set.includes(attr), `the sign-in's Set-Cookie lacks ${attr}: ${set}`);
    }
    const jar = await issuerCookie(desktop, SESSION_COOKIE);
    assert(jar, 'no __Host-session in the jar');
    assertEq(`${jar.httpOnly} ${jar.secure} ${jar.sameSite} ${jar.path} ${jar.domain}`, 'true true Lax / localhost', 'the jar\'s __Host-session');
  });

  await check('code flow: the SPA exchanges that code with its PKCE verifier and a DPoP proof of the key named by dpop_jkt (cookie mode)', async () => {
    assert(firstX, 'no code exchange seen');
    const q = queryOf(first.url);
    const sent = new URLSearchParams(firstX.postData);
    assertEq(sent.get('client_id'), 'dev-spa', 'client_id');
    assertEq(sent.get('code'), queryOf(signIn.headers.location).code, 'the code exchanged');
    assertEq(sent.get('redirect_uri'), CALLBACK, 'redirect_uri');
    const verifier = sent.get('code_verifier') ?? '';
    assert(B64URL_43.test(verifier), `code_verifier ${verifier}`);
    assertEq(await sha256(verifier), q.code_challenge, 'S256 of the verifier = the challenge sent');
    await assertCookieModeTokens(firstX, 'code exchange', q.dpop_jkt);
    await waitState(page, 'signed-in');
    assertEq((await idbKey(page))?.jkt, q.dpop_jkt, 'the key in IndexedDB = dpop_jkt');
    assertEq(await page.textContent('#user-email'), email, 'e-mail shown');
    assertEq(await page.textContent('#dpop-jkt'), q.dpop_jkt, 'the thumbprint the SPA shows');
  });

  await check('code flow: back on the SPA the URL is clean (no code, no state) and nothing is left in storage or readable cookies', async () => {
    assertEq(page.url(), `${SPA_URL}/`, 'the URL after the callback');
    assertEq(await page.evaluate(() => history.state), null, 'history.state');
    await assertHiddenFromJs(page, desktop);
    assert(!(await page.evaluate(() => document.cookie)).includes(SESSION_COOKIE), 'document.cookie shows __Host-session');
    await shot(page, 'code-3-signed-in');
  });

  await check('code flow: the session survives a reload (refresh with the cookie and the same key)', async () => {
    const x = await tokenExchange(page, 'refresh_token', () => page.reload());
    await assertCookieModeTokens(x, 'refresh on load', queryOf(first.url).dpop_jkt);
    await waitState(page, 'signed-in');
    assertEq(await page.textContent('#user-email'), email, 'e-mail shown');
  });

  await check('code flow: the session list shows this app\'s session and the issuer\'s sign-in session', async () => {
    const clients = await page.$$eval('#sessions tbody tr td:first-child', (tds) => tds.map((td) => td.textContent).sort());
    assertEq(JSON.stringify(clients), JSON.stringify(['dev-spa (this browser)', 'sign-in']), 'sessions');
  });

  await check('SPA logout ends the app\'s session only: the issuer\'s __Host-session stays, and the page says so', async () => {
    const before = (await issuerCookie(desktop, SESSION_COOKIE))?.value;
    assert(before, 'no __Host-session before the logout');
    const [resp] = await Promise.all([
      page.waitForResponse(`${ISSUER}/v1/logout`),
      page.click('#logout'),
    ]);
    assertEq(resp.status(), 204, 'logout status');
    await waitState(page, 'signed-out');
    await page.waitForSelector('#notice:has-text("Logged out of this app.")');
    assertEq(await jarCookie(desktop), undefined, '__Host-refresh left in the jar');
    assertEq((await issuerCookie(desktop, SESSION_COOKIE))?.value, before, 'the __Host-session after the SPA logout');
    assert(await page.isVisible('#issuer-sign-out'), 'no visible link to the issuer\'s sign-out page');
    assertEq(await page.getAttribute('#issuer-sign-out', 'href'), `${ISSUER}/oauth/logout`, 'the link');
  });

  await check('SSO: "Sign in" right after the SPA logout comes straight back with a code (302, no form) on a new key', async () => {
    const pagesBefore = csp.issuerPages.length;
    const [get, x] = await Promise.all([
      startSignIn(),
      tokenExchange(page, 'authorization_code', () => Promise.resolve()),
    ]);
    assertEq(get.status, 302, 'status of the authorization request');
    const back = queryOf(get.headers.location);
    assertEq(new URL(get.headers.location).pathname, '/callback', 'redirected to');
    assertEq(back.state, queryOf(get.url).state, 'state');
    assertEq(back.iss, ISSUER, 'iss');
    const jkt = queryOf(get.url).dpop_jkt;
    assert(jkt !== queryOf(first.url).dpop_jkt, 'the key of the logged-out session was reused');
    await assertCookieModeTokens(x, 'code exchange', jkt);
    await waitState(page, 'signed-in');
    assertEq(await page.textContent('#user-email'), email, 'e-mail shown');
    assertEq(csp.issuerPages.length, pagesBefore, `issuer pages shown: ${csp.issuerPages.slice(pagesBefore)}`);
  });

  await check('the issuer\'s sign-out page asks to confirm (a form), then ends the sign-in and clears __Host-session', async () => {
    const [resp] = await Promise.all([
      page.waitForResponse(`${ISSUER}/oauth/logout`),
      page.click('#issuer-sign-out'),
    ]);
    assertEq(resp.status(), 200, 'the sign-out page\'s status');
    assertHostedPageHeaders(await resp.allHeaders(), 'the sign-out page');
    assertEq((await page.textContent('h1')).trim(), 'Sign out?', 'heading');
    assert(await issuerCookie(desktop, SESSION_COOKIE), 'no __Host-session before confirming');
    await shot(page, 'code-4-sign-out-page');
    await runAxe(page, 'sign-out page');
    const [post] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${ISSUER}/oauth/logout` && r.request().method() === 'POST'),
      page.click('form button[type=submit]'),
    ]);
    assertEq(post.status(), 200, 'status of the sign-out');
    await page.waitForSelector('h1:has-text("Signed out")');
    assertEq(await issuerCookie(desktop, SESSION_COOKIE), undefined, '__Host-session left in the jar');
  });

  await check('after signing out at the issuer the app\'s own session goes on (as the issuer documents): the SPA reloads signed in', async () => {
    const x = await tokenExchange(page, 'refresh_token', () => page.goto(SPA_URL));
    assertEq(x.status, 200, 'the refresh on load');
    await waitState(page, 'signed-in');
    await Promise.all([page.waitForResponse(`${ISSUER}/v1/logout`), page.click('#logout')]);
    await waitState(page, 'signed-out');
  });

  let again;
  await check('signed out of both: the next "Sign in" shows the issuer\'s form again', async () => {
    again = await toSignInForm();
    assertEq((await page.textContent('h1')).trim(), 'Sign in', 'heading');
  });

  await check('the issuer\'s error comes back with state and iss (prompt=none while signed out: login_required): the SPA shows it, no exchange', async () => {
    const exchangesBefore = codeExchanges.length;
    const url = new URL(again.url);
    url.searchParams.set('prompt', 'none');
    const get = await authorizeGet(page, () => page.goto(url.href));
    assertEq(get.status, 302, 'status');
    const back = queryOf(get.headers.location);
    assertEq(`${back.error} ${back.state} ${back.iss}`, `login_required ${queryOf(again.url).state} ${ISSUER}`, 'error, state and iss');
    await page.waitForSelector('#error:not([hidden])');
    const text = await page.textContent('#error');
    assert(text.includes('login_required'), `the error shown: ${text}`);
    await page.waitForFunction(() => document.body.dataset.state !== 'loading');
    assertEq(await state(page), 'signed-out', 'state');
    assertEq(page.url(), `${SPA_URL}/`, 'the URL after the callback');
    assertEq(codeExchanges.length, exchangesBefore, 'code exchanges sent');
    await shot(page, 'code-5-error-shown');
  });

  await check('a callback whose state is not the one this tab sent is refused (state_mismatch), no exchange', async () => {
    const exchangesBefore = codeExchanges.length;
    await toSignInForm();
    await page.goto(`${CALLBACK}?code=forged-code-000000000000&state=not-the-state&iss=${encodeURIComponent(ISSUER)}`);
    await page.waitForSelector('#error:not([hidden])');
    const text = await page.textContent('#error');
    assert(text.includes('state_mismatch'), `the error shown: ${text}`);
    await page.waitForFunction(() => document.body.dataset.state !== 'loading');
    assertEq(await state(page), 'signed-out', 'state');
    assertEq(codeExchanges.length, exchangesBefore, 'code exchanges sent');
    assertEq(await page.evaluate(() => sessionStorage.length), 0, 'sessionStorage entries left');
  });

  await check('a callback naming another issuer (iss, RFC 9207 mix-up) is refused (issuer_mismatch), no exchange', async () => {
    const exchangesBefore = codeExchanges.length;
    const get = await toSignInForm();
    const { state: sent } = queryOf(get.url);
    await page.goto(`${CALLBACK}?code=forged-code-000000000000&state=${sent}&iss=${encodeURIComponent(OTHER_ORIGIN)}`);
    await page.waitForSelector('#error:not([hidden])');
    const text = await page.textContent('#error');
    assert(text.includes('issuer_mismatch') && text.includes(OTHER_ORIGIN), `the error shown: ${text}`);
    await page.waitForFunction(() => document.body.dataset.state !== 'loading');
    assertEq(await state(page), 'signed-out', 'state');
    assertEq(codeExchanges.length, exchangesBefore, 'code exchanges sent');
  });

  await check('the password form (the second path) still signs in beside the code flow', async () => {
    const x = await login(page, email);
    await assertCookieModeTokens(x, 'password login');
    assertEq(await page.textContent('#user-email'), email, 'e-mail shown');
    await Promise.all([page.waitForResponse(`${ISSUER}/v1/logout`), page.click('#logout')]);
    await waitState(page, 'signed-out');
  });

  await check('the sign-in page framed by another origin does not render (frame-ancestors \'none\'); a frame of the SPA (control) does', async () => {
    const host = await desktop.newPage();
    current = host;
    await host.goto(OTHER_ORIGIN);
    const url = new URL(first.url);
    url.searchParams.set('prompt', 'login');
    const [resp, framed] = await Promise.all([
      host.waitForResponse((r) => r.url() === url.href),
      frameIn(host, url.href, 'framed-sign-in'),
    ]);
    assertEq(resp.status(), 200, 'the issuer served the page');
    assert((resp.headers()['content-security-policy'] ?? '').includes("frame-ancestors 'none'"), 'served with frame-ancestors \'none\'');
    const rendered = await framed.evaluate(() => document.querySelector('input[name=username]') !== null).catch(() => false);
    assertEq(rendered, false, 'the framed document holds the sign-in form');
    assert(!framed.url().startsWith(ISSUER), `the frame's document is the issuer's: ${framed.url()}`);
    await csp.until(
      () => csp.consoleCsp.some((m) => m.pageUrl.startsWith(OTHER_ORIGIN) && m.text.includes('frame-ancestors')),
      'the browser\'s frame-ancestors refusal in the console',
    );
    const control = await frameIn(host, `${SPA_URL}/`, 'framed-spa');
    assert(await control.evaluate(() => document.querySelector('#sign-in') !== null), 'the SPA frame (control) did not render');
    await host.close();
    current = page;
  });

  // The consent page: the third-party client (not first-party), whose redirect URI is
  // answered here without loading anything.
  await page.route(
    (url) => url.href.startsWith(`${THIRD_PARTY_CALLBACK}?`),
    (route) => route.fulfill({ contentType: 'text/html', body: '<!doctype html><html lang="en"><title>third-party app</title><h1>third-party app</h1></html>' }),
  );
  await check('consent: a third-party client: the sign-in page names it, then the consent page asks (scope read, Allow / Deny)', async () => {
    const { challenge } = await pkcePair();
    const get = await authorizeGet(page, () => page.goto(thirdPartyUrl('tp-1', challenge)));
    assertEq(get.status, 200, 'status');
    assert((await page.textContent('main')).includes(`to continue to ${THIRD_PARTY}`), 'the sign-in page names the client');
    await page.fill('#username', email);
    await page.fill('#password', PASSWORD);
    const post = await authorizePost(page, () => page.click('button[type=submit]'));
    assertEq(post.status, 200, 'status after signing in (the consent page)');
    assertHostedPageHeaders(post.headers, 'the consent page');
    assertEq((await page.textContent('h1')).trim(), 'Allow access?', 'heading');
    assert((await page.textContent('main')).includes(`${THIRD_PARTY} asks to use your account`), 'the page names the client');
    assertEq(JSON.stringify(await page.$$eval('main ul li', (lis) => lis.map((li) => li.textContent))), '["read"]', 'scopes listed');
    assertEq(await page.textContent('button[value=allow]'), 'Allow', 'the Allow button');
    assertEq(await page.textContent('button[value=deny]'), 'Deny', 'the Deny button');
    await shot(page, 'code-6-consent-page');
  });

  await check('axe: the consent page has no serious or critical violation', () => runAxe(page, 'consent page'));

  await check('consent: Deny goes back with error=access_denied, state and iss', async () => {
    const post = await authorizePost(page, () => page.click('button[value=deny]'));
    assertEq(post.status, 303, 'status');
    const location = new URL(post.headers.location);
    assertEq(location.origin + location.pathname, THIRD_PARTY_CALLBACK, 'redirected to');
    const back = queryOf(location);
    assertEq(`${back.error} ${back.state} ${back.iss} ${back.code}`, `access_denied tp-1 ${ISSUER} undefined`, 'error, state, iss, code');
    await page.waitForURL(`${THIRD_PARTY_CALLBACK}?**`);
  });

  await check('consent: asked again (nothing allowed yet); Allow gives a code, exchanged for tokens of scope read', async () => {
    const { verifier, challenge } = await pkcePair();
    const get = await authorizeGet(page, () => page.goto(thirdPartyUrl('tp-2', challenge)));
    assertEq(get.status, 200, 'status');
    assertEq((await page.textContent('h1')).trim(), 'Allow access?', 'heading (signed in: no sign-in form)');
    const post = await authorizePost(page, () => page.click('button[value=allow]'));
    assertEq(post.status, 303, 'status');
    const back = queryOf(post.headers.location);
    assertEq(`${back.state} ${back.iss}`, `tp-2 ${ISSUER}`, 'state and iss');
    const resp = await fetch(`${ISSUER}/oauth/token`, {
      method: 'POST',
      body: new URLSearchParams({
        grant_type: 'authorization_code',
        client_id: THIRD_PARTY,
        code: back.code,
        redirect_uri: THIRD_PARTY_CALLBACK,
        code_verifier: verifier,
      }),
    });
    const body = await resp.json();
    assertEq(resp.status, 200, `exchange status (body ${JSON.stringify(body)})`);
    assertEq(body.scope, 'read', 'scope');
    assert(typeof body.refresh_token === 'string', 'a body-delivery client gets its refresh_token in the body');
    assertEq(jwtClaims(body.access_token).client_id ?? jwtClaims(body.access_token).azp, THIRD_PARTY, 'the access token\'s client');
  });

  await check('consent: remembered, the next request comes straight back with a code (302, no page)', async () => {
    const { challenge } = await pkcePair();
    const get = await authorizeGet(page, () => page.goto(thirdPartyUrl('tp-3', challenge)));
    assertEq(get.status, 302, 'status');
    const back = queryOf(get.headers.location);
    assert(back.code, `no code: ${get.headers.location}`);
    assertEq(back.state, 'tp-3', 'state');
  });

  await check('a redirect_uri that is not registered gets the issuer\'s error page (400), never a redirect', async () => {
    const url = new URL(first.url);
    url.searchParams.set('redirect_uri', `${SPA_URL}/not-registered`);
    const get = await authorizeGet(page, () => page.goto(url.href));
    assertEq(get.status, 400, 'status');
    assertEq(get.headers.location, undefined, 'Location');
    assertHostedPageHeaders(get.headers, 'the error page');
    assert(page.url().startsWith(`${ISSUER}/oauth/authorize?`), `the browser left the issuer: ${page.url()}`);
    assertEq((await page.textContent('h1')).trim(), 'This request cannot go on', 'heading');
    assert((await page.textContent('[role=alert]')).includes('redirect_uri'), 'the page says why');
    await shot(page, 'code-7-error-page');
  });

  await check('axe: the error page has no serious or critical violation', () => runAxe(page, 'error page'));

  await check('control: the CSP watch sees a violation (an image put into the error page: img-src \'none\')', async () => {
    const src = `${OTHER_ORIGIN}/csp-control.png`;
    await page.evaluate((src) => {
      const img = document.createElement('img');
      img.alt = '';
      img.src = src;
      document.body.append(img);
    }, src);
    await csp.until(() => csp.violations.some((v) => v.blocked === src && v.directive === 'img-src'), 'a securitypolicyviolation event');
    await csp.until(() => csp.consoleCsp.some((m) => m.text.includes(src)), 'a console CSP error');
  });

  await check('control: axe, run the same way on the same page, reports an unlabelled field put into it (critical, label)', async () => {
    await page.evaluate(() => {
      const input = document.createElement('input');
      input.id = 'axe-control';
      document.querySelector('main').append(input);
    });
    const outcome = await runAxe(page, 'control').then(
      (violations) => `passed: ${JSON.stringify(violations)}`,
      (err) => String(err),
    );
    axeReport.pop();
    assert(outcome.includes('critical label') && outcome.includes('#axe-control'), `axe did not report the unlabelled field: ${outcome}`);
  });

  await check('no CSP violation on any of the issuer\'s pages (console and securitypolicyviolation)', async () => {
    assert(csp.issuerPages.length >= 10, `only ${csp.issuerPages.length} issuer pages seen: ${csp.issuerPages}`);
    const expected = (text) => text.includes('csp-control.png');
    const events = csp.violations.filter((v) => !expected(v.blocked));
    const logged = csp.consoleCsp.filter((m) => !expected(m.text) && !m.pageUrl.startsWith(OTHER_ORIGIN));
    assertEq(JSON.stringify(events), '[]', 'securitypolicyviolation events');
    assertEq(JSON.stringify(logged), '[]', 'console CSP errors');
  });

  await desktop.close();
  current = null;
}

const pageErrors = [];

async function main() {
  mkdirSync(ARTIFACTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    // Without the background-networking flags Chromium dials out (component updates,
    // sync) and the closed network refuses it; headless, no GPU, no sandbox (root).
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const other = await otherOriginServer();
  const OTHER_ORIGIN = `http://localhost:${other.address().port}`;
  try {
    console.log(`browser: ${browser.version()} at ${CHROMIUM}; SPA ${SPA_URL}; issuer ${ISSUER}; other origin ${OTHER_ORIGIN}`);
    const email = `spa-${Date.now()}@example.com`;

    // ---------------------------------------------------------------- context A: "laptop"
    const laptop = await browser.newContext({ viewport: { width: 1100, height: 800 } });
    laptop.setDefaultTimeout(10_000);
    // The page's clock (Date, setTimeout) is Playwright's, flowing in real time until a
    // check jumps it forward to the planned silent refresh. The issuer's clock is real.
    await laptop.clock.install();
    const laptopApi = apiCalls(laptop);
    const tab = await openSpa(laptop);
    current = tab;

    await check('the SPA loads signed out, talking to the configured issuer', async () => {
      assertEq(await state(tab), 'signed-out', 'state');
      assertEq(await tab.textContent('#issuer'), ISSUER, 'issuer shown');
      await shot(tab, '1-signed-out');
    });

    await check('registering shows the server\'s errors, then creates the account', async () => {
      await tab.fill('#email', email);
      await tab.fill('#password', 'short');
      await tab.click('#register');
      await tab.waitForSelector('#error:not([hidden])');
      const weak = await tab.textContent('#error');
      assert(weak.includes('weak_password'), `weak password error shown: ${weak}`);
      await tab.fill('#password', PASSWORD);
      await tab.click('#register');
      await tab.waitForSelector('#notice:not([hidden])');
      const notice = await tab.textContent('#notice');
      assert(notice.includes(email), `registration notice: ${notice}`);
    });

    await check('a wrong password shows error_description and the code (invalid_grant)', async () => {
      await tab.fill('#password', 'not the right password at all');
      const x = await tokenExchange(tab, 'password', () => tab.click('#login'));
      assertEq(x.status, 400, 'status');
      await tab.waitForSelector('#error:not([hidden])');
      const text = await tab.textContent('#error');
      assert(text.includes(x.body.error_description), `description shown: ${text}`);
      assert(text.includes('invalid_grant, invalid_credentials'), `code shown: ${text}`);
      assertEq(await state(tab), 'signed-out', 'state');
    });

    let loginX;
    let loginJkt;
    await check('login (password grant, form-encoded, CSRF header) shows the user from /v1/me', async () => {
      loginX = await login(tab, email);
      loginJkt = await assertCookieModeTokens(loginX, 'login');
      assertEq(await tab.textContent('#user-email'), email, 'e-mail shown');
      assert(/^[0-9a-f-]{36}$/.test(await tab.textContent('#user-id')), 'user id shown');
      await shot(tab, '2-signed-in');
    });

    await check('the browser keeps __Host-refresh as HttpOnly, Secure, SameSite=Strict, Path=/, host-only', async () => {
      const c = await jarCookie(laptop);
      assert(c, 'no cookie in the jar');
      assertEq(c.value, loginX.newCookie, 'value');
      assertEq(c.httpOnly, true, 'httpOnly');
      assertEq(c.secure, true, 'secure');
      assertEq(c.sameSite, 'Strict', 'sameSite');
      assertEq(c.path, '/', 'path');
      assertEq(c.domain, 'localhost', 'domain (host-only)');
    });

    await check('after login, JavaScript sees no refresh token (document.cookie, storage)', () =>
      assertHiddenFromJs(tab, laptop),
    );

    /** The thumbprint of this browser's DPoP key, as the page computes it from IndexedDB. */
    let laptopJkt;
    await check('DPoP: the login answer is token_type DPoP and cnf.jkt is the thumbprint of the key in IndexedDB', async () => {
      const key = await idbKey(tab);
      assert(key, 'no DPoP key in IndexedDB after login');
      laptopJkt = key.jkt;
      assertEq(loginX.body?.token_type, 'DPoP', 'token_type');
      assertEq(jwtClaims(loginX.body.access_token).cnf?.jkt, key.jkt, 'cnf.jkt of the access token');
      assertEq(loginJkt, key.jkt, 'thumbprint of the login proof\'s jwk');
      assertEq(await thumbprint(key.publicJwk), key.jkt, 'the page\'s thumbprint, computed again here');
      assertEq(await tab.textContent('#dpop-jkt'), key.jkt, 'the thumbprint the SPA shows');
    });

    await check('DPoP: the private key in IndexedDB is a non-extractable ES256 CryptoKey (exportKey throws)', async () => {
      const key = await idbKey(tab);
      assert(key, 'no DPoP key in IndexedDB');
      assertEq(key.privateIsCryptoKey, true, 'stored as a CryptoKey');
      assertEq(key.algorithm, 'ECDSA P-256', 'algorithm');
      assertEq(key.usages, 'sign', 'usages of the private key');
      assertEq(key.extractable, false, 'extractable');
      assertEq(key.exportAttempts.jwk, 'InvalidAccessError', 'exportKey(\'jwk\')');
      assertEq(key.exportAttempts.pkcs8, 'InvalidAccessError', 'exportKey(\'pkcs8\')');
    });

    let reloadX;
    await check('a reload keeps the user signed in through a silent refresh with the cookie', async () => {
      const before = (await jarCookie(laptop)).value;
      const x = await tokenExchange(tab, 'refresh_token', () => tab.reload());
      reloadX = x;
      await assertCookieModeTokens(x, 'refresh on load');
      assertEq(x.sentCookie, before, 'the cookie the browser sent');
      assert(x.newCookie !== before, 'the refresh token rotated');
      await waitState(tab, 'signed-in');
      assertEq(await tab.textContent('#user-email'), email, 'e-mail shown');
      assertEq((await jarCookie(laptop)).value, x.newCookie, 'jar holds the successor');
    });

    await check('after a reload, JavaScript sees no refresh token', () => assertHiddenFromJs(tab, laptop));

    await check('DPoP: after a reload the same key, from IndexedDB, proved the refresh (same jkt)', async () => {
      assert(laptopJkt, 'no key thumbprint from the login');
      const key = await idbKey(tab);
      assertEq(key?.jkt, laptopJkt, 'the key in IndexedDB');
      const proof = jsonSegment(reloadX.proof.split('.')[0]);
      assertEq(await thumbprint(proof.jwk), laptopJkt, 'the key of the refresh proof');
      assertEq(jwtClaims(reloadX.body.access_token).cnf?.jkt, laptopJkt, 'cnf.jkt of the new access token');
      assertEq(await tab.textContent('#dpop-jkt'), laptopJkt, 'the thumbprint the SPA shows');
    });

    await check('the silent refresh runs a minute before expiry, planned from expires_in', async () => {
      const expiresIn = loginX.body.expires_in;
      assert(expiresIn >= 300 && expiresIn <= 900, `expires_in ${expiresIn}`);
      // The page was reloaded just now, with a fresh token of the same lifetime.
      // The jumps run the page's timers, but its wall clock must end where the issuer's
      // is: a DPoP proof's iat is read from it, and the issuer refuses one from the
      // future. So the wall clock is first set back by the sum of the jumps.
      const jumps = [(expiresIn - 70) * 1000, 15_000];
      await tab.clock.setSystemTime(Date.now() - jumps[0] - jumps[1]);
      let early = null;
      const spy = (r) => {
        if (r.url() === `${ISSUER}/oauth/token`) early = r;
      };
      tab.on('request', spy);
      await tab.clock.fastForward(jumps[0]);
      await sleep(500);
      tab.off('request', spy);
      assertEq(early, null, 'a refresh 70 s before expiry (too early)');
      const x = await tokenExchange(tab, 'refresh_token', () => tab.clock.fastForward(jumps[1]));
      await assertCookieModeTokens(x, 'scheduled refresh', laptopJkt);
      assertEq(await state(tab), 'signed-in', 'state');
    });

    await check('after the scheduled refresh, JavaScript sees no refresh token', () =>
      assertHiddenFromJs(tab, laptop),
    );

    // Two tabs of one browser share the cookie jar, and each refreshes on its own.
    const tab2 = await openSpa(laptop);
    await check('a second tab signs in from the shared cookie', async () => {
      assertEq(await state(tab2), 'signed-in', 'state of the second tab');
      assertEq(await tab2.textContent('#user-email'), email, 'e-mail shown');
    });

    await check('two tabs refreshing at the same moment both stay signed in with one successor', async () => {
      // Clicked through one evaluate each, sent together: both requests must carry the same
      // cookie for this to be a race (checked), else try again (at most 4 times).
      let xs;
      for (let attempt = 1; attempt <= 4; attempt++) {
        const waits = [tab, tab2].map((p) =>
          p.waitForResponse((r) => r.url() === `${ISSUER}/oauth/token` && r.request().method() === 'POST'),
        );
        await Promise.all([tab, tab2].map((p) => p.evaluate(() => document.getElementById('refresh').click())));
        xs = await Promise.all((await Promise.all(waits)).map(exchange));
        if (xs[0].sentCookie === xs[1].sentCookie) break;
        console.log(`       (attempt ${attempt}: the second request already had the successor; again)`);
        await sleep(200);
      }
      assertEq(xs[0].sentCookie, xs[1].sentCookie, 'both tabs sent the same refresh token');
      for (const [i, x] of xs.entries()) await assertCookieModeTokens(x, `tab ${i + 1}`, laptopJkt);
      assertEq(xs[0].newCookie, xs[1].newCookie, 'the same successor for both');
      for (const p of [tab, tab2]) {
        await p.waitForSelector('#notice:has-text("Access token refreshed.")');
        assertEq(await state(p), 'signed-in', 'state');
      }
      assertEq((await jarCookie(laptop)).value, xs[0].newCookie, 'jar holds the successor');
    });

    await check('a lost answer (a tab presenting the just-used token again) gets that same successor', async () => {
      const used = (await jarCookie(laptop)).value;
      const first = await tokenExchange(tab, 'refresh_token', () => tab.click('#refresh'));
      await assertCookieModeTokens(first, 'first', laptopJkt);
      // As if tab 2's request had left before tab 1's answer arrived.
      await putCookieBack(tab2, used);
      const again = await tokenExchange(tab2, 'refresh_token', () => tab2.click('#refresh'));
      await assertCookieModeTokens(again, 'replay', laptopJkt);
      assertEq(again.sentCookie, used, 'the replay sent the used token');
      assertEq(again.newCookie, first.newCookie, 'the same successor');
      assertEq(await state(tab2), 'signed-in', 'state of the second tab');
    });
    await tab2.close();

    // A page on another origin of the same site (localhost): the browser does send the
    // SameSite=Strict cookie along, so the issuer's Origin check is what refuses it.
    const cookieBefore = (await jarCookie(laptop)).value;
    const evil = await laptop.newPage();
    current = evil;
    await evil.goto(OTHER_ORIGIN);
    const evilLog = await networkLog(laptop, evil);
    const tryFetch = (init) =>
      evil.evaluate(
        async ([issuer, init]) => {
          try {
            const r = await fetch(`${issuer}/oauth/token`, {
              ...init,
              method: 'POST',
              credentials: 'include',
              body: new URLSearchParams({ grant_type: 'refresh_token', client_id: 'dev-spa' }),
            });
            return `answered ${r.status}`;
          } catch (err) {
            return `rejected: ${err}`;
          }
        },
        [ISSUER, init],
      );

    await check('another origin: a credentialed fetch with the CSRF header is refused at the preflight (403)', async () => {
      evilLog.clear();
      const outcome = await tryFetch({ headers: { 'X-Requested-With': 'XMLHttpRequest' } });
      assert(outcome.startsWith('rejected: TypeError'), `the fetch ${outcome}`);
      await sleep(100);
      const preflights = evilLog.entries.filter((e) => e.type === 'Preflight');
      assertEq(preflights.length, 1, 'preflights seen');
      assertEq(preflights[0].status, 403, 'the preflight status');
      assertEq(preflights[0].responseHeaders['access-control-allow-origin'], undefined, 'allow-origin on the refused preflight');
      const posts = evilLog.entries.filter((e) => e.type !== 'Preflight' && e.status !== undefined);
      assertEq(posts.length, 0, 'POSTs that reached the issuer');
    });

    await check('another origin: a simple credentialed POST carries the cookie and gets 403, unreadable', async () => {
      evilLog.clear();
      const outcome = await tryFetch({});
      assert(outcome.startsWith('rejected: TypeError'), `the page could read the answer: ${outcome}`);
      await sleep(100);
      assertEq(evilLog.entries.length, 1, 'requests seen');
      const [post] = evilLog.entries;
      assertEq(post.requestHeaders.origin, OTHER_ORIGIN, 'Origin sent');
      assertEq(cookieIn(post.requestHeaders.cookie), cookieBefore, 'the browser sent the refresh cookie (same site)');
      assertEq(post.status, 403, 'status');
      assertEq(cookieIn(post.responseHeaders['set-cookie']), undefined, 'Set-Cookie on the refused answer');
    });

    await check('another origin: a classic form POST (top-level navigation) gets 403 origin_not_allowed', async () => {
      const [response] = await Promise.all([
        evil.waitForNavigation(),
        evil.evaluate((issuer) => {
          const form = document.createElement('form');
          form.method = 'POST';
          form.action = `${issuer}/oauth/token`;
          for (const [name, value] of [['grant_type', 'refresh_token'], ['client_id', 'dev-spa']]) {
            const input = document.createElement('input');
            input.name = name;
            input.value = value;
            form.append(input);
          }
          document.body.append(form);
          form.submit();
        }, ISSUER),
      ]);
      const x = await exchange(response);
      assertEq(x.sentCookie, cookieBefore, 'the browser sent the refresh cookie (same site)');
      assertEq(x.status, 403, 'status');
      assertEq(x.body?.error, 'origin_not_allowed', 'error');
    });
    await evil.close();
    current = tab;

    await check('another origin: the refresh token was not consumed (same cookie, refresh works past the grace window)', async () => {
      assertEq((await jarCookie(laptop)).value, cookieBefore, 'the cookie in the jar');
      // Had any of those requests used the token, presenting it now would be a reuse.
      await sleep(PAST_GRACE_MS);
      const x = await tokenExchange(tab, 'refresh_token', () => tab.click('#refresh'));
      await assertCookieModeTokens(x, 'refresh', laptopJkt);
      assertEq(x.sentCookie, cookieBefore, 'the cookie sent');
    });

    await check('after the two-tab race the session is intact: a later refresh works, the list shows it', async () => {
      const x = await tokenExchange(tab, 'refresh_token', () => tab.reload());
      await assertCookieModeTokens(x, 'refresh on load', laptopJkt);
      await waitState(tab, 'signed-in');
      const rows = await tab.$$eval('#sessions tbody tr', (trs) => trs.map((tr) => tr.className));
      assertEq(JSON.stringify(rows), JSON.stringify(['current']), 'session rows');
    });

    // Tokens copied out of the browser (by malware, or a script that sent them away) and
    // replayed from here, Node, with the headers a browser would send. The key cannot be
    // copied (non-extractable): the thief proves a key of its own, or none.
    const thiefKey = await crypto.subtle.generateKey(ES256, false, ['sign', 'verify']);
    /** A 4xx answer's status, body and WWW-Authenticate, for the checks below. */
    const outcome = async (resp) => ({
      status: resp.status,
      body: await resp.json().catch(() => null),
      challenge: resp.headers.get('www-authenticate') ?? '',
      setCookie: resp.headers.get('set-cookie'),
    });

    await check('outside the browser: the access token as Bearer, as DPoP without a proof, or with another key\'s proof gets 401', async () => {
      const x = await tokenExchange(tab, 'refresh_token', () => tab.click('#refresh'));
      await assertCookieModeTokens(x, 'refresh', laptopJkt);
      await tab.waitForSelector('#notice:has-text("Access token refreshed.")');
      const token = x.body.access_token;
      const me = `${ISSUER}/v1/me`;
      const thiefProof = await makeProof(thiefKey, { method: 'GET', url: me, accessToken: token });
      const cases = [
        ['as Bearer', { authorization: `Bearer ${token}` }, 'invalid_token'],
        ['as DPoP without a proof', { authorization: `DPoP ${token}` }, 'invalid_dpop_proof'],
        ['as DPoP with a proof of another key', { authorization: `DPoP ${token}`, dpop: thiefProof }, 'invalid_token'],
      ];
      for (const [what, headers, error] of cases) {
        const got = await outcome(await fetch(me, { headers: { origin: new URL(SPA_URL).origin, ...headers } }));
        assertEq(got.status, 401, `${what}: status (body ${JSON.stringify(got.body)})`);
        assertEq(got.body?.error, error, `${what}: error`);
        assert(got.challenge.includes(`error="${error}"`), `${what}: WWW-Authenticate ${got.challenge}`);
      }
      // The page goes on with that same token, each call with a proof of its own.
      const [resp] = await Promise.all([
        tab.waitForResponse((r) => r.url() === `${ISSUER}/v1/sessions`),
        tab.click('#reload-sessions'),
      ]);
      assertEq(resp.status(), 200, 'the page\'s /v1/sessions status');
      assertEq((await resp.request().allHeaders()).authorization, `DPoP ${token}`, 'the page\'s Authorization');
    });

    const copiedCookie = (await jarCookie(laptop)).value;
    await check('outside the browser: the refresh cookie without a proof, or with another key\'s proof, gets 400 dpop_key_mismatch', async () => {
      const refreshWith = async (proof) =>
        outcome(
          await fetch(`${ISSUER}/oauth/token`, {
            method: 'POST',
            headers: {
              origin: new URL(SPA_URL).origin,
              'x-requested-with': 'XMLHttpRequest',
              cookie: `${COOKIE}=${copiedCookie}`,
              ...(proof ? { dpop: proof } : {}),
            },
            body: new URLSearchParams({ grant_type: 'refresh_token', client_id: 'dev-spa' }),
          }),
        );
      const thiefProof = await makeProof(thiefKey, { method: 'POST', url: `${ISSUER}/oauth/token` });
      for (const [what, proof] of [['no proof', undefined], ['a proof of another key', thiefProof]]) {
        const got = await refreshWith(proof);
        assertEq(got.status, 400, `${what}: status (body ${JSON.stringify(got.body)})`);
        assertEq(got.body?.error, 'invalid_grant', `${what}: error`);
        assertEq(got.body?.error_reason, 'dpop_key_mismatch', `${what}: error_reason`);
        assertEq(got.setCookie, null, `${what}: Set-Cookie`);
      }
    });

    await check('after those replays the session is intact: past the grace window the page refreshes with the same cookie', async () => {
      assertEq((await jarCookie(laptop)).value, copiedCookie, 'the cookie in the jar');
      // Had a replay used the token, presenting it now would be a reuse (and revoke).
      await sleep(PAST_GRACE_MS);
      const x = await tokenExchange(tab, 'refresh_token', () => tab.click('#refresh'));
      await assertCookieModeTokens(x, 'refresh', laptopJkt);
      assertEq(x.sentCookie, copiedCookie, 'the cookie sent');
      await tab.waitForSelector('#notice:has-text("Access token refreshed.")');
      assertEq(await state(tab), 'signed-in', 'state');
      await shot(tab, '6-dpop-replays-refused');
    });

    // -------------------------------------------------------------- context B: "phone"
    const phone = await browser.newContext({ viewport: { width: 900, height: 700 } });
    phone.setDefaultTimeout(10_000);
    const phoneTab = await openSpa(phone);
    current = phoneTab;
    await check('sessions: a second device\'s login appears in the list', async () => {
      await login(phoneTab, email);
      await tab.click('#reload-sessions');
      await tab.waitForFunction(() => document.querySelectorAll('#sessions tbody tr').length === 2);
      const marked = await tab.$$eval('#sessions tbody tr.current', (trs) => trs.length);
      assertEq(marked, 1, 'rows marked current');
      await shot(tab, '3-sessions');
    });

    await check('sessions: ending the other device\'s session removes it and signs that device out', async () => {
      const other = tab.locator('#sessions tbody tr:not(.current)');
      const id = await other.getAttribute('data-session-id');
      const [del] = await Promise.all([
        tab.waitForResponse((r) => r.url() === `${ISSUER}/v1/sessions/${id}`),
        other.locator('button.end-session').click(),
      ]);
      assertEq(del.status(), 204, 'DELETE status');
      await tab.waitForFunction(() => document.querySelectorAll('#sessions tbody tr').length === 1);
      assertEq(await state(tab), 'signed-in', 'this device stays signed in');
      // The phone's access token is refused at once; its refresh fails: signed out.
      const x = await tokenExchange(phoneTab, 'refresh_token', () => phoneTab.click('#reload-sessions'));
      assertEq(x.status, 400, 'the phone\'s refresh status');
      assertEq(x.body?.error_reason, 'revoked', 'the phone\'s refresh error_reason');
      await waitState(phoneTab, 'signed-out');
      const text = await phoneTab.textContent('#error');
      assert(text.includes('invalid_grant, revoked'), `the phone shows why: ${text}`);
      assertEq(await idbKey(phoneTab), null, 'the phone\'s DPoP key left in IndexedDB');
      await shot(phoneTab, '5-other-device-ended');
    });
    await phone.close();

    // ------------------------------------------------------------- context C: "tablet"
    const tablet = await browser.newContext({ viewport: { width: 900, height: 700 } });
    tablet.setDefaultTimeout(10_000);
    const tabletTab = await openSpa(tablet);
    current = tabletTab;
    await check('sessions: ending this browser\'s own session from the list clears its cookie', async () => {
      await login(tabletTab, email);
      await tabletTab.waitForSelector('#sessions tbody tr.current');
      const [del] = await Promise.all([
        tabletTab.waitForResponse((r) => r.url().startsWith(`${ISSUER}/v1/sessions/`)),
        tabletTab.click('#sessions tbody tr.current button.end-session'),
      ]);
      assertEq(del.status(), 204, 'DELETE status');
      await waitState(tabletTab, 'signed-out');
      assertEq(await jarCookie(tablet), undefined, 'cookie left in the jar');
      assertEq(await idbKey(tabletTab), null, 'the DPoP key left in IndexedDB');
      await tabletTab.reload();
      await tabletTab.waitForFunction(() => document.body.dataset.state !== 'loading');
      assertEq(await state(tabletTab), 'signed-out', 'state after reload');
    });
    await tablet.close();
    current = tab;

    await check('DPoP: every /v1 call of this browser sent Authorization: DPoP and a proof of its key for that call (htm, htu, ath)', async () => {
      const calls = await laptopApi.all();
      laptopApi.clear();
      assert(calls.length >= 8, `only ${calls.length} /v1 calls seen`);
      const methods = [...new Set(calls.map((c) => c.method))].sort().join(',');
      assertEq(methods, 'DELETE,GET', 'methods seen');
      for (const [i, c] of calls.entries()) {
        const what = `call ${i + 1}, ${c.method} ${c.url}`;
        assertEq(c.error, undefined, `${what}: its headers`);
        assert(c.authorization?.startsWith('DPoP '), `${what}: Authorization ${c.authorization}`);
        const token = c.authorization.slice('DPoP '.length);
        const proof = await checkProof(c.proof, { method: c.method, url: c.url, accessToken: token }, what);
        assertEq(proof.jkt, laptopJkt, `${what}: the proof's key`);
        assertEq(jwtClaims(token).cnf?.jkt, laptopJkt, `${what}: the token's cnf.jkt`);
      }
    });

    let last;
    await check('logout ends the session, clears the cookie, and a reload shows signed out', async () => {
      last = (await jarCookie(laptop)).value;
      // Kept aside to show below that even the key cannot revive the ended session.
      assert(await copyIdbRecord(tab, KEY_DB, STASH_DB), 'no DPoP key to keep aside');
      const [resp] = await Promise.all([
        tab.waitForResponse((r) => r.url() === `${ISSUER}/v1/logout`),
        tab.click('#logout'),
      ]);
      assertEq(resp.status(), 204, 'logout status');
      const sent = await resp.request().allHeaders();
      assert(sent.authorization?.startsWith('DPoP '), `logout Authorization ${sent.authorization}`);
      const accessToken = sent.authorization.slice('DPoP '.length);
      const proof = await checkProof(sent.dpop, { method: 'POST', url: `${ISSUER}/v1/logout`, accessToken }, 'logout');
      assertEq(proof.jkt, laptopJkt, 'the logout proof\'s key');
      await waitState(tab, 'signed-out');
      await tab.waitForSelector('#notice:has-text("Logged out of this app.")');
      await shot(tab, '4-after-logout');
      assertEq(await jarCookie(laptop), undefined, 'cookie left in the jar');
      assertEq(await idbKey(tab), null, 'the DPoP key left in IndexedDB');
      await tab.reload();
      await tab.waitForFunction(() => document.body.dataset.state !== 'loading');
      assertEq(await state(tab), 'signed-out', 'state after reload');
    });

    await check('after logout the old cookie cannot refresh: without the key dpop_key_mismatch, with the old key put back revoked', async () => {
      assert(last, 'no cookie from before the logout');
      // As if copied away before; the app has no key any more and sends no proof.
      await putCookieBack(tab, last);
      const x = await tokenExchange(tab, 'refresh_token', () => tab.reload());
      assertEq(x.sentCookie, last, 'the old cookie was sent');
      assertEq(x.proof, undefined, 'a DPoP proof, with no key');
      assertEq(x.status, 400, 'status');
      assertEq(x.body?.error, 'invalid_grant', 'error');
      assertEq(x.body?.error_reason, 'dpop_key_mismatch', 'error_reason');
      await tab.waitForFunction(() => document.body.dataset.state !== 'loading');
      assertEq(await state(tab), 'signed-out', 'state');

      // The cookie and the key both back: the session itself is over.
      assert(await copyIdbRecord(tab, STASH_DB, KEY_DB), 'the kept key is gone');
      await putCookieBack(tab, last);
      const y = await tokenExchange(tab, 'refresh_token', () => tab.reload());
      assertEq(y.sentCookie, last, 'the old cookie was sent');
      const proof = await checkProof(y.proof, { method: 'POST', url: `${ISSUER}/oauth/token` }, 'refresh with the old key');
      assertEq(proof.jkt, laptopJkt, 'the proof\'s key');
      assertEq(y.status, 400, 'status');
      assertEq(y.body?.error, 'invalid_grant', 'error');
      assertEq(y.body?.error_reason, 'revoked', 'error_reason');
      await tab.waitForFunction(() => document.body.dataset.state !== 'loading');
      assertEq(await state(tab), 'signed-out', 'state');
      // Back as the logout left it: no key.
      await copyIdbRecord(tab, KEY_DB, STASH_DB, { move: true });
      assertEq(await idbKey(tab), null, 'the DPoP key left in IndexedDB');
    });

    await check('DPoP: the next login makes a new key, and binds the new session to it', async () => {
      assert(laptopJkt, 'no key thumbprint from the first login');
      const x = await login(tab, email);
      const jkt = await assertCookieModeTokens(x, 'login');
      const key = await idbKey(tab);
      assert(key, 'no DPoP key in IndexedDB after login');
      assertEq(key.jkt, jkt, 'the key in IndexedDB proved the login');
      assert(key.jkt !== laptopJkt, 'the login reused the key of the logged-out session');
      assertEq(key.extractable, false, 'extractable');
      assertEq(await tab.textContent('#dpop-jkt'), key.jkt, 'the thumbprint the SPA shows');
      await shot(tab, '7-new-key-after-logout');
    });

    // --------------------------------------------------- context D: "desktop", code flow
    await codeFlowChecks(browser, OTHER_ORIGIN);
    current = tab;

    await check('no uncaught errors in the SPA', async () => {
      assertEq(pageErrors.length, 0, `page errors ${JSON.stringify(pageErrors)}`);
    });
  } finally {
    await browser.close();
    other.close();
  }
}

try {
  await main();
} catch (err) {
  failed += 1;
  console.log(`FAIL the run stopped: ${err?.stack ?? err}`);
}
for (const { page, violations, incomplete } of axeReport) {
  if (violations.length === 0) console.log(`axe: ${page}: no violations`);
  for (const v of violations) console.log(`axe: ${page}: ${v.impact} ${v.id}: ${v.help} (${v.targets.join(', ')})`);
  for (const v of incomplete) console.log(`axe: ${page}: needs review (${v.impact ?? 'no impact'}) ${v.id}: ${v.help} (${v.targets.join(', ')})`);
}
console.log(`screenshots: ${ARTIFACTS}`);
console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
