//! The shipped alert rules and dashboard (`deploy/`) name metrics that `/metrics`
//! exposes: a renamed metric fails here, not silently in someone's Prometheus. (CI also
//! runs `promtool check rules` and `promtool test rules` on the alerts.)

use std::collections::BTreeSet;

use crate::helpers::{Backend, spawn_app, tokens, wait_for_redis};

/// Every `issuer_...` name in `text`, with a histogram's `_bucket`/`_sum`/`_count` cut.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("issuer_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        names.insert(family.to_owned());
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_and_dashboard_name_only_metrics_that_exist() {
    let root = env!("CARGO_MANIFEST_DIR");
    let alerts = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    let dashboard =
        std::fs::read_to_string(format!("{root}/deploy/grafana/token-issuer.json")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 10, "a dashboard with its queries");

    // PostgreSQL and Redis: every family is exposed (`issuer_redis_up` only with Redis).
    let app = spawn_app(Backend::Postgres).await;
    wait_for_redis(&app, "ok").await;
    let (_, t) = app.signed_in().await;
    tokens(app.refresh(&t.refresh).await).await;
    // A revocation epoch: its gauge has a series only once one is in force.
    app.issuer
        .revoke_all(
            "test",
            None,
            token_issuer::service::incident::RevokeAll {
                client_id: None,
                before: None,
                reason: "names of the epoch gauge".into(),
            },
        )
        .await
        .unwrap();
    let exposed: BTreeSet<String> = app
        .get("/metrics")
        .await
        .text()
        .await
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();

    for (what, names) in [
        ("deploy/prometheus/alerts.yml", metric_names(&alerts)),
        (
            "deploy/grafana/token-issuer.json",
            metric_names(&exprs.join("\n")),
        ),
    ] {
        assert!(!names.is_empty(), "{what} names no metric");
        let unknown: Vec<_> = names.difference(&exposed).collect();
        assert!(
            unknown.is_empty(),
            "{what} names metrics /metrics does not expose: {unknown:?}"
        );
    }
}
