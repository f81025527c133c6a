-- Authorization codes (RFC 6749 §4.1, RFC 7636): only the SHA-256 of a code is kept.
-- A code is used once (`used_at`, set by a conditional update); `family_id` is the
-- session it started, revoked if the code comes again. `browser_sid` is the sign-in
-- session that approved it: a code of a session ended meanwhile starts nothing. Rows
-- are swept a while after `expires_at`.
CREATE TABLE authorization_codes (
    code_hash      BYTEA PRIMARY KEY,
    client_id      TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    dpop_jkt       TEXT,
    scope          TEXT,
    user_id        UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    browser_sid    UUID NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    expires_at     TIMESTAMPTZ NOT NULL,
    used_at        TIMESTAMPTZ,
    family_id      UUID
);
CREATE INDEX authorization_codes_expires ON authorization_codes (expires_at);

-- Consent a user gave a client that is not first-party, per set of scopes (`scope`
-- sorted and space-separated, '' for none).
CREATE TABLE consents (
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id  TEXT NOT NULL,
    scope      TEXT NOT NULL,
    granted_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, client_id, scope)
);
