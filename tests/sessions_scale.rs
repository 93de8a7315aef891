//! A server's scale (issue 26): 2,000 user sessions in one process, each refreshed once, cost
//! no thread and no file descriptor each. They share the built-in HTTPS client (one pool) and
//! a fixed number of exchange threads. Linux only: it reads `/proc/self`.
//!
//! The only test of its binary, so that no other test's threads or sockets are counted.
#![cfg(all(feature = "test-util", feature = "rustls", target_os = "linux"))]

use tower_cognito_auth::testing::TokenEndpoint;
use tower_cognito_auth::{RefreshTokenGrant, TokenSource};

/// The process's thread count, from `/proc/self/status`.
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

/// The process's open file descriptors, from `/proc/self/fd`.
fn descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Sessions of `endpoint` with the built-in client (none given), each refreshed once.
async fn sessions(endpoint: &TokenEndpoint, count: usize) -> Vec<RefreshTokenGrant> {
    let mut grants = Vec::with_capacity(count);
    for _ in 0..count {
        let grant = RefreshTokenGrant::builder()
            .token_url(endpoint.token_url())
            .client_id(endpoint.client_id())
            .refresh_token(endpoint.new_session())
            .build()
            .unwrap();
        grant.fetch().await.unwrap();
        grants.push(grant);
    }
    grants
}

#[tokio::test]
async fn two_thousand_sessions_cost_no_thread_and_no_descriptor_each() {
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .start()
        .await
        .unwrap();
    // The first sessions start what every session shares: the exchange threads, the client's
    // pooled connection, the runtime's blocking thread the fetch waits on.
    let first = sessions(&endpoint, 10).await;
    let (threads_before, fds_before) = (threads(), descriptors());

    let many = sessions(&endpoint, 2_000).await;
    let (threads_after, fds_after) = (threads(), descriptors());
    assert_eq!(endpoint.tokens_issued(), 2_010);
    assert!(!endpoint.is_session_revoked());
    // A bound that does not depend on the number of sessions: a blocking thread or a pooled
    // connection may come and go, 2,000 of them may not (a thread and a runtime each: 2,000
    // threads and 4,000 descriptors).
    assert!(
        threads_after <= threads_before + 4,
        "threads grew with the sessions: {threads_before} -> {threads_after}"
    );
    assert!(
        fds_after <= fds_before + 4,
        "descriptors grew with the sessions: {fds_before} -> {fds_after}"
    );
    drop((first, many));
}
