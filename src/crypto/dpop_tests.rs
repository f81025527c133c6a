//! The proof checks, one rule at a time: each bad proof is refused with its reason.

#![allow(clippy::unwrap_used, clippy::panic)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use serde_json::json;

use super::*;

const URL: &str = "https://issuer.example/oauth/token";
const NOW: i64 = 1_700_000_000;

enum Key {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    /// RSA-2048, signing `RS256` or (`true`) `PS256`.
    Rsa(aws_lc_rs::rsa::KeyPair, bool),
}

impl Key {
    fn ec() -> Self {
        Self::Ec(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }

    fn ed() -> Self {
        Self::Ed(Ed25519KeyPair::generate().unwrap())
    }

    fn rsa(pss: bool) -> Self {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        Self::Rsa(pair, pss)
    }

    fn alg(&self) -> &'static str {
        match self {
            Self::Ec(_) => "ES256",
            Self::Ed(_) => "EdDSA",
            Self::Rsa(_, false) => "RS256",
            Self::Rsa(_, true) => "PS256",
        }
    }

    fn jwk(&self) -> Value {
        match self {
            Self::Ec(k) => {
                let point = k.public_key().as_ref();
                json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                })
            }
            Self::Ed(k) => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(k.public_key().as_ref()),
            }),
            Self::Rsa(k, _) => {
                let public = k.public_key();
                json!({
                    "kty": "RSA",
                    "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                    "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
                })
            }
        }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Self::Ec(k) => k
                .sign(&SystemRandom::new(), message)
                .unwrap()
                .as_ref()
                .to_vec(),
            Self::Ed(k) => k.sign(message).as_ref().to_vec(),
            Self::Rsa(k, pss) => {
                let padding = if *pss {
                    &aws_lc_rs::signature::RSA_PSS_SHA256
                } else {
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256
                };
                let mut signature = vec![0u8; k.public_modulus_len()];
                k.sign(padding, &SystemRandom::new(), message, &mut signature)
                    .unwrap();
                signature
            }
        }
    }
}

fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// A proof of `header` and `claims`, signed by `key`.
fn signed(key: &Key, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn header(key: &Key) -> Value {
    json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": key.jwk()})
}

fn claims() -> Value {
    json!({"jti": "a-unique-id", "htm": "POST", "htu": URL, "iat": NOW})
}

fn expected() -> Expected<'static> {
    Expected {
        method: "POST",
        url: URL,
        now: NOW,
        leeway: 5,
        access_token: None,
    }
}

/// `claims()` with `changes` merged in (`null` removes a claim).
fn claims_with(changes: &Value) -> Value {
    let mut c = claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn refused(proof: &str, expected: &Expected<'_>) -> &'static str {
    match check(proof, expected) {
        Err(InvalidProof(why)) => why,
        Ok(p) => panic!("accepted: {p:?}"),
    }
}

#[test]
fn ed25519_is_also_named_by_its_fully_specified_alg() {
    let key = Key::ed();
    let mut h = header(&key);
    h["alg"] = json!("Ed25519");
    let proof = check(&signed(&key, &h, &claims()), &expected()).unwrap();
    let jwk: Jwk = serde_json::from_value(key.jwk()).unwrap();
    assert_eq!(proof.jkt, jwk.thumbprint(ThumbprintHash::SHA256).unwrap());
    // Still only an Ed25519 key.
    let ec = Key::ec();
    let mut h = header(&ec);
    h["alg"] = json!("Ed25519");
    assert_eq!(
        refused(&signed(&ec, &h, &claims()), &expected()),
        "the jwk does not fit alg"
    );
}

#[test]
fn a_good_proof_of_each_key_type_gives_its_thumbprint() {
    for key in [Key::ec(), Key::ed(), Key::rsa(false), Key::rsa(true)] {
        let proof = check(&signed(&key, &header(&key), &claims()), &expected()).unwrap();
        let jwk: Jwk = serde_json::from_value(key.jwk()).unwrap();
        assert_eq!(proof.jkt, jwk.thumbprint(ThumbprintHash::SHA256).unwrap());
        assert_eq!((proof.jti.as_str(), proof.iat), ("a-unique-id", NOW));
        assert_eq!(proof.nonce, None);
    }
}

/// The thumbprint of `jwk` for `alg`, as the proof check computes it.
fn thumbprint_of(alg: &str, jwk: &serde_json::Value) -> String {
    match public_key(alg, jwk.as_object().unwrap()) {
        Ok((_, jkt)) => jkt,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_thumbprint_is_rfc_7638s() {
    // The example key of panva/jose's documentation and its published thumbprint.
    let ec = json!({
        "kty": "EC",
        "crv": "P-256",
        "x": "jJ6Flys3zK9jUhnOHf6G49Dyp5hah6CNP84-gY-n9eo",
        "y": "nhI6iD5eFXgBTLt_1p3aip-5VbZeMhxeFSpjfEAf7Ww",
    });
    assert_eq!(
        thumbprint_of("ES256", &ec),
        "w9eYdC6_s_tLQ8lH6PUpc0mddazaqtPgeC2IgWDiqY8"
    );
    // RFC 7638 §3.1's own example (with members it does not hash).
    let rsa = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    });
    assert_eq!(
        thumbprint_of("RS256", &rsa),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
}

#[test]
fn bad_headers_are_refused() {
    let key = Key::ec();
    let good = header(&key);
    let with = |k: &str, v: Value| {
        let mut h = good.clone();
        h[k] = v;
        h
    };
    let without = |k: &str| {
        let mut h = good.clone();
        h.as_object_mut().unwrap().remove(k);
        h
    };
    let mut private = key.jwk();
    private["d"] = json!("AAAA");
    let other = Key::ec();
    for (h, why) in [
        (
            with("alg", json!("none")),
            "alg is not one of the supported algorithms",
        ),
        (
            with("alg", json!("HS256")),
            "alg is not one of the supported algorithms",
        ),
        (
            with("alg", json!("ES384")),
            "alg is not one of the supported algorithms",
        ),
        (with("typ", json!("JWT")), "typ must be dpop+jwt"),
        (with("crit", json!(["exp"])), "crit is not supported"),
        (without("typ"), "typ must be dpop+jwt"),
        (without("jwk"), "the header has no jwk"),
        (with("jwk", private), "the jwk holds a private key"),
        (
            with("jwk", json!({"kty": "oct", "k": "c2VjcmV0"})),
            "the jwk holds a private key",
        ),
        (with("alg", json!("EdDSA")), "the jwk does not fit alg"),
        (
            with("jwk", other.jwk()),
            "the signature does not verify with the jwk",
        ),
    ] {
        assert_eq!(
            refused(&signed(&key, &h, &claims()), &expected()),
            why,
            "{h}"
        );
    }
}

#[test]
fn rsa_keys_out_of_range_are_refused_before_their_signature_is_looked_at() {
    let proof_with_modulus = |bytes: usize| {
        let mut n = vec![0u8; bytes];
        n[0] = 0xc1;
        n[bytes - 1] = 1;
        let h = json!({"typ": "dpop+jwt", "alg": "RS256", "jwk": {
            "kty": "RSA", "e": "AQAB", "n": URL_SAFE_NO_PAD.encode(&n),
        }});
        format!("{}.{}.AAAA", b64_json(&h), b64_json(&claims()))
    };
    assert_eq!(
        refused(&proof_with_modulus(128), &expected()),
        "the RSA key is too small"
    );
    assert_eq!(
        refused(&proof_with_modulus(1024), &expected()),
        "the RSA key is too large"
    );
    // 4096 bits is in range: refused for its (made-up) signature only.
    assert_eq!(
        refused(&proof_with_modulus(512), &expected()),
        "the signature does not verify with the jwk"
    );
}

#[test]
fn bad_claims_are_refused() {
    let key = Key::ec();
    for (changes, why) in [
        (json!({"jti": null}), "jti is missing or too long"),
        (json!({"jti": ""}), "jti is missing or too long"),
        (
            json!({"jti": "x".repeat(257)}),
            "jti is missing or too long",
        ),
        (json!({"htm": "GET"}), "htm is not the request method"),
        (
            json!({"htu": "https://other.example/oauth/token"}),
            "htu is not the URL of this request",
        ),
        (
            json!({"htu": "https://issuer.example/oauth/revoke"}),
            "htu is not the URL of this request",
        ),
        (
            json!({"htu": "https://issuer.example/oauth/token?x=1"}),
            "htu is not the URL of this request",
        ),
        (
            json!({"htu": "https://issuer.example/oauth/token#f"}),
            "htu is not the URL of this request",
        ),
        (
            json!({"htu": "http://issuer.example/oauth/token"}),
            "htu is not the URL of this request",
        ),
        (json!({"htu": null}), "htu is missing"),
        (json!({"iat": NOW - 300}), "the proof is too old"),
        (json!({"iat": NOW + 300}), "iat is in the future"),
        (
            json!({"iat": "1700000000"}),
            "iat is missing or not an integer",
        ),
        (json!({"nonce": 7}), "nonce is not a string"),
    ] {
        let proof = signed(&key, &header(&key), &claims_with(&changes));
        assert_eq!(refused(&proof, &expected()), why, "{changes}");
    }
    // Within the window and the leeway: accepted; a default port and the host's case
    // are normalised away.
    for changes in [
        json!({"iat": NOW - IAT_WINDOW - 5}),
        json!({"iat": NOW + 5}),
        json!({"htu": "https://ISSUER.example:443/oauth/token"}),
    ] {
        let proof = signed(&key, &header(&key), &claims_with(&changes));
        check(&proof, &expected()).unwrap();
    }
}

#[test]
fn ath_must_be_the_hash_of_the_access_token_presented() {
    let key = Key::ec();
    let at = Expected {
        access_token: Some("the.access.token"),
        ..expected()
    };
    let proof = signed(&key, &header(&key), &claims());
    assert_eq!(refused(&proof, &at), "ath is missing");
    let other = claims_with(&json!({"ath": access_token_hash("another.token")}));
    assert_eq!(
        refused(&signed(&key, &header(&key), &other), &at),
        "ath is not the hash of this access token"
    );
    let good = claims_with(&json!({"ath": access_token_hash("the.access.token")}));
    check(&signed(&key, &header(&key), &good), &at).unwrap();
}

#[test]
fn malformed_proofs_are_refused() {
    let key = Key::ec();
    let good = signed(&key, &header(&key), &claims());
    // A character in the middle of the signature changed (the last one may only
    // carry padding bits).
    let at = good.rfind('.').unwrap() + 10;
    let mut tampered = good.clone();
    let swapped = if &good[at..=at] == "A" { "B" } else { "A" };
    tampered.replace_range(at..=at, swapped);
    for (proof, why) in [
        (String::new(), "the proof is not a JWS"),
        ("a.b".to_owned(), "the proof is not a JWS"),
        (format!("{good}.x"), "the proof is not a JWS"),
        ("!!.e30.AA".to_owned(), "the proof header is not JSON"),
        (
            format!("{}.e30.AA", URL_SAFE_NO_PAD.encode("[1]")),
            "the proof header is not JSON",
        ),
        ("x".repeat(MAX_PROOF_LEN + 1), "the proof is too long"),
        (tampered, "the signature does not verify with the jwk"),
    ] {
        assert_eq!(refused(&proof, &expected()), why, "{proof}");
    }
    // The nonce is handed back.
    let with_nonce = claims_with(&json!({"nonce": "n-1"}));
    let proof = check(&signed(&key, &header(&key), &with_nonce), &expected()).unwrap();
    assert_eq!(proof.nonce.as_deref(), Some("n-1"));
}

#[test]
fn nonces_live_for_their_step_and_the_next() {
    let nonces = Nonces::new(&[7u8; 32]);
    let start = 1_800_000_000 - 1_800_000_000 % NONCE_STEP;
    let nonce = nonces.current(start + 5);
    assert_eq!(nonce.len(), 32);
    assert_eq!(nonces.current(start + NONCE_STEP - 1), nonce);
    assert!(nonces.accepts(&nonce, start));
    assert!(nonces.accepts(&nonce, start + 2 * NONCE_STEP - 1));
    // From the past: two steps ago.
    assert!(!nonces.accepts(&nonce, start + 2 * NONCE_STEP));
    // From the future (a clock ahead): not ours yet.
    assert!(!nonces.accepts(&nonce, start - 1));
    // Another key's, a tampered one, garbage.
    assert!(!Nonces::new(&[8u8; 32]).accepts(&nonce, start));
    let mut tampered = nonce.clone();
    let swapped = if &nonce[20..21] == "A" { "B" } else { "A" };
    tampered.replace_range(20..21, swapped);
    assert!(!nonces.accepts(&tampered, start));
    for bad in ["", "n-1", "!!!", &nonce[..20]] {
        assert!(!nonces.accepts(bad, start), "{bad}");
    }
}

#[test]
fn weak_or_non_canonical_keys_and_mismatched_padding_are_refused() {
    let unsupported = "the jwk is not a public key we support";
    let proof_with = |alg: &str, jwk: Value| {
        let h = json!({"typ": "dpop+jwt", "alg": alg, "jwk": jwk});
        format!("{}.{}.AAAA", b64_json(&h), b64_json(&claims()))
    };
    // Ed25519 points of small order, with and without the sign bit.
    for hex_point in [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    ] {
        let x: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex_point[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(&x)});
        assert_eq!(
            refused(&proof_with("EdDSA", jwk), &expected()),
            unsupported,
            "{hex_point}"
        );
    }
    // The neutral point with a signature that would verify over anything.
    let neutral = json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8].iter().chain([0u8; 31].iter()).copied().collect::<Vec<u8>>())});
    let h = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": neutral});
    let mut signature = vec![0u8; 64];
    signature[0] = 1;
    let forged = format!(
        "{}.{}.{}",
        b64_json(&h),
        b64_json(&claims()),
        URL_SAFE_NO_PAD.encode(&signature)
    );
    assert_eq!(refused(&forged, &expected()), unsupported);

    // An RSA modulus with a leading zero byte: another spelling, another thumbprint.
    let rsa = Key::rsa(false);
    let mut jwk = rsa.jwk();
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    jwk["n"] =
        json!(URL_SAFE_NO_PAD.encode([0u8].iter().chain(n.iter()).copied().collect::<Vec<u8>>()));
    let h = json!({"typ": "dpop+jwt", "alg": "RS256", "jwk": jwk});
    assert_eq!(
        refused(&signed(&rsa, &h, &claims()), &expected()),
        unsupported
    );
    // A padded or non-canonical coordinate.
    let ec = Key::ec();
    let mut padded = ec.jwk();
    padded["x"] = json!(format!("{}=", padded["x"].as_str().unwrap()));
    let h = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": padded});
    assert_eq!(
        refused(&signed(&ec, &h, &claims()), &expected()),
        unsupported
    );

    // PS256 named, PKCS#1 v1.5 signed (and the reverse); RS256 named, an EC key.
    for (key, alg) in [(Key::rsa(false), "PS256"), (Key::rsa(true), "RS256")] {
        let h = json!({"typ": "dpop+jwt", "alg": alg, "jwk": key.jwk()});
        assert_eq!(
            refused(&signed(&key, &h, &claims()), &expected()),
            "the signature does not verify with the jwk"
        );
    }
    let h = json!({"typ": "dpop+jwt", "alg": "RS256", "jwk": ec.jwk()});
    assert_eq!(
        refused(&signed(&ec, &h, &claims()), &expected()),
        "the jwk does not fit alg"
    );
}
