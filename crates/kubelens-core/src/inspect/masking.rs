//! What a non-admin must not see, decided on the server before serialization.
//!
//! The rules (each has a row in the tests below):
//! - literal `env[].value`: masked (it is where people put passwords);
//! - `secretKeyRef` / `envFrom.secretRef`: shown as references (secret name + key), never
//!   resolved — the service account cannot read Secrets at all;
//! - secret and projected-secret volume sources: the secret names are masked;
//! - command/args that look like credentials (`--password=x`, `--token x`, `user:pass@host`,
//!   `Authorization: Bearer x`, AWS access keys …): the secret part is masked;
//! - annotations that embed whole manifests (`kubectl.kubernetes.io/last-applied-configuration`)
//!   or match a configured sensitive key: masked.
//!
//! A masked value is replaced by [`MASKED`], never silently blanked, and the API types carry
//! `masked: true` so a UI can say why.

use std::sync::LazyLock;

use regex::Regex;

/// The text that replaces a masked value.
pub const MASKED: &str = "<masked: admin only>";

/// Annotations that are always masked for non-admins.
pub const ALWAYS_SENSITIVE_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/desired-replicas-config",
];

/// Flag names whose value is a credential (`--password=x`, `-token x`).
static SECRET_FLAG: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^(-{1,2}[a-z0-9_.-]*(password|passwd|pwd|secret|token|api[-_]?key|access[-_]?key|private[-_]?key|credentials?|auth)[a-z0-9_.-]*)(=(.*))?$",
    )
    .ok()
});

/// `KEY=value` pairs inside a single argument (`env PASSWORD=x cmd`, `sh -c "TOKEN=x ..."`).
static SECRET_ASSIGNMENT: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b([a-z0-9_]*(password|passwd|secret|token|api[-_]?key|access[-_]?key|credentials?)[a-z0-9_]*)=([^\s'\x22]+)",
    )
    .ok()
});

/// `scheme://user:password@host` in connection strings.
static URL_CREDENTIALS: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+):([^@\s/]+)@").ok());

/// `Bearer <token>` / `Basic <b64>` in header-like arguments.
static AUTH_HEADER: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}").ok());

/// AWS access key ids and long high-entropy-looking secrets handed as bare arguments.
static AWS_KEY: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b").ok());

/// Masks credential-looking parts of a command line. Returns the masked arguments and
/// whether anything was masked. `--password secret` (value in the next argument) is handled.
pub fn mask_command_args(args: &[String]) -> (Vec<String>, bool) {
    let mut out = Vec::with_capacity(args.len());
    let mut masked_any = false;
    let mut mask_next = false;
    for arg in args {
        if mask_next {
            mask_next = false;
            if !arg.starts_with('-') {
                out.push(MASKED.to_owned());
                masked_any = true;
                continue;
            }
        }
        if let Some(re) = SECRET_FLAG.as_ref()
            && let Some(caps) = re.captures(arg)
        {
            let flag = caps.get(1).map_or("", |m| m.as_str());
            if caps.get(3).is_some() {
                out.push(format!("{flag}={MASKED}"));
                masked_any = true;
            } else {
                // The value, if any, is the next argument.
                mask_next = true;
                out.push(arg.clone());
            }
            continue;
        }
        let (masked, changed) = mask_inline_secrets(arg);
        masked_any |= changed;
        out.push(masked);
    }
    (out, masked_any)
}

/// Masks credentials embedded inside one string (assignments, URL passwords, auth headers,
/// AWS keys).
pub fn mask_inline_secrets(text: &str) -> (String, bool) {
    let mut current = text.to_owned();
    if let Some(re) = SECRET_ASSIGNMENT.as_ref() {
        current = re.replace_all(&current, format!("${{1}}={MASKED}")).into_owned();
    }
    if let Some(re) = URL_CREDENTIALS.as_ref() {
        current = re.replace_all(&current, format!("${{1}}:{MASKED}@")).into_owned();
    }
    if let Some(re) = AUTH_HEADER.as_ref() {
        current = re.replace_all(&current, format!("${{1}} {MASKED}")).into_owned();
    }
    if let Some(re) = AWS_KEY.as_ref() {
        current = re.replace_all(&current, MASKED).into_owned();
    }
    let changed = current != text;
    (current, changed)
}

/// True when a non-admin must not see this annotation's value.
pub fn is_sensitive_annotation(key: &str, configured: &[String]) -> bool {
    ALWAYS_SENSITIVE_ANNOTATIONS.contains(&key) || configured.iter().any(|k| k == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn command_args_table() {
        let m = MASKED;
        let cases: &[(&[&str], &[&str], bool)] = &[
            (&["nginx", "-g", "daemon off;"], &["nginx", "-g", "daemon off;"], false),
            (&["--password=hunter2"], &[&format!("--password={m}")], true),
            (&["--db-password", "hunter2", "--port", "5432"], &["--db-password", m, "--port", "5432"], true),
            (&["--token", "--verbose"], &["--token", "--verbose"], false),
            (&["-api-key=abc"], &[&format!("-api-key={m}")], true),
            (&["--auth-token=abc"], &[&format!("--auth-token={m}")], true),
            (&["--client-secret", "s"], &["--client-secret", m], true),
            (&["sh", "-c", "PGPASSWORD=x psql"], &["sh", "-c", &format!("PGPASSWORD={m} psql")], true),
            (&["--url=postgres://app:hunter2@db:5432/app"], &[&format!("--url=postgres://app:{m}@db:5432/app")], true),
            (&["curl", "-H", "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.x"], &["curl", "-H", &format!("Authorization: Bearer {m}")], true),
            (&["--key-id", "AKIAABCDEFGHIJKLMNOP"], &["--key-id", m], true),
            (&["--log-level=debug", "--replicas=3"], &["--log-level=debug", "--replicas=3"], false),
            (&["redis://localhost:6379"], &["redis://localhost:6379"], false),
        ];
        for (input, expected, changed) in cases {
            let (out, masked) = mask_command_args(&strings(input));
            assert_eq!(out, strings(expected), "input {input:?}");
            assert_eq!(masked, *changed, "input {input:?}");
        }
    }

    #[test]
    fn annotations() {
        assert!(is_sensitive_annotation("kubectl.kubernetes.io/last-applied-configuration", &[]));
        assert!(!is_sensitive_annotation("prometheus.io/scrape", &[]));
        assert!(is_sensitive_annotation("vault.hashicorp.com/agent-inject-token", &["vault.hashicorp.com/agent-inject-token".to_owned()]));
    }

    #[test]
    fn patterns_compile() {
        assert!(SECRET_FLAG.is_some() && SECRET_ASSIGNMENT.is_some() && URL_CREDENTIALS.is_some());
        assert!(AUTH_HEADER.is_some() && AWS_KEY.is_some());
    }
}
