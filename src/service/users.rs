//! Registration and the current user.

use uuid::Uuid;

use super::Issuer;
use crate::crypto::password::Lane;
use crate::domain::error::Error;
use crate::domain::secret::Secret;
use crate::domain::user::{User, check_new_password, normalize_email};
use crate::store::StoreError;
use crate::store::shared::LimitKind;

impl Issuer {
    /// Registers a user (self-registration, when allowed). The input is checked first,
    /// for nothing (bad input consumes no attempt); then the attempt is counted against
    /// the client IP's registration limit; a taken address answers 409 before any hash,
    /// and the hash waits behind every login (`Lane::Registration`).
    pub async fn register(
        &self,
        email: &str,
        password: Secret,
        ip: Option<&str>,
    ) -> Result<User, Error> {
        if !self.allow_registration {
            return Err(Error::RegistrationDisabled);
        }
        let email = normalize_email(email)?;
        check_new_password(password.expose(), &email)?;
        if let (Some(limit), Some(ip)) = (self.limits.register_per_ip, ip) {
            self.shared
                .hit(LimitKind::Registration, ip, limit)
                .await
                .map_err(|wait| self.rate_limited(wait))?;
        }
        if self.store.find_user_by_email(&email).await?.is_some() {
            return Err(Error::EmailTaken);
        }
        let hash = self.hasher.hash(Lane::Registration, password).await?;
        let user = User {
            id: Uuid::new_v4(),
            email,
            created_at: self.now(),
        };
        match self.store.create_user(&user, &hash).await {
            Ok(()) => {
                tracing::info!(target: "security", event = "user_registered", user_id = %user.id);
                Ok(user)
            }
            // Registered meanwhile by a concurrent request.
            Err(StoreError::Conflict) => Err(Error::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }
}
