//! Security events, as the audit log (`audit_events`, `GET /v1/admin/audit`) records
//! them: a typed kind, built by one constructor per kind, so that every place that
//! writes an event writes the same fields the same way.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::family::RevokeReason;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// A password grant started a session.
    Login,
    /// A password grant was refused (wrong e-mail or password).
    LoginFailed,
    /// A session ended; `detail` is the reason's code.
    FamilyRevoked,
    /// An admin disabled a user.
    UserDisabled,
    /// An admin enabled a user again.
    UserEnabled,
    /// An admin ended every session of a user.
    AdminRevokedSessions,
    /// The signing key was rotated (by the CLI or the schedule).
    KeyRotated,
    /// A session's token was ahead of the database (restored from a backup, or commits
    /// lost): the family moved forward to it; `detail` says from which generation.
    FamilyMovedForward,
    /// An admin ran the sweep; `detail` says what it deleted.
    AdminSwept,
    /// The refresh-token key was changed (`keys rotate-refresh`); `detail` says whether
    /// outstanding refresh tokens still verify, and why.
    RefreshKeyRotated,
    /// Every session of a scope was revoked by an epoch (`sessions revoke-all`);
    /// `detail` says which client (or all), before when, and why.
    SessionsRevokedAll,
    /// A signing key was removed as compromised (`keys roll --compromised`); `detail`
    /// names it, the keys that sign and come next, and the reason given.
    KeyCompromised,
    /// A session bound to a DPoP key was presented with a proof of another key (a
    /// stolen refresh token); `detail` names the key and what was done.
    DpopForeignKey,
    /// A client failed to authenticate at the token endpoint (client credentials);
    /// `detail` says from where.
    ClientAuthFailed,
}

impl AuditKind {
    const ALL: [Self; 14] = [
        Self::Login,
        Self::LoginFailed,
        Self::FamilyRevoked,
        Self::UserDisabled,
        Self::UserEnabled,
        Self::AdminRevokedSessions,
        Self::KeyRotated,
        Self::FamilyMovedForward,
        Self::AdminSwept,
        Self::KeyCompromised,
        Self::SessionsRevokedAll,
        Self::RefreshKeyRotated,
        Self::DpopForeignKey,
        Self::ClientAuthFailed,
    ];

    /// The stored and published name.
    pub fn code(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::LoginFailed => "login_failed",
            Self::FamilyRevoked => "family_revoked",
            Self::UserDisabled => "user_disabled",
            Self::UserEnabled => "user_enabled",
            Self::AdminRevokedSessions => "admin_revoked_sessions",
            Self::KeyRotated => "key_rotated",
            Self::FamilyMovedForward => "family_moved_forward",
            Self::AdminSwept => "admin_swept",
            Self::KeyCompromised => "key_compromised",
            Self::SessionsRevokedAll => "sessions_revoked_all",
            Self::RefreshKeyRotated => "refresh_key_rotated",
            Self::DpopForeignKey => "dpop_foreign_key",
            Self::ClientAuthFailed => "client_auth_failed",
        }
    }

    /// The kind a stored name stands for.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// One security event. Never a token, a password or a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub at: OffsetDateTime,
    pub kind: AuditKind,
    /// The user it concerns.
    pub user_id: Option<Uuid>,
    /// The session it concerns.
    pub family_id: Option<Uuid>,
    pub client_id: Option<String>,
    /// What else there is to say: an address, a reason, a count, keys.
    pub detail: Option<String>,
    /// Who did it, for admin actions.
    pub actor_id: Option<Uuid>,
}

impl AuditEvent {
    fn new(at: OffsetDateTime, kind: AuditKind) -> Self {
        Self {
            at,
            kind,
            user_id: None,
            family_id: None,
            client_id: None,
            detail: None,
            actor_id: None,
        }
    }

    /// Client `client_id` failed to authenticate, from `ip`.
    pub fn client_auth_failed(at: OffsetDateTime, client_id: &str, ip: Option<&str>) -> Self {
        Self {
            client_id: Some(client_id.to_owned()),
            detail: ip.map(|ip| format!("ip {ip}")),
            ..Self::new(at, AuditKind::ClientAuthFailed)
        }
    }

    /// A password grant started session `family_id`, from `ip`.
    pub fn login(
        at: OffsetDateTime,
        user_id: Uuid,
        family_id: Uuid,
        client_id: &str,
        ip: Option<&str>,
    ) -> Self {
        Self {
            user_id: Some(user_id),
            family_id: Some(family_id),
            client_id: Some(client_id.to_owned()),
            detail: ip.map(|ip| format!("ip {ip}")),
            ..Self::new(at, AuditKind::Login)
        }
    }

    /// A password grant was refused; `user_id` when the e-mail is a user's.
    pub fn login_failed(
        at: OffsetDateTime,
        user_id: Option<Uuid>,
        client_id: &str,
        ip: Option<&str>,
    ) -> Self {
        Self {
            user_id,
            client_id: Some(client_id.to_owned()),
            detail: ip.map(|ip| format!("ip {ip}")),
            ..Self::new(at, AuditKind::LoginFailed)
        }
    }

    /// Session `family_id` of `client_id` ended, for `reason`.
    pub fn family_revoked(
        at: OffsetDateTime,
        user_id: Uuid,
        family_id: Uuid,
        client_id: &str,
        reason: RevokeReason,
    ) -> Self {
        Self {
            user_id: Some(user_id),
            family_id: Some(family_id),
            client_id: Some(client_id.to_owned()),
            detail: Some(reason.code().to_owned()),
            ..Self::new(at, AuditKind::FamilyRevoked)
        }
    }

    /// Admin `actor` disabled (or, `disabled` false, enabled) `user_id`.
    pub fn user_disabled(at: OffsetDateTime, user_id: Uuid, disabled: bool, actor: Uuid) -> Self {
        let kind = if disabled {
            AuditKind::UserDisabled
        } else {
            AuditKind::UserEnabled
        };
        Self {
            user_id: Some(user_id),
            actor_id: Some(actor),
            ..Self::new(at, kind)
        }
    }

    /// Admin `actor` ended the `sessions` sessions of `user_id`.
    pub fn admin_revoked_sessions(
        at: OffsetDateTime,
        user_id: Uuid,
        sessions: usize,
        actor: Uuid,
    ) -> Self {
        Self {
            user_id: Some(user_id),
            detail: Some(format!("{sessions} sessions")),
            actor_id: Some(actor),
            ..Self::new(at, AuditKind::AdminRevokedSessions)
        }
    }

    /// Session `family_id` moved from generation `from` to `to`: a token of it was
    /// ahead of the database.
    pub fn family_moved_forward(
        at: OffsetDateTime,
        user_id: Uuid,
        family_id: Uuid,
        client_id: &str,
        from: u64,
        to: u64,
    ) -> Self {
        Self {
            user_id: Some(user_id),
            family_id: Some(family_id),
            client_id: Some(client_id.to_owned()),
            detail: Some(format!(
                "generation {from} -> {to}: the database was behind"
            )),
            ..Self::new(at, AuditKind::FamilyMovedForward)
        }
    }

    /// Session `family_id`, bound to a DPoP key, was presented with a proof of the key
    /// `jkt` (a thumbprint: public), from `ip`; `revoked` when the session was ended
    /// for it.
    pub fn dpop_foreign_key(
        at: OffsetDateTime,
        family: (Uuid, Uuid, &str),
        jkt: &str,
        ip: Option<&str>,
        revoked: bool,
    ) -> Self {
        let (user_id, family_id, client_id) = family;
        let done = if revoked {
            "the session is revoked"
        } else {
            "refused"
        };
        Self {
            user_id: Some(user_id),
            family_id: Some(family_id),
            client_id: Some(client_id.to_owned()),
            detail: Some(format!(
                "a proof of key {jkt} from {}: {done}",
                ip.unwrap_or("an unknown address")
            )),
            ..Self::new(at, AuditKind::DpopForeignKey)
        }
    }

    /// The signing key was rotated `by` the CLI or the schedule.
    pub fn admin_swept(at: OffsetDateTime, sessions: u64, audit_events: u64, actor: Uuid) -> Self {
        Self {
            detail: Some(format!("{sessions} sessions, {audit_events} audit events")),
            actor_id: Some(actor),
            ..Self::new(at, AuditKind::AdminSwept)
        }
    }

    /// `client` is a client id or `all clients`; `actor` the admin, `None` from the CLI.
    /// `by`: `cli`, or the admin's id (who is also the actor).
    pub fn sessions_revoked_all(
        at: OffsetDateTime,
        client: &str,
        not_before: &str,
        by: &str,
        reason: &str,
        actor: Option<Uuid>,
    ) -> Self {
        Self {
            client_id: (client != "all clients").then(|| client.to_owned()),
            detail: Some(format!(
                "{client}: sessions created and access tokens issued before {not_before}; by {by}; reason: {reason}"
            )),
            actor_id: actor,
            ..Self::new(at, AuditKind::SessionsRevokedAll)
        }
    }

    pub fn refresh_key_rotated(
        at: OffsetDateTime,
        by: &str,
        emergency: bool,
        reason: &str,
    ) -> Self {
        let what = if emergency {
            "emergency: the previous key dropped, every outstanding refresh token is refused"
        } else {
            "calm: outstanding refresh tokens still verify until their next rotation"
        };
        Self {
            detail: Some(format!("by {by}: {what}; reason: {reason}")),
            ..Self::new(at, AuditKind::RefreshKeyRotated)
        }
    }

    /// `removed` names the key and the state it had (`kid (active)`).
    pub fn key_compromised(
        at: OffsetDateTime,
        by: &str,
        removed: &str,
        active: &str,
        next: &str,
        reason: &str,
    ) -> Self {
        Self {
            detail: Some(format!(
                "by {by}: {removed} removed, {active} active, {next} next; reason: {reason}"
            )),
            ..Self::new(at, AuditKind::KeyCompromised)
        }
    }

    pub fn key_rotated(
        at: OffsetDateTime,
        by: &str,
        retired: &str,
        active: &str,
        next: &str,
    ) -> Self {
        Self {
            detail: Some(format!(
                "by {by}: {retired} retired, {active} active, {next} next"
            )),
            ..Self::new(at, AuditKind::KeyRotated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_code() {
        for kind in AuditKind::ALL {
            assert_eq!(AuditKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(AuditKind::from_code("something_else"), None);
    }
}
