//! Registration and the current user.

use uuid::Uuid;

use super::Issuer;
use crate::domain::secret::Secret;
use crate::domain::user::{User, check_new_password, normalize_email};
use crate::error::Error;
use crate::store::StoreError;

impl Issuer {
    /// Registers a user (self-registration, when allowed).
    pub async fn register(&self, email: &str, password: Secret) -> Result<User, Error> {
        if !self.allow_registration {
            return Err(Error::RegistrationDisabled);
        }
        let email = normalize_email(email)?;
        check_new_password(password.expose(), &email)?;
        let hash = self.hasher.hash(password).await?;
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
            Err(StoreError::Conflict) => Err(Error::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }
}
