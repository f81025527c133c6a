//! What a request tells about who is asking: for the session list, the logs, the
//! limits and the browser checks.

use std::net::IpAddr;

use crate::domain::address;
use crate::domain::client::{BrowserContext, DpopHeader};
use crate::domain::secret::Secret;

/// Who is asking, for the session list and the logs.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub browser: BrowserContext,
    /// The `__Host-refresh` cookie, when the request carried one.
    pub refresh_cookie: Option<Secret>,
    /// The request's `DPoP` header(s).
    pub dpop: DpopHeader,
}

impl RequestMeta {
    /// The user agent as a session keeps it: 512 characters at most.
    pub(crate) fn session_user_agent(&self) -> Option<String> {
        self.user_agent
            .as_deref()
            .map(|ua| ua.chars().take(512).collect())
    }

    /// Where the request comes from, as a login source (`address::source`: an IPv4
    /// address or an IPv6 /64).
    pub(crate) fn login_source(&self) -> Option<String> {
        self.ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .map(address::source)
    }
}
