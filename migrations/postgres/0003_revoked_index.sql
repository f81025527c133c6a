-- The families revoked since a time (the Redis deny-list is rebuilt from them, and each
-- instance reads them at start): without an index that is a scan of every family.
-- Partial: live families, nearly all of them, are not in it.
CREATE INDEX refresh_families_revoked ON refresh_families (revoked_at) WHERE revoked_at IS NOT NULL;
