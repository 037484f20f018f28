//! Fetching OIDC discovery and the JWKS over HTTP, with timeouts and a response size cap.
//!
//! Key material travels over TLS only: every URL this module requests (discovery, `jwks_uri`,
//! every redirect target) must be `https://`, except when the issuer itself is plain `http://`
//! on a loopback host (`127.0.0.0/8`, `::1`, `localhost`: a local Keycloak in development and
//! tests), and then only to loopback hosts too. An `https://` → `http://` redirect is refused
//! in every case. A man in the middle of a plain-HTTP fetch could otherwise publish its own
//! signing keys and mint tokens for any user.

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
        let local_http_issuer = reqwest::Url::parse(&issuer).is_ok_and(|url| is_local_http(&url));
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            // Discovery must come from the issuer itself; a couple of redirects covers a
            // proxy adding a trailing slash, more suggests something is wrong.
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error("too many redirects");
            }
            let downgrade = attempt.previous().last().is_some_and(|from| from.scheme() == "https")
                && attempt.url().scheme() != "https";
            if downgrade || !key_url_allowed(local_http_issuer, attempt.url()) {
                return attempt.error("redirect to a URL not allowed for key material (plain HTTP)");
            }
            attempt.follow()
        });
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .redirect(redirects)
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
        let insecure = || KeySourceError::InsecureUrl { url: url.to_owned() };
        let issuer_is_local_http = reqwest::Url::parse(&self.issuer).is_ok_and(|u| is_local_http(&u));
        let parsed = reqwest::Url::parse(url).map_err(|_| insecure())?;
        if !key_url_allowed(issuer_is_local_http, &parsed) {
            return Err(insecure());
        }
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

/// Redirects followed per request at most.
const MAX_REDIRECTS: usize = 3;

/// Whether key material may be requested from `url`: `https://` always; plain `http://` only
/// to a loopback host and only when the issuer itself is plain HTTP on loopback.
pub(crate) fn key_url_allowed(issuer_is_local_http: bool, url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => issuer_is_local_http && is_local_http(url),
        _ => false,
    }
}

/// Whether an issuer (or `keycloak_url`) can serve key material at all: `https://`, or plain
/// `http://` on loopback.
pub fn key_material_issuer_allowed(issuer: &str) -> bool {
    reqwest::Url::parse(issuer).is_ok_and(|url| url.scheme() == "https" || is_local_http(&url))
}

/// `http://` to `127.0.0.0/8`, `::1` or `localhost`.
fn is_local_http(url: &reqwest::Url) -> bool {
    if url.scheme() != "http" {
        return false;
    }
    match url.host_str() {
        Some(host) if host.eq_ignore_ascii_case("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn allowed(issuer: &str, url: &str) -> bool {
        let issuer = reqwest::Url::parse(issuer).unwrap();
        key_url_allowed(is_local_http(&issuer), &reqwest::Url::parse(url).unwrap())
    }

    #[test]
    fn key_material_needs_tls_unless_everything_is_local() {
        let https = "https://sso.example.com/realms/r";
        assert!(allowed(https, "https://sso.example.com/certs"));
        assert!(allowed(https, "https://keys.example.com/certs"));
        assert!(!allowed(https, "http://sso.example.com/certs"), "https issuer, http jwks_uri");
        assert!(!allowed(https, "http://127.0.0.1/certs"), "https issuer, even loopback http");
        let local = "http://127.0.0.1:8080/realms/r";
        for ok in ["http://127.0.0.1:8080/certs", "http://127.9.9.9/certs", "http://localhost/c", "http://[::1]:1/c", "https://x.example/c"] {
            assert!(allowed(local, ok), "{ok}");
        }
        for bad in ["http://0.0.0.0/c", "http://10.0.0.1/c", "http://127.0.0.1.evil.example/c", "http://localhost.evil.example/c", "ftp://127.0.0.1/c", "file:///etc/c"] {
            assert!(!allowed(local, bad), "{bad}");
        }
        assert!(!allowed("http://sso.example.com/realms/r", "http://sso.example.com/certs"), "http issuer off loopback");
    }
}
