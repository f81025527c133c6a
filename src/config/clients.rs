//! The registered clients: from the file, or the built-in development pair.

use std::collections::HashSet;
use std::time::Duration;

use super::file::ClientFile;
use super::tokens::TokenSettings;
use super::units::duration;
use super::urls::{validate_jwks_uri, validate_origin, validate_redirect_uri};
use super::{ConfigError, invalid};
use crate::domain::client::{
    Client, ClientKind, Delivery, DpopPolicy, ForeignKeyPolicy, NoncePolicy,
};

/// Every client: those of the file (which must list one at least), or the development
/// clients when there is no file; ids unique, one cookie-mode client at most.
pub(super) fn all(
    listed: Option<Vec<ClientFile>>,
    from_file: bool,
    audience: &str,
    tokens: &TokenSettings,
) -> Result<Vec<Client>, ConfigError> {
    let clients = match listed {
        Some(clients) => clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| client_from_file(i, c, audience, tokens))
            .collect::<Result<Vec<_>, _>>()?,
        None if from_file => {
            return Err(invalid(
                "clients",
                "a configuration file must register at least one client",
            ));
        }
        None => dev_clients(audience, tokens),
    };
    if clients.is_empty() {
        return Err(invalid("clients", "at least one client is required"));
    }
    // Every cookie-mode client would share the one `__Host-refresh` cookie of this
    // host: one client's login would overwrite another's session.
    if clients
        .iter()
        .filter(|c| c.delivery == Delivery::Cookie)
        .count()
        > 1
    {
        return Err(invalid(
            "clients",
            "at most one cookie-delivery client per issuer (they would share the __Host-refresh cookie)",
        ));
    }
    let mut seen = HashSet::new();
    for c in &clients {
        if !seen.insert(c.id.as_str()) {
            return Err(invalid(
                "clients",
                format!("client_id {:?} is registered twice", c.id),
            ));
        }
    }
    Ok(clients)
}

fn client_from_file(
    index: usize,
    c: ClientFile,
    default_audience: &str,
    defaults: &TokenSettings,
) -> Result<Client, ConfigError> {
    let setting = format!("clients[{index}]");
    let named = |e: ConfigError| ConfigError {
        setting: format!("{setting}.{}", e.setting),
        message: e.message,
    };
    let tokens = client_tokens(&c, defaults, &named)?;
    tokens.validate().map_err(named)?;
    check_scopes(&setting, &c.scopes)?;
    if c.client_id.trim().is_empty() || c.client_id.len() > 128 {
        return Err(invalid(
            &format!("{setting}.client_id"),
            "must be 1 to 128 characters",
        ));
    }
    // `*` names every client in a revocation epoch (`sessions revoke-all`); `sign-in`
    // is the client of the browser's sign-in sessions.
    if crate::service::browser::reserved_client_id(&c.client_id) {
        return Err(invalid(
            &format!("{setting}.client_id"),
            format!(
                "{:?} is reserved (`*` means every client, `sign-in` the browser's sign-in sessions)",
                c.client_id
            ),
        ));
    }
    let redirect_uris = c
        .redirect_uris
        .iter()
        .map(|u| validate_redirect_uri(&format!("{setting}.redirect_uris"), u, c.kind))
        .collect::<Result<Vec<_>, _>>()?;
    if c.kind == ClientKind::Service && !redirect_uris.is_empty() {
        return Err(invalid(
            &format!("{setting}.redirect_uris"),
            "service clients get tokens of their own (client credentials), never a user's",
        ));
    }
    // A client registered for the password grant alone is the operator's own: that
    // grant is for first-party clients only (RFC 9700). One with redirect URIs must
    // say so to skip the consent page.
    let first_party = c.first_party.unwrap_or(redirect_uris.is_empty());
    let delivery = c.delivery.unwrap_or(match c.kind {
        ClientKind::Spa => Delivery::Cookie,
        ClientKind::Mobile | ClientKind::Service => Delivery::Body,
    });
    let allowed_origins = c
        .allowed_origins
        .iter()
        .map(|o| validate_origin(&format!("{setting}.allowed_origins"), o))
        .collect::<Result<Vec<_>, _>>()?;
    if delivery == Delivery::Cookie && allowed_origins.is_empty() {
        return Err(invalid(
            &format!("{setting}.allowed_origins"),
            "a cookie-delivery client needs at least one allowed origin (the CSRF defence checks it)",
        ));
    }
    let audiences_listed = c.audiences.is_some();
    let audiences = c
        .audiences
        .unwrap_or_else(|| vec![default_audience.to_owned()]);
    if audiences.is_empty() || audiences.iter().any(|a| a.trim().is_empty()) {
        return Err(invalid(
            &format!("{setting}.audiences"),
            "must list at least one non-empty audience",
        ));
    }

    let assertion_keys = match &c.jwks {
        None => Vec::new(),
        Some(_) if c.kind != ClientKind::Service => {
            return Err(invalid(
                &format!("{setting}.jwks"),
                "only service clients authenticate with private_key_jwt",
            ));
        }
        Some(jwks) => crate::crypto::client_assertion::public_keys(jwks)
            .map_err(|why| invalid(&format!("{setting}.jwks"), why))?,
    };
    let assertion_jwks_uri = match &c.jwks_uri {
        None => None,
        Some(_) if c.kind != ClientKind::Service => {
            return Err(invalid(
                &format!("{setting}.jwks_uri"),
                "only service clients authenticate with private_key_jwt",
            ));
        }
        Some(_) if c.jwks.is_some() => {
            return Err(invalid(
                &format!("{setting}.jwks_uri"),
                "give the keys once: jwks or jwks_uri",
            ));
        }
        Some(uri) => Some(validate_jwks_uri(&format!("{setting}.jwks_uri"), uri)?),
    };
    let secret_hash = secret_hash(
        &setting,
        c.kind,
        c.client_secret_hash.as_deref(),
        !assertion_keys.is_empty() || assertion_jwks_uri.is_some(),
    )?;
    // Opt-in, and only with audiences of its own: a service client of an earlier
    // configuration (introspection only, audiences left to the default) must not start
    // minting tokens for the issuer's own audience.
    if c.client_credentials {
        if c.kind != ClientKind::Service {
            return Err(invalid(
                &format!("{setting}.client_credentials"),
                "only service clients get tokens of their own",
            ));
        }
        if !audiences_listed {
            return Err(invalid(
                &format!("{setting}.audiences"),
                "a client with client_credentials must list the audiences of its tokens",
            ));
        }
    }
    let introspection_audiences =
        introspection_audiences(&setting, c.kind, c.introspection_audiences)?;
    Ok(Client {
        id: c.client_id,
        kind: c.kind,
        delivery,
        allowed_origins,
        audiences,
        secret_hash,
        scopes: c.scopes,
        access_lifetime: tokens.access_token_lifetime,
        policy: tokens.policy(),
        introspection_audiences,
        dpop: c.dpop,
        dpop_foreign_key: c.dpop_foreign_key,
        dpop_nonce: c.dpop_nonce,
        client_credentials: c.client_credentials,
        assertion_keys,
        assertion_jwks_uri,
        redirect_uris,
        first_party,
    })
}

/// A client's lifetimes: its own where it sets them, else the defaults.
fn client_tokens(
    c: &ClientFile,
    defaults: &TokenSettings,
    named: &dyn Fn(ConfigError) -> ConfigError,
) -> Result<TokenSettings, ConfigError> {
    let or_default = |name: &str, value: Option<String>, default: Duration| match value {
        Some(v) => duration(name, Some(v), "0").map_err(named),
        None => Ok(default),
    };
    Ok(TokenSettings {
        access_token_lifetime: or_default(
            "access_token_lifetime",
            c.access_token_lifetime.clone(),
            defaults.access_token_lifetime,
        )?,
        refresh_idle_timeout: or_default(
            "refresh_idle_timeout",
            c.refresh_idle_timeout.clone(),
            defaults.refresh_idle_timeout,
        )?,
        refresh_absolute_lifetime: or_default(
            "refresh_absolute_lifetime",
            c.refresh_absolute_lifetime.clone(),
            defaults.refresh_absolute_lifetime,
        )?,
        refresh_grace_period: or_default(
            "refresh_grace_period",
            c.refresh_grace_period.clone(),
            defaults.refresh_grace_period,
        )?,
        clock_leeway: defaults.clock_leeway,
    })
}

/// Scope tokens as RFC 6749 §3.3 defines them.
fn check_scopes(setting: &str, scopes: &[String]) -> Result<(), ConfigError> {
    for scope in scopes {
        let ok = !scope.is_empty()
            && scope
                .chars()
                .all(|ch| ch.is_ascii_graphic() && ch != '"' && ch != '\\');
        if !ok {
            return Err(invalid(
                &format!("{setting}.scopes"),
                format!("{scope:?} is not a scope token (RFC 6749 §3.3)"),
            ));
        }
    }
    Ok(())
}

/// A service client's secret hash; other kinds have none.
fn secret_hash(
    setting: &str,
    kind: ClientKind,
    raw: Option<&str>,
    has_keys: bool,
) -> Result<Option<crate::crypto::client_secret::SecretHash>, ConfigError> {
    Ok(match (kind, raw) {
        (ClientKind::Service, Some(raw)) => Some(
            crate::crypto::client_secret::parse_hash(raw).ok_or_else(|| {
                invalid(
                    &format!("{setting}.client_secret_hash"),
                    "expected sha256:<64 hex digits>, as `token-issuer client-secret` prints it",
                )
            })?,
        ),
        // A client that signs assertions (`jwks`) needs no secret.
        (ClientKind::Service, None) if has_keys => None,
        (ClientKind::Service, None) => {
            return Err(invalid(
                &format!("{setting}.client_secret_hash"),
                "a service client needs a secret (run `token-issuer client-secret`), a jwks or a jwks_uri",
            ));
        }
        (_, Some(_)) => {
            return Err(invalid(
                &format!("{setting}.client_secret_hash"),
                "only service clients have a secret",
            ));
        }
        (_, None) => None,
    })
}

/// The audiences whose tokens a service client may introspect; other kinds introspect
/// none.
fn introspection_audiences(
    setting: &str,
    kind: ClientKind,
    listed: Option<Vec<String>>,
) -> Result<Vec<String>, ConfigError> {
    Ok(match (kind, listed) {
        (ClientKind::Service, Some(list)) => {
            if list.iter().any(|a| a.trim().is_empty()) {
                return Err(invalid(
                    &format!("{setting}.introspection_audiences"),
                    "must not list an empty audience",
                ));
            }
            list
        }
        (ClientKind::Service, None) => Vec::new(),
        (_, Some(_)) => {
            return Err(invalid(
                &format!("{setting}.introspection_audiences"),
                "only service clients introspect",
            ));
        }
        (_, None) => Vec::new(),
    })
}

fn dev_clients(audience: &str, tokens: &TokenSettings) -> Vec<Client> {
    // What every built-in client has; each differs in a few settings.
    let base = |id: &str, kind: ClientKind, delivery: Delivery| Client {
        id: id.to_owned(),
        kind,
        delivery,
        allowed_origins: Vec::new(),
        audiences: vec![audience.to_owned()],
        secret_hash: None,
        scopes: Vec::new(),
        access_lifetime: tokens.access_token_lifetime,
        policy: tokens.policy(),
        introspection_audiences: Vec::new(),
        dpop: DpopPolicy::Allowed,
        dpop_foreign_key: ForeignKeyPolicy::Refuse,
        dpop_nonce: NoncePolicy::Off,
        client_credentials: false,
        assertion_keys: Vec::new(),
        assertion_jwks_uri: None,
        redirect_uris: Vec::new(),
        first_party: true,
    };
    vec![
        base("dev", ClientKind::Mobile, Delivery::Body),
        Client {
            allowed_origins: vec!["http://localhost:5173".to_owned()],
            redirect_uris: vec!["http://localhost:5173/callback".to_owned()],
            ..base("dev-spa", ClientKind::Spa, Delivery::Cookie)
        },
        // A native app: the system browser and a loopback redirect on any port.
        Client {
            redirect_uris: vec![
                "http://127.0.0.1/callback".to_owned(),
                "http://[::1]/callback".to_owned(),
            ],
            ..base("dev-native", ClientKind::Mobile, Delivery::Body)
        },
        // Its secret is made on first start, in the key directory (`startup`).
        Client {
            introspection_audiences: vec![audience.to_owned()],
            client_credentials: true,
            ..base(DEV_SERVICE, ClientKind::Service, Delivery::Body)
        },
    ]
}

/// The built-in development configuration's confidential client (client credentials,
/// introspection); its secret is `keys/dev-service.secret`.
pub const DEV_SERVICE: &str = "dev-service";
