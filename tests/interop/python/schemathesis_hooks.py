"""Schemathesis hooks for tests/interop/run.sh: bearer tokens for the protected operations.

A static `-H "Authorization: Bearer ..."` would not survive the run: schemathesis itself
calls `POST /v1/logout` and `DELETE /v1/sessions/{id}`, which end the session, and its
stateful phase feeds the `id` of `GET /v1/me` into `POST /v1/admin/users/{id}/disable`,
which disables the very user whose token it holds. Every later request would then only
test the 401 path. So the token comes from a dynamic auth provider:

- a password grant for this run's user, cached for four minutes (access tokens live
  ten), fetched again whenever a response is 401 (the request is then replayed once);
- when that user can no longer log in (disabled by the run), a new user is registered
  and given the admin role with the server's own CLI (`token-issuer admin grant`,
  the command run.sh puts in INTEROP_ADMIN_GRANT), so the /v1/admin operations keep
  answering 200/404 rather than only 403.

It applies only to the operations the OpenAPI document marks with `BearerAuth`; the
others (the token, revocation and introspection endpoints, registration, discovery)
keep whatever schemathesis generates, `Authorization` of introspection included.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import threading

import requests
import schemathesis

BASE = os.environ["INTEROP_BASE_URL"].rstrip("/")
ADMIN_GRANT = os.environ["INTEROP_ADMIN_GRANT"]
TIMEOUT = 10

_lock = threading.Lock()
_user: dict[str, str] = {}
users_created = 0


def _new_admin_user() -> None:
    global users_created
    email = f"schemathesis-{secrets.token_hex(6)}@example.com"
    password = "schemathesis " + secrets.token_urlsafe(18)
    r = requests.post(f"{BASE}/v1/users", json={"email": email, "password": password}, timeout=TIMEOUT)
    if r.status_code != 201:
        raise RuntimeError(f"registering {email}: {r.status_code} {r.text}")
    done = subprocess.run([ADMIN_GRANT, email], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"admin grant {email}: {done.stdout}{done.stderr}")
    _user.update(email=email, password=password)
    users_created += 1


def _password_grant() -> requests.Response:
    return requests.post(
        f"{BASE}/oauth/token",
        data={"grant_type": "password", "client_id": "dev", "username": _user["email"], "password": _user["password"]},
        timeout=TIMEOUT,
    )


def _bearer_protected(ctx) -> bool:
    security = ctx.operation.definition.raw.get("security") or []
    return any("BearerAuth" in requirement for requirement in security)


@schemathesis.auth(refresh_interval=240, retry_on=[401]).apply_to(_bearer_protected)
class PasswordGrantBearer:
    def get(self, case, context):
        with _lock:
            if not _user:
                _new_admin_user()
            r = _password_grant()
            if r.status_code == 400 and r.json().get("error") == "invalid_grant":
                # This run disabled the user (or it is otherwise gone): start over.
                _new_admin_user()
                r = _password_grant()
            if r.status_code != 200:
                raise RuntimeError(f"password grant: {r.status_code} {r.text}")
            return r.json()["access_token"]

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
