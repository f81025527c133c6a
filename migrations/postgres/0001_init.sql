-- Same schema and numbering as migrations/sqlite, with PostgreSQL's native types.
CREATE TABLE users (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    disabled_at   TIMESTAMPTZ
);

-- One login on one device; its id is the `sid` of the access tokens.
CREATE TABLE refresh_families (
    id             UUID PRIMARY KEY,
    user_id        UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id      TEXT NOT NULL,
    scope          TEXT,
    created_at     TIMESTAMPTZ NOT NULL,
    last_used_at   TIMESTAMPTZ NOT NULL,
    revoked_at     TIMESTAMPTZ,
    revoked_reason TEXT,
    user_agent     TEXT,
    ip             TEXT
);
CREATE INDEX refresh_families_user ON refresh_families (user_id);

-- Only the SHA-256 of a token is stored. `parent_hash` is UNIQUE: a token can have at
-- most one successor, so a family can never fork, whatever the application does.
CREATE TABLE refresh_tokens (
    token_hash  BYTEA PRIMARY KEY,
    family_id   UUID NOT NULL REFERENCES refresh_families (id) ON DELETE CASCADE,
    parent_hash BYTEA UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL,
    consumed_at TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- Security events (reuse, revocations); never a token or a password.
CREATE TABLE audit_events (
    id        BIGSERIAL PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL,
    kind      TEXT NOT NULL,
    user_id   UUID,
    family_id UUID,
    client_id TEXT,
    detail    TEXT
);
CREATE INDEX audit_events_at ON audit_events (at);
