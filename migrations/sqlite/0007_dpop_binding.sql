-- DPoP (RFC 9449): the RFC 7638 SHA-256 thumbprint of the key a session's refresh
-- tokens are bound to, fixed when the session starts with a DPoP proof; NULL for a
-- session without one. A refresh of a bound session needs a proof of that key.
ALTER TABLE refresh_families ADD COLUMN dpop_jkt TEXT;
