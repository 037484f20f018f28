//! Why a request was not authenticated, and why keys could not be loaded.
//!
//! Messages are deliberately generic: they never contain the token, a claim value, a key id
//! or key material, so they are safe to send to clients and to log. Tests and metrics use the
//! stable [`AuthError::reason`] string instead of matching on messages.

/// How the HTTP layer should answer an [`AuthError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthFailureKind {
    /// No usable credentials: 401 with `WWW-Authenticate: Bearer`.
    Unauthenticated,
    /// Valid credentials, but the caller holds no allowed group: 403.
    Forbidden,
    /// The token could not be checked because no signing keys were ever loaded (Keycloak
    /// unreachable since startup): 503, the client may retry.
    Unavailable,
}

/// A token (or stream ticket) was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer` header (and no ticket where tickets are allowed).
    #[error("missing bearer token")]
    Missing,
    /// The token exceeds the size cap; rejected before any parsing.
    #[error("token too large")]
    TooLarge,
    /// Not three base64url segments of JSON, or an unsupported `crit` header.
    #[error("malformed token")]
    Malformed,
    /// `alg` is `none`, symmetric, outside the allowlist, or does not fit the key.
    #[error("token algorithm not accepted")]
    Algorithm,
    /// The header carries no `kid`.
    #[error("token has no key id")]
    MissingKeyId,
    /// No published key has this `kid`, even after a refetch (or the refetch is cooling down).
    #[error("token signed by an unknown key")]
    UnknownKey,
    /// No signing keys were ever loaded, so nothing can be verified.
    #[error("signing keys unavailable")]
    KeysUnavailable,
    /// The signature does not verify.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// A required claim (named here; never its value) is missing or has the wrong type.
    #[error("token lacks a valid `{0}` claim")]
    MissingClaim(&'static str),
    /// `iss` is not exactly the configured issuer.
    #[error("token issuer not accepted")]
    Issuer,
    /// Neither `aud` nor `azp` names this service.
    #[error("token audience not accepted")]
    Audience,
    /// `typ` is not `Bearer` (an ID or refresh token).
    #[error("not an access token")]
    TokenType,
    /// The stream ticket is unknown, expired or already used.
    #[error("invalid or expired stream ticket")]
    Ticket,
    /// The token is valid but the caller is in none of the allowed groups.
    #[error("not a member of an allowed group")]
    NoAllowedGroup,
    /// The shared store that holds stream tickets and credentials of several replicas cannot
    /// be reached, so a ticket or credential from another replica cannot be checked.
    #[error("stream credential store unavailable")]
    CredentialStoreUnavailable,
}

impl AuthError {
    /// A stable, low-cardinality reason for metrics labels and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::MissingKeyId | Self::UnknownKey => "unknown_key",
            Self::KeysUnavailable => "keys_unavailable",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::MissingClaim(_) => "missing_claim",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::TokenType => "token_type",
            Self::Ticket => "ticket",
            Self::NoAllowedGroup => "no_allowed_group",
            Self::CredentialStoreUnavailable => "credential_store_unavailable",
        }
    }

    /// Which answer this failure deserves.
    pub fn kind(&self) -> AuthFailureKind {
        match self {
            Self::NoAllowedGroup => AuthFailureKind::Forbidden,
            Self::KeysUnavailable | Self::CredentialStoreUnavailable => AuthFailureKind::Unavailable,
            _ => AuthFailureKind::Unauthenticated,
        }
    }
}

/// Loading OIDC discovery or the JWKS failed. Kept out of client answers; logged at warn.
///
/// Messages name URLs and status codes (not secret) but never key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeySourceError {
    /// Building the HTTP client failed.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// Connecting, timing out or reading the body failed.
    #[error("request to {url} failed: {source}")]
    Http {
        /// The URL requested.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a non-success status.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL requested.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The body exceeded the response size cap.
    #[error("{url} answered more than {limit} bytes")]
    TooLarge {
        /// The URL requested.
        url: String,
        /// The cap in bytes.
        limit: usize,
    },
    /// The body is not the expected JSON document.
    #[error("{url} answered invalid JSON: {source}")]
    Json {
        /// The URL requested.
        url: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The discovery document names another issuer than the configured one.
    #[error("discovery document issuer does not equal the configured issuer {expected}")]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
    },
    /// A discovery, JWKS or redirect URL is plain HTTP although key material needs TLS (see
    /// `auth::source`: plain HTTP only when the issuer and the URL are both on loopback).
    #[error("refusing to fetch key material from {url}: plain HTTP is allowed only on loopback for a loopback issuer")]
    InsecureUrl {
        /// The URL refused.
        url: String,
    },
    /// `jwks_uri` is missing or not an http(s) URL.
    #[error("discovery document has no usable jwks_uri")]
    NoJwksUri,
    /// The JWKS holds no key usable for verification (all symmetric, encryption-only, or
    /// unsupported).
    #[error("JWKS contains no usable signing key")]
    NoUsableKeys,
    /// This authenticator was built from static keys and cannot fetch.
    #[error("no key source configured")]
    NoSource,
}
