//! The real binary, as a newcomer runs it: first start, configuration errors, and logs
//! at `trace` that never carry a secret.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{PASSWORD, unique_email};

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
        .env("NO_COLOR", "1");
    cmd
}

/// Starts the binary in `dir` on an ephemeral port and waits for it to listen.
fn start(dir: &std::path::Path, log_filter: &str) -> Running {
    let mut child = binary(dir)
        .env("ISSUER_BIND", "127.0.0.1:0")
        .env("ISSUER_LOG", log_filter)
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
                if let Some(port) = line
                    .split("port=")
                    .nth(1)
                    .and_then(|p| p.split_whitespace().next())
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
    let base = format!("http://127.0.0.1:{}", server.port);
    let http = reqwest::Client::new();

    let email = unique_email();
    let resp = http
        .post(format!("{base}/v1/users"))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let login: Value = http
        .post(format!("{base}/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("client_id", "dev"),
            ("username", &email),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first_refresh = login["refresh_token"].as_str().unwrap().to_owned();
    let access = login["access_token"].as_str().unwrap().to_owned();
    let me = http
        .get(format!("{base}/v1/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    let rotated: Value = http
        .post(format!("{base}/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "dev"),
            ("refresh_token", &first_refresh),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second_refresh = rotated["refresh_token"].as_str().unwrap().to_owned();
    let wrong = http
        .post(format!("{base}/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("client_id", "dev"),
            ("username", &email),
            ("password", "a wrong passphrase!"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    let revoke = http
        .post(format!("{base}/oauth/revoke"))
        .form(&[("client_id", "dev"), ("token", &second_refresh)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), StatusCode::OK);

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
    assert!(log.lines().count() > 20, "trace logging was on");
    let signature = access.rsplit('.').next().unwrap();
    for (what, secret) in [
        ("password", PASSWORD),
        ("wrong password", "a wrong passphrase!"),
        ("refresh token", first_refresh.as_str()),
        ("rotated refresh token", second_refresh.as_str()),
        ("access token signature", signature),
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
