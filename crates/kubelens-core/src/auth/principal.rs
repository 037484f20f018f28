//! The authenticated caller, as handlers see it.

use serde::Serialize;

/// Who is calling, after the token was validated and the group policy passed.
///
/// Only what handlers need: no raw token, no e-mail or other personal claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
