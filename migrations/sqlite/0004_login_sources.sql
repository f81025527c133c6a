-- Where each user signed in from: an IPv4 address or an IPv6 /64 that succeeded for an
-- account may still sign in to it while failed logins from elsewhere have locked it.
CREATE TABLE login_sources (
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    source          TEXT NOT NULL,
    last_success_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, source)
) WITHOUT ROWID;
CREATE INDEX login_sources_last_success ON login_sources (last_success_at);
