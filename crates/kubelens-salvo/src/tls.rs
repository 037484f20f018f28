//! TLS for the API listener (`server.tls`): the certificate and key files loaded with rustls,
//! ALPN `h2` then `http/1.1`, and a reload when the files change.
//!
//! Serving is salvo's [`RustlsListener`](salvo::conn::RustlsListener): it takes a *stream* of
//! rustls configs, starts with the first and swaps in every later one for new connections
//! (open connections keep the certificate they were handshaken with). [`CertReload`] is that
//! stream: the config loaded at startup, then one item each time polling finds that the bytes
//! of either file changed and the pair is valid. Polling (every `server.tls.reload_interval`)
//! rather than inotify because a Kubernetes Secret volume swaps a `..data` symlink, which
//! file watches on the old inode miss; reading two small files every few seconds costs
//! nothing. A pair that does not load (a half-written rotation, a key that does not match) is
//! logged and the previous certificate stays; the next change is tried again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use salvo::conn::IntoConfigStream;

use kubelens_core::config::TlsConfig;

/// The TLS certificate or key could not be used. Every variant names the setting and file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read (missing, no permission, a directory).
    #[error("{setting} `{}`: cannot read: {source}", path.display())]
    Read {
        /// `server.tls.cert_file` or `server.tls.key_file`.
        setting: &'static str,
        /// The configured path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file was read but holds no usable PEM certificate or key.
    #[error("{setting} `{}`: {message}", path.display())]
    Invalid {
        /// `server.tls.cert_file` or `server.tls.key_file`.
        setting: &'static str,
        /// The configured path.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The key is valid but is not the key of the certificate.
    #[error("server.tls.key_file `{}` does not match the certificate in server.tls.cert_file `{}`", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

const CERT: &str = "server.tls.cert_file";
const KEY: &str = "server.tls.key_file";

/// The two files' contents as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PemPair {
    cert: Vec<u8>,
    key: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn of(config: &TlsConfig) -> Self {
        Self { cert: PathBuf::from(&config.cert_file), key: PathBuf::from(&config.key_file) }
    }

    async fn read(&self) -> Result<PemPair, TlsError> {
        let read = |setting: &'static str, path: &Path| {
            let path = path.to_owned();
            async move { tokio::fs::read(&path).await.map_err(|source| TlsError::Read { setting, path, source }) }
        };
        Ok(PemPair { cert: read(CERT, &self.cert).await?, key: read(KEY, &self.key).await? })
    }

    /// A rustls server config from the PEM pair: ALPN `h2`, `http/1.1`; TLS 1.2 and 1.3.
    fn build(&self, pem: &PemPair) -> Result<ServerConfig, TlsError> {
        let invalid = |setting: &'static str, path: &Path, message: String| TlsError::Invalid {
            setting,
            path: path.to_owned(),
            message,
        };
        let chain = CertificateDer::pem_slice_iter(&pem.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| invalid(CERT, &self.cert, format!("not a PEM certificate chain: {err}")))?;
        if chain.is_empty() {
            return Err(invalid(CERT, &self.cert, "holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(&pem.key)
            .map_err(|err| invalid(KEY, &self.key, format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {err}")))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| invalid(KEY, &self.key, format!("TLS versions: {err}")))?
            .with_no_client_auth();
        let mut config = builder.with_single_cert(chain, key).map_err(|err| match err {
            rustls::Error::InconsistentKeys(_) => TlsError::Mismatch { cert: self.cert.clone(), key: self.key.clone() },
            other => invalid(KEY, &self.key, format!("unusable private key: {other}")),
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The TLS configs of the listener: the one loaded at startup, then each valid change of the
/// files (see the module docs). Build it with [`CertReload::load`] before binding, so a bad
/// certificate is a startup error naming the file.
#[derive(Debug)]
pub struct CertReload {
    files: Files,
    interval: Duration,
    initial: ServerConfig,
    last: PemPair,
}

impl CertReload {
    /// Reads and checks both files now.
    pub async fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let files = Files::of(config);
        let last = files.read().await?;
        let initial = files.build(&last)?;
        Ok(Self { files, interval: config.reload_interval, initial, last })
    }
}

impl IntoConfigStream<ServerConfig> for CertReload {
    type Stream = BoxStream<'static, ServerConfig>;

    fn into_stream(self) -> Self::Stream {
        let Self { files, interval, initial, last } = self;
        let changes = futures::stream::unfold((files, last), move |(files, mut last)| async move {
            loop {
                tokio::time::sleep(interval).await;
                let pem = match files.read().await {
                    Ok(pem) => pem,
                    Err(err) => {
                        tracing::warn!(error = %err, "TLS reload: keeping the current certificate");
                        continue;
                    }
                };
                if pem == last {
                    continue;
                }
                let built = files.build(&pem);
                last = pem;
                match built {
                    Ok(config) => {
                        tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded: new connections use it");
                        return Some((config, (files, last)));
                    }
                    Err(err) => tracing::error!(error = %err, "TLS reload: keeping the current certificate"),
                }
            }
        });
        futures::stream::once(std::future::ready(initial)).chain(changes).boxed()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn files(dir: &Path) -> Files {
        Files { cert: dir.join("tls.crt"), key: dir.join("tls.key") }
    }

    #[tokio::test]
    async fn missing_and_garbage_files_name_the_setting_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let err = f.read().await.unwrap_err().to_string();
        assert!(err.starts_with("server.tls.cert_file") && err.contains("tls.crt") && err.contains("cannot read"), "{err}");
        std::fs::write(&f.cert, "not pem").unwrap();
        std::fs::write(&f.key, "not pem").unwrap();
        let pem = f.read().await.unwrap();
        let err = f.build(&pem).unwrap_err().to_string();
        assert!(err.starts_with("server.tls.cert_file") && err.contains("no PEM certificate"), "{err}");
    }
}
