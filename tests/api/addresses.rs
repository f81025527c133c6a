//! Bound to `[::]`, the server sees IPv4 clients as `::ffff:a.b.c.d`: they must still be
//! the IPv4 addresses they are, to the per-IP limit, to `trusted_proxies` and in the
//! session list.

use std::time::Duration;

use reqwest::StatusCode;
use token_issuer::config::{Cidr, RateLimit};

use crate::helpers::{
    Backend, PASSWORD, TestApp, assert_error, client_from, spawn_app_with, tokens, unique_email,
};

/// The `last_ip` the session list shows for the session of `access`.
async fn last_ip(app: &TestApp, access: &str) -> String {
    let sessions = crate::sessions::sessions(app, access).await;
    let current = sessions.iter().find(|s| s["current"] == true).unwrap();
    current["last_ip"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_dual_stack_socket_ipv4_clients_are_their_own_ipv4_addresses() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.bind = "[::]:0".parse().unwrap();
        s.limits.login_per_ip = Some(RateLimit {
            max: 2,
            window: Duration::from_secs(60),
        });
        s.limits.login_per_account = None;
        s.trusted_proxies = vec![Cidr::parse("127.0.0.3").unwrap()];
    })
    .await;
    let email = unique_email();
    assert_eq!(
        app.register(&email, PASSWORD).await.status(),
        StatusCode::CREATED
    );

    // Two clients, two budgets: one using up its own blocks nobody else.
    for _ in 0..2 {
        tokens(app.login_from("127.0.0.1", &email, PASSWORD).await).await;
    }
    assert_error(
        app.login_from("127.0.0.1", &email, PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        None,
    )
    .await;
    let other = tokens(app.login_from("127.0.0.2", &email, PASSWORD).await).await;
    assert_eq!(last_ip(&app, &other.access).await, "127.0.0.2");

    // A load balancer listed by its IPv4 address is recognised, and its client's
    // address believed.
    let resp = client_from("127.0.0.3")
        .post(app.url("/oauth/token"))
        .header("x-forwarded-for", "203.0.113.9")
        .form(&[
            ("grant_type", "password"),
            ("client_id", "dev"),
            ("username", email.as_str()),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    let proxied = tokens(resp).await;
    assert_eq!(last_ip(&app, &proxied.access).await, "203.0.113.9");
}
