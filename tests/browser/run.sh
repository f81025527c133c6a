#!/usr/bin/env bash
# The example SPA (examples/spa) in a real browser against a live token-issuer: Debian's
# Chromium driven by Playwright (playwright-core, no downloaded browser), real HTTP, no
# mocks. The checks are in examples/spa/e2e/browser.test.mjs: register and log in with
# the password form, the refresh cookie hidden from JavaScript, a reload and the
# scheduled silent refresh, two tabs refreshing at once, another origin refused without
# using the token, ending a session from the list, logout.
# DPoP (RFC 9449), on every one of those token answers and /v1 calls: token_type DPoP, a
# fresh proof checked here (typ, alg, public-only jwk, htm, htu, ath, new jti, signature),
# cnf.jkt = the thumbprint of the key in IndexedDB (computed in the page); the same key
# after a reload; the private key non-extractable (exportKey throws); the refresh cookie
# and the access token copied out of the browser and replayed from Node, without a proof
# or with another key's, refused (400 dpop_key_mismatch, 401 invalid_token /
# invalid_dpop_proof) without using up the session (the page refreshes past the grace
# window); the key deleted at logout and on a device signed out, the old cookie refused
# even with the old key put back (revoked), and the next login on a new key.
# The authorization code flow with PKCE through the issuer's hosted pages (a browser and
# an account of their own): "Sign in" reads the metadata and goes to its authorization
# endpoint (S256 challenge, state, dpop_jkt, /callback); the sign-in page (headers: CSP
# with frame-ancestors 'none', no-store, the __Host-form cookie); a wrong password shows
# the form again (400, an alert the fields point to); signing in answers 303 to /callback
# with code, state and iss and sets __Host-session (HttpOnly, Secure, SameSite=Lax); the
# SPA exchanges the code with its verifier (S256 = the challenge) and a DPoP proof of the
# key named by dpop_jkt, in cookie mode, and cleans the URL (nothing left in storage);
# the session survives a reload; the session list shows the app's session and the
# issuer's sign-in; the SPA's logout ends the app's session only (__Host-session stays),
# so the next "Sign in" comes straight back (302, no form: single sign-on); the issuer's
# sign-out page (confirm, then __Host-session cleared) leaves the app's session going,
# and after both the next "Sign in" shows the form; the issuer's error (prompt=none:
# login_required) shown by the SPA; callbacks with another state or another iss refused
# without an exchange; the password form still signs in beside it; the sign-in page
# framed by another origin does not render (a frame of the SPA, as control, does); the
# consent page of a third-party client (scope listed, Deny: access_denied, Allow: a code
# exchanged for tokens of scope read, then remembered: 302); an unregistered redirect_uri
# gets the error page, never a redirect. axe-core on the sign-in (also with its error),
# sign-out, consent and error pages: no serious or critical violation (every finding is
# printed as `axe: ...`). No CSP violation on any issuer page, watched both through the
# console and the securitypolicyviolation event. Controls show that the CSP watch and
# axe do report what they look for.
#
# Usage: tests/browser/run.sh   (from anywhere; CI calls it after `cargo test`)
# Needs: node 20.19+ with npm, and Chromium at /usr/bin/chromium (installed with apt-get
# when missing, which needs root). `npm ci` runs in examples/spa only when its
# package-lock.json changed.
#
# Environment:
#   TOKEN_ISSUER_BIN   the server binary (default target/debug/token-issuer, which
#                      `cargo test` builds)
#   CHROMIUM           the browser (default /usr/bin/chromium)
#
# The issuer gets a free loopback port, a fresh temporary data and key directory, and a
# configuration file written here ($TMP/issuer.toml) that registers the built-in
# development clients as they are (`dev`; `dev-spa`, cookie mode, origin
# http://localhost:5173, redirect URI http://localhost:5173/callback, first-party;
# `dev-native`; not `dev-service`, whose secret only the built-in configuration makes,
# and which the browser does not use) and one more: `third-party-spa` (a web app:
# kind spa, body delivery; a third-party native app would be asked every time, RFC
# 8252 §8.6), redirect URI http://localhost:5173/third-party-callback, scopes
# ["read"], first_party = false), whose requests get the consent page. So:
#   - the SPA is served on localhost:5173 (strict: the run fails if the port is taken);
#   - the issuer is reached as http://localhost:$PORT (ISSUER_URL), never 127.0.0.1: that
#     is another site, and the SameSite=Strict refresh cookie would not be sent to it.
# Nothing else differs from the defaults; the login rate limits stay on (the test signs
# in a dozen times with two accounts, below them).
#
# Screenshots go to target/browser-artifacts/ (the code flow's: code-1-sign-in-page,
# code-2-wrong-password, code-3-signed-in, code-4-sign-out-page, code-5-error-shown,
# code-6-consent-page, code-7-error-page). Prints one line per check and
# `browser: N passed, N failed`; exits 1 on any failure (and prints the server log tail).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
SPA=examples/spa
WORK=target/browser
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
SPA_PORT=5173

say() { echo "== browser: $*"; }
started=$SECONDS

NAME=browser
# shellcheck source=tests/issuer.sh
source "$ROOT/tests/issuer.sh"
issuer_clean_env

issuer_resolve_bin
mkdir -p "$WORK"

# ---------------------------------------------------------------------------- installs

if [[ ! -x $CHROMIUM ]]; then
  if [[ $CHROMIUM == /usr/bin/chromium && $(id -u) == 0 ]]; then
    say "installing Debian's chromium"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  else
    echo "browser: no Chromium at $CHROMIUM (apt-get install chromium, or set CHROMIUM)" >&2
    exit 1
  fi
fi

say "node packages ($SPA/node_modules)"
want=$(sha256sum "$SPA/package-lock.json" | cut -d' ' -f1)
if [[ "$(cat "$SPA/node_modules/.browser-lock.sha256" 2>/dev/null)" != "$want" ]]; then
  (cd "$SPA" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" >"$SPA/node_modules/.browser-lock.sha256"
fi

# Built into target/ (not examples/spa/dist): its config.json names this run's issuer.
DIST=$ROOT/$WORK/dist
say "building the SPA into $WORK/dist"
(cd "$SPA" && ./node_modules/.bin/tsc --noEmit -p . &&
  ./node_modules/.bin/vite build --logLevel warn --outDir "$DIST" --emptyOutDir)

# ----------------------------------------------------------------------- server and SPA

TMP=$(mktemp -d "${TMPDIR:-/tmp}/token-issuer-browser.XXXXXX")
SERVER_PID=
SPA_PID=
LOG=$TMP/server.log
failed_any=0

log_printed=0
print_log() {
  if [[ $log_printed == 0 && -f $LOG ]]; then
    log_printed=1
    echo "== browser: server log (last 60 lines of $LOG)"
    tail -n 60 "$LOG" | sed 's/\x1b\[[0-9;]*m//g' || true
    if [[ -s $TMP/spa.log ]]; then
      echo "== browser: SPA server log"
      tail -n 20 "$TMP/spa.log" || true
    fi
  fi
}

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  stop_pid "$SPA_PID"
  stop_pid "$SERVER_PID"
  if [[ $failed_any != 0 ]]; then print_log; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}

# Exit 0 when $1 answers 200.
answers() {
  node -e 'fetch(process.argv[1], { signal: AbortSignal.timeout(1000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))' "$1"
}

# Fail early and clearly if something already listens on the SPA's port.
if ! node -e 'const s = require("net").createServer().once("error", () => process.exit(1)).listen(+process.argv[1], "localhost", () => s.close())' "$SPA_PORT" ||
  answers "http://localhost:$SPA_PORT/"; then
  failed_any=1
  echo "browser: port $SPA_PORT is taken: the SPA must be served on exactly http://localhost:$SPA_PORT (the dev-spa client's only allowed origin); stop what listens there" >&2
  echo "browser: 0 passed, 1 failed"
  exit 1
fi

# The built-in development clients as they are (dev-service aside: only the built-in
# configuration makes its secret), and a third-party client for the consent page.
CONFIG=$TMP/issuer.toml
cat >"$CONFIG" <<'TOML'
[[clients]]
client_id = "dev"
kind = "mobile"
delivery = "body"

[[clients]]
client_id = "dev-spa"
kind = "spa"
delivery = "cookie"
allowed_origins = ["http://localhost:5173"]
redirect_uris = ["http://localhost:5173/callback"]
first_party = true

[[clients]]
client_id = "dev-native"
kind = "mobile"
delivery = "body"
redirect_uris = ["http://127.0.0.1/callback", "http://[::1]/callback"]
first_party = true

[[clients]]
client_id = "third-party-spa"
kind = "spa"
delivery = "body"
redirect_uris = ["http://localhost:5173/third-party-callback"]
first_party = false
scopes = ["read"]
TOML

# A free port can be taken between the probe and the bind: try a few.
for attempt in 1 2 3; do
  PORT=$(free_port)
  ISSUER=http://localhost:$PORT
  say "starting $BIN on $ISSUER (bound to 127.0.0.1:$PORT; data and keys in $TMP)"
  env ISSUER_CONFIG="$CONFIG" ISSUER_BIND="127.0.0.1:$PORT" ISSUER_URL="$ISSUER" \
    ISSUER_DATA_DIR="$TMP/data" ISSUER_KEYS_DIR="$TMP/keys" ISSUER_LOG=info \
    "$BIN" serve >"$LOG" 2>&1 &
  SERVER_PID=$!
  up=0
  for _ in $(seq 1 150); do
    if answers "http://127.0.0.1:$PORT/healthz"; then up=1; break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.2
  done
  [[ $up == 1 ]] && break
  stop_pid "$SERVER_PID"
  SERVER_PID=
  echo "browser: the server did not come up (attempt $attempt); its log:"
  tail -n 30 "$LOG" | sed 's/\x1b\[[0-9;]*m//g' || true
done
if [[ -z $SERVER_PID ]]; then
  failed_any=1
  echo "browser: 0 passed, 1 failed"
  exit 1
fi

printf '{\n  "issuer": "%s"\n}\n' "$ISSUER" >"$DIST/config.json"
say "serving $WORK/dist on http://localhost:$SPA_PORT (vite preview)"
(cd "$SPA" && exec ./node_modules/.bin/vite preview --outDir "$DIST" --host localhost \
  --port "$SPA_PORT" --strictPort) >"$TMP/spa.log" 2>&1 &
SPA_PID=$!
up=0
for _ in $(seq 1 100); do
  if answers "http://localhost:$SPA_PORT/config.json"; then up=1; break; fi
  kill -0 "$SPA_PID" 2>/dev/null || break
  sleep 0.1
done
if [[ $up != 1 ]]; then
  failed_any=1
  echo "browser: the SPA server did not come up on http://localhost:$SPA_PORT; its log:"
  cat "$TMP/spa.log" || true
  echo "browser: 0 passed, 1 failed"
  exit 1
fi

# -------------------------------------------------------------------------------- test

say "running $SPA/e2e/browser.test.mjs"
rm -rf target/browser-artifacts
status=0
ISSUER=$ISSUER SPA_URL=http://localhost:$SPA_PORT CHROMIUM=$CHROMIUM \
  ARTIFACTS=$ROOT/target/browser-artifacts \
  node "$SPA/e2e/browser.test.mjs" || status=$?
if [[ $status != 0 ]]; then failed_any=1; fi
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "browser: the server died during the test"
  failed_any=1
fi
if [[ $failed_any != 0 ]]; then print_log; fi
say "done in $((SECONDS - started)) s"
exit "$failed_any"
