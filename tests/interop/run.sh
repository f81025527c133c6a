#!/usr/bin/env bash
# Independent-client interoperability suites, against a live token-issuer (real HTTP):
#   python  PyJWT (PyJWKClient via the RFC 8414 metadata) and oauthlib/requests-oauthlib
#           (clients.py); and a DPoP client (RFC 9449) of its own, keys from
#           `cryptography`, proofs signed by PyJWT (dpop_clients.py, reported as
#           `python-dpop`); the client credentials grant with requests-oauthlib's
#           BackendApplicationClient, tokens checked by PyJWT (client_credentials.py,
#           reported as `python-cc`); Authlib's OAuth2Session through the code flow
#           with PKCE, the hosted sign-in page driven over HTTP and the redirect
#           received by a real loopback listener, then refresh and /v1/me; and
#           Authlib's client credentials with client_secret_basic, client_secret_post
#           and private_key_jwt (code_flow.py, reported as `python-code`)
#   node    npm `jose` (createRemoteJWKSet + jwtVerify) (jose.mjs); and openid-client 6
#           (on oauth4webapi 3) as a DPoP client with the library's own DPoP handle,
#           oauth4webapi's validateJwtAccessToken as its resource server (dpop.mjs,
#           reported as `node-dpop`); openid-client 6's clientCredentialsGrant with
#           ClientSecretBasic / ClientSecretPost and tokenIntrospection
#           (client_credentials.mjs, reported as `node-cc`); openid-client 6's code
#           flow (buildAuthorizationUrl with PKCE S256, the sign-in and consent pages
#           driven over HTTP, authorizationCodeGrant checking state and RFC 9207 iss,
#           refreshTokenGrant, prompt=none with the SSO cookie, a reused code) and
#           clientCredentialsGrant with PrivateKeyJwt (a replayed assertion, another
#           aud, another key) (code_flow.mjs, reported as `node-code`)
#   schemathesis  every operation of /openapi.json: no 5xx, status codes, content
#           types, response headers and bodies as the document says
#
# Usage: tests/interop/run.sh   (from anywhere; CI calls it after `cargo test`)
# Needs: python3 (3.11+, with venv) and node 20+ with npm; installs its pinned
# packages into git-ignored places (target/interop/venv, tests/interop/node/node_modules),
# again only when the pins change.
#
# Environment:
#   TOKEN_ISSUER_BIN        the server binary (default target/debug/token-issuer,
#                           which `cargo test` builds)
#   INTEROP_MAX_EXAMPLES    schemathesis test cases per operation and phase (default 100)
#   INTEROP_SEED            schemathesis seed (default fixed, so CI runs are repeatable)
#   INTEROP_SUITES          which suites to run (default "python node schemathesis")
#
# The server gets a free loopback port, a fresh temporary data and key directory and a
# configuration file ($TMP/issuer.toml, below) that is the built-in development
# configuration (clients `dev`, `dev-spa` and `dev-native`, self-registration on; not
# `dev-service`) plus clients the built-in configuration has none of, and clients come
# from a file only: `dev-nonce`, that requires DPoP nonces (RFC 9449 §8); a service
# client, `interop-service`, with the client credentials grant, whose secret
# `token-issuer client-secret` makes afresh each run (INTEROP_CC_CLIENT_ID,
# INTEROP_CC_CLIENT_SECRET); a service client, `interop-jwt`, that authenticates with
# private_key_jwt, whose EC P-256 key this script makes afresh each run
# (INTEROP_JWT_CLIENT_ID, INTEROP_JWT_KEY_FILE, INTEROP_JWT_KID); and a native client
# that is not first-party, `interop-third-party`, for the consent page
# (INTEROP_THIRD_PARTY_CLIENT_ID). The per-IP and
# per-account login rate limits are off (ISSUER_RATE_LIMIT_LOGIN_PER_IP=off,
# ISSUER_RATE_LIMIT_LOGIN_PER_ACCOUNT=off): the schemathesis auth provider logs in
# again after every 401 (schemathesis logs its own session out and disables its own
# user), and the fuzzed `POST /v1/me/password` calls count as failed logins of that
# account; with the limits on, the run would measure the limiter (a documented 429)
# instead of the operations. Nothing else differs from the defaults.
#
# Each suite's script prints its own `<name>: N passed, N failed` (python, python-dpop,
# python-cc, python-code, node, node-dpop, node-cc, node-code, schemathesis); the last
# line sums them.
# Exit status: 0 when every suite passed, 1 otherwise (the server log tail is printed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
HERE=tests/interop
WORK=target/interop
VENV=$WORK/venv
MAX_EXAMPLES=${INTEROP_MAX_EXAMPLES:-100}
SEED=${INTEROP_SEED:-20240607}
SUITES=${INTEROP_SUITES:-python node schemathesis}

say() { echo "== interop: $*"; }
started=$SECONDS

NAME=interop
# shellcheck source=tests/issuer.sh
source "$ROOT/tests/issuer.sh"
issuer_clean_env

issuer_resolve_bin
mkdir -p "$WORK"

# ---------------------------------------------------------------------------- installs

say "python packages ($VENV)"
req=$HERE/python/requirements.txt
want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ ! -x $VENV/bin/python || "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" || { echo "interop: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
  # requirements.txt is the full, exact closure (pip freeze): --no-deps installs exactly
  # that, and `pip check` fails if a pin is missing from it.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps -r "$req"
  "$VENV/bin/python" -m pip check --disable-pip-version-check >/dev/null
  echo "$want" >"$VENV/.requirements.sha256"
fi
PY=$VENV/bin/python

say "node packages ($HERE/node/node_modules)"
want=$(sha256sum "$HERE/node/package-lock.json" | cut -d' ' -f1)
if [[ "$(cat "$HERE/node/node_modules/.interop-lock.sha256" 2>/dev/null)" != "$want" ]]; then
  (cd "$HERE/node" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" >"$HERE/node/node_modules/.interop-lock.sha256"
fi

# ------------------------------------------------------------------------------ server

TMP=$(mktemp -d "${TMPDIR:-/tmp}/token-issuer-interop.XXXXXX")
SERVER_PID=
LOG=$TMP/server.log
failed_any=0

# The built-in development clients as src/config/clients.rs (`dev_clients`) makes them,
# written out: every setting a file leaves out defaults to what they have there
# (audiences: the issuer URL; lifetimes: the global ones; dpop "allowed",
# dpop_foreign_key "refuse", dpop_nonce "off"; no scopes). A client with redirect_uris
# is third-party unless it says `first_party = true`, so `dev-spa` and `dev-native`
# (first-party there) say it. `dev-service` is left out: its secret is made in the
# key directory on a start without a file; `interop-service` (below) stands in for
# it. A file must list its own clients, and `allow_registration` defaults to true with
# or without one. Plus
# `dev-nonce`, a mobile client whose proofs must carry our nonce (python-dpop and
# node-dpop use it), without a refresh grace window: a refresh token used twice is
# reuse at once, so "a use_dpop_nonce refusal uses nothing up" shows in the retry
# (within the window, a used token presented again gets its successor once more).
CONFIG=$TMP/issuer.toml
cat >"$CONFIG" <<'TOML'
allow_registration = true

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
client_id = "dev-nonce"
kind = "mobile"
delivery = "body"
dpop_nonce = "required"
refresh_grace_period = "0"
TOML

# Plus `interop-service`, a service client with the client credentials grant (RFC 6749
# §4.4; python-cc and node-cc use it), its secret fresh from the server's own CLI
# (`client-secret` prints `client_secret = ...` and the `client_secret_hash = "..."`
# line for the file). The clients get the id and secret from the environment (below).
CC_CLIENT_ID=interop-service
secret_out=$("$BIN" client-secret)
CC_CLIENT_SECRET=$(sed -n -E 's/^client_secret = (.+)$/\1/p' <<<"$secret_out")
CC_HASH_LINE=$(grep -E '^client_secret_hash = "sha256:[0-9a-f]{64}"$' <<<"$secret_out" || true)
if [[ -z $CC_CLIENT_SECRET || -z $CC_HASH_LINE ]]; then
  echo "interop: unexpected output of \`$BIN client-secret\`: $secret_out" >&2
  exit 1
fi
cat >>"$CONFIG" <<TOML

[[clients]]
client_id = "$CC_CLIENT_ID"
kind = "service"
$CC_HASH_LINE
client_credentials = true
audiences = ["https://orders.example", "https://billing.example"]
scopes = ["orders:read", "billing:read"]
introspection_audiences = ["*"]
TOML

# Plus `interop-third-party`, a native client that is not first-party (the code flow
# asks the user's consent for it; node-code uses it): a loopback redirect URI, which
# matches on any port (RFC 8252 §7.3).
THIRD_PARTY_CLIENT_ID=interop-third-party
cat >>"$CONFIG" <<TOML

[[clients]]
client_id = "$THIRD_PARTY_CLIENT_ID"
kind = "mobile"
delivery = "body"
redirect_uris = ["http://127.0.0.1/callback"]
first_party = false
TOML

# Plus `interop-jwt`, a service client that authenticates with private_key_jwt (RFC
# 7523; node-code and python-code use it) and has no secret: an EC P-256 key pair made
# afresh each run, its private key (PKCS#8 PEM) for the clients (INTEROP_JWT_KEY_FILE,
# INTEROP_JWT_KID), its public JWK inline in the client's `jwks`.
JWT_CLIENT_ID=interop-jwt
JWT_KEY_FILE=$TMP/interop-jwt.pem
JWT_KID=interop-jwt-1
JWKS_LINE=$("$PY" - "$JWT_KEY_FILE" "$JWT_KID" <<'EOF'
import base64, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

path, kid = sys.argv[1], sys.argv[2]
key = ec.generate_private_key(ec.SECP256R1())
with open(path, "wb") as f:
    f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
numbers = key.public_key().public_numbers()
b64 = lambda n: base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()
print(f'jwks = {{keys = [{{kty = "EC", crv = "P-256", kid = "{kid}", x = "{b64(numbers.x)}", y = "{b64(numbers.y)}"}}]}}')
EOF
)
cat >>"$CONFIG" <<TOML

[[clients]]
client_id = "$JWT_CLIENT_ID"
kind = "service"
$JWKS_LINE
client_credentials = true
audiences = ["https://orders.example"]
scopes = ["orders:read"]
TOML

log_printed=0
print_log() {
  if [[ $log_printed == 0 && -f $LOG ]]; then
    log_printed=1
    echo "== interop: server log (last 80 lines of $LOG)"
    tail -n 80 "$LOG" | sed 's/\x1b\[[0-9;]*m//g' || true
  fi
}

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  stop_pid "$SERVER_PID"
  if [[ $failed_any != 0 ]]; then print_log; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

healthy() {
  "$PY" - "$BASE/healthz" <<'EOF'
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

# A free port can be taken between the probe and the bind: try a few.
for attempt in 1 2 3; do
  PORT=$(free_port)
  BASE=http://127.0.0.1:$PORT
  say "starting $BIN on $BASE (data and keys in $TMP)"
  # `env` execs the server: $! is the server's own pid, which cleanup stops.
  env ISSUER_CONFIG="$CONFIG" ISSUER_BIND="127.0.0.1:$PORT" ISSUER_URL="$BASE" \
    ISSUER_DATA_DIR="$TMP/data" ISSUER_KEYS_DIR="$TMP/keys" ISSUER_LOG=info \
    ISSUER_RATE_LIMIT_LOGIN_PER_IP=off ISSUER_RATE_LIMIT_LOGIN_PER_ACCOUNT=off \
    "$BIN" serve >"$LOG" 2>&1 &
  SERVER_PID=$!
  up=0
  for _ in $(seq 1 150); do
    if healthy; then up=1; break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.2
  done
  [[ $up == 1 ]] && break
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  echo "interop: the server did not come up (attempt $attempt); its log:"
  tail -n 30 "$LOG" | sed 's/\x1b\[[0-9;]*m//g' || true
done
if [[ -z $SERVER_PID ]]; then
  failed_any=1
  echo "interop: 0 passed, 1 failed"
  exit 1
fi

export INTEROP_BASE_URL=$BASE INTEROP_KEYS_DIR=$TMP/keys
export INTEROP_CC_CLIENT_ID=$CC_CLIENT_ID INTEROP_CC_CLIENT_SECRET=$CC_CLIENT_SECRET
export INTEROP_JWT_CLIENT_ID=$JWT_CLIENT_ID INTEROP_JWT_KEY_FILE=$JWT_KEY_FILE INTEROP_JWT_KID=$JWT_KID
export INTEROP_THIRD_PARTY_CLIENT_ID=$THIRD_PARTY_CLIENT_ID

# ------------------------------------------------------------------------------ suites

total_passed=0
total_failed=0
# Runs one suite, echoing its output; adds up its `<suite>: N passed, N failed` line.
# A suite that exits non-zero without such a line counts as one failure.
run_suite() {
  local name=$1
  shift
  local out=$TMP/$name.out status=0
  say "$name"
  "$@" 2>&1 | tee "$out" || status=$?
  local counts
  counts=$(grep -E "^$name: [0-9]+ passed, [0-9]+ failed" "$out" | tail -n 1 || true)
  if [[ -n $counts ]]; then
    local p f
    p=$(sed -E 's/^[^:]+: ([0-9]+) passed, ([0-9]+) failed.*/\1/' <<<"$counts")
    f=$(sed -E 's/^[^:]+: ([0-9]+) passed, ([0-9]+) failed.*/\2/' <<<"$counts")
    total_passed=$((total_passed + p))
    total_failed=$((total_failed + f))
    if [[ $status != 0 && $f == 0 ]]; then total_failed=$((total_failed + 1)); fi
  else
    echo "$name: no result line (exit status $status)"
    total_failed=$((total_failed + 1))
  fi
  if [[ $status != 0 ]]; then failed_any=1; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "interop: the server died during the $name suite"
    failed_any=1
  fi
}

for suite in $SUITES; do
  case $suite in
    python)
      run_suite python "$PY" "$HERE/python/clients.py"
      run_suite python-dpop "$PY" "$HERE/python/dpop_clients.py"
      run_suite python-cc "$PY" "$HERE/python/client_credentials.py"
      run_suite python-code "$PY" "$HERE/python/code_flow.py"
      ;;
    node)
      run_suite node node "$HERE/node/jose.mjs"
      run_suite node-dpop node "$HERE/node/dpop.mjs"
      run_suite node-cc node "$HERE/node/client_credentials.mjs"
      run_suite node-code node "$HERE/node/code_flow.mjs"
      ;;
    schemathesis)
      # The hooks register their own user and make it admin with the server's CLI (it
      # writes the role to the same database), so the /v1/admin operations answer
      # 200/404 and not only 403.
      export INTEROP_ADMIN_GRANT=$TMP/admin-grant
      {
        echo '#!/usr/bin/env bash'
        printf 'exec env %q %q %q %q %q %q admin grant "$@"\n' "ISSUER_CONFIG=$CONFIG" "ISSUER_BIND=127.0.0.1:$PORT" \
          "ISSUER_URL=$BASE" "ISSUER_DATA_DIR=$TMP/data" "ISSUER_KEYS_DIR=$TMP/keys" "$BIN"
      } >"$INTEROP_ADMIN_GRANT"
      chmod +x "$INTEROP_ADMIN_GRANT"
      # Hypothesis's caches (unicode tables) go under target/, not into ./.hypothesis.
      export HYPOTHESIS_STORAGE_DIRECTORY=$ROOT/$WORK/hypothesis
      # Checks: the spec conformance ones (no 5xx; status code, content type, response
      # headers and body as documented) plus ignored_auth (a protected operation
      # without a valid token must answer 401). The two health checks waived are about
      # the data generator's speed on a busy 2-core machine, not about the server.
      run_suite schemathesis "$PY" "$HERE/python/schemathesis_run.py" \
        --hooks "$HERE/python/schemathesis_hooks.py" --config "$HERE/python/schemathesis.toml" \
        --junit "$TMP/schemathesis-junit.xml" \
        -- "$BASE/openapi.json" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,ignored_auth \
        --max-examples "$MAX_EXAMPLES" --seed "$SEED" --workers 2 \
        --generation-database none --request-timeout 10 --no-color \
        --suppress-health-check too_slow,filter_too_much
      ;;
    *)
      echo "interop: unknown suite $suite" >&2
      exit 2
      ;;
  esac
done

if [[ $total_failed != 0 ]]; then failed_any=1; fi
if [[ $failed_any != 0 ]]; then print_log; fi
say "done in $((SECONDS - started)) s"
echo "interop: $total_passed passed, $total_failed failed"
exit "$failed_any"
