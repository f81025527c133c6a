/**
 * Run-time configuration: `config.json`, served next to index.html, so one build can
 * talk to any issuer (edit or replace the file at deploy time; Vite copies
 * `public/config.json` into `dist/`).
 *
 * Deliberately not a query parameter: a link that chose the issuer would let anyone
 * point the login form, and the password typed into it, at a server of theirs.
 */
export interface Config {
  /** The issuer's origin, e.g. `http://localhost:8080`: no path, no trailing slash. */
  issuer: string;
}

const DEFAULT_ISSUER = 'http://localhost:8080';

export async function loadConfig(): Promise<Config> {
  let raw: { issuer?: unknown } = {};
  const resp = await fetch(new URL('config.json', document.baseURI), { cache: 'no-store' });
  if (resp.ok) raw = await resp.json();
  else if (resp.status !== 404) throw new Error(`config.json: HTTP ${resp.status}`);

  const value = raw.issuer ?? DEFAULT_ISSUER;
  if (typeof value !== 'string') throw new Error('config.json: "issuer" must be a string');
  const url = new URL(value);
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new Error(`config.json: "issuer" must be an http(s) URL, not ${value}`);
  }
  return { issuer: url.origin };
}
