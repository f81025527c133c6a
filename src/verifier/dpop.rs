//! The verifier's DPoP check (RFC 9449 §7, see the module docs of `verifier`): the
//! proof for this service's own URL, the token's binding, and the replay cache.

use std::sync::PoisonError;

use super::web::unix_now;
use super::{Inner, Verifier, VerifyError};
use crate::domain::claims::AccessClaims;

impl Verifier {
    /// A token sent as `Authorization: DPoP <token>`, with `proofs` the request's
    /// `DPoP` header values (exactly one is accepted), `method` its method and `path`
    /// its path (a query is ignored). See the module docs for the checks.
    pub async fn verify_dpop(
        &self,
        token: &str,
        proofs: &[&str],
        method: &str,
        path: &str,
    ) -> Result<AccessClaims, VerifyError> {
        let inner = &self.inner;
        // Not configured: the request is refused (401), not the service (a 503 would
        // let anyone raise this service's error rate with one header).
        let base = inner.config.public_url.as_deref().ok_or(VerifyError::Unauthorized(
            "DPoP is not accepted here: the service's public URL is not set (VerifierConfig::dpop)",
        ))?;
        let [proof] = proofs else {
            return Err(VerifyError::InvalidProof("send exactly one DPoP header"));
        };
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let url = format!("{base}{path}");
        let now = unix_now();
        let expected = crate::crypto::dpop::Expected {
            method,
            url: &url,
            now,
            leeway: inner.leeway,
            access_token: Some(token),
        };
        let proof = crate::crypto::dpop::check(proof, &expected)
            .map_err(|e| VerifyError::InvalidProof(e.0))?;
        let claims = self.verify_token(token).await?;
        proof
            .matches(claims.cnf.as_ref())
            .map_err(VerifyError::Unauthorized)?;
        inner.first_use(&proof, now)?;
        Ok(claims)
    }

    /// How many DPoP proofs are remembered now (expired ones included until a sweep).
    pub fn proofs_remembered(&self) -> usize {
        self.inner
            .proofs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Inner {
    /// Remembers a proof until it could no longer be accepted; a replay is refused.
    /// When `max_proofs` live proofs are remembered, the expired ones are dropped; if
    /// none has expired, the request is refused as `Unavailable` (retry shortly), so
    /// that a flood cannot make the verifier forget a proof it must refuse again.
    fn first_use(&self, proof: &crate::crypto::dpop::Proof, now: i64) -> Result<(), VerifyError> {
        let mut seen = self.proofs.lock().unwrap_or_else(PoisonError::into_inner);
        let key = proof.replay_key();
        if seen.get(&key).is_some_and(|until| *until >= now) {
            return Err(VerifyError::InvalidProof("the proof was used before (jti)"));
        }
        if seen.len() >= self.config.max_proofs {
            // At most one scan a second, however many requests find it full.
            if self.proofs_prune.ready() {
                seen.retain(|_, until| *until >= now);
            }
            if seen.len() >= self.config.max_proofs {
                return Err(VerifyError::Unavailable(
                    "too many DPoP proofs remembered; retry shortly".into(),
                ));
            }
        }
        seen.insert(key, now + crate::crypto::dpop::replay_ttl(self.leeway));
        Ok(())
    }
}
