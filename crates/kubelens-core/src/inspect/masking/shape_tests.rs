//! One test per secret shape (each failed on the deny-list masking it replaced), the
//! negatives that must stay readable, and property tests: an injected secret never survives
//! in any shape, masking never panics and is idempotent.

use proptest::prelude::*;

use super::*;

const M: &str = MASKED;

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn args(input: &[&str]) -> Vec<String> {
    mask_command_args(&strings(input)).0
}

fn text(input: &str) -> String {
    mask_inline_secrets(input).0
}

#[test]
fn quoted_assignments_in_shell_strings_are_masked() {
    assert_eq!(text("DB_PASSWORD='x y' app"), format!("DB_PASSWORD='{M}' app"));
    assert_eq!(text(r#"export API_TOKEN="abc def"; run"#), format!(r#"export API_TOKEN="{M}"; run"#));
    assert_eq!(args(&["sh", "-c", "DB_PASSWORD='hunter2' app"]), strings(&["sh", "-c", &format!("DB_PASSWORD='{M}' app")]));
    assert_eq!(text("MYSQL_PWD=hunter2 mysql"), format!("MYSQL_PWD={M} mysql"));
}

#[test]
fn mysql_attached_passwords_are_masked() {
    assert_eq!(args(&["mysql", "-uroot", "-phunter2", "-h", "db"]), strings(&["mysql", "-uroot", &format!("-p{M}"), "-h", "db"]));
    assert_eq!(args(&["/usr/bin/mysqldump", "-phunter2", "app"]), strings(&["/usr/bin/mysqldump", &format!("-p{M}"), "app"]));
    assert_eq!(text("mysqladmin -u root -phunter2 ping"), format!("mysqladmin -u root -p{M} ping"));
    // Without a mysql-family command `-pX` is an ordinary flag (a port, a profile).
    assert_eq!(args(&["server", "-p8080"]), strings(&["server", "-p8080"]));
    // `-p` alone makes mysql prompt: nothing to mask.
    assert_eq!(args(&["mysql", "-p", "app"]), strings(&["mysql", "-p", "app"]));
}

#[test]
fn pass_flags_are_masked() {
    assert_eq!(args(&["--pass=hunter2"]), strings(&[&format!("--pass={M}")]));
    assert_eq!(args(&["--db-pass", "hunter2"]), strings(&["--db-pass", M]));
    assert_eq!(text("app --pass=hunter2 --port=1"), format!("app --pass={M} --port=1"));
    // `pass` is a word of the flag name, not any substring of it.
    assert_eq!(args(&["--compass=north", "--bypass-cache"]), strings(&["--compass=north", "--bypass-cache"]));
}

#[test]
fn spaced_password_flags_are_masked_in_args_and_in_shell_strings() {
    assert_eq!(args(&["--password", "hunter2", "--port", "5432"]), strings(&["--password", M, "--port", "5432"]));
    assert_eq!(text("app --password hunter2 --port 5432"), format!("app --password {M} --port 5432"));
    assert_eq!(text("app --password 'a b' -v"), format!("app --password '{M}' -v"));
    // The value may be in `args` while the flag ends `command`.
    let (command, rest, masked) = mask_container_command(&strings(&["app", "--password"]), &strings(&["hunter2", "-v"]));
    assert_eq!((command, rest, masked), (strings(&["app", "--password"]), strings(&[M, "-v"]), true));
    // A flag that follows is not a value.
    assert_eq!(args(&["--token", "--verbose"]), strings(&["--token", "--verbose"]));
}

#[test]
fn signing_key_flags_are_masked() {
    assert_eq!(args(&["--signing-key=abc123"]), strings(&[&format!("--signing-key={M}")]));
    assert_eq!(args(&["--jwt-signing-key", "abc123"]), strings(&["--jwt-signing-key", M]));
    assert_eq!(args(&["--private-key=abc"]), strings(&[&format!("--private-key={M}")]));
    assert_eq!(text("SIGNING_KEY=abc app"), format!("SIGNING_KEY={M} app"));
}

#[test]
fn curl_user_passwords_are_masked() {
    assert_eq!(args(&["curl", "-u", "admin:hunter2", "http://x"]), strings(&["curl", "-u", &format!("admin:{M}"), "http://x"]));
    assert_eq!(args(&["curl", "--user", "admin:hunter2"]), strings(&["curl", "--user", &format!("admin:{M}")]));
    assert_eq!(text("curl -sS -u admin:hunter2 http://x"), format!("curl -sS -u admin:{M} http://x"));
    assert_eq!(text("curl --user=admin:hunter2 http://x"), format!("curl --user=admin:{M} http://x"));
    // A user without a password stays.
    assert_eq!(args(&["mysql", "-u", "root"]), strings(&["mysql", "-u", "root"]));
}

#[test]
fn url_credentials_are_masked() {
    assert_eq!(text("postgres://app:hunter2@db:5432/app"), format!("postgres://app:{M}@db:5432/app"));
    assert_eq!(text("redis://:hunter2@cache:6379"), format!("redis://:{M}@cache:6379"));
    assert_eq!(text("https://user:hunter2@host/path"), format!("https://user:{M}@host/path"));
    assert_eq!(text("redis://localhost:6379"), "redis://localhost:6379");
}

#[test]
fn authorization_headers_are_masked() {
    assert_eq!(
        args(&["curl", "-H", "Authorization: Bearer abc.def"]),
        strings(&["curl", "-H", &format!("Authorization: {M}")])
    );
    assert_eq!(text("curl -H 'Authorization: Basic dXNlcjpwYXNz' x"), format!("curl -H 'Authorization: {M}' x"));
    assert_eq!(text("sent Bearer abcdefgh123 upstream"), format!("sent Bearer {M} upstream"));
    assert_eq!(text("X-Api-Key: abc123"), format!("X-Api-Key: {M}"));
}

#[test]
fn json_in_args_is_masked() {
    assert_eq!(
        args(&["--config", r#"{"user":"app","password":"hunter2","port":5432}"#]),
        strings(&["--config", &format!(r#"{{"user":"app","password":"{M}","port":5432}}"#)])
    );
    assert_eq!(text(r#"{"apiKey": "abc def"}"#), format!(r#"{{"apiKey": "{M}"}}"#));
    assert_eq!(text(r#"{\"token\":\"abc\"}"#), format!(r#"{{\"token\":\"{M}\"}}"#));
    assert_eq!(text(r#"{"client_secret":12345}"#), format!(r#"{{"client_secret":{M}}}"#));
}

#[test]
fn jwt_shaped_strings_are_masked() {
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
    assert_eq!(text(&format!("--id-token={jwt}")), format!("--id-token={M}"));
    assert_eq!(text(&format!("login with {jwt} failed")), format!("login with {M} failed"));
    assert_eq!(args(&[jwt]), strings(&[M]));
}

#[test]
fn pem_private_key_blocks_are_masked() {
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY-----";
    assert_eq!(
        text(&format!("key: x\n{pem}\ntrailer")),
        format!("key: {M}\n-----BEGIN RSA PRIVATE KEY-----{M}-----END RSA PRIVATE KEY-----\ntrailer")
    );
    // A truncated block (a termination message is cut at 4 KiB) is masked to the end.
    assert_eq!(
        text("panic: -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq"),
        format!("panic: -----BEGIN PRIVATE KEY-----{M}")
    );
    // Certificates are public.
    let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
    assert_eq!(text(cert), cert);
}

#[test]
fn aws_access_key_ids_are_masked() {
    assert_eq!(args(&["--key-id", "AKIAABCDEFGHIJKLMNOP"]), strings(&["--key-id", M]));
    assert_eq!(text("using ASIAABCDEFGHIJKLMNOP now"), format!("using {M} now"));
}

#[test]
fn secret_query_parameters_are_masked() {
    assert_eq!(text("/healthz?apikey=abc123&verbose=1"), format!("/healthz?apikey={M}&verbose=1"));
    assert_eq!(text("/ready?token=abc&sig=def"), format!("/ready?token={M}&sig={M}"));
    assert_eq!(text("/x?api-key=abc;y=1"), format!("/x?api-key={M};y=1"));
    assert_eq!(text("/healthz?verbose=1&key=abc"), format!("/healthz?verbose=1&key={M}"));
    assert_eq!(text("/healthz?verbose=1"), "/healthz?verbose=1");
}

#[test]
fn annotations_are_masked_by_key_name_and_by_value_shape() {
    let configured = ["team.example.com/extra".to_owned()];
    let whole = |key: &str| mask_annotation(key, "v4lue", &configured);
    assert_eq!(whole("kubectl.kubernetes.io/last-applied-configuration"), (M.to_owned(), true));
    assert_eq!(whole("team.example.com/extra"), (M.to_owned(), true));
    for key in [
        "vault.hashicorp.com/agent-inject-token",
        "example.com/db-password",
        "example.com/passwd",
        "example.com/pwd",
        "example.com/client-secret",
        "example.com/apikey",
        "example.com/api-key",
        "example.com/auth",
        "example.com/credentials",
        "example.com/private-key",
        "example.com/signing-key",
    ] {
        assert_eq!(whole(key), (M.to_owned(), true), "{key}");
    }
    assert_eq!(whole("prometheus.io/scrape"), ("v4lue".to_owned(), false));
    // Any other annotation: the secret shapes inside its value.
    assert_eq!(
        mask_annotation("example.com/dsn", "postgres://app:hunter2@db/app", &[]),
        (format!("postgres://app:{M}@db/app"), true)
    );
}

#[test]
fn ordinary_arguments_stay_readable() {
    let plain: &[&[&str]] = &[
        &["nginx", "-g", "daemon off;"],
        &["--log-level=debug", "--replicas=3", "--port", "8080"],
        &["--token", "--verbose"],
        &["sh", "-c", "echo hello && exec app --listen=:8080"],
        &["redis://localhost:6379"],
    ];
    for input in plain {
        let input = strings(input);
        assert_eq!(mask_command_args(&input), (input.clone(), false), "{input:?}");
    }
    for message in ["Back-off restarting failed container", "0/3 nodes are available: 3 Insufficient cpu."] {
        assert_eq!(mask_inline_secrets(message), (message.to_owned(), false));
    }
}

#[test]
fn oversized_values_are_masked_whole() {
    let big = "a ".repeat(MAX_SCANNED_BYTES);
    assert_eq!(mask_inline_secrets(&big), (M.to_owned(), true));
}

/// A secret nobody would type by accident: starts with `Zq9`, then letters and digits.
fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{6,20}".prop_map(|s| format!("Zq9{s}"))
}

/// Lowercase words and spaces around a shape (never mistaken for part of the secret).
fn noise() -> impl Strategy<Value = String> {
    "([a-z]{1,8} ){0,4}"
}

/// Every shape as a single string, `{S}` standing for the secret.
const TEXT_SHAPES: &[&str] = &[
    "DB_PASSWORD='{S}' app",
    "DB_PASSWORD=\"{S}\" app",
    "PGPASSWORD={S} psql",
    "mysql -uroot -p{S} db",
    "mysqldump -h db -p{S}",
    "redis-cli -a {S} ping",
    "app --pass={S}",
    "app --password {S} -v",
    "app --password={S}",
    "app --signing-key={S}",
    "app --client-secret {S}",
    "curl -u user:{S} http://x",
    "curl --user user:{S} http://x",
    "postgres://user:{S}@db:5432/app",
    "https://user:{S}@host/x",
    "Authorization: Bearer {S}",
    "Authorization: Basic {S}",
    "curl -H 'Authorization: Bearer {S}' x",
    "got Bearer {S}x0000000",
    "{\"password\":\"{S}\"}",
    "{\"user\": \"u\", \"api_key\": \"{S}\"}",
    "{\\\"token\\\":\\\"{S}\\\"}",
    "password: {S}",
    "X-Api-Key: {S}",
    "/healthz?apikey={S}&v=1",
    "/healthz?v=1&token={S}",
    "/x?sig={S}",
    "-----BEGIN PRIVATE KEY-----\n{S}\n-----END PRIVATE KEY-----",
    "-----BEGIN EC PRIVATE KEY-----\n{S}",
];

/// Shapes as argument vectors.
const ARG_SHAPES: &[&[&str]] = &[
    &["--password", "{S}"],
    &["--db-pass", "{S}"],
    &["--signing-key={S}"],
    &["mysql", "-uroot", "-p{S}"],
    &["redis-cli", "-a", "{S}"],
    &["sshpass", "-p", "{S}", "ssh", "host"],
    &["curl", "-u", "admin:{S}"],
    &["sh", "-c", "DB_PASSWORD='{S}' app"],
    &["--config", "{\"password\":\"{S}\"}"],
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn an_injected_secret_never_survives_in_any_text_shape(
        shape in 0..TEXT_SHAPES.len(), secret in secret(), before in noise(), after in noise()
    ) {
        let input = format!("{before}{} {after}", TEXT_SHAPES[shape].replace("{S}", &secret));
        let (out, masked) = mask_inline_secrets(&input);
        prop_assert!(masked, "{input:?}");
        prop_assert!(!out.contains(&secret), "{input:?} -> {out:?}");
        prop_assert_eq!(mask_inline_secrets(&out), (out.clone(), false));
    }

    #[test]
    fn an_injected_secret_never_survives_in_any_arg_shape(
        shape in 0..ARG_SHAPES.len(), secret in secret(), split in 0usize..4
    ) {
        let input: Vec<String> = ARG_SHAPES[shape].iter().map(|a| a.replace("{S}", &secret)).collect();
        let (out, masked) = mask_command_args(&input);
        prop_assert!(masked);
        prop_assert!(!out.iter().any(|a| a.contains(&secret)), "{input:?} -> {out:?}");
        // However the words are split between `command` and `args`.
        let at = split.min(input.len());
        let (command, args, _) = mask_container_command(&input[..at], &input[at..]);
        prop_assert!(!command.iter().chain(&args).any(|a| a.contains(&secret)), "{input:?} split at {at}");
    }

    #[test]
    fn tokens_and_key_ids_never_survive(
        header in "[A-Za-z0-9_-]{4,40}", payload in "[A-Za-z0-9_-]{4,80}", sig in "[A-Za-z0-9_-]{0,80}",
        key in "[A-Z0-9]{16}", before in noise()
    ) {
        let jwt = format!("eyJ{header}.eyJ{payload}.{sig}");
        let aws = format!("AKIA{key}");
        let out = mask_inline_secrets(&format!("{before}{jwt} {aws}")).0;
        prop_assert!(!out.contains(&jwt) && !out.contains(&payload) && !out.contains(&aws), "{out:?}");
    }

    #[test]
    fn masking_any_text_never_panics_and_is_idempotent(input in any::<String>()) {
        let (once, _) = mask_inline_secrets(&input);
        prop_assert_eq!(mask_inline_secrets(&once), (once.clone(), false));
    }

    #[test]
    fn masking_shaped_text_is_idempotent(
        parts in proptest::collection::vec(prop_oneof![
            Just("--password".to_owned()), Just("=".to_owned()), Just(" ".to_owned()), Just("'".to_owned()),
            Just("\"".to_owned()), Just(":".to_owned()), Just("@".to_owned()), Just("://".to_owned()),
            Just("-p".to_owned()), Just("mysql".to_owned()), Just("-u".to_owned()), Just("Bearer".to_owned()),
            Just("Authorization".to_owned()), Just("token".to_owned()), Just("eyJ".to_owned()), Just(".".to_owned()),
            Just("AKIA".to_owned()), Just("-----BEGIN PRIVATE KEY-----".to_owned()), Just("-----END PRIVATE KEY-----".to_owned()),
            Just("\\\"".to_owned()), Just("&".to_owned()), Just("?".to_owned()), Just(MASKED.to_owned()), Just("<".to_owned()),
            "[A-Za-z0-9]{1,24}"
        ], 0..24)
    ) {
        let input: String = parts.concat();
        let once = mask_inline_secrets(&input).0;
        prop_assert_eq!(mask_inline_secrets(&once).0, once.clone(), "input {:?}", input);
        let args: Vec<String> = input.split(' ').map(str::to_owned).collect();
        let once = mask_command_args(&args).0;
        prop_assert_eq!(mask_command_args(&once).0, once.clone(), "args {:?}", args);
    }

    #[test]
    fn masking_any_args_never_panics_and_is_idempotent(input in proptest::collection::vec(any::<String>(), 0..8)) {
        let (once, _) = mask_command_args(&input);
        prop_assert_eq!(once.len(), input.len());
        prop_assert_eq!(mask_command_args(&once).0, once);
    }
}
