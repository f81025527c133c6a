//! The real binary, as a newcomer runs it: first start, configuration errors, and logs
//! at `trace` that never carry a secret.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Api, PASSWORD, generations, token_position, tokens, unique_email};

struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
    port: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_token-issuer"));
    cmd.current_dir(dir)
        .env_remove("ISSUER_CONFIG")
        .env_remove("ISSUER_DATABASE_URL")
        .env_remove("ISSUER_KEYS_DIR")
        .env_remove("ISSUER_DATA_DIR")
        .env_remove("ISSUER_REDIS_URL")
        // Not a terminal: the binary must not colour its log by itself.
        .env_remove("NO_COLOR");
    cmd
}

/// Starts the binary in `dir` on an ephemeral port and waits for it to listen.
fn start(dir: &std::path::Path, log_filter: &str) -> Running {
    start_with(dir, log_filter, &[])
}

/// `start`, with more environment variables.
fn start_with(dir: &std::path::Path, log_filter: &str, env: &[(&str, &str)]) -> Running {
    let mut child = binary(dir)
        .env("ISSUER_BIND", "127.0.0.1:0")
        .env("ISSUER_LOG", log_filter)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let log = Arc::clone(&log);
        let port_tx = port_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                // `port=N` in the text format, `"port":N` in JSON.
                if let Some(port) = line
                    .split("port=")
                    .nth(1)
                    .or_else(|| line.split("\"port\":").nth(1))
                    .map(|p| p.trim_start_matches(|c: char| !c.is_ascii_digit()))
                    .map(|p| p.split(|c: char| !c.is_ascii_digit()).next().unwrap_or(""))
                    && line.contains("listening")
                {
                    let _ = port_tx.send(port.parse::<u16>().unwrap());
                }
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
            }
        });
    }
    let port = port_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "the binary did not report listening:\n{}",
                log.lock().unwrap()
            )
        });
    Running { child, log, port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_generates_a_key_and_trace_logs_hold_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "trace");
    let api = Api::new(format!("http://127.0.0.1:{}", server.port));

    let email = unique_email();
    assert_eq!(
        api.register(&email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
    let login = tokens(api.login(&email, PASSWORD).await).await;
    let (first_refresh, access) = (login.refresh, login.access);
    assert_eq!(api.me(&access).await.status(), StatusCode::OK);
    let second_refresh = tokens(api.refresh(&first_refresh).await).await.refresh;
    let wrong = api.login(&email, "a wrong passphrase!").await;
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    let revoke = api
        .post_form(
            "/oauth/revoke",
            &[("client_id", "dev"), ("token", &second_refresh)],
        )
        .await;
    assert_eq!(revoke.status(), StatusCode::OK);

    // The built-in dev-service client's secret was written once, 0600, and works.
    let secret_file = dir.path().join("keys/dev-service.secret");
    let service_secret = std::fs::read_to_string(&secret_file)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(service_secret.len(), 43, "256 bits, base64url");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let granted: Value = api
        .client_credentials("dev-service", &service_secret, &[])
        .await
        .json()
        .await
        .unwrap();
    let service_token = granted["access_token"].as_str().unwrap().to_owned();

    // The key was generated under ./keys and the database under ./data.
    assert!(dir.path().join("keys/active").exists());
    assert!(dir.path().join("data/token-issuer.db").exists());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.contains("generated a new RSA-2048 signing key"),
        "{log}"
    );
    assert!(log.contains("keys/"), "the log says where the key is");
    assert!(
        log.contains("dev-service.secret"),
        "the log says where the dev-service secret is"
    );
    assert!(log.lines().count() > 20, "trace logging was on");
    let signature = access.rsplit('.').next().unwrap();
    for (what, secret) in [
        ("password", PASSWORD),
        ("wrong password", "a wrong passphrase!"),
        ("refresh token", first_refresh.as_str()),
        ("rotated refresh token", second_refresh.as_str()),
        ("access token signature", signature),
        ("dev-service secret", service_secret.as_str()),
        (
            "client token signature",
            service_token.rsplit('.').next().unwrap(),
        ),
    ] {
        assert!(!log.contains(secret), "the {what} appears in the trace log");
    }
}

#[test]
fn an_invalid_configuration_stops_start_up_with_one_line_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, setting) in [
        (
            "ISSUER_ACCESS_TOKEN_LIFETIME",
            "20m",
            "access_token_lifetime",
        ),
        ("ISSUER_URL", "not a url", "issuer_url"),
        ("ISSUER_LOG", "[[[", "log"),
    ] {
        let out = binary(dir.path()).env(var, value).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(setting), "{stderr}");
    }
    let config = dir.path().join("issuer.toml");
    std::fs::write(&config, "acces_token_lifetime = \"10m\"\n").unwrap();
    let out = binary(dir.path())
        .env("ISSUER_CONFIG", &config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("acces_token_lifetime"), "{stderr}");
}

/// Limits off: these tests log in and rotate far faster than a person.
const NO_LIMITS: [(&str, &str); 3] = [
    ("ISSUER_RATE_LIMIT_LOGIN_PER_IP", "off"),
    ("ISSUER_RATE_LIMIT_LOGIN_PER_ACCOUNT", "off"),
    ("ISSUER_RATE_LIMIT_REFRESH_PER_FAMILY", "off"),
];

/// Runs the binary in `dir` with `args` and expects it to succeed; its stderr (and
/// stdout) in the failure message.
fn run_ok(dir: &std::path::Path, args: &[&str]) -> String {
    let out = binary(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} exited with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value of the `/metrics` line that starts with `series`, as a number.
async fn metric(api: &Api, series: &str) -> f64 {
    api.metric(series).await.parse().unwrap()
}

/// Waits up to 10 s for `/readyz` to report the key files as `keys`; its body (the
/// status stays 200 either way).
async fn wait_for_keys(api: &Api, keys: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = api.get("/readyz").await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        if body["keys"] == keys {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "readyz still {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `detail` of every audit event of `kind` in the binary's default SQLite
/// database under `dir`, oldest first.
async fn audit_details(dir: &std::path::Path, kind: &str) -> Vec<String> {
    use sqlx::Connection as _;
    let url = format!("sqlite://{}", dir.join("data/token-issuer.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let details: Vec<(String,)> =
        sqlx::query_as("SELECT detail FROM audit_events WHERE kind = ?1 ORDER BY id")
            .bind(kind)
            .fetch_all(&mut db)
            .await
            .unwrap();
    db.close().await.unwrap();
    details.into_iter().map(|(d,)| d).collect()
}

/// Registers `email` and logs in `logins` times with the `dev` client; the refresh
/// tokens.
async fn register_and_login(api: &Api, email: &str, logins: usize) -> Vec<String> {
    assert_eq!(
        api.register(email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
    let mut refresh_tokens = Vec::new();
    for _ in 0..logins {
        refresh_tokens.push(tokens(api.login(email, PASSWORD).await).await.refresh);
    }
    refresh_tokens
}

/// Issue 4: SIGKILL in the middle of a stream of rotations, on both stores. Every
/// family keeps exactly one live refresh token, and every client's last token (or its
/// grace successor) still works after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_9_in_the_middle_of_rotations_leaves_every_family_whole() {
    const FAMILIES: usize = 16;
    let postgres = crate::helpers::TestDatabase::create().await;
    for database_url in [None, Some(postgres.url.clone())] {
        let dir = tempfile::tempdir().unwrap();
        let mut env = NO_LIMITS.to_vec();
        if let Some(url) = &database_url {
            env.push(("ISSUER_DATABASE_URL", url));
        }
        let mut server = start_with(dir.path(), "info", &env);
        let api = Api::new(format!("http://127.0.0.1:{}", server.port));
        let chains = register_and_login(&api, &unique_email(), FAMILIES).await;
        let latest: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(chains));
        let rotations = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..FAMILIES)
            .map(|i| {
                let (latest, rotations, api) =
                    (Arc::clone(&latest), Arc::clone(&rotations), api.clone());
                tokio::spawn(async move {
                    loop {
                        let token = latest.lock().unwrap()[i].clone();
                        let Ok(resp) = api.try_refresh(&token).await else {
                            return; // the server is gone
                        };
                        let Ok(body) = resp.json::<Value>().await else {
                            return;
                        };
                        let next = body["refresh_token"]
                            .as_str()
                            .unwrap_or_else(|| panic!("{body}"));
                        latest.lock().unwrap()[i] = next.to_owned();
                        rotations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            })
            .collect();
        while rotations.load(std::sync::atomic::Ordering::Relaxed) < 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        for worker in workers {
            worker.await.unwrap();
        }

        let url = database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                dir.path().join("data/token-issuer.db").display()
            )
        });
        let families = generations(&url).await;
        assert_eq!(
            families.len(),
            FAMILIES,
            "a family was lost or revoked: {families:?}"
        );
        // Each family's live token is the last one its client saw, or (its rotation
        // committed, its answer lost) the one after.
        for token in latest.lock().unwrap().iter() {
            let (family, seen) = token_position(token);
            let (_, stored) = families.iter().find(|(f, _)| *f == family).unwrap();
            assert!(
                *stored == seen || *stored == seen + 1,
                "family {family}: {stored} after {seen}"
            );
        }

        // Restarted, every client carries on from the last token it saw: either that
        // token is still live, or its rotation committed and the grace window answers
        // with the same successor.
        let server = start_with(dir.path(), "info", &env);
        let api = Api::new(format!("http://127.0.0.1:{}", server.port));
        let last = latest.lock().unwrap().clone();
        for token in &last {
            let resp = api.refresh(token).await;
            assert_eq!(
                resp.status(),
                StatusCode::OK,
                "{}",
                resp.text().await.unwrap()
            );
        }
        assert_eq!(generations(&url).await.len(), FAMILIES, "none revoked");
    }
}

/// Issue 4: SIGTERM lets the requests in flight finish, then the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_the_requests_in_flight_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = NO_LIMITS.to_vec();
    // One hashing thread: the logins queue, so some are in flight at the signal.
    env.push(("ISSUER_PASSWORD_HASH_CONCURRENCY", "1"));
    let mut server = start_with(dir.path(), "info", &env);
    let api = Api::new(format!("http://127.0.0.1:{}", server.port));
    let email = unique_email();
    register_and_login(&api, &email, 0).await;
    let logins: Vec<_> = (0..6)
        .map(|_| {
            let (api, email) = (api.clone(), email.clone());
            tokio::spawn(async move {
                let resp = api.try_login(&email, PASSWORD).await;
                (resp, std::time::Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(40)).await;
    let signalled = std::time::Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut after_signal = 0;
    for login in logins {
        let (resp, done) = login.await.unwrap();
        let resp = resp.expect("an in-flight request is answered");
        assert_eq!(resp.status(), StatusCode::OK);
        after_signal += usize::from(done > signalled);
    }
    assert!(after_signal > 0, "no request was in flight at the signal");
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "still running after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
    assert!(
        api.http.get(api.url("/healthz")).send().await.is_err(),
        "nothing listens after the exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_grants_the_admin_role_and_prints_client_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), "info", &NO_LIMITS);
    let api = Api::new(format!("http://127.0.0.1:{}", server.port));
    let email = unique_email();
    register_and_login(&api, &email, 0).await;
    let out = binary(dir.path())
        .args(["admin", "grant", &email.to_uppercase()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8(out.stdout).unwrap().contains(&email));
    let out = binary(dir.path())
        .args(["admin", "grant", "nobody@example.com"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("nobody@example.com"), "{stderr}");

    // `sessions sweep` deletes a session that ended long ago, from another process.
    {
        use sqlx::Connection as _;
        let url = format!(
            "sqlite://{}",
            dir.path().join("data/token-issuer.db").display()
        );
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let long_ago = (time::OffsetDateTime::now_utc().unix_timestamp() - 400 * 86_400) * 1000;
        sqlx::query(
            "INSERT INTO refresh_families
                 (id, user_id, client_id, created_at, last_used_at, generation_issued_at)
             SELECT ?1, id, 'dev', ?2, ?2, ?2 FROM users WHERE email = ?3",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(long_ago)
        .bind(&email)
        .execute(&mut db)
        .await
        .unwrap();
        db.close().await.unwrap();
    }
    let sweep = || {
        binary(dir.path())
            .args(["sessions", "sweep"])
            .output()
            .unwrap()
    };
    let out = sweep();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deleted 1 ended sessions"), "{stdout}");
    let stdout = String::from_utf8(sweep().stdout).unwrap();
    assert!(stdout.contains("deleted 0 ended sessions"), "{stdout}");

    let out = binary(dir.path()).arg("client-secret").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let secret = stdout
        .lines()
        .find_map(|l| l.strip_prefix("client_secret = "))
        .unwrap();
    let hash = stdout
        .lines()
        .find_map(|l| l.strip_prefix("client_secret_hash = "))
        .unwrap()
        .trim_matches('"');
    let parsed = token_issuer::crypto::client_secret::parse_hash(hash).unwrap();
    assert!(token_issuer::crypto::client_secret::matches(
        secret, &parsed
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotated_by_the_cli_are_picked_up_by_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), "info", &NO_LIMITS);
    let api = Api::new(format!("http://127.0.0.1:{}", server.port));
    let email = unique_email();
    register_and_login(&api, &email, 0).await;
    let kid_of_a_login = || {
        let (api, email) = (api.clone(), email.clone());
        async move {
            let access = tokens(api.login(&email, PASSWORD).await).await.access;
            crate::helpers::segment(&access, 0)["kid"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let before = kid_of_a_login().await;
    let run = |args: &[&str]| binary(dir.path()).args(args).output().unwrap();
    let out = run(&["keys", "generate", "--bits", "3072"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Too early: the next key has not been published for the JWKS cache lifetime.
    let out = run(&["keys", "rotate"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    let out = run(&["keys", "rotate", "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let active = stdout
        .lines()
        .find_map(|l| l.strip_prefix("active  "))
        .unwrap()
        .to_owned();
    assert_eq!(
        stdout.lines().find_map(|l| l.strip_prefix("retired ")),
        Some(before.as_str())
    );
    let listed = String::from_utf8(run(&["keys", "list"]).stdout).unwrap();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&active) && l.contains("active")),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&before) && l.contains("retired")),
        "{listed}"
    );
    // The running server signs with the new key without a restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while kid_of_a_login().await != active {
        assert!(
            std::time::Instant::now() < deadline,
            "the server kept the old key"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The endpoints added after the first trace test: password change, introspection
/// with a client secret, admin calls; nothing secret reaches a trace log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_of_password_changes_and_introspection_hold_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, hash) = token_issuer::crypto::client_secret::generate().unwrap();
    let config = dir.path().join("issuer.toml");
    std::fs::write(
        &config,
        format!(
            "[[clients]]\nclient_id = \"dev\"\nkind = \"mobile\"\n\
             [[clients]]\nclient_id = \"rs\"\nkind = \"service\"\nclient_secret_hash = \"{hash}\"\n\
             introspection_audiences = [\"*\"]\n"
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let mut env = NO_LIMITS.to_vec();
    env.push(("ISSUER_CONFIG", &config));
    let server = start_with(dir.path(), "trace", &env);
    let api = Api::new(format!("http://127.0.0.1:{}", server.port));
    let email = unique_email();
    let refresh = register_and_login(&api, &email, 1).await.remove(0);
    let access = tokens(api.refresh(&refresh).await).await.access;
    let new_password = "a brand new passphrase";
    let changed: Value = api
        .http
        .post(api.url("/v1/me/password"))
        .bearer_auth(&access)
        .json(&serde_json::json!({"current_password": PASSWORD, "new_password": new_password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fresh_refresh = changed["refresh_token"].as_str().unwrap().to_owned();
    let fresh_access = changed["access_token"].as_str().unwrap().to_owned();
    let answer: Value = api
        .http
        .post(api.url("/oauth/introspect"))
        .basic_auth("rs", Some(secret.expose()))
        .form(&[("token", fresh_access.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["active"], true);
    let wrong = api
        .http
        .post(api.url("/oauth/introspect"))
        .basic_auth("rs", Some("a guessed secret value"))
        .form(&[("token", fresh_refresh.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = server.log.lock().unwrap().clone();
    assert!(log.lines().count() > 20, "trace logging was on");
    for (what, value) in [
        ("old password", PASSWORD),
        ("new password", new_password),
        ("client secret", secret.expose()),
        ("guessed client secret", "a guessed secret value"),
        ("refresh token", refresh.as_str()),
        ("refresh token after the change", fresh_refresh.as_str()),
        (
            "access token signature",
            fresh_access.rsplit('.').next().unwrap(),
        ),
    ] {
        assert!(!log.contains(value), "the {what} appears in the trace log");
    }
}

/// Logs written to a pipe (a file, a collector) carry no colour codes; with
/// `ISSUER_LOG_FORMAT=json` every line is one JSON object, the security events too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_plain_text_off_a_terminal_or_one_json_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), "info", &NO_LIMITS);
    let api = Api::new(format!("http://127.0.0.1:{}", server.port));
    register_and_login(&api, &unique_email(), 1).await;
    // The login's event is written after its response (it failed once, read at once
    // under load): wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = server.log.lock().unwrap().clone();
        if text.contains("event=\"login\"")
            || text.contains("event=login")
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        text.contains("event=\"login\"") || text.contains("event=login"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a piped log:\n{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut env = NO_LIMITS.to_vec();
    env.push(("ISSUER_LOG_FORMAT", "json"));
    let server = start_with(dir.path(), "info", &env);
    let api = Api::new(format!("http://127.0.0.1:{}", server.port));
    register_and_login(&api, &unique_email(), 1).await;
    // The login's event is written after its response: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let lines: Vec<Value> = loop {
        let log = server.log.lock().unwrap().clone();
        let lines: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if lines
            .iter()
            .any(|l| l["target"] == "security" && l["fields"]["event"] == "login")
            || std::time::Instant::now() > deadline
        {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let login = lines
        .iter()
        .find(|l| l["target"] == "security" && l["fields"]["event"] == "login")
        .expect("the login's security event");
    assert_eq!(login["level"], "INFO");
    assert!(
        login["timestamp"].is_string() && login["fields"]["sid"].is_string(),
        "{login}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["name"] == "request" && l["span"]["id"].is_string()),
        "request ids in the spans"
    );
}

/// Concurrent rotations on SQLite share batches, and a batch runs as its one
/// statement: a batch that fails falls back to running its jobs one by one (the
/// answers stay right, so only the log tells), which must not be what every batch does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rotations_run_as_one_batch_statement_without_falling_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), "info", &NO_LIMITS);
    let api = Api::new(format!("http://127.0.0.1:{}", server.port));
    let chains = register_and_login(&api, &unique_email(), 16).await;
    let workers: Vec<_> = chains
        .into_iter()
        .map(|mut token| {
            let api = api.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    token = tokens(api.refresh(&token).await).await.refresh;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = server.log.lock().unwrap().clone();
    assert!(
        !log.contains("rotation batch failed"),
        "batches fell back to one job at a time:\n{log}"
    );
}

/// `keys roll --compromised`: the key leaves the JWKS at once, the running server
/// refuses the access tokens it signed within a reload, signs with a new key (the
/// published next key stays next), serves the JWKS with a short `max-age`, and the
/// audit log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_key_roll_refuses_the_compromised_keys_tokens_within_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), "info", &NO_LIMITS);
    let api = Api::new(format!("http://127.0.0.1:{}", server.port));
    let email = unique_email();
    register_and_login(&api, &email, 0).await;
    run_ok(dir.path(), &["keys", "generate"]);
    let old = tokens(api.login(&email, PASSWORD).await).await;
    let compromised = crate::helpers::segment(&old.access, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(api.me(&old.access).await.status(), StatusCode::OK);
    let next = run_ok(dir.path(), &["keys", "list"]);
    let next = next
        .lines()
        .find(|l| l.contains(" next "))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    // The server took the new next key in: one change.
    let signing_changes = r#"issuer_key_changes_total{key="signing"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&api, signing_changes).await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the next key was not taken in"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&api, signing_changes).await, 1.0);
    assert_eq!(metric(&api, "issuer_jwks_max_age_seconds").await, 300.0);

    let stdout = run_ok(
        dir.path(),
        &[
            "keys",
            "roll",
            "--compromised",
            &compromised,
            "--reason",
            "laptop stolen",
        ],
    );
    // A key no verifier has cached signs now; the published next key stays next.
    let active = stdout
        .lines()
        .find_map(|l| l.strip_prefix("active  "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_owned();
    assert!(active != next && active != compromised, "{stdout}");
    assert_eq!(
        stdout.lines().find_map(|l| l.strip_prefix("next    ")),
        Some(next.as_str()),
        "{stdout}"
    );
    assert!(!dir.path().join(format!("keys/{compromised}.pem")).exists());

    // Within a reload interval: the old token is refused, the JWKS no longer has its
    // key and is cached briefly, and a new login is signed by the next key.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while api.me(&old.access).await.status() != StatusCode::UNAUTHORIZED {
        assert!(
            std::time::Instant::now() < deadline,
            "the compromised key's token still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let jwks = api.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.headers()["cache-control"], "public, max-age=30");
    let kids = api.jwks_kids().await;
    assert!(!kids.contains(&compromised), "{kids:?}");
    assert!(kids.contains(&next), "{kids:?}");
    assert!(kids.contains(&active), "{kids:?}");
    let fresh = tokens(api.login(&email, PASSWORD).await).await;
    assert_eq!(
        crate::helpers::segment(&fresh.access, 0)["kid"],
        active.as_str()
    );
    assert_eq!(api.me(&fresh.access).await.status(), StatusCode::OK);
    // The session itself was not ended: its refresh token still rotates.
    tokens(api.refresh(&old.refresh).await).await;
    // The metrics say the instance took the roll in: one change more.
    assert_eq!(metric(&api, signing_changes).await, 2.0);
    assert_eq!(metric(&api, "issuer_jwks_max_age_seconds").await, 30.0);

    // The audit log has the roll and its reason.
    let details = audit_details(dir.path(), "key_compromised").await;
    assert_eq!(details.len(), 1, "{details:?}");
    assert!(
        details[0].contains(&format!("{compromised} (active) removed")),
        "{details:?}"
    );
    assert!(details[0].contains("reason: laptop stolen"), "{details:?}");
}

/// `keys rotate-refresh`: calmly, outstanding refresh tokens keep working and new ones
/// are minted under the new key; with `--compromised`, every outstanding refresh token
/// is refused, and new sign-ins work. The running server picks both up by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_key_rotates_calmly_or_in_an_emergency() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), "info", &NO_LIMITS);
    let api = Api::new(format!("http://127.0.0.1:{}", server.port));
    let email = unique_email();
    register_and_login(&api, &email, 0).await;
    let key_id = |token: &str| token[..7].to_owned();
    let mut current = tokens(api.login(&email, PASSWORD).await).await.refresh;
    let first_key = key_id(&current);

    let refresh_changes = r#"issuer_key_changes_total{key="refresh"}"#;
    assert_eq!(metric(&api, refresh_changes).await, 0.0);
    run_ok(
        dir.path(),
        &["keys", "rotate-refresh", "--reason", "scheduled"],
    );
    // The outstanding token still works; within the reload, new ones carry the new key.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        current = tokens(api.refresh(&current).await).await.refresh;
        if key_id(&current) != first_key {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still minted under the old key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(metric(&api, refresh_changes).await, 1.0);
    run_ok(
        dir.path(),
        &[
            "keys",
            "rotate-refresh",
            "--compromised",
            "--reason",
            "key file leaked",
        ],
    );
    // Once the server took the change in (not by refreshing meanwhile: a refresh
    // that straddles the swap is answered with a token of the new key), the
    // outstanding token is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&api, refresh_changes).await < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the change was not taken in:\n{}",
            server.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::helpers::assert_invalid_grant(api.refresh(&current).await, "unknown").await;
    assert!(!dir.path().join("keys/refresh-hmac.previous.key").exists());
    let fresh = tokens(api.login(&email, PASSWORD).await).await;
    let fresh = tokens(api.refresh(&fresh.refresh).await).await;
    assert_eq!(metric(&api, refresh_changes).await, 2.0);

    // A key file the instance cannot read is reported (it would miss the next
    // change) until the file is whole again; it keeps serving with the key it has,
    // and stays ready.
    let key_file = dir.path().join("keys/refresh-hmac.key");
    let whole = std::fs::read(&key_file).unwrap();
    std::fs::write(&key_file, "not base64\n").unwrap();
    let body = wait_for_keys(&api, "stale").await;
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(metric(&api, "issuer_keys_stale").await, 1.0);
    assert!(metric(&api, r#"issuer_key_reload_failures_total{key="refresh"}"#).await >= 1.0);
    tokens(api.refresh(&fresh.refresh).await).await;
    std::fs::write(&key_file, &whole).unwrap();
    wait_for_keys(&api, "ok").await;
    assert_eq!(metric(&api, "issuer_keys_stale").await, 0.0);

    let details = audit_details(dir.path(), "refresh_key_rotated").await;
    assert_eq!(details.len(), 2, "{details:?}");
    assert!(
        details[0].contains("calm") && details[0].ends_with("reason: scheduled"),
        "{details:?}"
    );
    assert!(
        details[1].contains("emergency") && details[1].ends_with("reason: key file leaked"),
        "{details:?}"
    );
}

/// With Redis, a key command announces its change: the running server re-reads the
/// key files on the announcement, not at its next reload, and the CLI's `sessions
/// revoke-all` is in force at the server's next request (the epoch is in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_key_commands_and_revoke_all_reach_the_running_server_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("ti-test-{}:", uuid::Uuid::new_v4().simple());
    let redis_url =
        std::env::var("ISSUER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut env = NO_LIMITS.to_vec();
    env.push(("ISSUER_REDIS_URL", redis_url.as_str()));
    env.push(("ISSUER_REDIS_KEY_PREFIX", prefix.as_str()));
    let server = start_with(dir.path(), "info", &env);
    let api = Api::new(format!("http://127.0.0.1:{}", server.port));
    let email = unique_email();
    register_and_login(&api, &email, 0).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready: Value = api.get("/readyz").await.json().await.unwrap();
        if ready["redis"] == "ok" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redis not up: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A message published before the server subscribed would be lost to it.
    crate::helpers::wait_for_subscribers(&prefix, 1).await;
    let run = |args: &[&str]| {
        let out = binary(dir.path())
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let t = tokens(api.login(&email, PASSWORD).await).await;
    run(&[
        "keys",
        "rotate-refresh",
        "--compromised",
        "--reason",
        "leak",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.log.lock().unwrap().contains("keys_announced") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            server.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let resp = api.refresh(&t.refresh).await;
        if resp.status() == StatusCode::BAD_REQUEST {
            break resp;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old refresh key still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    crate::helpers::assert_invalid_grant(refused, "unknown").await;

    // revoke-all from the CLI: the access token is refused at the next request.
    let t = tokens(api.login(&email, PASSWORD).await).await;
    assert_eq!(api.me(&t.access).await.status(), StatusCode::OK);
    let out = run(&["sessions", "revoke-all", "--reason", "database copy leaked"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("revoked every session of every client")),
        "{out}"
    );
    assert_eq!(api.me(&t.access).await.status(), StatusCode::UNAUTHORIZED);
    crate::helpers::assert_invalid_grant(api.refresh(&t.refresh).await, "revoked").await;
    let metrics = api.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("issuer_revocation_epoch_seconds{client_id=\"*\"}"),
        "{metrics}"
    );
    // New sign-ins work; the audit row says who set it.
    let fresh = tokens(api.login(&email, PASSWORD).await).await;
    assert_eq!(api.me(&fresh.access).await.status(), StatusCode::OK);
    let details = audit_details(dir.path(), "sessions_revoked_all").await;
    assert_eq!(details.len(), 1, "{details:?}");
    assert!(
        details[0].ends_with("reason: database copy leaked"),
        "{details:?}"
    );
    assert!(details[0].contains("by cli"), "{details:?}");
}
