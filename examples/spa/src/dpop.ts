/**
 * DPoP (RFC 9449): the key this browser proves on every token request and API call, so
 * that its tokens are bound to it and useless anywhere else.
 *
 * - One ES256 (ECDSA P-256) key pair, made by WebCrypto with `extractable: false`: the
 *   page (and any script in it) can sign with the private key but never read it;
 *   `exportKey` throws. Only the public half goes out, as the proof's `jwk`.
 * - Kept in IndexedDB, which stores `CryptoKey` objects as they are (structured clone),
 *   so the key survives a reload without its bytes ever being serialised where a script
 *   could read them. localStorage holds strings only: it would need an exportable key.
 * - Made at login when there is none, reused after reloads and by every tab, deleted at
 *   sign-out (`discardKey`): the next login makes a new one.
 */

/** The IndexedDB database, object store and record that hold the key. */
const DB_NAME = 'token-issuer-dpop';
const STORE = 'keys';
const RECORD = 'current';

const ES256: EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
const SIGN: EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };

/** The public key as a proof's header carries it: these members only (RFC 7638 order). */
interface PublicJwk {
  crv: string;
  kty: string;
  x: string;
  y: string;
}

/** What a proof is for: one request. */
export interface ProofTarget {
  /** `GET`, `POST`, ... */
  method: string;
  /** The issuer's URL plus the request's path: no query, no fragment. */
  url: string;
  /** At the protected endpoints: the access token sent with the proof (`ath`). */
  accessToken?: string;
}

export class DpopKey {
  readonly #privateKey: CryptoKey;
  readonly #jwk: PublicJwk;
  /** The RFC 7638 SHA-256 thumbprint of the public key: the tokens' `cnf.jkt`. */
  readonly thumbprint: string;

  private constructor(privateKey: CryptoKey, jwk: PublicJwk, thumbprint: string) {
    this.#privateKey = privateKey;
    this.#jwk = jwk;
    this.thumbprint = thumbprint;
  }

  /**
   * This browser's key from IndexedDB; with `create`, a new one is made and stored when
   * there is none. `null` when there is none and `create` is false.
   */
  static async load(create: boolean): Promise<DpopKey | null> {
    let pair = await withStore('readonly', (store) => store.get(RECORD));
    if (!usable(pair)) {
      if (!create) return null;
      const candidate = await crypto.subtle.generateKey(ES256, false, ['sign', 'verify']);
      // Another tab may have stored one since: keep that one (one transaction reads and
      // writes, so two tabs cannot both write).
      pair = await getOrPut(candidate);
    }
    return DpopKey.#from(pair as CryptoKeyPair);
  }

  static async #from(pair: CryptoKeyPair): Promise<DpopKey> {
    const { crv, kty, x, y } = await crypto.subtle.exportKey('jwk', pair.publicKey);
    if (!crv || !kty || !x || !y) throw new Error('DPoP: the public key did not export as an EC JWK');
    const jwk: PublicJwk = { crv, kty, x, y };
    // RFC 7638: the required members in lexicographic order, no whitespace.
    const canonical = JSON.stringify({ crv, kty, x, y });
    const thumbprint = b64url(await crypto.subtle.digest('SHA-256', utf8(canonical)));
    return new DpopKey(pair.privateKey, jwk, thumbprint);
  }

  /** A fresh proof for one request (RFC 9449 §4.2): its own `jti`, `iat` now. */
  async proof(target: ProofTarget): Promise<string> {
    const header = { typ: 'dpop+jwt', alg: 'ES256', jwk: this.#jwk };
    const claims: Record<string, string | number> = {
      jti: crypto.randomUUID(),
      htm: target.method,
      htu: target.url,
      iat: Math.floor(Date.now() / 1000),
    };
    if (target.accessToken !== undefined) {
      claims.ath = b64url(await crypto.subtle.digest('SHA-256', utf8(target.accessToken)));
    }
    const input = `${b64url(utf8(JSON.stringify(header)))}.${b64url(utf8(JSON.stringify(claims)))}`;
    // WebCrypto's ECDSA signature is r || s (64 bytes), the JWS form already.
    const signature = await crypto.subtle.sign(SIGN, this.#privateKey, utf8(input));
    return `${input}.${b64url(signature)}`;
  }
}

/** Deletes this browser's key (at sign-out); the next login makes a new one. */
export async function discardKey(): Promise<void> {
  await withStore('readwrite', (store) => store.delete(RECORD));
}

/**
 * Only a key pair this module could have made is used: ES256 with a private key that
 * cannot be exported. Anything else in the record (a key planted by a script, say) is
 * treated as no key, and replaced at the next login.
 */
function usable(value: unknown): value is CryptoKeyPair {
  const pair = value as Partial<CryptoKeyPair> | undefined;
  return (
    pair?.privateKey instanceof CryptoKey &&
    pair.publicKey instanceof CryptoKey &&
    !pair.privateKey.extractable &&
    (pair.privateKey.algorithm as EcKeyAlgorithm).namedCurve === 'P-256' &&
    pair.privateKey.algorithm.name === 'ECDSA'
  );
}

/** In one transaction: the stored key pair if usable, else `candidate`, stored. */
async function getOrPut(candidate: CryptoKeyPair): Promise<CryptoKeyPair> {
  let kept: CryptoKeyPair = candidate;
  await withStore('readwrite', (store) => {
    const read = store.get(RECORD);
    read.onsuccess = () => {
      if (usable(read.result)) kept = read.result;
      else store.put(candidate, RECORD);
    };
    return read;
  });
  return kept;
}

/** Runs `use` in one transaction on the key store; resolves with its request's result once committed. */
async function withStore<T>(mode: IDBTransactionMode, use: (store: IDBObjectStore) => IDBRequest<T>): Promise<T> {
  const db = await new Promise<IDBDatabase>((resolve, reject) => {
    const open = indexedDB.open(DB_NAME, 1);
    open.onupgradeneeded = () => open.result.createObjectStore(STORE);
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error ?? new Error(`IndexedDB: cannot open ${DB_NAME}`));
  });
  try {
    return await new Promise<T>((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const request = use(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(request.result);
      tx.onabort = () => reject(tx.error ?? new Error('IndexedDB: transaction aborted'));
    });
  } finally {
    db.close();
  }
}

function utf8(text: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(text);
}

/** base64url without padding (RFC 7515 §2). */
export function b64url(bytes: ArrayBuffer | Uint8Array<ArrayBuffer>): string {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let binary = '';
  for (const byte of view) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}
