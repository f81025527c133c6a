//! Users: e-mail normalisation and the password policy.
//!
//! Password policy (NIST SP 800-63B-4 for a password that is the only factor): at least
//! 15 characters, at most 1024 bytes (refused before hashing), any printable character
//! and spaces, no composition rules, not a well-known password (`common_passwords`),
//! not the e-mail address.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::common_passwords;
use crate::domain::error::Error;

pub const PASSWORD_MIN_CHARS: usize = 15;
pub const PASSWORD_MAX_BYTES: usize = 1024;
const EMAIL_MAX_BYTES: usize = 254;

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub created_at: OffsetDateTime,
}

/// Trims and lower-cases an e-mail address and checks its shape.
pub fn normalize_email(raw: &str) -> Result<String, Error> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= EMAIL_MAX_BYTES
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if valid {
        Ok(email)
    } else {
        Err(Error::InvalidRequest(
            "email must be an e-mail address such as ada@example.com".into(),
        ))
    }
}

/// Checks the size limit alone: run before anything else touches the password.
pub fn check_password_size(password: &str) -> Result<(), Error> {
    if password.len() > PASSWORD_MAX_BYTES {
        return Err(Error::WeakPassword(format!(
            "password must be at most {PASSWORD_MAX_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The full policy for a new password.
pub fn check_new_password(password: &str, email: &str) -> Result<(), Error> {
    check_password_size(password)?;
    if password.chars().count() < PASSWORD_MIN_CHARS {
        return Err(Error::WeakPassword(format!(
            "password must be at least {PASSWORD_MIN_CHARS} characters"
        )));
    }
    if password.chars().any(char::is_control) {
        return Err(Error::WeakPassword(
            "password must not contain control characters".into(),
        ));
    }
    let lowered = password.to_lowercase();
    if common_passwords::is_common(password) {
        return Err(Error::WeakPassword(
            "password is too common; choose another".into(),
        ));
    }
    let local = email.split('@').next().unwrap_or_default();
    if lowered == email || (local.len() >= 4 && lowered.contains(local)) {
        return Err(Error::WeakPassword(
            "password must not contain the e-mail address".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            normalize_email("  Ada@Example.COM ").ok().as_deref(),
            Some("ada@example.com")
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "a@b@c.d",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn password_policy() {
        let email = "ada@example.com";
        assert!(check_new_password("a sound passphrase", email).is_ok());
        assert!(check_new_password(&"x".repeat(14), email).is_err());
        assert!(check_new_password("Passwordpassword", email).is_err());
        assert!(check_new_password("aaaaaaaaaaaaaaaaaaaa", email).is_err());
        assert!(check_new_password("adalovelace-is-my-name", "adalovelace@example.com").is_err());
        assert!(check_new_password(&"éàü ".repeat(16), email).is_ok());
        assert!(check_new_password(&"ab".repeat(513), email).is_err());
        assert!(check_new_password("tab\tinside password", email).is_err());
    }
}
