# Sourced by tests/interop/run.sh and tests/browser/run.sh: what both need to run a
# token-issuer binary of their own. Expects $NAME (the suite's name, for messages).

# The server must see only the settings the suite gives it: no config file, database,
# Redis or audience inherited from the caller's environment.
issuer_clean_env() {
  local var
  while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^ISSUER_' || true)
}

# Sets BIN to the absolute path of the server binary: $TOKEN_ISSUER_BIN, or the one
# `cargo test` builds.
issuer_resolve_bin() {
  BIN=${TOKEN_ISSUER_BIN:-target/debug/token-issuer}
  if [[ ! -x $BIN ]]; then
    echo "$NAME: no server binary at $BIN (build it with cargo first, or set TOKEN_ISSUER_BIN)" >&2
    exit 1
  fi
  BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
}

# Stops a process: SIGTERM (the server drains and exits), SIGKILL after 5 s.
stop_pid() {
  local pid=$1
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
