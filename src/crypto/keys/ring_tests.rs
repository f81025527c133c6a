//! The key ring's lifecycle, schedule and emergency roll.

use super::*;

const LIFETIMES: Lifetimes = Lifetimes {
    publish_ahead: Duration::from_secs(310),
    retire_grace: Duration::from_secs(930),
};

fn states(dir: &Path) -> Vec<(String, KeyState)> {
    let (ring, _) = read(dir).unwrap().unwrap();
    ring.keys.into_iter().map(|k| (k.kid, k.state)).collect()
}

#[test]
fn generate_rotate_retire_follow_the_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let (ring, _, generated) = ensure(dir.path(), 1_000).unwrap();
    assert!(generated.is_some());
    let first = ring.active().unwrap().kid.clone();
    let next = generate(dir.path(), KeySize::Rsa2048, 1_000).unwrap();
    assert!(
        generate(dir.path(), KeySize::Rsa2048, 1_000).is_err(),
        "one next key"
    );
    // Too early: verifiers may not have the next key yet.
    assert!(rotate(dir.path(), 1_100, LIFETIMES, false, KeySize::Rsa2048).is_err());
    let r = rotate(dir.path(), 1_400, LIFETIMES, false, KeySize::Rsa2048).unwrap();
    assert_eq!(
        (r.retired.as_str(), r.active.as_str()),
        (first.as_str(), next.kid.as_str())
    );
    let (ring, _) = read(dir.path()).unwrap().unwrap();
    assert_eq!(ring.published(1_400).count(), 3);
    assert_eq!(
        ring.published(1_400 + 930).count(),
        2,
        "the retired key left"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("active"))
            .unwrap()
            .trim(),
        next.kid
    );
    assert!(
        retire(dir.path(), &next.kid, 1_500).is_err(),
        "not the active one"
    );
    retire(dir.path(), &r.next, 1_500).unwrap();
    let (ring, _) = read(dir.path()).unwrap().unwrap();
    assert!(ring.next().is_none());
    assert!(!dir.path().join(format!("{}.pem", r.next)).exists());
    // A later change prunes the expired retired key and its file.
    generate(dir.path(), KeySize::Rsa2048, 1_400 + 931).unwrap();
    assert!(!states(dir.path()).iter().any(|(k, _)| *k == first));
    assert!(!dir.path().join(format!("{first}.pem")).exists());
}

#[test]
fn an_emergency_roll_removes_the_key_now_and_a_new_key_signs() {
    let dir = tempfile::tempdir().unwrap();
    let (ring, _, _) = ensure(dir.path(), 1_000).unwrap();
    let first = ring.active().unwrap().kid.clone();
    assert!(roll_compromised(dir.path(), "no-such-kid", 1_000, KeySize::Rsa2048).is_err());
    // The active key, with no next key: a new key signs at once, and one is next.
    let roll = roll_compromised(dir.path(), &first, 1_000, KeySize::Rsa2048).unwrap();
    assert_eq!(
        (roll.removed.as_str(), roll.removed_state),
        (first.as_str(), KeyState::Active)
    );
    let (ring, _) = read(dir.path()).unwrap().unwrap();
    assert!(!ring.published(1_000).any(|k| k.kid == first), "no grace");
    assert!(!dir.path().join(format!("{first}.pem")).exists());
    assert_eq!(ring.active().unwrap().kid, roll.active);
    assert_eq!(ring.next().unwrap().kid, roll.next);
    assert_eq!(
        fs::read_to_string(dir.path().join("active"))
            .unwrap()
            .trim(),
        roll.active
    );
    // The JWKS is cached briefly during the window, then as usual again.
    assert_eq!(ring.jwks_max_age(1_000), EMERGENCY_MAX_AGE);
    let end = 1_000 + secs(EMERGENCY_WINDOW);
    assert_eq!(ring.next_expiry(1_000), Some(end));
    assert_eq!(ring.jwks_max_age(end), JWKS_MAX_AGE);
    // The active key again, now with a published next key: a key no verifier has
    // cached signs (its `kid` makes them refetch), and the next key stays next.
    let second = roll_compromised(dir.path(), &roll.active, 2_000, KeySize::Rsa2048).unwrap();
    assert_ne!(second.active, roll.next);
    assert_ne!(second.active, roll.active);
    assert_eq!(second.next, roll.next);
    assert_eq!(states(dir.path()).len(), 2);
    // A next key: dropped and replaced; the active key stays.
    let third = roll_compromised(dir.path(), &second.next, 3_000, KeySize::Rsa2048).unwrap();
    assert_eq!(
        (third.removed_state, third.active.as_str()),
        (KeyState::Next, second.active.as_str())
    );
    assert_eq!(states(dir.path()).len(), 2);
}

#[test]
fn a_scheduled_rotation_happens_once_however_many_instances_look() {
    let dir = tempfile::tempdir().unwrap();
    ensure(dir.path(), 0).unwrap();
    let interval = Duration::from_secs(3_600);
    // First look: a next key is published, nothing rotates.
    assert_eq!(
        rotate_if_due(dir.path(), 10, interval, LIFETIMES).unwrap(),
        None
    );
    assert_eq!(states(dir.path()).len(), 2);
    assert_eq!(
        rotate_if_due(dir.path(), 3_000, interval, LIFETIMES).unwrap(),
        None
    );
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let dir = dir.path().to_owned();
            std::thread::spawn(move || rotate_if_due(&dir, 3_700, interval, LIFETIMES).unwrap())
        })
        .collect();
    let rotations: Vec<_> = racers
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(rotations.len(), 1, "{rotations:?}");
    let s = states(dir.path());
    assert_eq!(
        s.iter().filter(|(_, st)| *st == KeyState::Active).count(),
        1
    );
    assert_eq!(s.iter().filter(|(_, st)| *st == KeyState::Next).count(), 1);
    assert_eq!(
        s.iter().filter(|(_, st)| *st == KeyState::Retired).count(),
        1
    );
}
