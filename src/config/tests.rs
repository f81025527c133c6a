//! The configuration's unit tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::net::IpAddr;

use super::*;

fn load(toml_text: Option<&str>, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("issuer.toml");
    if let Some(text) = toml_text {
        std::fs::write(&path, text).unwrap();
    }
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    Settings::load_from(toml_text.map(|_| path.as_path()), |name| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
}

#[test]
fn defaults_are_the_development_configuration() {
    let s = load(None, &[]).unwrap();
    assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(s.issuer_url, "http://localhost:8080");
    assert_eq!(s.database_url.expose(), "sqlite://data/token-issuer.db");
    assert_eq!(s.tokens.access_token_lifetime, Duration::from_secs(600));
    assert_eq!(s.tokens.refresh_grace_period, Duration::from_secs(10));
    let ids: Vec<_> = s.clients.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["dev", "dev-spa", "dev-native", "dev-service"]);
    assert!(s.clients.iter().all(|c| c.first_party));
    assert_eq!(
        s.clients[1].redirect_uris,
        ["http://localhost:5173/callback"]
    );
    assert_eq!(
        s.clients[2].redirect_uris,
        ["http://127.0.0.1/callback", "http://[::1]/callback"]
    );
    assert_eq!(s.sign_in.product_name, "token-issuer");
    assert_eq!(s.sign_in.session_lifetime, Duration::from_secs(86_400));
    assert!(s.allow_registration);
    assert_eq!(
        s.limits.register_per_ip,
        Some(RateLimit {
            max: 20,
            window: Duration::from_secs(3600)
        }),
        "registration is limited by default"
    );
}

#[test]
fn environment_overrides_the_file() {
    let s = load(
        Some("issuer_url = \"https://a.example\"\n[[clients]]\nclient_id = \"m\"\nkind = \"mobile\"\n"),
        &[("ISSUER_URL", "https://b.example/"), ("ISSUER_REFRESH_GRACE_PERIOD", "0")],
    )
    .unwrap();
    assert_eq!(s.issuer_url, "https://b.example");
    assert_eq!(s.tokens.refresh_grace_period, Duration::ZERO);
    assert_eq!(s.clients[0].audiences, ["https://b.example"]);
}

#[test]
fn access_lifetime_outside_range_names_the_setting() {
    let err = load(None, &[("ISSUER_ACCESS_TOKEN_LIFETIME", "20m")]).unwrap_err();
    assert_eq!(err.setting, "access_token_lifetime");
    assert!(err.to_string().contains("5m to 15m"), "{err}");
    assert!(!err.to_string().contains('\n'));
    let err = load(None, &[("ISSUER_ACCESS_TOKEN_LIFETIME", "4m")]).unwrap_err();
    assert_eq!(err.setting, "access_token_lifetime");
}

#[test]
fn unknown_key_and_bad_url_are_refused() {
    let err = load(Some("acces_token_lifetime = \"10m\"\n"), &[]).unwrap_err();
    assert!(err.message.contains("acces_token_lifetime"), "{err}");
    assert!(!err.to_string().contains('\n'));
    let err = load(None, &[("ISSUER_URL", "not a url")]).unwrap_err();
    assert_eq!(err.setting, "issuer_url");
    for bad in [
        "ftp://x.example",
        "http://auth.example.com",
        "https://a.example/tenant",
        "https://a.example/?x=1",
    ] {
        let err = load(None, &[("ISSUER_URL", bad)]).unwrap_err();
        assert_eq!(err.setting, "issuer_url", "{bad}");
    }
    for good in [
        "https://auth.example.com",
        "http://127.0.0.1:8080",
        "http://localhost:9000/",
    ] {
        assert!(load(None, &[("ISSUER_URL", good)]).is_ok(), "{good}");
    }
    let err = load(None, &[("ISSUER_REFRESH_ABSOLUTE_LIFETIME", "4000000d")]).unwrap_err();
    assert_eq!(err.setting, "refresh_absolute_lifetime");
}

#[test]
fn cookie_clients_need_an_origin_and_ids_are_unique() {
    let err = load(
        Some("[[clients]]\nclient_id = \"s\"\nkind = \"spa\"\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.setting, "clients[0].allowed_origins");
    let err = load(
        Some("[[clients]]\nclient_id = \"a\"\nkind = \"mobile\"\n[[clients]]\nclient_id = \"a\"\nkind = \"mobile\"\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.setting, "clients");
    let two_spas = "[[clients]]\nclient_id = \"a\"\nkind = \"spa\"\nallowed_origins = [\"https://a.example\"]\n\
                    [[clients]]\nclient_id = \"b\"\nkind = \"spa\"\nallowed_origins = [\"https://b.example\"]\n";
    assert_eq!(load(Some(two_spas), &[]).unwrap_err().setting, "clients");
}

#[test]
fn database_urls_are_checked_and_redacted_for_logs() {
    let s = load(
        None,
        &[(
            "ISSUER_DATABASE_URL",
            "postgres://app:s3cret@db.internal:5432/issuer",
        )],
    )
    .unwrap();
    assert_eq!(
        s.database_url.to_string(),
        "postgres://app:***@db.internal:5432/issuer"
    );
    assert_eq!(
        s.database_url.expose(),
        "postgres://app:s3cret@db.internal:5432/issuer"
    );
    // The settings print without the password, whatever prints them.
    let s = load(
        None,
        &[
            (
                "ISSUER_DATABASE_URL",
                "postgres://app:s3cret@db.internal:5432/issuer",
            ),
            ("ISSUER_REDIS_URL", "redis://:r3dispw@cache.internal:6379/2"),
        ],
    )
    .unwrap();
    let printed = format!("{s:?}");
    assert!(
        !printed.contains("s3cret") && !printed.contains("r3dispw"),
        "{printed}"
    );
    assert!(printed.contains("postgres://app:***@db.internal:5432/issuer"));
    assert_eq!(
        load(None, &[("ISSUER_DATABASE_URL", "mysql://x")])
            .unwrap_err()
            .setting,
        "database_url"
    );
    assert_eq!(redacted_url("sqlite://data/x.db"), "sqlite://data/x.db");
    assert_eq!(
        redacted_url("postgres://app@db.internal/issuer?sslmode=require&password=s3cret"),
        "postgres://app@db.internal/issuer?sslmode=require&password=***"
    );
    assert_eq!(
        redacted_url("postgres://a:s3cret@[bad"),
        "postgres:<unparsable URL hidden>"
    );
}

#[test]
fn rate_limits_and_redis_are_checked() {
    let s = load(None, &[]).unwrap();
    assert_eq!(s.redis_url, None);
    assert_eq!(
        s.limits.login_per_account,
        Some(RateLimit {
            max: 10,
            window: Duration::from_secs(60)
        })
    );
    let s = load(
        None,
        &[
            ("ISSUER_RATE_LIMIT_LOGIN_PER_IP", "off"),
            ("ISSUER_RATE_LIMIT_REFRESH_PER_FAMILY", "5/10s"),
            ("ISSUER_REDIS_URL", "redis://:pw@cache.internal:6379/2"),
        ],
    )
    .unwrap();
    assert_eq!(s.limits.login_per_ip, None);
    assert_eq!(
        s.limits.refresh_per_family,
        Some(RateLimit {
            max: 5,
            window: Duration::from_secs(10)
        })
    );
    assert_eq!(
        s.redis_url.as_ref().unwrap().to_string(),
        "redis://:***@cache.internal:6379/2"
    );
    for bad in ["0/1m", "10", "10/2w", "ten/1m", "5/0"] {
        let err = load(None, &[("ISSUER_RATE_LIMIT_LOGIN_PER_IP", bad)]).unwrap_err();
        assert_eq!(err.setting, "rate_limit_login_per_ip", "{bad}");
    }
    let err = load(None, &[("ISSUER_REDIS_URL", "http://cache:6379")]).unwrap_err();
    assert_eq!(err.setting, "redis_url");
    let tls = load(
        None,
        &[("ISSUER_REDIS_URL", "rediss://:pw@cache.internal:6380/0")],
    )
    .unwrap();
    assert_eq!(
        tls.redis_url.unwrap().to_string(),
        "rediss://:***@cache.internal:6380/0"
    );
}

#[test]
fn clients_override_lifetimes_and_list_scopes() {
    let file = "refresh_grace_period = \"5s\"\n\
                [[clients]]\nclient_id = \"m\"\nkind = \"mobile\"\n\
                access_token_lifetime = \"5m\"\nrefresh_idle_timeout = \"1d\"\nscopes = [\"read\", \"write\"]\n\
                [[clients]]\nclient_id = \"n\"\nkind = \"mobile\"\n";
    let s = load(Some(file), &[]).unwrap();
    let (m, n) = (&s.clients[0], &s.clients[1]);
    assert_eq!(m.access_lifetime, Duration::from_secs(300));
    assert_eq!(m.policy.idle_timeout, Duration::from_secs(86_400));
    assert_eq!(
        m.policy.grace_period,
        Duration::from_secs(5),
        "the default applies"
    );
    assert_eq!(m.scopes, ["read", "write"]);
    assert_eq!(n.access_lifetime, Duration::from_secs(600));
    assert!(n.scopes.is_empty());
    let err = load(
        Some("[[clients]]\nclient_id = \"m\"\nkind = \"mobile\"\naccess_token_lifetime = \"1h\"\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.setting, "clients[0].access_token_lifetime");
    let err = load(
        Some("[[clients]]\nclient_id = \"m\"\nkind = \"mobile\"\nscopes = [\"a b\"]\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.setting, "clients[0].scopes");
}

#[test]
fn only_service_clients_list_introspection_audiences() {
    let hash = format!("sha256:{}", "0".repeat(64));
    let s = load(
        Some(&format!(
            "[[clients]]\nclient_id = \"rs\"\nkind = \"service\"\nclient_secret_hash = \"{hash}\"\n\
             introspection_audiences = [\"https://api.example.com\"]\n"
        )),
        &[],
    )
    .unwrap();
    assert_eq!(
        s.clients[0].introspection_audiences,
        ["https://api.example.com"]
    );
    let err = load(
        Some("[[clients]]\nclient_id = \"m\"\nkind = \"mobile\"\nintrospection_audiences = [\"*\"]\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.setting, "clients[0].introspection_audiences");
}

#[test]
fn client_credentials_are_opt_in_for_service_clients_with_their_own_audiences() {
    let hash = format!("sha256:{}", "0".repeat(64));
    let service = |extra: &str| {
        format!(
            "[[clients]]\nclient_id = \"rs\"\nkind = \"service\"\nclient_secret_hash = \"{hash}\"\n{extra}"
        )
    };
    // An earlier configuration's service client: introspection only.
    let s = load(Some(&service("")), &[]).unwrap();
    assert!(!s.clients[0].client_credentials);
    let s = load(
        Some(&service(
            "client_credentials = true\naudiences = [\"https://orders.example\"]\n",
        )),
        &[],
    )
    .unwrap();
    assert!(s.clients[0].client_credentials);
    let err = load(Some(&service("client_credentials = true\n")), &[]).unwrap_err();
    assert_eq!(err.setting, "clients[0].audiences");
    let err = load(
        Some("[[clients]]\nclient_id = \"m\"\nkind = \"mobile\"\nclient_credentials = true\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.setting, "clients[0].client_credentials");
}

#[test]
fn a_service_client_may_sign_assertions_instead_of_holding_a_secret() {
    // jose's documented example P-256 key (public half).
    let key = "{ kty = \"EC\", crv = \"P-256\", kid = \"k1\", \
               x = \"jJ6Flys3zK9jUhnOHf6G49Dyp5hah6CNP84-gY-n9eo\", \
               y = \"nhI6iD5eFXgBTLt_1p3aip-5VbZeMhxeFSpjfEAf7Ww\" }";
    let client = |kind: &str, jwks: &str| {
        format!("[[clients]]\nclient_id = \"c\"\nkind = \"{kind}\"\njwks = {jwks}\n")
    };
    let s = load(
        Some(&client("service", &format!("{{ keys = [{key}] }}"))),
        &[],
    )
    .unwrap();
    assert_eq!(s.clients[0].assertion_keys.len(), 1);
    assert!(s.clients[0].secret_hash.is_none());
    for (toml_text, why) in [
        (
            client("mobile", &format!("{{ keys = [{key}] }}")),
            "a public client",
        ),
        (client("service", "{ keys = [] }"), "no key"),
        (
            client(
                "service",
                "{ keys = [{ kty = \"oct\", k = \"c2VjcmV0\" }] }",
            ),
            "a secret key",
        ),
        (
            client(
                "service",
                &format!("{{ keys = [{}] }}", key.replace(" }", ", d = \"x\" }")),
            ),
            "a private key",
        ),
    ] {
        let err = load(Some(&toml_text), &[]).unwrap_err();
        assert_eq!(err.setting, "clients[0].jwks", "{why}");
    }
}

#[test]
fn trusted_proxies_are_ranges() {
    let s = load(
        None,
        &[(
            "ISSUER_TRUSTED_PROXIES",
            "10.0.0.0/8, 192.168.1.7 ,2001:db8::/32",
        )],
    )
    .unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let trusted = |addr: &str| s.trusted_proxies.iter().any(|r| r.contains(ip(addr)));
    assert!(trusted("10.200.3.4"));
    assert!(!trusted("11.0.0.1"));
    assert!(trusted("192.168.1.7"));
    assert!(!trusted("192.168.1.8"));
    assert!(trusted("2001:db8:ffff::1"));
    assert!(!trusted("2001:db9::1"));
    assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
    // An IPv4 client through a dual-stack socket; a range written mapped.
    assert!(trusted("::ffff:10.1.2.3"));
    assert!(!trusted("::ffff:11.1.2.3"));
    let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
    assert!(mapped.contains(ip("10.9.9.9")) && mapped.contains(ip("::ffff:10.9.9.9")));
    assert!(!mapped.contains(ip("11.0.0.1")));
    for bad in ["10.0.0.0/33", "10.0.0/8", "example.com", "::/129"] {
        let err = load(None, &[("ISSUER_TRUSTED_PROXIES", bad)]).unwrap_err();
        assert_eq!(err.setting, "trusted_proxies", "{bad}");
    }
    assert!(load(None, &[]).unwrap().trusted_proxies.is_empty());
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(
        parse_duration("14d"),
        Some(Duration::from_secs(14 * 86_400))
    );
    assert_eq!(parse_duration("0"), Some(Duration::ZERO));
    assert_eq!(parse_duration("10"), None);
    assert_eq!(parse_duration("m"), None);
    assert_eq!(parse_duration("1w"), None);
}

#[test]
fn a_client_may_not_be_named_star_which_means_every_client() {
    let err = load(
        Some("[[clients]]\nclient_id = \"*\"\nkind = \"mobile\"\n"),
        &[],
    )
    .unwrap_err();
    assert!(err.setting.ends_with("client_id"), "{err}");
    assert!(err.message.contains("reserved"), "{err}");
}

#[test]
fn redirect_uris_are_absolute_without_fragment_or_user_and_safe_schemes() {
    let client = |kind: &str, uri: &str| {
        format!(
            "[[clients]]\nclient_id = \"c\"\nkind = \"{kind}\"\ndelivery = \"body\"\nredirect_uris = [{uri:?}]\n"
        )
    };
    for ok in [
        ("mobile", "https://app.example/cb"),
        ("mobile", "http://127.0.0.1/cb"),
        ("mobile", "http://localhost:3000/cb"),
        ("mobile", "com.example.app:/oauth"),
        ("spa", "https://app.example/cb?tenant=1"),
    ] {
        let s = load(Some(&client(ok.0, ok.1)), &[]).unwrap();
        assert_eq!(s.clients[0].redirect_uris, [ok.1]);
        assert!(
            !s.clients[0].first_party,
            "redirect URIs: consent by default"
        );
    }
    for bad in [
        ("mobile", "/cb"),
        ("mobile", "https://app.example/cb#x"),
        ("mobile", "https://user:pw@app.example/cb"),
        ("mobile", "http://app.example/cb"),
        ("mobile", "javascript:alert(1)"),
        ("mobile", "data:text/html,x"),
        ("mobile", "myapp:/cb"),
        ("spa", "com.example.app:/oauth"),
        ("service", "https://app.example/cb"),
        ("spa", "https://app.example/cb?state=fixed"),
        (
            "spa",
            "https://app.example/cb?iss=https%3A%2F%2Fevil.example",
        ),
    ] {
        let err = load(Some(&client(bad.0, bad.1)), &[]).unwrap_err();
        assert_eq!(err.setting, "clients[0].redirect_uris", "{bad:?}");
    }
    // A client of the password grant alone is first-party unless it says otherwise.
    let s = load(
        Some("[[clients]]\nclient_id = \"m\"\nkind = \"mobile\"\n"),
        &[],
    )
    .unwrap();
    assert!(s.clients[0].first_party);
    let s = load(
        Some("[[clients]]\nclient_id = \"m\"\nkind = \"mobile\"\nfirst_party = false\n"),
        &[],
    )
    .unwrap();
    assert!(!s.clients[0].first_party);
}

#[test]
fn sign_in_settings_are_checked() {
    let s = load(
        None,
        &[
            ("ISSUER_PRODUCT_NAME", "Acme <Accounts>"),
            ("ISSUER_LOGO_URL", "https://cdn.acme.example/logo.svg"),
            ("ISSUER_SIGN_IN_SESSION_LIFETIME", "12h"),
        ],
    )
    .unwrap();
    assert_eq!(s.sign_in.product_name, "Acme <Accounts>");
    assert_eq!(
        s.sign_in.logo_origin.as_deref(),
        Some("https://cdn.acme.example")
    );
    assert_eq!(s.sign_in.session_lifetime, Duration::from_secs(12 * 3600));
    for (name, value, setting) in [
        ("ISSUER_PRODUCT_NAME", " ", "product_name"),
        (
            "ISSUER_LOGO_URL",
            "http://cdn.acme.example/logo.svg",
            "logo_url",
        ),
        ("ISSUER_LOGO_URL", "javascript:alert(1)", "logo_url"),
        (
            "ISSUER_SIGN_IN_SESSION_LIFETIME",
            "1m",
            "sign_in_session_lifetime",
        ),
    ] {
        let err = load(None, &[(name, value)]).unwrap_err();
        assert_eq!(err.setting, setting, "{name}={value}");
    }
}

#[test]
fn a_client_may_not_take_the_name_of_sign_in_sessions() {
    let err = load(
        Some("[[clients]]\nclient_id = \"sign-in\"\nkind = \"mobile\"\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.setting, "clients[0].client_id");
}

#[test]
fn a_service_client_may_give_a_jwks_uri_instead() {
    let client = |extra: &str| {
        format!(
            "[[clients]]\nclient_id = \"s\"\nkind = \"service\"\nclient_credentials = true\naudiences = [\"https://a.example\"]\n{extra}"
        )
    };
    let s = load(
        Some(&client("jwks_uri = \"https://keys.example/jwks.json\"\n")),
        &[],
    )
    .unwrap();
    assert_eq!(
        s.clients[0].assertion_jwks_uri.as_deref(),
        Some("https://keys.example/jwks.json")
    );
    assert!(s.clients[0].secret_hash.is_none(), "no secret needed");
    for bad in [
        "jwks_uri = \"http://keys.example/jwks.json\"\n",
        "jwks_uri = \"https://u:p@keys.example/jwks.json\"\n",
        "jwks_uri = \"keys.example\"\n",
        "jwks_uri = \"https://keys.example/jwks.json\"\njwks = { keys = [{ kty = \"OKP\", crv = \"Ed25519\", x = \"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\" }] }\n",
    ] {
        let err = load(Some(&client(bad)), &[]).unwrap_err();
        assert_eq!(err.setting, "clients[0].jwks_uri", "{bad}");
    }
    let err = load(
        Some("[[clients]]\nclient_id = \"m\"\nkind = \"mobile\"\njwks_uri = \"https://keys.example/j\"\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.setting, "clients[0].jwks_uri");
}
