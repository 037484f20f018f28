//! The authenticated caller, as handlers see it.

use serde::{Deserialize, Serialize};

/// Who is calling, after the token was validated and the group policy passed.
///
/// Only what handlers need: no raw token, no e-mail or other personal claims. `Deserialize`
/// serves only the shared credential store (`shared_grant`), never request input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// The token's `sub`: the stable key for sessions and per-user limits.
    pub subject: String,
    /// `preferred_username` (falls back to `sub`), for audit logs and the UI.
    pub username: String,
    /// Group names as found in the token (full paths or plain names).
    pub groups: Vec<String>,
    /// Member of the configured admin group: secret material is shown unmasked.
    pub is_admin: bool,
    /// Token expiry (seconds since the Unix epoch); long streams end a grace period after it.
    pub expires_at: i64,
}

impl Principal {
    /// When a long-lived stream opened with this principal must end (seconds since the Unix
    /// epoch): the token's expiry plus `grace` (`auth.stream_token_grace`). SSE streams cannot
    /// re-authenticate mid-stream, so this bounds how long one outlives its token.
    pub fn stream_deadline(&self, grace: std::time::Duration) -> i64 {
        self.expires_at.saturating_add(i64::try_from(grace.as_secs()).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_deadline_adds_the_grace_and_saturates() {
        let mut p = Principal { subject: "s".into(), username: "u".into(), groups: vec![], is_admin: false, expires_at: 1_000 };
        assert_eq!(p.stream_deadline(std::time::Duration::from_secs(300)), 1_300);
        p.expires_at = i64::MAX - 1;
        assert_eq!(p.stream_deadline(std::time::Duration::from_secs(300)), i64::MAX);
    }
}
