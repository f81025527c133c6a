//! Well-known passwords (NIST SP 800-63B-4 §3.1.1.2: "passwords obtained from previous
//! breach corpuses", "repetitive or sequential characters", "dictionary words").
//!
//! - The list: `common-passwords.txt`, 40,106 passwords from Have I Been Pwned (as
//!   Django ships them) and Mark Burnett's corpus (as zxcvbn ships them), lower-cased;
//!   sources and licences in `common-passwords.NOTICE`. Compiled into the binary, so
//!   no file has to be deployed; matched case-insensitively.
//! - Since a new password has 15 characters at least, and most listed ones are
//!   shorter, a password is also refused when it is a listed one padded out with a
//!   *run*: the same character repeated, or consecutive digits or letters up or down
//!   (`1234567`, `98765`, `abcdef`; digits wrap, `7890123`), in front or behind
//!   (`password1234567`, `iloveyou12345678`, `123456qwertyuiop`); when it is nothing but
//!   runs (`1234567890123456`, `aaaaaaaaaaaaaaa`); or when it is a listed one, or any
//!   short unit, written over and over (`iloveyouiloveyou`, `abcabcabcabcabc`).

use std::collections::HashSet;
use std::sync::LazyLock;

static LIST: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| include_str!("common-passwords.txt").lines().collect());

/// A run is at least this long; a listed core at least this long counts.
const MIN_RUN: usize = 3;

/// Whether `password` is too well known to be a password.
pub fn is_common(password: &str) -> bool {
    let lowered = password.to_lowercase();
    if LIST.contains(lowered.as_str()) {
        return true;
    }
    let chars: Vec<char> = lowered.chars().collect();
    let core = strip_runs(&chars);
    if core.is_empty() {
        return true;
    }
    let padded = core.len() < chars.len();
    let core: String = core.iter().collect();
    (padded && LIST.contains(core.as_str())) || repeats_a_unit(&chars)
}

/// `chars` without the longest run at its end, then the longest at its start.
fn strip_runs(chars: &[char]) -> &[char] {
    let end = chars.len() - run_len(chars.iter().rev().copied());
    let chars = &chars[..end];
    &chars[run_len(chars.iter().copied())..]
}

/// The length of the run `chars` starts with, 0 if shorter than `MIN_RUN`.
fn run_len(mut chars: impl Iterator<Item = char>) -> usize {
    let Some(first) = chars.next() else { return 0 };
    let mut len = 1;
    let mut step: Option<i32> = None;
    let mut prev = first;
    for c in chars {
        let Some(d) = difference(prev, c) else { break };
        match step {
            None if matches!(d, -1..=1) => step = Some(d),
            Some(s) if s == d => {}
            _ => break,
        }
        len += 1;
        prev = c;
    }
    if len >= MIN_RUN { len } else { 0 }
}

/// How far `b` is from `a` among digits (wrapping, `9` → `0` is +1) or among letters;
/// `None` across kinds.
fn difference(a: char, b: char) -> Option<i32> {
    match (a.to_digit(10), b.to_digit(10)) {
        (Some(x), Some(y)) => {
            let d = (y as i32 - x as i32).rem_euclid(10);
            Some(if d == 9 { -1 } else { d })
        }
        (None, None) if a.is_ascii_lowercase() && b.is_ascii_lowercase() => {
            Some(b as i32 - a as i32)
        }
        _ => None,
    }
}

/// Whether `chars` is one unit written at least twice over (the last time possibly cut
/// short), the unit listed or at most `MIN_RUN` long.
fn repeats_a_unit(chars: &[char]) -> bool {
    (1..=chars.len() / 2).any(|unit| {
        chars.iter().enumerate().all(|(i, c)| *c == chars[i % unit])
            && (unit <= MIN_RUN || LIST.contains(chars[..unit].iter().collect::<String>().as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_compiled_in_and_well_known_passwords_are_refused() {
        assert!(LIST.len() > 40_000);
        for weak in [
            "password1234567",
            "Password1234567",
            "iloveyou12345678",
            "123456qwertyuiop",
            "qwerty123456789",
            "sunshine9876543",
            "1234567890123456",
            "7890123456789012",
            "aaaaaaaaaaaaaaaaaaa",
            "abcdefghijklmnop",
            "iloveyouiloveyou",
            "abcabcabcabcabc",
            "manchesterunited",
            "correct horse battery staple",
        ] {
            assert!(is_common(weak), "{weak}");
        }
        for fine in [
            "a sound passphrase",
            "correct horse battery",
            "zebra crossing at dawn",
            "my dog is 1234 years",
            "password manager rules",
            "tabernacle1987xyz",
        ] {
            assert!(!is_common(fine), "{fine}");
        }
    }
}
