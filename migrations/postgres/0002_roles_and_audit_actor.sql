-- Roles granted by the CLI (`token-issuer admin grant <email>`); `admin` opens /v1/admin.
CREATE TABLE user_roles (
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       TEXT NOT NULL,
    granted_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, role)
);

-- Who did it, for admin actions (NULL for the user's own or the system's).
ALTER TABLE audit_events ADD COLUMN actor_id UUID;
CREATE INDEX audit_events_user ON audit_events (user_id, at);
