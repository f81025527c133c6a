-- The constant-storage model: a refresh token names its family and its generation,
-- and the family's row holds the current generation and when it was issued. No
-- per-token rows for the families created from here on; `refresh_tokens` only keeps
-- the tokens of the earlier format until their families end (see README "Tokens":
-- a later migration drops it once the longest absolute lifetime has passed). The
-- defaults let an instance of the previous version still start sessions while a
-- deployment is being upgraded.
ALTER TABLE refresh_families ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE refresh_families ADD COLUMN generation_issued_at TIMESTAMPTZ NOT NULL DEFAULT now();
UPDATE refresh_families SET generation_issued_at = last_used_at;
