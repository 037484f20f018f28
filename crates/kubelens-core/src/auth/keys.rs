//! Verification keys parsed from a JWKS document.
//!
//! Only asymmetric signing keys survive parsing: `oct` (symmetric) keys, encryption keys
//! (`use: enc`, e.g. Keycloak's `RSA-OAEP` key), keys without `kid` and keys of unsupported
//! types are dropped, so a symmetric key published by mistake (or injected) can never be used
//! to "verify" an HMAC token. Each key remembers which algorithms it may verify: its family,
//! narrowed to its `alg` when the JWK names one.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;

/// One public key and the algorithms it may verify.
#[derive(Debug, Clone)]
pub(crate) struct VerifyKey {
    /// RSA, EC or Ed (never HMAC: such keys are dropped while parsing).
    pub(crate) family: AlgorithmFamily,
    /// The JWK's `alg` (or the only algorithm its curve allows); `None` allows the whole family.
    pub(crate) alg: Option<Algorithm>,
    /// The key itself.
    pub(crate) key: DecodingKey,
}

impl VerifyKey {
    /// Whether a token signed with `alg` may be verified with this key. The token's `alg`
    /// alone never decides: it must fit the key's type and, when published, its `alg`.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        alg.family() == self.family && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys of one JWKS document, by `kid`.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySet {
    pub(crate) keys: HashMap<String, Arc<VerifyKey>>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS document, keeping only usable signing keys. Fails on invalid JSON;
    /// an empty result is returned as an empty set (the caller decides whether that is fatal).
    pub(crate) fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        let raw: RawJwks = serde_json::from_slice(body)?;
        let mut keys = HashMap::new();
        for (index, value) in raw.keys.into_iter().enumerate() {
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(err) => {
                    tracing::debug!(index, error = %err, "JWKS: skipping unparsable key");
                    continue;
                }
            };
            let Some(kid) = jwk.common.key_id.clone() else {
                tracing::debug!(index, "JWKS: skipping key without kid");
                continue;
            };
            match verify_key(&jwk) {
                Some(key) => match keys.entry(kid) {
                    std::collections::hash_map::Entry::Occupied(_) => {
                        tracing::warn!(index, "JWKS: duplicate kid, keeping the first key");
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(Arc::new(key));
                    }
                },
                None => tracing::debug!(index, "JWKS: skipping key that cannot verify signatures"),
            }
        }
        Ok(Self { keys })
    }

    /// Number of usable keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

fn verify_key(jwk: &Jwk) -> Option<VerifyKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let (family, implied_alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Some(Algorithm::ES256)),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Some(Algorithm::ES384)),
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(params) => match params.curve {
            EllipticCurve::Ed25519 => (AlgorithmFamily::Ed, Some(Algorithm::EdDSA)),
            _ => return None,
        },
        // Symmetric keys verify nothing here: accepting one would let anyone who can read the
        // JWKS forge HMAC tokens.
        AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_) => return None,
        _ => return None,
    };
    let published_alg = match jwk.common.key_algorithm {
        None => None,
        Some(key_alg) => {
            let alg = Algorithm::try_from(key_alg).ok()?;
            if alg.family() != family {
                return None;
            }
            Some(alg)
        }
    };
    let alg = match (published_alg, implied_alg) {
        (Some(p), Some(i)) if p != i => return None,
        (p, i) => p.or(i),
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey { family, alg, key })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_encryption_and_kidless_keys_are_dropped() {
        let body = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "alg": "RSA-OAEP", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "sig", "use": "sig", "alg": "RS256", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "mismatch", "alg": "ES256", "n": "sXch", "e": "AQAB"},
            {"kty": "weird", "kid": "weird"},
            "not even an object"
        ]});
        let set = KeySet::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(set.keys.keys().collect::<Vec<_>>(), vec!["sig"]);
        let key = &set.keys["sig"];
        assert!(key.accepts(Algorithm::RS256));
        assert!(!key.accepts(Algorithm::PS256));
        assert!(!key.accepts(Algorithm::HS256));
    }

    #[test]
    fn invalid_json_is_an_error_and_no_keys_is_empty() {
        assert!(KeySet::parse(b"{").is_err());
        assert!(KeySet::parse(b"{\"nokeys\":1}").is_err());
        assert_eq!(KeySet::parse(b"{\"keys\":[]}").unwrap().len(), 0);
    }
}
