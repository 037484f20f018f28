//! Fetching OIDC discovery and the JWKS over HTTP, with timeouts and a response size cap.

use std::sync::RwLock;
use std::time::Duration;

use serde::Deserialize;

use super::error::KeySourceError;
use super::keys::KeySet;

/// Largest discovery or JWKS document accepted. Keycloak's are a few KiB; the cap keeps a
/// misbehaving or hostile endpoint from filling memory.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// Where keys come from: `{issuer}/.well-known/openid-configuration` → `jwks_uri`.
#[derive(Debug)]
pub(crate) struct OidcSource {
    client: reqwest::Client,
    issuer: String,
    /// Learned from discovery once; reused for every JWKS refetch.
    jwks_uri: RwLock<Option<String>>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: Option<String>,
}

impl OidcSource {
    pub(crate) fn new(issuer: String, timeout: Duration) -> Result<Self, KeySourceError> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            // Discovery must come from the issuer itself; a couple of redirects covers a
            // proxy adding a trailing slash, more suggests something is wrong.
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(KeySourceError::Client)?;
        Ok(Self { client, issuer, jwks_uri: RwLock::new(None) })
    }

    /// True once discovery succeeded.
    pub(crate) fn discovered(&self) -> bool {
        self.jwks_uri.read().map(|g| g.is_some()).unwrap_or(false)
    }

    /// Loads discovery (once) and the JWKS (every call).
    pub(crate) async fn fetch_keys(&self) -> Result<KeySet, KeySourceError> {
        let cached = self.jwks_uri.read().ok().and_then(|g| g.clone());
        let jwks_uri = match cached {
            Some(uri) => uri,
            None => {
                let uri = self.discover().await?;
                if let Ok(mut guard) = self.jwks_uri.write() {
                    *guard = Some(uri.clone());
                }
                uri
            }
        };
        let body = self.get_capped(&jwks_uri).await?;
        let set = KeySet::parse(&body).map_err(|source| KeySourceError::Json { url: jwks_uri.clone(), source })?;
        if set.len() == 0 {
            return Err(KeySourceError::NoUsableKeys);
        }
        Ok(set)
    }

    async fn discover(&self) -> Result<String, KeySourceError> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let body = self.get_capped(&url).await?;
        let doc: Discovery = serde_json::from_slice(&body).map_err(|source| KeySourceError::Json { url, source })?;
        // Exact comparison: a trailing slash or another scheme would make every token's `iss`
        // check fail later, so refuse early and say why.
        if doc.issuer != self.issuer {
            return Err(KeySourceError::IssuerMismatch { expected: self.issuer.clone() });
        }
        match doc.jwks_uri {
            Some(uri) if uri.starts_with("https://") || uri.starts_with("http://") => Ok(uri),
            _ => Err(KeySourceError::NoJwksUri),
        }
    }

    async fn get_capped(&self, url: &str) -> Result<Vec<u8>, KeySourceError> {
        let http = |source| KeySourceError::Http { url: url.to_owned(), source };
        let mut response = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(http)?;
        let status = response.status();
        if !status.is_success() {
            return Err(KeySourceError::Status { url: url.to_owned(), status: status.as_u16() });
        }
        let too_large = || KeySourceError::TooLarge { url: url.to_owned(), limit: MAX_DOCUMENT_BYTES };
        if response.content_length().is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
