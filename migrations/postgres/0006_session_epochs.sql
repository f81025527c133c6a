-- Revocation epochs (`token-issuer sessions revoke-all`): every session of the scope
-- created before `not_before` is revoked, and every access token of the scope issued
-- before it is refused, without touching the sessions' rows. `client_id` is the
-- client the epoch covers, or '*' for every client. An epoch only moves forward.
CREATE TABLE session_epochs (
    client_id  TEXT PRIMARY KEY,
    not_before TIMESTAMPTZ NOT NULL,
    reason     TEXT NOT NULL,
    set_by     TEXT NOT NULL,
    set_at     TIMESTAMPTZ NOT NULL
);
