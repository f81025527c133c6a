//! A model-based property test of the session rules. Random sequences of logins,
//! refreshes (of the current token, of the one just consumed, of older ones), failed
//! logins, `/v1/me` calls, revocations, logouts, password changes and clock advances run
//! against the real service over HTTP and, side by side, against a small in-memory model
//! of the rules written from DESIGN.md (not from the code). Every answer must be the one
//! the model predicts, and at the end of each sequence every family's state in the
//! database (revoked or not, exactly one unconsumed token) must match the model.
//!
//! One server per backend serves all the cases (each case has its own two users), so the
//! clock only moves forward; the model reads the time from the same clock. Proptest
//! shrinks a failing sequence and prints the smallest one it found.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use token_issuer::crypto::refresh::RefreshKeys;
use token_issuer::domain::clock::Clock as _;

use crate::helpers::{
    Backend, TestApp, segment, spawn_app_with, stored_family, token_generation, unique_email,
};

const GRACE: Duration = Duration::from_secs(10);
/// Shorter than the defaults (14 d, 90 d), so a sequence of a few dozen steps reaches
/// both limits.
const IDLE: Duration = Duration::from_secs(86_400);
const ABSOLUTE: Duration = Duration::from_secs(2 * 86_400);
/// How far past `exp` an access token is still accepted (`clock_leeway`).
const LEEWAY: i64 = 30;
const USERS: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Login {
        user: usize,
    },
    WrongPassword {
        user: usize,
    },
    /// Presents the family's token `back` rotations before the newest one.
    Refresh {
        family: usize,
        back: usize,
    },
    Me {
        family: usize,
    },
    /// RFC 7009 revocation of the family's newest refresh token.
    Revoke {
        family: usize,
    },
    /// `POST /v1/logout` with the family's access token.
    Logout {
        family: usize,
    },
    /// `POST /v1/me/password` with the family's access token.
    ChangePassword {
        family: usize,
    },
    Advance {
        secs: u64,
    },
    /// Presents a token minted `by` generations past the family's newest: what a
    /// client holds when the database was restored from an older copy.
    Ahead {
        family: usize,
        by: u64,
    },
    /// Presents the family's newest token with its MAC broken.
    Forged {
        family: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let family = 0usize..8;
    prop_oneof![
        3 => (0..USERS).prop_map(|user| Op::Login { user }),
        1 => (0..USERS).prop_map(|user| Op::WrongPassword { user }),
        8 => (family.clone(), prop_oneof![6 => Just(0usize), 3 => Just(1usize), 1 => Just(2usize)])
            .prop_map(|(family, back)| Op::Refresh { family, back }),
        2 => family.clone().prop_map(|family| Op::Me { family }),
        1 => family.clone().prop_map(|family| Op::Revoke { family }),
        1 => family.clone().prop_map(|family| Op::Logout { family }),
        1 => family.clone().prop_map(|family| Op::ChangePassword { family }),
        1 => (family.clone(), 1u64..=3).prop_map(|(family, by)| Op::Ahead { family, by }),
        1 => family.prop_map(|family| Op::Forged { family }),
        4 => prop_oneof![
            3 => 1u64..=8,
            1 => Just(9u64),
            1 => Just(10u64),
            2 => 11u64..=60,
            1 => Just(631u64),
            2 => Just(20 * 3_600u64),
            1 => Just(86_400u64),
        ]
        .prop_map(|secs| Op::Advance { secs }),
    ]
}

/// One family (session) as the model sees it.
#[derive(Debug)]
struct Family {
    user: usize,
    sid: String,
    /// Every refresh token of the family, oldest first; all but the last are consumed.
    tokens: Vec<String>,
    /// When each token was consumed (the last one: not yet).
    consumed_at: Vec<OffsetDateTime>,
    access: String,
    access_exp: i64,
    created: OffsetDateTime,
    last_used: OffsetDateTime,
    revoked: bool,
}

struct Model {
    emails: Vec<String>,
    passwords: Vec<String>,
    families: Vec<Family>,
    password_changes: usize,
    /// How often each (operation, predicted answer) pair came up: printed, so a run
    /// shows that the sequences reached every rule.
    seen: BTreeMap<String, usize>,
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Login { .. } => "login",
        Op::WrongPassword { .. } => "wrong password",
        Op::Refresh { back: 0, .. } => "refresh the newest token",
        Op::Refresh { back: 1, .. } => "refresh 1 back (or the oldest)",
        Op::Refresh { .. } => "refresh 2 back (or the oldest)",
        Op::Me { .. } => "me",
        Op::Revoke { .. } => "revoke",
        Op::Logout { .. } => "logout",
        Op::ChangePassword { .. } => "change password",
        Op::Advance { .. } => "advance",
        Op::Ahead { .. } => "a token ahead of the database",
        Op::Forged { .. } => "a forged token",
    }
}

/// What the service must answer.
#[derive(Debug, PartialEq)]
enum Answer {
    /// A token response; `Some` when the refresh token must be this one (grace replay).
    Tokens(Option<String>),
    InvalidGrant(&'static str),
    Status(StatusCode),
}

impl Answer {
    fn label(&self) -> String {
        match self {
            Self::Tokens(None) => "tokens".into(),
            Self::Tokens(Some(_)) => "the same successor again (grace)".into(),
            Self::InvalidGrant(reason) => format!("invalid_grant {reason}"),
            Self::Status(status) => status.as_u16().to_string(),
        }
    }
}

/// The answer actually given, reduced to what the model predicts.
struct Got {
    status: StatusCode,
    body: Value,
}

impl Got {
    async fn of(resp: reqwest::Response) -> Self {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Self {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    fn field(&self, name: &str) -> Result<String, TestCaseError> {
        self.body[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| TestCaseError::fail(format!("no {name} in {}", self.body)))
    }

    /// The answer without its tokens, for a failure message.
    fn summary(&self) -> Value {
        let mut body = self.body.clone();
        if let Some(map) = body.as_object_mut() {
            for token in ["access_token", "refresh_token"] {
                if map.contains_key(token) {
                    map.insert(token.into(), "…".into());
                }
            }
        }
        body
    }

    fn matches(&self, want: &Answer) -> bool {
        match want {
            Answer::Tokens(same) => {
                self.status == StatusCode::OK
                    && same
                        .as_deref()
                        .is_none_or(|t| self.body["refresh_token"] == t)
            }
            Answer::InvalidGrant(reason) => {
                self.status == StatusCode::BAD_REQUEST
                    && self.body["error"] == "invalid_grant"
                    && self.body["error_reason"] == *reason
            }
            Answer::Status(status) => self.status == *status,
        }
    }
}

impl Model {
    fn pick(&self, family: usize) -> Option<usize> {
        (!self.families.is_empty()).then(|| family % self.families.len())
    }

    /// Whether the family's access token is accepted at `now`.
    fn access_ok(&self, f: usize, now: OffsetDateTime) -> bool {
        let family = &self.families[f];
        !family.revoked && now.unix_timestamp() < family.access_exp + LEEWAY
    }

    /// The rules of a refresh (DESIGN.md, "Refresh token").
    fn refresh(&self, f: usize, index: usize, now: OffsetDateTime) -> Answer {
        let family = &self.families[f];
        let newest = family.tokens.len() - 1;
        if family.revoked {
            Answer::InvalidGrant("revoked")
        } else if now >= family.created + ABSOLUTE {
            Answer::InvalidGrant("expired")
        } else if now >= family.last_used + IDLE {
            Answer::InvalidGrant("idle_timeout")
        } else if index == newest {
            Answer::Tokens(None)
        } else if index + 1 == newest && now < family.consumed_at[index] + GRACE {
            Answer::Tokens(Some(family.tokens[newest].clone()))
        } else {
            Answer::InvalidGrant("reused")
        }
    }

    fn new_family(
        &mut self,
        user: usize,
        got: &Got,
        now: OffsetDateTime,
    ) -> Result<(), TestCaseError> {
        let access = got.field("access_token")?;
        let claims = segment(&access, 1);
        self.families.push(Family {
            user,
            sid: claims["sid"].as_str().unwrap_or_default().to_owned(),
            tokens: vec![got.field("refresh_token")?],
            consumed_at: vec![now],
            access_exp: claims["exp"].as_i64().unwrap_or_default(),
            access,
            created: now,
            last_used: now,
            revoked: false,
        });
        Ok(())
    }
}

async fn run_op(app: &TestApp, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let now = app.clock.now();
    let (want, got) = match *op {
        Op::Advance { secs } => {
            app.advance(Duration::from_secs(secs));
            return Ok(());
        }
        Op::Login { user } => {
            let got = Got::of(app.login(&model.emails[user], &model.passwords[user]).await).await;
            let want = Answer::Tokens(None);
            if got.matches(&want) {
                model.new_family(user, &got, now)?;
            }
            (want, got)
        }
        Op::WrongPassword { user } => {
            let got = Got::of(
                app.login(&model.emails[user], "not the password at all")
                    .await,
            )
            .await;
            (Answer::InvalidGrant("invalid_credentials"), got)
        }
        Op::Refresh { family, back } => {
            let Some(f) = model.pick(family) else {
                return Ok(());
            };
            let index = model.families[f].tokens.len().saturating_sub(1 + back);
            let want = model.refresh(f, index, now);
            let got = Got::of(app.refresh(&model.families[f].tokens[index]).await).await;
            if got.matches(&want) {
                let fam = &mut model.families[f];
                match &want {
                    Answer::Tokens(replayed) => {
                        let token = got.field("refresh_token")?;
                        if replayed.is_none() {
                            prop_assert!(
                                !fam.tokens.contains(&token),
                                "a rotation handed out an old token"
                            );
                            fam.consumed_at[index] = now;
                            fam.tokens.push(token);
                            fam.consumed_at.push(now);
                        }
                        fam.access = got.field("access_token")?;
                        let claims = segment(&fam.access, 1);
                        fam.access_exp = claims["exp"].as_i64().unwrap_or_default();
                        prop_assert_eq!(claims["sid"].as_str(), Some(fam.sid.as_str()));
                        fam.last_used = now;
                    }
                    Answer::InvalidGrant("reused") => fam.revoked = true,
                    _ => {}
                }
            }
            (want, got)
        }
        Op::Ahead { family, by } => {
            let Some(f) = model.pick(family) else {
                return Ok(());
            };
            return ahead(app, model, f, by, now).await;
        }
        Op::Forged { family } => {
            let Some(f) = model.pick(family) else {
                return Ok(());
            };
            let mut forged = model.families[f].tokens.last().cloned().unwrap_or_default();
            let last = forged.pop().unwrap_or('A');
            forged.push(if last == 'A' { 'B' } else { 'A' });
            (
                Answer::InvalidGrant("unknown"),
                Got::of(app.refresh(&forged).await).await,
            )
        }
        Op::Me { family } => {
            let Some(f) = model.pick(family) else {
                return Ok(());
            };
            let want = if model.access_ok(f, now) {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            (
                Answer::Status(want),
                Got::of(app.me(&model.families[f].access).await).await,
            )
        }
        Op::Revoke { family } => {
            let Some(f) = model.pick(family) else {
                return Ok(());
            };
            let token = model.families[f].tokens.last().cloned().unwrap_or_default();
            let got = Got::of(
                app.post_form("/oauth/revoke", &[("client_id", "dev"), ("token", &token)])
                    .await,
            )
            .await;
            model.families[f].revoked = true;
            (Answer::Status(StatusCode::OK), got)
        }
        Op::Logout { family } => {
            let Some(f) = model.pick(family) else {
                return Ok(());
            };
            let want = if model.access_ok(f, now) {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::UNAUTHORIZED
            };
            let resp = app
                .http
                .post(app.url("/v1/logout?scope=this"))
                .bearer_auth(&model.families[f].access)
                .send()
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            if want == StatusCode::NO_CONTENT {
                model.families[f].revoked = true;
            }
            (Answer::Status(want), Got::of(resp).await)
        }
        Op::ChangePassword { family } => {
            let Some(f) = model.pick(family) else {
                return Ok(());
            };
            let user = model.families[f].user;
            model.password_changes += 1;
            let new_password = format!(
                "model password number {} {}",
                model.password_changes,
                uuid::Uuid::new_v4().simple()
            );
            let resp = app
                .http
                .post(app.url("/v1/me/password"))
                .bearer_auth(&model.families[f].access)
                .json(&json!({"current_password": model.passwords[user], "new_password": new_password}))
                .send()
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = Got::of(resp).await;
            if !model.access_ok(f, now) {
                (Answer::Status(StatusCode::UNAUTHORIZED), got)
            } else {
                let want = Answer::Tokens(None);
                if got.matches(&want) {
                    // Every session of the user ends, this one included; a fresh one starts.
                    for fam in model.families.iter_mut().filter(|fam| fam.user == user) {
                        fam.revoked = true;
                    }
                    model.passwords[user] = new_password;
                    model.new_family(user, &got, now)?;
                }
                (want, got)
            }
        }
    };
    *model
        .seen
        .entry(format!("{} -> {}", op_name(op), want.label()))
        .or_default() += 1;
    prop_assert!(
        got.matches(&want),
        "{op:?}: the model says {want:?}, the service answered {} {}",
        got.status,
        got.summary()
    );
    Ok(())
}

/// `Op::Ahead`: the family's row is where it is, the client holds the token of
/// generation `newest + by` (minted with the app's own key). A live family moves
/// forward to it: the answer is the token after it, the generations skipped count as
/// used now.
async fn ahead(
    app: &TestApp,
    model: &mut Model,
    f: usize,
    by: u64,
    now: OffsetDateTime,
) -> Result<(), TestCaseError> {
    let keys = RefreshKeys::load_or_create(&app.keys_dir()).unwrap();
    let family_id: uuid::Uuid = model.families[f].sid.parse().unwrap();
    let newest = model.families[f].tokens.len() as u64 - 1;
    let presented = keys.mint(family_id, newest + by);
    let want = match model.refresh(f, model.families[f].tokens.len() - 1, now) {
        Answer::Tokens(_) => Answer::Tokens(Some(
            keys.mint(family_id, newest + by + 1).expose().to_owned(),
        )),
        refused => refused,
    };
    let got = Got::of(app.refresh(presented.expose()).await).await;
    if got.matches(&want) && matches!(want, Answer::Tokens(_)) {
        let fam = &mut model.families[f];
        for generation in newest + 1..=newest + by + 1 {
            fam.tokens
                .push(keys.mint(family_id, generation).expose().to_owned());
            fam.consumed_at.push(now);
        }
        let last = fam.consumed_at.len() - 2;
        fam.consumed_at[last] = now;
        fam.access = got.field("access_token")?;
        fam.access_exp = segment(&fam.access, 1)["exp"].as_i64().unwrap_or_default();
        fam.last_used = now;
    }
    let label = match want {
        Answer::Tokens(_) => "moved forward: the token after it".to_owned(),
        _ => want.label(),
    };
    *model
        .seen
        .entry(format!("a token ahead of the database -> {label}"))
        .or_default() += 1;
    prop_assert!(
        got.matches(&want),
        "ahead by {by}: the model says {want:?}, the service answered {} {}",
        got.status,
        got.summary()
    );
    Ok(())
}

async fn run_case(
    app: &TestApp,
    ops: &[Op],
    seen: &Mutex<BTreeMap<String, usize>>,
) -> Result<(), TestCaseError> {
    let mut model = Model {
        emails: (0..USERS).map(|_| unique_email()).collect(),
        passwords: (0..USERS)
            .map(|i| format!("model password of user {i}"))
            .collect(),
        families: Vec::new(),
        password_changes: 0,
        seen: BTreeMap::new(),
    };
    let outcome = run_ops(app, &mut model, ops).await;
    let mut total = seen.lock().unwrap();
    for (k, n) in std::mem::take(&mut model.seen) {
        *total.entry(k).or_default() += n;
    }
    outcome
}

async fn run_ops(app: &TestApp, model: &mut Model, ops: &[Op]) -> Result<(), TestCaseError> {
    for user in 0..USERS {
        let resp = app
            .register(&model.emails[user], &model.passwords[user])
            .await;
        prop_assert_eq!(resp.status(), StatusCode::CREATED);
    }
    for op in ops {
        run_op(app, model, op).await?;
    }
    for family in &model.families {
        let (revoked, generation) =
            stored_family(app.settings.database_url.expose(), &family.sid).await;
        prop_assert_eq!(
            revoked,
            family.revoked,
            "family {} revoked in the database",
            family.sid
        );
        // The family's one live token is the model's last: never two live branches.
        let last = family.tokens.last().map(String::as_str).unwrap_or_default();
        prop_assert_eq!(
            generation,
            token_generation(last),
            "family {}: the live generation is the last token's",
            family.sid
        );
    }
    Ok(())
}

fn model_based(backend: Backend) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(spawn_app_with(backend, |s| {
        s.limits.login_per_ip = None;
        s.limits.login_per_account = None;
        s.limits.refresh_per_family = None;
        s.tokens.refresh_idle_timeout = IDLE;
        s.tokens.refresh_absolute_lifetime = ABSOLUTE;
        for client in &mut s.clients {
            client.policy.idle_timeout = IDLE;
            client.policy.absolute_lifetime = ABSOLUTE;
        }
    }));
    let config = Config {
        cases: 48,
        max_shrink_iters: 256,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let seen = Mutex::new(BTreeMap::new());
    let outcome = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        rt.block_on(run_case(&app, &ops, &seen))
    });
    // `cargo test -- --nocapture` shows which rules the sequences reached.
    for (what, n) in seen.lock().unwrap().iter() {
        eprintln!("{backend:?} model: {n:>5} × {what}");
    }
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

#[test]
fn the_service_follows_the_session_model_on_sqlite() {
    model_based(Backend::Sqlite);
}

#[test]
fn the_service_follows_the_session_model_on_postgres() {
    model_based(Backend::Postgres);
}
