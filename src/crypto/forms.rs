//! The anti-CSRF field of the sign-in, consent and sign-out forms.
//!
//! A signed double submit: the browser holds a random value in the `__Host-form`
//! cookie (which no other site, and no sub-domain, can set or read), and each form
//! carries the HMAC of that value under a key shared by the instances. A form posted
//! from anywhere else has no field that matches the victim's cookie. The key is derived
//! from `dpop-nonce.key` with its own label, so no new file is needed and the two uses
//! never produce the same MAC.

use ring::hmac;

use crate::crypto::b64url;
use crate::domain::error::Error;

pub struct FormTokens {
    key: hmac::Key,
}

impl FormTokens {
    pub fn new(secret: &[u8]) -> Self {
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret),
            b"token-issuer form field key",
        );
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// A fresh cookie value.
    pub fn new_cookie() -> Result<String, Error> {
        Ok(b64url(&super::codes::random_bytes()?))
    }

    /// The form field that goes with `cookie`.
    pub fn field(&self, cookie: &str) -> String {
        b64url(hmac::sign(&self.key, cookie.as_bytes()).as_ref())
    }

    /// Whether `field` goes with `cookie` (constant time).
    pub fn matches(&self, cookie: &str, field: &str) -> bool {
        !cookie.is_empty()
            && aws_lc_rs::constant_time::verify_slices_are_equal(
                self.field(cookie).as_bytes(),
                field.as_bytes(),
            )
            .is_ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_field_matches_its_cookie_only() {
        let forms = FormTokens::new(&[1u8; 32]);
        let cookie = FormTokens::new_cookie().unwrap();
        let field = forms.field(&cookie);
        assert!(forms.matches(&cookie, &field));
        assert!(!forms.matches(&FormTokens::new_cookie().unwrap(), &field));
        assert!(!forms.matches("", &forms.field("")));
        assert!(!FormTokens::new(&[2u8; 32]).matches(&cookie, &field));
    }
}
