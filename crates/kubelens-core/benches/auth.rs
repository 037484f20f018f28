//! Token validation cost: a fresh token (full validation: parse, key lookup, RS256 signature,
//! claims, groups) versus a cached one (SHA-256 of the token + cache lookup + principal clone).
//!
//! `cargo bench -p kubelens-core --features test-util --bench auth`
//! Results and machine notes: docs/benchmarks/auth.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use futures::executor::block_on;
use kubelens_core::auth::testing::TestIssuer;

fn bench(c: &mut Criterion) {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator();
    // A realistic Keycloak-sized token (~1 KB: several groups, roles, email).
    let token = issuer.token_for(
        "3f2b9c1e-7a4d-4f0e-9b1a-2c8d7e6f5a4b",
        &["/k8s-logs-access", "/k8s-admin-access", "/team-a", "/team-b/devs"],
    );
    println!("token length: {} bytes", token.len());
    let mut group = c.benchmark_group("auth");
    group.bench_function("fresh_token_full_validation", |b| {
        b.iter(|| {
            auth.clear_cache();
            block_on(auth.authenticate(&token)).unwrap()
        })
    });
    group.bench_function("clear_cache_only", |b| b.iter(|| auth.clear_cache()));
    block_on(auth.authenticate(&token)).unwrap();
    group.bench_function("cached_token", |b| b.iter(|| block_on(auth.authenticate(&token)).unwrap()));
    let bad = format!("{}x", &token[..token.len() - 1]);
    group.bench_function("tampered_token_rejected", |b| b.iter(|| block_on(auth.authenticate(&bad)).unwrap_err()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
