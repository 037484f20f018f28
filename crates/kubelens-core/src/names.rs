//! Kubernetes object name rules, checked before any name reaches a cache lookup or an API URL.
//!
//! Rejecting malformed names up front means `..`, encoded slashes, NUL bytes, look-alike
//! unicode and 300-character names never become part of a Kubernetes request path.

/// Maximum length of a DNS-1123 label (namespace names).
pub const DNS1123_LABEL_MAX: usize = 63;
/// Maximum length of a DNS-1123 subdomain (pod and workload names).
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;

/// True for a valid DNS-1123 label: lowercase ASCII alphanumerics and `-`, starting and
/// ending with an alphanumeric, at most 63 characters. Namespaces and container names use it.
pub fn is_dns1123_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= DNS1123_LABEL_MAX
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// True for a valid DNS-1123 subdomain: dot-separated labels, at most 253 characters.
/// Pod, Deployment, Job and most other object names use it.
pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= DNS1123_SUBDOMAIN_MAX
        && !name.is_empty()
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
                && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "team-a", "a1", "0abc", &"a".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "..", "%2e%2e", "a/b", "a\0", "tеam", "*", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad:?}");
        }
    }

    #[test]
    fn subdomains() {
        for ok in ["web-7d9f-x2k4", "a.b.c", "db-0"] {
            assert!(is_dns1123_subdomain(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a..b", "a/b", "%2F", "A", &"a".repeat(300), "pod\u{0430}"] {
            assert!(!is_dns1123_subdomain(bad), "{bad:?}");
        }
    }
}
