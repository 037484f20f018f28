//! How stream tickets and stream credentials are kept in a [`CredentialStore`] shared by
//! several replicas, so a ticket issued by one replica is redeemed on another.
//!
//! The key is `"{kind}:{hex(SHA-256(secret))}"`: the store never holds the secret itself, so
//! someone who can read the database or Redis cannot redeem what is in it. The value is the
//! principal plus the moment the grant stops being valid, as JSON; the store's own expiry
//! removes it at about that time, and the reader checks the moment again (clocks of the
//! replicas and of Redis may differ by a little).

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::principal::Principal;
use crate::storage::StorageError;

/// What a grant is; part of the store key, so a ticket can never be presented as a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrantKind {
    /// A one-time stream ticket.
    Ticket,
    /// A reusable stream credential (the `kubelens_stream` cookie).
    StreamCredential,
}

/// The store key of secret `id` of `kind`.
pub(crate) fn store_key(kind: GrantKind, id: &[u8; 32]) -> String {
    let prefix = match kind {
        GrantKind::Ticket => "ticket",
        GrantKind::StreamCredential => "stream",
    };
    let digest = Sha256::digest(id);
    let mut key = String::with_capacity(prefix.len() + 1 + 64);
    key.push_str(prefix);
    key.push(':');
    for byte in digest {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    key
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A stored grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Grant {
    pub principal: Principal,
    /// Unix seconds from which the grant is refused.
    pub valid_until: i64,
}

impl Grant {
    pub(crate) fn encode(&self) -> Result<Vec<u8>, StorageError> {
        serde_json::to_vec(self).map_err(|e| StorageError::Invalid(format!("cannot encode a grant: {e}")))
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt(format!("stored grant: {e}")))
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_digests_of_the_secret_and_differ_by_kind() {
        let id = [7u8; 32];
        let ticket = store_key(GrantKind::Ticket, &id);
        let stream = store_key(GrantKind::StreamCredential, &id);
        assert_eq!(ticket.len(), "ticket:".len() + 64);
        assert!(ticket.starts_with("ticket:") && stream.starts_with("stream:"));
        assert_eq!(ticket["ticket:".len()..], stream["stream:".len()..]);
        // The secret's own bytes (hex or base64) are not in the key.
        assert!(!ticket.contains("0707070707"));
        crate::storage::validate_credential_key(&ticket).unwrap();
    }

    #[test]
    fn grants_round_trip() {
        let grant = Grant {
            principal: Principal {
                subject: "s".into(),
                username: "u".into(),
                groups: vec!["/g".into()],
                is_admin: true,
                expires_at: 99,
            },
            valid_until: 42,
        };
        assert_eq!(Grant::decode(&grant.encode().unwrap()).unwrap(), grant);
        assert!(matches!(Grant::decode(b"{"), Err(StorageError::Corrupt(_))));
    }
}
