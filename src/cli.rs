//! The `token-issuer` command line: `serve` (the default), `openapi`, `migrate`,
//! `keys generate|rotate|roll|list|retire`, `admin grant|revoke`,
//! `sessions sweep|revoke-all`,
//! `client-secret`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::domain::clock::SystemClock;
use crate::service::admin::set_admin_role;
use crate::startup::{Application, open_store};
use crate::{api, telemetry};

/// Hybrid token issuer: RS256 access JWTs and rotating refresh tokens.
#[derive(Parser)]
#[command(name = "token-issuer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Print the OpenAPI document.
    Openapi,
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage the signing keys of the key directory (`keys_dir`).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Grant or take back the admin role (it opens /v1/admin).
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Act on the sessions of the database.
    Sessions {
        #[command(subcommand)]
        action: SessionsAction,
    },
    /// Generate a secret for a `service` client: prints the secret (give it to the
    /// service, it is shown only once) and the `client_secret_hash` for the config.
    ClientSecret,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Generate a key and publish it as `next` (as `active` if none signs yet).
    Generate {
        /// RSA modulus size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = 2048)]
        bits: u32,
    },
    /// Promote `next` to `active`, retire the active key, and publish a new `next`.
    Rotate {
        /// Rotate even if `next` was published less than the JWKS cache lifetime ago.
        #[arg(long)]
        force: bool,
        /// RSA modulus size of the new next key.
        #[arg(long, default_value_t = 2048)]
        bits: u32,
    },
    /// Emergency: remove a compromised key from the ring and the JWKS now, with no
    /// grace. If it signed, a new key signs from now on (a `kid` no verifier has
    /// cached, so verifiers refetch the JWKS); if it was the next key, a new next key
    /// is published. Tokens it signed are refused within 2 s.
    Roll {
        /// The kid of the compromised key (a kid may begin with `-`: base64url).
        #[arg(long, allow_hyphen_values = true)]
        compromised: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
        /// RSA modulus size of the new keys.
        #[arg(long, default_value_t = 2048)]
        bits: u32,
    },
    /// Change the refresh-token key (`refresh-hmac.key`). Calm: the current key becomes
    /// the previous one, and outstanding tokens verify until their session's next
    /// rotation. With --compromised: the previous key is dropped as well, and every
    /// outstanding refresh token is refused (everyone signs in again). Running
    /// instances pick it up within 2 s.
    RotateRefresh {
        /// Drop the previous key too: every outstanding refresh token is refused.
        #[arg(long)]
        compromised: bool,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
    },
    /// List the keys: kid, state, created, not-after.
    List,
    /// Drop a next key, or end a retired key's publication now.
    Retire {
        /// The kid (it may begin with `-`: base64url).
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Give the user with this e-mail address the admin role.
    Grant { email: String },
    /// Take the admin role back.
    Revoke { email: String },
}

#[derive(Subcommand)]
enum SessionsAction {
    /// Delete what has ended, now: the sweep the server runs hourly (sessions ended
    /// more than a day ago, old audit events, forgotten login sources).
    Sweep,
    /// Incident: end every session at once (of one client with --client, created
    /// before an instant with --before), and refuse every access token issued before
    /// it. Running instances refuse the refresh tokens at once, and the access tokens
    /// within 2 s.
    RevokeAll {
        /// Only the sessions of this client.
        #[arg(long)]
        client: Option<String>,
        /// Only the sessions created before this instant (RFC 3339, not in the future).
        #[arg(long)]
        before: Option<String>,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
    },
}

/// Runs the command line of this process.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        println!("{}", api::openapi_json());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Keys { action }) = &cli.command {
        let settings = match Settings::load() {
            Ok(s) => s,
            Err(e) => return fail(&e),
        };
        return match keys_command(&settings, action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    if let Some(Command::ClientSecret) = cli.command {
        return match crate::crypto::client_secret::generate() {
            Ok((secret, hash)) => {
                println!("client_secret = {}", secret.expose());
                println!("client_secret_hash = \"{hash}\"");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    }
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    if let Err(message) = telemetry::init(&settings.log, settings.log_format) {
        return fail(&crate::config::ConfigError {
            setting: "log".into(),
            message,
        });
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Migrate) => {
                open_store(&settings).await?;
                tracing::info!(database = %settings.database_url, "migrations applied");
                Ok(())
            }
            Some(Command::Admin { action }) => {
                let (email, granted) = match &action {
                    AdminAction::Grant { email } => (email, true),
                    AdminAction::Revoke { email } => (email, false),
                };
                let store = open_store(&settings).await?;
                let outcome = set_admin_role(store.as_ref(), email, granted).await;
                store.close().await;
                match outcome {
                    Ok(()) => {
                        println!(
                            "{} {email}",
                            if granted {
                                "admin role granted to"
                            } else {
                                "admin role taken from"
                            }
                        );
                        Ok(())
                    }
                    Err(crate::domain::error::Error::NotFound) => {
                        Err(format!("no user has the e-mail address {email}").into())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Some(Command::Sessions {
                action:
                    SessionsAction::RevokeAll {
                        client,
                        before,
                        reason,
                    },
            }) => {
                let before = before
                    .map(|t| {
                        time::OffsetDateTime::parse(
                            &t,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .map_err(|e| format!("--before {t}: not an RFC 3339 instant ({e})"))
                    })
                    .transpose()?;
                let request = crate::service::incident::RevokeAll {
                    client_id: client,
                    before,
                    reason,
                };
                // Bad input is refused before anything is opened; then the store (it
                // may run migrations), so that the default instant is taken just
                // before the write.
                let known = |c: &str| settings.clients.iter().any(|k| k.id == c);
                crate::service::incident::plan(
                    request.clone(),
                    known,
                    "cli",
                    None,
                    time::OffsetDateTime::now_utc(),
                )?;
                let store = open_store(&settings).await?;
                let stored = crate::service::incident::commit(
                    store.as_ref(),
                    request,
                    known,
                    "cli",
                    None,
                    time::OffsetDateTime::now_utc,
                )
                .await;
                // Through Redis when configured, so that every instance refuses the
                // access tokens at once (else within the epoch reload).
                // The epoch is in force already: a failure here is a warning.
                if let Ok(stored) = &stored {
                    let shared = crate::metrics::Metrics::new()
                        .map_err(|e| e.to_string())
                        .and_then(|metrics| {
                            crate::startup::open_shared(
                                &settings,
                                Arc::clone(&store),
                                Arc::new(metrics),
                            )
                            .map_err(|e| e.to_string())
                        });
                    match shared {
                        Ok(shared) => {
                            shared
                                .announce_epoch(
                                    stored.scope(),
                                    stored.not_before.unix_timestamp(),
                                )
                                .await;
                        }
                        Err(e) => eprintln!(
                            "token-issuer: warning: the epoch is in force, but not announced through redis ({e}): instances refuse the access tokens within 2 s"
                        ),
                    }
                }
                store.close().await;
                let stored = stored?;
                crate::service::incident::wait_until(
                    stored.not_before - time::OffsetDateTime::now_utc(),
                )
                .await;
                println!(
                    "revoked every session of {} created before {}, and every access token \
                     issued before it (reason: {})",
                    stored.client_id.as_deref().unwrap_or("every client"),
                    stored
                        .not_before
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    stored.reason
                );
                Ok(())
            }
            Some(Command::Sessions {
                action: SessionsAction::Sweep,
            }) => {
                let store = open_store(&settings).await?;
                let issuer = settings.issuer();
                let started = std::time::Instant::now();
                let swept = crate::service::sweep::run(
                    store.as_ref(),
                    &issuer.widest_policy(),
                    issuer.audit_retention,
                    time::OffsetDateTime::now_utc(),
                )
                .await;
                store.close().await;
                let swept = swept?;
                println!(
                    "deleted {} ended sessions and {} old audit events in {} ms",
                    swept.sessions,
                    swept.audit_events,
                    started.elapsed().as_millis()
                );
                Ok(())
            }
            _ => serve(settings).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&*e),
    }
}

async fn serve(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let app = Application::build(&settings, Arc::new(SystemClock)).await?;
    tracing::info!(
        bind = %settings.bind,
        port = app.port(),
        issuer = %settings.issuer_url,
        database = %settings.database_url,
        "token-issuer listening; docs at /docs"
    );
    app.run_until_stopped().await?;
    Ok(())
}

fn keys_command(
    settings: &Settings,
    action: &KeysAction,
) -> Result<(), Box<dyn std::error::Error>> {
    use crate::crypto::keyring;
    use crate::service::keys::{LIFETIMES, key_size};
    let dir = &settings.keys_dir;
    owner_only(dir)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let size = |bits: u32| {
        key_size(bits).ok_or_else(|| format!("--bits {bits}: expected 2048, 3072 or 4096"))
    };
    match action {
        KeysAction::Generate { bits } => {
            let entry = keyring::generate(dir, size(*bits)?, now)?;
            println!("generated {} ({})", entry.kid, entry.state.as_str());
        }
        KeysAction::Rotate { force, bits } => {
            let r = keyring::rotate(dir, now, LIFETIMES, *force, size(*bits)?)?;
            println!(
                "retired {}\nactive  {}\nnext    {}",
                r.retired, r.active, r.next
            );
            let event = crate::domain::audit::AuditEvent::key_rotated(
                time::OffsetDateTime::now_utc(),
                "cli",
                &r.retired,
                &r.active,
                &r.next,
            );
            record_cli_event(settings, &event);
        }
        KeysAction::Roll {
            compromised,
            reason,
            bits,
        } => {
            let reason = crate::service::incident::checked_reason(reason)?;
            let roll = keyring::roll_compromised(dir, compromised, now, size(*bits)?)?;
            if let Some((path, e)) = &roll.left_behind {
                eprintln!(
                    "token-issuer: warning: {} could not be deleted ({e}): no instance uses it any more; delete it by hand",
                    path.display()
                );
            }
            println!(
                "removed {} ({})\nactive  {}\nnext    {}\n\
                 every instance refuses its tokens within {} s; the JWKS is cached for {} s \
                 during the next {} min",
                roll.removed,
                roll.removed_state.as_str(),
                roll.active,
                roll.next,
                keyring::RELOAD_INTERVAL.as_secs(),
                keyring::EMERGENCY_MAX_AGE.as_secs(),
                keyring::EMERGENCY_WINDOW.as_secs() / 60,
            );
            let event = crate::domain::audit::AuditEvent::key_compromised(
                time::OffsetDateTime::now_utc(),
                "cli",
                &format!("{} ({})", roll.removed, roll.removed_state.as_str()),
                &roll.active,
                &roll.next,
                &reason,
            );
            record_cli_event(settings, &event);
        }
        KeysAction::RotateRefresh {
            compromised,
            reason,
        } => {
            use crate::crypto::refresh::{KeyChange, rotate_files};
            let reason = crate::service::incident::checked_reason(reason)?;
            let change = if *compromised {
                KeyChange::Emergency
            } else {
                KeyChange::Calm
            };
            rotate_files(dir, change)?;
            println!(
                "{}; running instances pick the new key up within {} s",
                match change {
                    KeyChange::Emergency =>
                        "new refresh-token key; the previous one is dropped: every outstanding refresh token is refused",
                    KeyChange::Calm =>
                        "new refresh-token key; the previous one verifies outstanding tokens until their next rotation",
                },
                keyring::RELOAD_INTERVAL.as_secs()
            );
            let event = crate::domain::audit::AuditEvent::refresh_key_rotated(
                time::OffsetDateTime::now_utc(),
                "cli",
                *compromised,
                &reason,
            );
            record_cli_event(settings, &event);
        }
        KeysAction::Retire { kid } => {
            keyring::retire(dir, kid, now)?;
            println!("retired {kid}");
        }
        KeysAction::List => {
            let ring = keyring::existing(dir)?;
            let when = |t: Option<i64>| {
                t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| "-".to_owned())
            };
            println!("{:<44} {:<8} {:<25} not-after", "kid", "state", "created");
            for k in &ring.keys {
                println!(
                    "{:<44} {:<8} {:<25} {}",
                    k.kid,
                    k.state.as_str(),
                    when(Some(k.created_at)),
                    when(k.not_after)
                );
            }
        }
    }
    Ok(())
}

/// The key commands write files that only their owner can read (0600): run by another
/// user (root, say), they would leave keys the service cannot read. Refused then.
fn owner_only(dir: &std::path::Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        if let (Ok(d), Ok(me)) = (std::fs::metadata(dir), std::fs::metadata("/proc/self"))
            && d.uid() != me.uid()
        {
            return Err(format!(
                "run the key commands as the owner of {} (uid {}), the user the service runs as: the files they write are readable by their owner only",
                dir.display(),
                d.uid()
            ));
        }
    }
    Ok(())
}

/// Writes a CLI change of the keys to the audit log; the change stands even when the
/// database cannot be reached (a warning says so).
/// After a key command changed the key files: with Redis an announcement first (so
/// that running instances re-read the files at once rather than at their next
/// reload, whatever the database does), then its audit row. Either failing is a
/// warning: the change is made.
fn record_cli_event(settings: &Settings, event: &crate::domain::audit::AuditEvent) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!(
                "token-issuer: warning: the keys changed but it is not in the audit log: {e}"
            );
            return;
        }
    };
    runtime.block_on(async {
        if settings.redis_url.is_some() {
            let link = crate::metrics::Metrics::new()
                .map_err(|e| e.to_string())
                .and_then(|m| {
                    crate::startup::open_redis(settings, Arc::new(m)).map_err(|e| e.to_string())
                });
            let announced = match link {
                Ok(Some(link)) => link.announce_keys().await,
                _ => false,
            };
            if !announced {
                eprintln!(
                    "token-issuer: warning: the change was not announced through redis: instances pick it up within {} s",
                    crate::crypto::keyring::RELOAD_INTERVAL.as_secs()
                );
            }
        }
        let recorded = match open_store(settings).await {
            Ok(store) => {
                let result = store.record_audit(event).await.map_err(|e| e.to_string());
                store.close().await;
                result
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = recorded {
            eprintln!("token-issuer: warning: the keys changed but it is not in the audit log: {e}");
        }
    });
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("token-issuer: {e}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{Cli, Command, KeysAction};

    /// A kid is base64url: about one in 64 begins with `-`, and must not be taken for
    /// a flag (an operator rolling such a key at 3 a.m. got "unexpected argument").
    #[test]
    fn a_kid_that_begins_with_a_hyphen_is_a_kid() {
        let kid = "-DbIuu2PEALREfyD5n6uSXdc7920Rm8mS9KbYgKIuhM";
        let roll = Cli::try_parse_from([
            "token-issuer",
            "keys",
            "roll",
            "--compromised",
            kid,
            "--reason",
            "r",
        ]);
        assert!(
            matches!(
                roll.as_ref().map(|c| &c.command),
                Ok(Some(Command::Keys { action: KeysAction::Roll { compromised, .. } })) if compromised == kid
            ),
            "{:?}",
            roll.err()
        );
        let retire = Cli::try_parse_from(["token-issuer", "keys", "retire", kid]);
        assert!(
            matches!(
                retire.as_ref().map(|c| &c.command),
                Ok(Some(Command::Keys { action: KeysAction::Retire { kid: k } })) if k == kid
            ),
            "{:?}",
            retire.err()
        );
    }
}
