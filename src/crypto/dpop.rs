//! DPoP proofs (RFC 9449 §4): what a client sends in the `DPoP` header to show it
//! holds the private key its tokens are bound to. The issuer checks them at its token
//! endpoint and protected endpoints; the `verifier` module at resource servers.
//!
//! A proof is accepted when all of these hold (anything else is `invalid_dpop_proof`,
//! with a description naming the first rule broken):
//! - at most `MAX_PROOF_LEN` bytes, a JWS compact serialization (three segments);
//! - header `typ` exactly `dpop+jwt`, no `crit`; `alg` in `ALGORITHMS` (asymmetric
//!   only: never `none`, never HMAC); `jwk` a public key of the type the `alg` needs
//!   (`EC` P-256 for `ES256`, `OKP` Ed25519 for `EdDSA`, `RSA` of `MIN_RSA_BITS` to
//!   `MAX_RSA_BITS` for `RS256`/`PS256`), with no private member (`d`, `p`, `q`, `dp`,
//!   `dq`, `qi`, `oth`, `k`); the signature verifies under that `jwk`;
//! - claims: `jti` a string of 1 to `MAX_JTI_LEN` characters; `htm` equal to the
//!   request method; `htu` the request's URL as the public base URL names it
//!   (scheme, host and port compared after RFC 3986 normalisation, the path exactly),
//!   with no query or fragment (§4.2 says the proof's `htu` has none); `iat` an
//!   integer no older than `IAT_WINDOW` plus the leeway and no further ahead than the
//!   leeway; `ath` the base64url SHA-256 of the access token where one is presented
//!   (protected endpoints), and absent there is refused; `nonce`, when present, is
//!   returned for the caller to check against `Nonces`.
//! - What this module does not do: the replay check (a `jti` seen within
//!   `replay_ttl` is refused: the caller keeps the set, in Redis across instances),
//!   and the binding (the caller compares `Proof::jkt`, the RFC 7638 SHA-256
//!   thumbprint of the `jwk`, with the token's `cnf.jkt` or the session's key).
//!
//! The proof is read here, not by jsonwebtoken: its `decode` would parse the header a
//! second time and build its own key from the `jwk`, and a proof is checked on every
//! DPoP request (its cost is the issue's speed target; see BENCHMARKS.md). The
//! cryptography is aws-lc's (`UnparsedPublicKey::verify` with the algorithm pinned by
//! the allow-listed `alg`, the key of the type that `alg` needs); what is written out
//! here is the JOSE around it: the three segments, the `jwk` members, the RFC 7638
//! thumbprint. The header is read as plain JSON, so that private members and `crit`
//! are seen (a typed `Jwk` would drop what it does not know); a member given twice
//! counts once, the last (serde_json's map), for every check and the key alike. Each
//! key has one spelling, so one thumbprint: base64url without padding or stray bits,
//! P-256 coordinates and Ed25519 keys of exactly 32 bytes, RSA `n` and `e` without
//! leading zeros; Ed25519 keys of small order (whose signatures verify over many
//! messages) are refused.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// Longest proof accepted, in bytes.
pub const MAX_PROOF_LEN: usize = 4096;
/// Longest `jti` accepted, in characters.
pub const MAX_JTI_LEN: usize = 256;
/// How old a proof's `iat` may be, before the leeway (RFC 9449 §11.1 leaves it to
/// the server; a proof is made just before its request).
pub const IAT_WINDOW: i64 = 60;
/// The smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus accepted.
pub const MAX_RSA_BITS: usize = 4096;
/// The proof algorithms accepted, as `dpop_signing_alg_values_supported` lists them.
/// `Ed25519` is RFC 9864's fully-specified name of `EdDSA` with an Ed25519 key, which
/// oauth4webapi 3 (openid-client 6) signs with.
pub const ALGORITHMS: [&str; 5] = ["ES256", "EdDSA", "Ed25519", "RS256", "PS256"];

/// Members of a JWK that only a private key has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// What the request says, for the proof to match.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// `POST`, `GET`, ... as received.
    pub method: &'a str,
    /// The request's URL as the public base URL names it, without query.
    pub url: &'a str,
    /// Now, unix seconds.
    pub now: i64,
    /// Clock leeway, seconds.
    pub leeway: i64,
    /// The access token presented with the proof (protected endpoints): `ath` must be
    /// its hash. `None` at the token endpoint.
    pub access_token: Option<&'a str>,
}

/// A proof that passed every check of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The RFC 7638 SHA-256 thumbprint of the proof's key, base64url.
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
    pub nonce: Option<String>,
}

/// Why a proof was refused (the `error_description` of `invalid_dpop_proof`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidProof(pub &'static str);

/// How long a proof's `jti` must be remembered to refuse its replay: as long as its
/// `iat` is accepted (one second more: `iat` is whole seconds, the clock is not).
pub fn replay_ttl(leeway: i64) -> i64 {
    IAT_WINDOW + 2 * leeway + 1
}

/// The base64url SHA-256 of an access token (`ath`).
pub fn access_token_hash(token: &str) -> String {
    sha256_b64url(token.as_bytes())
}

fn sha256_b64url(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

impl Proof {
    /// Whether an access token with this `cnf` may be used with this proof (RFC 9449
    /// §7.1): it must be bound to the proof's key. The error says how it is not (an
    /// `invalid_token`: the token, not the proof, is wrong for the request).
    pub fn matches(
        &self,
        cnf: Option<&crate::domain::claims::Confirmation>,
    ) -> Result<(), &'static str> {
        match cnf {
            None => Err("the token is not bound to a DPoP key; send it as Bearer"),
            Some(cnf) if cnf.jkt != self.jkt => {
                Err("the proof is not of the key the token is bound to")
            }
            Some(_) => Ok(()),
        }
    }

    /// What the replay check remembers of the proof: its key and `jti`, hashed (a
    /// `jti` is the client's choice of up to `MAX_JTI_LEN` characters; the id is 43).
    pub fn replay_id(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.replay_digest())
    }

    /// The first 128 bits of the replay id, for an in-memory list.
    pub fn replay_key(&self) -> u128 {
        let mut first = [0u8; 16];
        first.copy_from_slice(&self.replay_digest()[..16]);
        u128::from_le_bytes(first)
    }

    fn replay_digest(&self) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            format!("{}:{}", self.jkt, self.jti).as_bytes(),
        );
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }
}

/// Checks `proof` against `expected` (see the module docs).
pub fn check(proof: &str, expected: &Expected<'_>) -> Result<Proof, InvalidProof> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(InvalidProof("the proof is too long"));
    }
    let mut segments = proof.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(InvalidProof("the proof is not a JWS"));
    };
    let signing_input = &proof[..header.len() + 1 + payload.len()];
    let header = json_object(header).ok_or(InvalidProof("the proof header is not JSON"))?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(InvalidProof("typ must be dpop+jwt"));
    }
    // RFC 7515 §4.1.11: an extension we do not understand is refused.
    if header.contains_key("crit") {
        return Err(InvalidProof("crit is not supported"));
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .filter(|a| ALGORITHMS.contains(a))
        .ok_or(InvalidProof("alg is not one of the supported algorithms"))?;
    let jwk_value = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or(InvalidProof("the header has no jwk"))?;
    if PRIVATE_MEMBERS.iter().any(|m| jwk_value.contains_key(*m)) {
        return Err(InvalidProof("the jwk holds a private key"));
    }
    let (key, jkt) = public_key(alg, jwk_value)?;
    let verified = URL_SAFE_NO_PAD
        .decode(signature)
        .is_ok_and(|signature| key.verifies(signing_input.as_bytes(), &signature));
    if !verified {
        return Err(InvalidProof("the signature does not verify with the jwk"));
    }
    let claims =
        json_object(payload).ok_or(InvalidProof("the proof's claims are not a JSON object"))?;

    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty() && j.chars().count() <= MAX_JTI_LEN)
        .ok_or(InvalidProof("jti is missing or too long"))?;
    if claims.get("htm").and_then(Value::as_str) != Some(expected.method) {
        return Err(InvalidProof("htm is not the request method"));
    }
    let htu = claims
        .get("htu")
        .and_then(Value::as_str)
        .ok_or(InvalidProof("htu is missing"))?;
    if !same_target(htu, expected.url) {
        return Err(InvalidProof("htu is not the URL of this request"));
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or(InvalidProof("iat is missing or not an integer"))?;
    if iat > expected.now + expected.leeway {
        return Err(InvalidProof("iat is in the future"));
    }
    if iat < expected.now - IAT_WINDOW - expected.leeway {
        return Err(InvalidProof("the proof is too old"));
    }
    if let Some(token) = expected.access_token {
        let ath = claims
            .get("ath")
            .and_then(Value::as_str)
            .ok_or(InvalidProof("ath is missing"))?;
        if ath != access_token_hash(token) {
            return Err(InvalidProof("ath is not the hash of this access token"));
        }
    }
    let nonce = match claims.get("nonce") {
        None => None,
        Some(Value::String(n)) => Some(n.clone()),
        Some(_) => return Err(InvalidProof("nonce is not a string")),
    };
    Ok(Proof {
        jkt,
        jti: jti.to_owned(),
        iat,
        nonce,
    })
}

/// A base64url segment that decodes to a JSON object.
pub(crate) fn json_object(segment: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The encodings of the Ed25519 points of small order (with the sign bit cleared; the
/// non-canonical `p` and `p + 1` too), as libsodium lists them: a signature of such a
/// key verifies over many messages, so anyone could make proofs for its thumbprint.
const ED25519_SMALL_ORDER: [[u8; 32]; 7] = [
    [0; 32],
    {
        let mut one = [0; 32];
        one[0] = 1;
        one
    },
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    top_with(0xec),
    top_with(0xed),
    top_with(0xee),
];

/// `first ‖ 0xff × 30 ‖ 0x7f`: p − 1, p and p + 1 little-endian.
const fn top_with(first: u8) -> [u8; 32] {
    let mut v = [0xff; 32];
    v[0] = first;
    v[31] = 0x7f;
    v
}

fn small_order_ed25519(x: &[u8]) -> bool {
    ED25519_SMALL_ORDER
        .iter()
        .any(|bad| bad[..31] == x[..31] && bad[31] == x[31] & 0x7f)
}

/// A proof's public key, of the type its `alg` needs.
pub(crate) enum ProofKey {
    /// The uncompressed point `0x04 ‖ x ‖ y`.
    Es256(Vec<u8>),
    Ed25519(Vec<u8>),
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
        pss: bool,
    },
}

impl ProofKey {
    pub(crate) fn verifies(&self, input: &[u8], signature: &[u8]) -> bool {
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
            RsaPublicKeyComponents, UnparsedPublicKey,
        };
        match self {
            Self::Es256(point) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(input, signature)
                .is_ok(),
            Self::Ed25519(x) => UnparsedPublicKey::new(&ED25519, x)
                .verify(input, signature)
                .is_ok(),
            Self::Rsa { n, e, pss } => {
                let params = if *pss {
                    &RSA_PSS_2048_8192_SHA256
                } else {
                    &RSA_PKCS1_2048_8192_SHA256
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, input, signature)
                    .is_ok()
            }
        }
    }
}

/// The key of `jwk` for `alg`, and its RFC 7638 SHA-256 thumbprint: the required
/// members, in lexicographic order, as the JWK spells them (each was decoded as
/// canonical base64url here, so none needs escaping).
pub(crate) fn public_key(
    alg: &str,
    jwk: &Map<String, Value>,
) -> Result<(ProofKey, String), InvalidProof> {
    let unsupported = InvalidProof("the jwk is not a public key we support");
    let member = |name: &str| jwk.get(name).and_then(Value::as_str).ok_or(unsupported);
    let bytes = |name: &str| -> Result<(&str, Vec<u8>), InvalidProof> {
        let text = member(name)?;
        let decoded = URL_SAFE_NO_PAD.decode(text).map_err(|_| unsupported)?;
        Ok((text, decoded))
    };
    let wrong = InvalidProof("the jwk does not fit alg");
    match (alg, member("kty")?) {
        ("ES256", "EC") => {
            if member("crv")? != "P-256" {
                return Err(wrong);
            }
            let (x_text, x) = bytes("x")?;
            let (y_text, y) = bytes("y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err(unsupported);
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let canonical =
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x_text}","y":"{y_text}"}}"#);
            Ok((ProofKey::Es256(point), sha256_b64url(canonical.as_bytes())))
        }
        ("EdDSA" | "Ed25519", "OKP") => {
            if member("crv")? != "Ed25519" {
                return Err(wrong);
            }
            let (x_text, x) = bytes("x")?;
            if x.len() != 32 || small_order_ed25519(&x) {
                return Err(unsupported);
            }
            let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x_text}"}}"#);
            Ok((ProofKey::Ed25519(x), sha256_b64url(canonical.as_bytes())))
        }
        ("RS256" | "PS256", "RSA") => {
            let (n_text, n) = bytes("n")?;
            let (e_text, e) = bytes("e")?;
            // RFC 7518 §6.3.1: unsigned big-endian without leading zeros, so that one
            // key has one thumbprint.
            if n.first().is_none_or(|b| *b == 0) || e.first().is_none_or(|b| *b == 0) {
                return Err(unsupported);
            }
            let bits = n.iter().position(|b| *b != 0).map_or(0, |first| {
                (n.len() - first) * 8 - n[first].leading_zeros() as usize
            });
            if bits < MIN_RSA_BITS {
                return Err(InvalidProof("the RSA key is too small"));
            }
            // A larger key only makes each check dearer for whoever sends it.
            if bits > MAX_RSA_BITS {
                return Err(InvalidProof("the RSA key is too large"));
            }
            let canonical = format!(r#"{{"e":"{e_text}","kty":"RSA","n":"{n_text}"}}"#);
            let key = ProofKey::Rsa {
                n,
                e,
                pss: alg == "PS256",
            };
            Ok((key, sha256_b64url(canonical.as_bytes())))
        }
        (_, "EC" | "OKP" | "RSA") => Err(wrong),
        _ => Err(unsupported),
    }
}

/// Whether `htu` names `expected` (both absolute URLs): scheme, host and port after
/// RFC 3986 normalisation, the path as is; `htu` may carry no query or fragment.
fn same_target(htu: &str, expected: &str) -> bool {
    let (Ok(htu), Ok(expected)) = (url::Url::parse(htu), url::Url::parse(expected)) else {
        return false;
    };
    htu.query().is_none()
        && htu.fragment().is_none()
        && htu.scheme() == expected.scheme()
        && htu.host_str() == expected.host_str()
        && htu.port_or_known_default() == expected.port_or_known_default()
        && htu.path() == expected.path()
}

/// Server nonces (RFC 9449 §8), derived without storage: `base64url(step ‖
/// HMAC-SHA256(key, "token-issuer dpop nonce" ‖ step)[..16])`, where `step` is the
/// unix time divided by `NONCE_STEP` (8 bytes, big-endian). A nonce is accepted in its
/// own step and the next, so it lives between one and two steps; every instance that
/// shares the key (`dpop-nonce.key` in the key directory) mints and accepts the same
/// nonces. A nonce says nothing secret: it only proves that a proof was made after the
/// server handed the nonce out, which bounds what a key stolen for a while can
/// pre-compute.
pub struct Nonces {
    key: aws_lc_rs::hmac::Key,
}

/// The nonce key's file in the key directory (32 random bytes, base64, created on
/// first start like the refresh-token key).
pub const NONCE_KEY_FILE: &str = "dpop-nonce.key";
/// Seconds per nonce step.
pub const NONCE_STEP: i64 = 60;
const NONCE_MAC_LEN: usize = 16;

impl Nonces {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret),
        }
    }

    /// The nonce of the step `now` falls in.
    pub fn current(&self, now: i64) -> String {
        URL_SAFE_NO_PAD.encode(self.of_step(now.div_euclid(NONCE_STEP)))
    }

    /// Whether `nonce` is one of ours of the current or the previous step.
    pub fn accepts(&self, nonce: &str, now: i64) -> bool {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        let Ok(step) = <[u8; 8]>::try_from(bytes.get(..8).unwrap_or_default()) else {
            return false;
        };
        let step = i64::from_be_bytes(step);
        let current = now.div_euclid(NONCE_STEP);
        if step != current && step != current - 1 {
            return false;
        }
        let expected = self.of_step(step);
        bytes.len() == expected.len()
            && aws_lc_rs::constant_time::verify_slices_are_equal(&bytes, &expected).is_ok()
    }

    fn of_step(&self, step: i64) -> [u8; 8 + NONCE_MAC_LEN] {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.key);
        ctx.update(b"token-issuer dpop nonce");
        ctx.update(&step.to_be_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; 8 + NONCE_MAC_LEN];
        out[..8].copy_from_slice(&step.to_be_bytes());
        out[8..].copy_from_slice(&tag.as_ref()[..NONCE_MAC_LEN]);
        out
    }
}

#[cfg(test)]
#[path = "dpop_tests.rs"]
mod tests;
