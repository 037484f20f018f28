//! Authentication (Keycloak / OIDC) and the identity it produces.
//!
//! - [`Authenticator`] validates access tokens: keys from OIDC discovery and the JWKS (cached,
//!   refetched at most once per cooldown for unknown key ids, kept while Keycloak is down),
//!   an asymmetric algorithm allowlist checked against the key (never the token alone),
//!   signature, `iss`, `exp`/`nbf` with leeway, `typ: Bearer`, audience or `azp`, then the
//!   [`GroupPolicy`]. Outcomes are cached by token hash until `exp`.
//! - [`StreamTickets`] lets browsers open SSE streams without a token in the URL.
//! - [`Principal`] is what handlers see.
//!
//! Nothing here logs or returns tokens, claim values or key material. `docs/auth.md` explains
//! the rules and the choices behind them.

mod authenticator;
mod error;
mod groups;
mod keys;
mod principal;
mod shared_grant;
mod source;
mod stream_credentials;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
mod tickets;

pub use authenticator::{
    Authenticator, KeyRefreshTask, MAX_TOKEN_BYTES, VALIDATED_CACHE_CAPACITY, VALIDATED_CACHE_MAX_TTL,
};
pub use error::{AuthError, AuthFailureKind, KeySourceError};
pub use groups::GroupPolicy;
pub use principal::Principal;
pub use source::{MAX_DOCUMENT_BYTES, key_material_issuer_allowed};
pub use stream_credentials::{
    IssuedStreamCredential, STREAM_CREDENTIAL_CAPACITY, STREAM_CREDENTIAL_MAX_LIFETIME, StreamCredentials,
};
pub use tickets::{DEFAULT_TICKETS_PER_USER, StreamTickets, TICKET_CAPACITY};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests_source;
