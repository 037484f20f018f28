//! What a non-admin must not see, decided on the server before serialization.
//!
//! The rules (docs/security.md has the full table of what is and is not masked):
//! - literal `env[].value`: masked (it is where people put passwords);
//! - `secretKeyRef` / `envFrom.secretRef`: shown as references (secret name + key), never
//!   resolved — the service account cannot read Secrets at all;
//! - secret and projected-secret volume sources: the secret names are masked;
//! - command/args, probe paths and messages: **value-aware** — the secret part of every shape
//!   in [`mask_inline_secrets`] (assignments, flags, URL passwords, auth headers, JSON, JWTs,
//!   PEM private keys, AWS key ids) and the argument-vector shapes of [`mask_command_args`];
//! - annotations: the whole value when the key is built in, configured, or its name looks
//!   secret ([`is_secret_name`]); otherwise the secret shapes inside the value.
//!
//! A masked value is replaced by [`MASKED`], never silently blanked, and the API types carry
//! `masked: true` so a UI can say why. Masking is idempotent (masking a masked text changes
//! nothing) and runs in linear time: every pattern is a `regex` (finite automata, no
//! backtracking), and a string longer than [`MAX_SCANNED_BYTES`] is masked whole.

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

/// The text that replaces a masked value.
pub const MASKED: &str = "<masked: admin only>";

/// Strings longer than this are masked whole instead of scanned (bounded work per request;
/// Kubernetes caps messages at a few KiB, a termination message at 4 KiB).
pub const MAX_SCANNED_BYTES: usize = 64 * 1024;

/// Annotations that are always masked for non-admins.
pub const ALWAYS_SENSITIVE_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/desired-replicas-config",
];

/// A key or flag name that holds a credential. Long words count anywhere in the name
/// (`PGPASSWORD`, `client_secret`); short ones only as a whole word between `-`, `_`, `.`
/// (`--db-pass`, `?sig=`, not `--compass`, `monkey`). The name is `[A-Za-z0-9_.-]+`.
const SECRET_NAME: &str = r"(?:[A-Za-z0-9_.-]*(?i:password|passwd|passphrase|pwd|secret|token|api[-_.]?key|access[-_.]?key|private[-_.]?key|signing[-_.]?key|session[-_.]?key|credential|signature)[A-Za-z0-9_.-]*|\b(?:[A-Za-z0-9_.-]*[-_.])?(?i:pass|pw|sig|key|auth|authorization|creds?)(?:[-_.][A-Za-z0-9_.-]*)?)";

/// A value: [`MASKED`] itself (so masking is idempotent), quoted, escaped-quoted, or bare up
/// to whitespace, a quote, `&`, `;`, `}` or `]`. Secret groups: `q1`, `q2`, `q3`, `bare`.
const VALUE: &str = r#"(?:(?P<done><masked: admin only>)|'(?P<q1>[^']*)'|"(?P<q2>[^"]*)"|\\"(?P<q3>(?:[^"\\]|\\[^"])*)\\"|(?P<bare>[^\s'"&;}\]]+))"#;

/// A spaced flag's value must not start with `-` (that is the next flag).
const FLAG_VALUE: &str = r#"(?:(?P<done><masked: admin only>)|'(?P<q1>[^']*)'|"(?P<q2>[^"]*)"|(?P<bare>[^\s'"\-][^\s'";&|]*))"#;

/// A command whose short flag takes a password.
struct CommandFlag {
    /// Program names it applies to (prefixes, case-insensitive: `mysql` covers `mysqldump`).
    programs: &'static [&'static str],
    /// The flag.
    flag: &'static str,
    /// Whether the password may follow as the next word (`-a X`) and not only attached (`-aX`).
    spaced: bool,
}

/// `mysql -pX` (attached only: `-p` alone prompts), `redis-cli -a X`, `sshpass -p X`.
const COMMAND_FLAGS: &[CommandFlag] = &[
    CommandFlag { programs: &["mysql", "mariadb"], flag: "-p", spaced: false },
    CommandFlag { programs: &["redis-cli"], flag: "-a", spaced: true },
    CommandFlag { programs: &["sshpass"], flag: "-p", spaced: true },
];

impl CommandFlag {
    fn runs_in(&self, programs: &[&str]) -> bool {
        programs.iter().any(|p| self.programs.iter().any(|name| p.len() >= name.len() && p.get(..name.len()).is_some_and(|h| h.eq_ignore_ascii_case(name))))
    }
}

/// Secret group names used by the patterns below.
const SECRET_GROUPS: &[&str] = &["s", "q1", "q2", "q3", "bare"];

struct Patterns {
    /// Every pattern that finds secrets in one string.
    text: Vec<Regex>,
    /// A whole argument that is a credential flag without value (`--password`).
    secret_flag: Regex,
}

fn build() -> Result<Patterns, regex::Error> {
    let mut text = vec![
        // NAME=value, NAME: value, "name": "value", ?name=value&…
        Regex::new(&format!(r#"{SECRET_NAME}(?:\\?["'])?(?:=|[ \t]*:[ \t]*){VALUE}"#))?,
        // --name value (the value in the same string)
        Regex::new(&format!(r#"(?:^|[\s"'(])-{{1,2}}{SECRET_NAME}[ \t]+{FLAG_VALUE}"#))?,
        // curl -u user:pass, --user=user:pass, --proxy-user user:pass
        Regex::new(r#"(?:^|[\s"'])(?:-u|-U|--user|--proxy-user)(?:[ \t]+|=)?[^\s:'"]*:(?P<s><masked: admin only>|[^\s'"]+)"#)?,
        // scheme://user:pass@host (user may be empty)
        Regex::new(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:(?P<s><masked: admin only>|[^@\s/]+)@")?,
        // Authorization: <anything to the end of the line or quote>
        Regex::new(r#"(?i:\b(?:proxy-)?authorization)(?:\\?["'])?[ \t]*[:=][ \t]*(?P<s>[^\r\n"'\\]+)"#)?,
        // Bearer/Basic credentials outside a header
        Regex::new(r"\b(?:[Bb]earer|Basic)[ \t]+(?P<s><masked: admin only>|[A-Za-z0-9._~+/=-]{8,})")?,
        // JWT-shaped: base64url header starting `{"`, then one to four more segments
        Regex::new(r"(?P<s>eyJ[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*){1,4})")?,
        // PEM private key body (to the END line, or the end of a truncated text)
        Regex::new(r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?P<s>.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)")?,
        // AWS access key ids
        Regex::new(r"(?P<s>(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16})")?,
    ];
    for command in COMMAND_FLAGS {
        let (programs, flag) = (command.programs.join("|"), command.flag);
        let gap = if command.spaced { "[ \t]*" } else { "" };
        text.push(Regex::new(&format!(
            r#"(?i:\b(?:{programs}))[A-Za-z0-9_-]*[^\n;|&]*?\s{flag}{gap}(?P<s><masked: admin only>|[^\s'"]+)"#
        ))?);
    }
    let secret_flag = Regex::new(&format!(r"^-{{1,2}}{SECRET_NAME}$"))?;
    Ok(Patterns { text, secret_flag })
}

/// `None` only if a pattern failed to compile (a test proves they compile): then every
/// value is masked whole — fail closed.
static PATTERNS: LazyLock<Option<Patterns>> = LazyLock::new(|| build().ok());

/// True when `name` (a key, flag or annotation name) looks like it holds a credential.
pub fn is_secret_name(name: &str) -> bool {
    PATTERNS.as_ref().is_none_or(|p| p.secret_flag.is_match(&format!("--{}", name.trim_start_matches('-'))))
}

/// Masks the secret parts of one string (see the module docs for the shapes). Returns the
/// masked text and whether it differs from the input.
///
/// One pass masks what every pattern finds in the text; a mask that joins two overlapping
/// finds can leave text that a later pass reads differently (a PEM end line swallowed), so
/// passes repeat until nothing changes — which makes masking idempotent by construction.
/// Text still changing after [`MAX_PASSES`] is masked whole (fail closed).
pub fn mask_inline_secrets(text: &str) -> (String, bool) {
    let Some(patterns) = PATTERNS.as_ref().filter(|_| text.len() <= MAX_SCANNED_BYTES) else {
        return if text == MASKED { (text.to_owned(), false) } else { (MASKED.to_owned(), true) };
    };
    let Some(mut current) = mask_pass(patterns, text) else { return (text.to_owned(), false) };
    for _ in 1..MAX_PASSES {
        match mask_pass(patterns, &current) {
            None => return (current, true),
            Some(again) => current = again,
        }
    }
    (MASKED.to_owned(), true)
}

/// Passes of [`mask_inline_secrets`] before a still-changing text is masked whole (real text
/// settles after one or two).
const MAX_PASSES: usize = 8;

/// One masking pass: the text with every found secret replaced, `None` when nothing changed.
fn mask_pass(patterns: &Patterns, text: &str) -> Option<String> {
    let mut spans: Vec<Range<usize>> = Vec::new();
    for re in &patterns.text {
        for caps in re.captures_iter(text) {
            spans.extend(SECRET_GROUPS.iter().filter_map(|g| caps.name(g)).map(|m| m.range()).filter(|r| !r.is_empty()));
        }
    }
    let masked = replace_spans(text, spans);
    (masked != text).then_some(masked)
}

/// Replaces each (merged) span by [`MASKED`]; a span that is already exactly [`MASKED`]
/// stays as it is.
fn replace_spans(text: &str, mut spans: Vec<Range<usize>>) -> String {
    spans.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
            _ => merged.push(span),
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for span in merged {
        out.push_str(text.get(at..span.start).unwrap_or_default());
        out.push_str(MASKED);
        at = span.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

/// What the previous argument says about this one.
#[derive(Clone, Copy)]
enum Next {
    /// Nothing.
    Plain,
    /// The whole argument is the value of a credential flag (`--password`, `redis-cli -a`).
    Secret,
    /// `user:password` of `-u`/`--user`: the part after the first colon.
    UserPassword,
}

/// Masks credential-looking parts of an argument vector. Returns the masked arguments and
/// whether anything was masked. Besides the shapes of [`mask_inline_secrets`] in each
/// argument: `--password secret` (value in the next argument), `-u user:pass`, and the
/// command flags of `mysql`/`mariadb` (`-pX`), `redis-cli` (`-a X`) and `sshpass` (`-p X`).
pub fn mask_command_args(args: &[String]) -> (Vec<String>, bool) {
    let mut out = Vec::with_capacity(args.len());
    let mut masked_any = false;
    let mut next = Next::Plain;
    let mut programs: Vec<&str> = Vec::new();
    for arg in args {
        let expected = std::mem::replace(&mut next, Next::Plain);
        if !arg.starts_with('-') {
            match expected {
                Next::Secret => {
                    masked_any |= arg != MASKED;
                    out.push(MASKED.to_owned());
                    continue;
                }
                Next::UserPassword => {
                    if let Some((user, password)) = split_user_password(arg)
                        && !password.is_empty()
                    {
                        masked_any |= password != MASKED;
                        out.push(format!("{user}:{MASKED}"));
                        continue;
                    }
                }
                Next::Plain => {}
            }
            programs.push(command_name(arg));
        }
        if let Some(masked) = command_flag(&programs, arg, &mut next) {
            masked_any |= masked != *arg;
            out.push(masked);
            continue;
        }
        if matches!(arg.as_str(), "-u" | "-U" | "--user" | "--proxy-user") {
            next = Next::UserPassword;
        } else if PATTERNS.as_ref().is_none_or(|p| p.secret_flag.is_match(arg)) {
            next = Next::Secret;
        }
        let (masked, changed) = mask_inline_secrets(arg);
        masked_any |= changed;
        out.push(masked);
    }
    (out, masked_any)
}

/// `user:password` split at the first colon that is not inside a [`MASKED`] marker: the
/// marker has a colon of its own, so without this a value masked on the first pass (no colon
/// of its own) would be read as `user:password` on the second, and masking would not be
/// idempotent (the fuzz target found it: `-U "DB_PASSWORD='x' …"`).
fn split_user_password(arg: &str) -> Option<(&str, &str)> {
    let mut from = 0;
    while let Some(offset) = arg.get(from..).and_then(|rest| rest.find(':')) {
        let colon = from + offset;
        match arg.match_indices(MASKED).find(|(start, _)| *start < colon && colon < start + MASKED.len()) {
            Some((start, _)) => from = start + MASKED.len(),
            None => return Some((arg.get(..colon)?, arg.get(colon + 1..)?)),
        }
    }
    None
}

/// The program name of a word (`/usr/bin/mysql` → `mysql`).
fn command_name(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// A command's password flag (`mysql -pX`, `redis-cli -a X`): the masked argument when `arg`
/// carries the password attached, or sets `next` when the password follows.
fn command_flag(programs: &[&str], arg: &str, next: &mut Next) -> Option<String> {
    for command in COMMAND_FLAGS.iter().filter(|c| c.runs_in(programs)) {
        if arg == command.flag {
            if command.spaced {
                *next = Next::Secret;
            }
            return None;
        }
        if arg.len() > command.flag.len() && arg.starts_with(command.flag) && !arg.starts_with("--") {
            return Some(format!("{}{MASKED}", command.flag));
        }
    }
    None
}

/// Masks a container's `command` and `args` as one argument vector (a flag at the end of
/// `command` may take its value from `args`), split back in two.
pub fn mask_container_command(command: &[String], args: &[String]) -> (Vec<String>, Vec<String>, bool) {
    let all: Vec<String> = command.iter().chain(args).cloned().collect();
    let (mut masked, changed) = mask_command_args(&all);
    let rest = masked.split_off(command.len().min(masked.len()));
    (masked, rest, changed)
}

/// The value a non-admin sees for an annotation: [`MASKED`] when the key is built in
/// ([`ALWAYS_SENSITIVE_ANNOTATIONS`]), configured, or its name (after the `prefix/`) looks
/// secret; otherwise the value with its secret shapes masked. Returns the value and whether
/// anything was masked.
pub fn mask_annotation(key: &str, value: &str, configured: &[String]) -> (String, bool) {
    let name = key.rsplit('/').next().unwrap_or(key);
    if ALWAYS_SENSITIVE_ANNOTATIONS.contains(&key) || configured.iter().any(|k| k == key) || is_secret_name(name) {
        return (MASKED.to_owned(), true);
    }
    mask_inline_secrets(value)
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
            (&["curl", "-H", "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.x"], &["curl", "-H", &format!("Authorization: {m}")], true),
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
    fn a_user_password_value_masked_on_the_first_pass_is_left_alone_on_the_second() {
        // Found by the masking fuzz target (fuzz/regressions/masking): the masked value has no
        // colon of its own, only the marker's.
        let input = strings(&["sh", "-U", "DB_PASSWORD='x' qsm- yluroot -phunter3 && cu&", "p@h/x/apikey=k&sig=s"]);
        let (once, changed) = mask_command_args(&input);
        assert!(changed);
        assert_eq!(once[2], format!("DB_PASSWORD='{MASKED}' qsm- yluroot -phunter3 && cu&"));
        assert_eq!(mask_command_args(&once), (once.clone(), false));
        // A real user:password still masks the password, also after a marker in the user part.
        assert_eq!(mask_command_args(&strings(&["curl", "-u", "app:hunter2"])).0[2], format!("app:{MASKED}"));
        let user_masked = format!("{MASKED}x:pw");
        assert_eq!(mask_command_args(&strings(&["curl", "-u", &user_masked])).0[2], format!("{MASKED}x:{MASKED}"));
    }

    #[test]
    fn patterns_compile() {
        assert!(build().is_ok(), "{:?}", build().err());
        assert!(PATTERNS.is_some());
    }
}

#[cfg(test)]
mod shape_tests;
