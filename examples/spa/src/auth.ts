/**
 * The token client: everything this app knows about signing in to token-issuer.
 * Copy this file; the rest of the app is only a UI around it.
 *
 * - Signing in is the authorization code flow with PKCE (RFC 6749 §4.1, RFC 7636):
 *   `beginSignIn` sends the browser to the issuer's own sign-in page, which sends it
 *   back to `/callback` with a code; `completeSignIn` checks the answer (`state`, and
 *   `iss` per RFC 9207) and exchanges the code. The password is typed on the issuer's
 *   page, never into this app. The PKCE verifier and the state wait in sessionStorage
 *   (this tab only) for the few seconds of the round trip, and are removed as soon as
 *   the answer arrives. `login` (the password grant, first-party clients only) stays as
 *   a second way in.
 * - The access token lives in a private field of one object, in memory only: never in
 *   localStorage, sessionStorage or a cookie that JavaScript can read, where any script
 *   on the page (an XSS, a compromised dependency) could take it and keep using it. A
 *   reload forgets it; the next refresh brings a new one.
 * - The refresh token never reaches JavaScript. For a cookie-mode client (`dev-spa`) the
 *   issuer sets it as `__Host-refresh=...; HttpOnly; Secure; SameSite=Strict; Path=/` and
 *   never puts it in a response body. Every call to the issuer therefore uses
 *   `credentials: 'include'`: without it the browser neither sends the cookie nor
 *   stores the one the response sets (a rotation, or the clearing on logout).
 * - CSRF: `/oauth/token` and `/oauth/revoke` want `X-Requested-With` (any value). A
 *   custom header makes the request "non-simple", so the browser first asks the issuer
 *   (CORS preflight), which answers only for the client's allowed origins; and the
 *   issuer itself checks `Origin`. A page on another origin cannot use the cookie.
 * - Refresh tokens rotate on every use. Two tabs share the one cookie and may refresh at
 *   the same moment: the issuer's grace window (10 s by default) answers the second
 *   with the same successor, so no tab coordination is needed here.
 * - DPoP (RFC 9449, `dpop.ts`): every token request and every `/v1` call carries a
 *   fresh proof of this browser's non-extractable key, so the session (its refresh
 *   token) and each access token are bound to that key: a copied cookie or access token
 *   is refused anywhere the key is not. The key is made at sign-in or login, shared by
 *   the tabs through IndexedDB, and deleted at sign-out.
 */
import { DpopKey, b64url, discardKey } from './dpop';

/** The issuer's token response (RFC 6749 §5.1); cookie-mode clients get no refresh_token. */
interface TokenResponse {
  access_token: string;
  token_type: string;
  expires_in: number;
  scope?: string;
}

/** `GET /v1/me`. */
export interface User {
  id: string;
  email: string;
  created_at: string;
}

/** One entry of `GET /v1/sessions`: a login on one device. */
export interface Session {
  id: string;
  client_id: string;
  created_at: string;
  last_used_at: string;
  last_ip?: string;
  user_agent?: string;
  current: boolean;
}

/** An error answer of the issuer (`error`, `error_description`, ...) or a network failure. */
export class IssuerError extends Error {
  /** HTTP status; 0 when the issuer could not be reached (or CORS refused the answer). */
  readonly status: number;
  /** The stable code, e.g. `invalid_grant`; `network_error` for a failed fetch. */
  readonly code: string;
  /** `error_reason` of `invalid_grant` and CSRF failures, e.g. `revoked`, `reused`, `csrf`. */
  readonly reason?: string;
  /** Quote it when reporting a problem: it is the request's id in the issuer's logs. */
  readonly requestId?: string;

  constructor(status: number, code: string, description: string, reason?: string, requestId?: string) {
    super(description);
    this.name = 'IssuerError';
    this.status = status;
    this.code = code;
    this.reason = reason;
    this.requestId = requestId;
  }

  /** The session is gone for good (logged out, ended elsewhere, reused, expired, no cookie). */
  get sessionEnded(): boolean {
    return (
      this.code === 'invalid_grant' ||
      (this.code === 'invalid_request' && this.reason !== 'csrf') ||
      this.code === 'invalid_token' ||
      this.code === 'authentication_required'
    );
  }
}

/**
 * A sign-in through the issuer's page that cannot finish: the issuer's `error` (for
 * example `access_denied`, `login_required`), or an answer this tab refuses (a `state`
 * it did not send, another issuer's `iss`, no sign-in started in this tab).
 */
export class SignInError extends Error {
  /** The issuer's `error`, or one of ours: `state_mismatch`, `issuer_mismatch`, `no_sign_in_started`, `invalid_response`. */
  readonly code: string;

  constructor(code: string, description: string) {
    super(description);
    this.name = 'SignInError';
    this.code = code;
  }
}

/** What the UI is told: signed in (again), a silent refresh, or signed out (and why). */
export type AuthEvent =
  | { type: 'signed-in' }
  | { type: 'refreshed' }
  | { type: 'signed-out'; error?: IssuerError };

/** Refresh this long before the access token expires (it lives 5 to 15 minutes). */
const REFRESH_MARGIN_S = 60;
/** After a transient refresh failure (network, 429, 503), try again this much later. */
const RETRY_S = 15;
/** Tells the other tabs of this origin that this one signed out. */
const CHANNEL = 'token-issuer-auth';
/** The token endpoint's path (also the proofs' `htu` there). */
const TOKEN_PATH = '/oauth/token';
/** Where the issuer sends the browser back: the client's registered redirect URI is this path on our origin. */
export const CALLBACK_PATH = '/callback';
/** The sessionStorage entry of a sign-in under way (state, PKCE verifier). */
const PENDING_KEY = 'token-issuer-sign-in';

/** What a sign-in under way keeps in sessionStorage until the issuer sends the browser back. */
interface PendingSignIn {
  state: string;
  verifier: string;
  redirectUri: string;
  issuer: string;
}

/** The members of the issuer's metadata (RFC 8414) that this client uses. */
interface ServerMetadata {
  issuer: string;
  authorization_endpoint: string;
}

export class TokenClient {
  readonly issuer: string;
  readonly clientId: string;
  #accessToken: string | null = null;
  /** `DPoP` when the issuer bound the access token to our key, else `Bearer` (RFC 9449 §5). */
  #tokenType = 'Bearer';
  /** This browser's DPoP key, once read from (or made in) IndexedDB. */
  #key: DpopKey | null = null;
  #expiresAt = 0;
  #refreshAt = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #refreshing: Promise<void> | null = null;
  #metadata: Promise<ServerMetadata> | null = null;
  #listeners: Array<(event: AuthEvent) => void> = [];
  #channel = new BroadcastChannel(CHANNEL);

  constructor(issuer: string, clientId = 'dev-spa') {
    this.issuer = issuer;
    this.clientId = clientId;
    // Logging out in one tab signs every tab out (the cookie is gone for all of them).
    // That tab deleted the key too: forget ours even when already signed out here.
    this.#channel.onmessage = (msg) => {
      if (msg.data !== 'signed-out') return;
      this.#key = null;
      if (this.signedIn) void this.#signOut(undefined, false);
    };
    // Timers are throttled in background tabs and stop while the machine sleeps: when
    // the tab is seen again, refresh at once if the planned moment has passed.
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && this.signedIn && Date.now() >= this.#refreshAt) {
        void this.#silentRefresh();
      }
    });
  }

  get signedIn(): boolean {
    return this.#accessToken !== null;
  }

  /** The thumbprint (`cnf.jkt`) of the key the access token is bound to; null for a bearer token. */
  get boundTo(): string | null {
    return this.signedIn && this.#tokenType === 'DPoP' ? (this.#key?.thumbprint ?? null) : null;
  }

  /** When the access token expires, and when the next silent refresh is planned (ms). */
  get expiry(): { expiresAt: number; refreshAt: number } {
    return { expiresAt: this.#expiresAt, refreshAt: this.#refreshAt };
  }

  onEvent(listener: (event: AuthEvent) => void): void {
    this.#listeners.push(listener);
  }

  /** `POST /v1/users`; then log in. */
  async register(email: string, password: string): Promise<User> {
    const resp = await this.#fetch('/v1/users', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ email, password }),
    });
    return (await resp.json()) as User;
  }

  /**
   * Starts a sign-in on the issuer's page (authorization code flow with PKCE): makes a
   * verifier (32 random bytes, base64url) and a state, keeps them in sessionStorage,
   * and navigates to the authorization endpoint named by the issuer's metadata. The
   * code is bound to this browser's DPoP key (`dpop_jkt`, RFC 9449 §10; the key is made
   * now if there is none), so only a request proving that key can exchange it. The
   * browser comes back to `CALLBACK_PATH`: then `completeSignIn`.
   */
  async beginSignIn(): Promise<void> {
    const { authorization_endpoint } = await this.#discover();
    const key = await DpopKey.load(true);
    if (!key) throw new Error('DPoP: no key could be made');
    this.#key = key;
    const verifier = randomToken();
    const state = randomToken();
    const challenge = b64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
    const redirectUri = new URL(CALLBACK_PATH, location.origin).href;
    const pending: PendingSignIn = { state, verifier, redirectUri, issuer: this.issuer };
    sessionStorage.setItem(PENDING_KEY, JSON.stringify(pending));
    const url = new URL(authorization_endpoint);
    url.search = new URLSearchParams({
      response_type: 'code',
      client_id: this.clientId,
      redirect_uri: redirectUri,
      state,
      code_challenge: challenge,
      code_challenge_method: 'S256',
      dpop_jkt: key.thumbprint,
    }).toString();
    location.assign(url);
  }

  /**
   * The browser is back on `CALLBACK_PATH` (`callback`: that URL, query included).
   * The sign-in started in this tab is used up first, whatever the answer says. Then,
   * in order: `state` must be the one we sent (else this is not our sign-in: a forged
   * link, or another tab's); `iss` must be our issuer (RFC 9207: the answer of another
   * authorization server, in a mix-up attack, would name that one); an `error` is
   * thrown for the UI to show; a `code` is exchanged at the token endpoint with the
   * verifier and a DPoP proof of the key the code is bound to. The refresh token comes
   * back in the cookie, as after a password login.
   */
  async completeSignIn(callback: URL): Promise<void> {
    const raw = sessionStorage.getItem(PENDING_KEY);
    sessionStorage.removeItem(PENDING_KEY);
    let pending: PendingSignIn | null = null;
    try {
      pending = raw === null ? null : (JSON.parse(raw) as PendingSignIn);
    } catch {
      // Not ours (damaged, or written by something else): as if none.
    }
    const params = callback.searchParams;
    if (!pending || pending.issuer !== this.issuer) {
      throw new SignInError(
        'no_sign_in_started',
        'No sign-in was started in this tab (or it was finished already): the answer is ignored. Sign in again.',
      );
    }
    if (params.get('state') !== pending.state) {
      throw new SignInError('state_mismatch', 'The answer does not belong to the sign-in started here (its state differs): refused. Sign in again.');
    }
    const iss = params.get('iss');
    if (iss !== this.issuer) {
      throw new SignInError('issuer_mismatch', `The answer names the issuer ${iss ?? '(none)'}, not ${this.issuer}: refused. Sign in again.`);
    }
    const error = params.get('error');
    if (error !== null) {
      throw new SignInError(error, params.get('error_description') ?? 'The issuer did not sign you in.');
    }
    const code = params.get('code');
    if (!code) throw new SignInError('invalid_response', 'The issuer sent back neither a code nor an error.');
    // The key named by dpop_jkt. Gone (another tab signed out meanwhile): no proof, and
    // the issuer refuses the code (dpop_key_mismatch); a new key could not match it.
    this.#key = await DpopKey.load(false);
    const tokens = await this.#tokenRequest({
      grant_type: 'authorization_code',
      code,
      redirect_uri: pending.redirectUri,
      code_verifier: pending.verifier,
    });
    this.#accept(tokens);
    this.#emit({ type: 'signed-in' });
  }

  /** The URL of the issuer's sign-out page, which ends the sign-in there (single sign-on). */
  get signOutPage(): string {
    return `${this.issuer}/oauth/logout`;
  }

  /**
   * The password grant (the second way in: first-party clients only; the issuer's page is
   * the first). The issuer answers with an access token and sets the cookie. The
   * proof that comes with it binds the new session to this browser's key (made now if
   * there is none). Read from IndexedDB afresh, not from memory: the stored key is the
   * one every tab and the next reload will prove.
   */
  async login(email: string, password: string): Promise<void> {
    this.#key = await DpopKey.load(true);
    const tokens = await this.#tokenRequest({ grant_type: 'password', username: email, password });
    this.#accept(tokens);
    this.#emit({ type: 'signed-in' });
  }

  /**
   * On page load: the access token was forgotten, but the HttpOnly cookie may still hold
   * a live refresh token. True when that gave us a session; false when there is none.
   */
  async restore(): Promise<boolean> {
    try {
      await this.refresh();
    } catch (err) {
      if (err instanceof IssuerError && err.sessionEnded) return false;
      throw err;
    }
    this.#emit({ type: 'signed-in' });
    return true;
  }

  /**
   * The refresh grant, with the refresh token only in the cookie. One at a time per tab:
   * callers arriving while one runs share its result (a second request would present the
   * token the first one just used).
   *
   * With the key from IndexedDB when there is one. Without one (after a sign-out, or the
   * browser evicted the site's storage) no key is made here: a new key could not be the
   * one a bound session needs, so the request goes without a proof and a bound session
   * answers `dpop_key_mismatch` (signed out; the next login makes a key).
   */
  refresh(): Promise<void> {
    this.#refreshing ??= (async () => {
      this.#key ??= await DpopKey.load(false);
      return this.#tokenRequest({ grant_type: 'refresh_token' });
    })()
      .then((tokens) => this.#accept(tokens))
      .catch(async (err: unknown) => {
        if (err instanceof IssuerError && err.sessionEnded && this.signedIn) await this.#signOut(err);
        throw err;
      })
      .finally(() => {
        this.#refreshing = null;
      });
    return this.#refreshing;
  }

  /**
   * A call to the issuer's `/v1` API with the access token: `Authorization: DPoP` and a
   * proof for this request (or `Bearer` if the issuer did not bind the token). A 401
   * (expired, or the session was revoked) gets one refresh and one retry; if the refresh
   * fails too, the user is signed out.
   */
  async api(path: string, init: RequestInit = {}): Promise<Response> {
    if (!this.signedIn || Date.now() >= this.#expiresAt) await this.refresh();
    let resp = await this.#fetch(path, init, false, this.#accessToken ?? '');
    if (resp.status === 401) {
      await this.refresh();
      resp = await this.#fetch(path, init, false, this.#accessToken ?? '');
    }
    if (!resp.ok) throw await errorFrom(resp);
    return resp;
  }

  async me(): Promise<User> {
    return (await (await this.api('/v1/me')).json()) as User;
  }

  async sessions(): Promise<Session[]> {
    return (await (await this.api('/v1/sessions')).json()) as Session[];
  }

  /** `DELETE /v1/sessions/{id}`; ending our own session also clears our cookie (and the key). */
  async endSession(session: Session): Promise<void> {
    await this.api(`/v1/sessions/${encodeURIComponent(session.id)}`, { method: 'DELETE' });
    if (session.current) await this.#signOut();
  }

  /**
   * `POST /v1/logout`: ends this session; the answer clears the cookie. We forget the
   * access token and delete the DPoP key even when the call fails, and tell the other tabs.
   */
  async logout(): Promise<void> {
    try {
      await this.api('/v1/logout', { method: 'POST' });
    } finally {
      if (this.signedIn) await this.#signOut();
    }
  }

  // ------------------------------------------------------------------------- internals

  /**
   * The issuer's metadata (RFC 8414), fetched once. Its `issuer` must be the configured
   * one, byte for byte (§3.3): otherwise the endpoints it names are not our issuer's.
   */
  #discover(): Promise<ServerMetadata> {
    this.#metadata ??= (async () => {
      const resp = await this.#fetch('/.well-known/oauth-authorization-server', { credentials: 'omit' });
      const metadata = (await resp.json()) as Partial<ServerMetadata>;
      if (metadata.issuer !== this.issuer) {
        throw new Error(`The issuer's metadata names ${String(metadata.issuer)}, not ${this.issuer}: refused.`);
      }
      const endpoint = new URL(metadata.authorization_endpoint ?? '');
      if (endpoint.protocol !== 'https:' && endpoint.protocol !== 'http:') {
        throw new Error(`The issuer's authorization endpoint is not an http(s) URL: ${endpoint.href}`);
      }
      return { issuer: metadata.issuer, authorization_endpoint: endpoint.href };
    })();
    // A failure (issuer down) is not kept: the next click tries again.
    this.#metadata.catch(() => {
      this.#metadata = null;
    });
    return this.#metadata;
  }

  /** `POST /oauth/token`, form-encoded as RFC 6749 says, with the CSRF header. */
  async #tokenRequest(params: Record<string, string>): Promise<TokenResponse> {
    const resp = await this.#fetch(TOKEN_PATH, {
      method: 'POST',
      headers: { 'X-Requested-With': 'XMLHttpRequest' },
      body: new URLSearchParams({ ...params, client_id: this.clientId }),
    });
    return (await resp.json()) as TokenResponse;
  }

  /**
   * fetch() against the issuer, with credentials (the cookie) unless `init` says
   * otherwise (the metadata needs none); errors become IssuerError. A token request
   * gets a fresh DPoP proof of our key (when there is one); a `/v1` call gets
   * `accessToken` in the Authorization header of the token's type, with a fresh proof
   * for this very request when that type is DPoP.
   *
   * Every request to the issuer goes through here: this is the one place a server nonce
   * (RFC 9449 §8-9) would be handled: remember the `DPoP-Nonce` response header (CORS
   * exposes it), put it in the proofs, and on a `use_dpop_nonce` error (400 here, 401
   * with `WWW-Authenticate` at `/v1`) send once more with a new proof.
   */
  async #fetch(path: string, init: RequestInit, throwOnError = true, accessToken?: string): Promise<Response> {
    const url = new URL(this.issuer + path);
    const headers = new Headers(init.headers);
    const key = (accessToken === undefined ? path === TOKEN_PATH : this.#tokenType === 'DPoP') ? this.#key : null;
    if (key) {
      const proof = await key.proof({
        method: (init.method ?? 'GET').toUpperCase(),
        url: url.origin + url.pathname,
        accessToken,
      });
      headers.set('DPoP', proof);
    }
    if (accessToken !== undefined) headers.set('Authorization', `${key ? 'DPoP' : 'Bearer'} ${accessToken}`);
    let resp: Response;
    try {
      resp = await fetch(url, { credentials: 'include', ...init, headers });
    } catch {
      // The browser hides why (down, wrong URL, or CORS refused this origin).
      throw new IssuerError(
        0,
        'network_error',
        `Cannot reach the issuer at ${this.issuer}: is it running, and does it allow the origin ${location.origin}?`,
      );
    }
    if (throwOnError && !resp.ok) throw await errorFrom(resp);
    return resp;
  }

  #accept(tokens: TokenResponse): void {
    this.#accessToken = tokens.access_token;
    // Case-insensitive (RFC 6749 §5.1); anything but DPoP is used as a bearer token.
    this.#tokenType = tokens.token_type.toLowerCase() === 'dpop' ? 'DPoP' : 'Bearer';
    const now = Date.now();
    this.#expiresAt = now + tokens.expires_in * 1000;
    // A minute early; never later than half-way for short lifetimes.
    const delayS = Math.max(tokens.expires_in - REFRESH_MARGIN_S, tokens.expires_in / 2);
    this.#plan(delayS);
    this.#emit({ type: 'refreshed' });
  }

  #plan(delayS: number): void {
    clearTimeout(this.#timer);
    this.#refreshAt = Date.now() + delayS * 1000;
    this.#timer = setTimeout(() => void this.#silentRefresh(), delayS * 1000);
  }

  async #silentRefresh(): Promise<void> {
    try {
      await this.refresh();
    } catch {
      // Signed out already if the session ended; otherwise (network, 429, 503) try again
      // while the access token still works.
      if (this.signedIn) this.#plan(RETRY_S);
    }
  }

  /**
   * Forgets the access token; when this tab is the one signing out, also deletes the
   * DPoP key (a next login makes a new one) before telling the other tabs.
   */
  async #signOut(error?: IssuerError, tellOtherTabs = true): Promise<void> {
    clearTimeout(this.#timer);
    this.#accessToken = null;
    this.#tokenType = 'Bearer';
    this.#expiresAt = 0;
    this.#refreshAt = 0;
    this.#key = null;
    if (tellOtherTabs) {
      // Signed out all the same if IndexedDB fails: the key then waits for the next login.
      await discardKey().catch(() => {});
      this.#channel.postMessage('signed-out');
    }
    this.#emit({ type: 'signed-out', error });
  }

  #emit(event: AuthEvent): void {
    for (const listener of this.#listeners) listener(event);
  }
}

/** 32 random bytes, base64url (43 characters): a PKCE verifier (RFC 7636 §4.1), a state. */
function randomToken(): string {
  return b64url(crypto.getRandomValues(new Uint8Array(32)));
}

/** Reads the issuer's JSON error body; anything else becomes a generic message. */
async function errorFrom(resp: Response): Promise<IssuerError> {
  let body: { error?: string; error_description?: string; error_reason?: string; request_id?: string } = {};
  try {
    body = await resp.json();
  } catch {
    // Not JSON (a proxy's error page): the status is all we have.
  }
  return new IssuerError(
    resp.status,
    body.error ?? 'http_error',
    body.error_description ?? `HTTP ${resp.status} ${resp.statusText}`,
    body.error_reason,
    body.request_id ?? resp.headers.get('x-request-id') ?? undefined,
  );
}
