//! What the crate records through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`), for the application's own exporter (Prometheus, OpenTelemetry, …). Without a
//! recorder installed each record is a call that does nothing; without the feature, nothing is
//! compiled in. A request served from a cached token records nothing.
//!
//! The names and labels are a contract:
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `cognito_auth_token_requests_total` | counter | `client`, `outcome` | token requests sent on the wire; `outcome` is `ok`, `rejected` (a 4xx OAuth error), `rate_limited` (429), `unavailable` (5xx, no connection), `timeout` or `invalid_response` |
//! | `cognito_auth_token_request_duration_seconds` | histogram | `client` | one token request, sent to answered |
//! | `cognito_auth_replays_total` | counter | `client` | requests sent again after a rejection |
//! | `cognito_auth_waits_total` | counter | `client` | requests that waited for a refresh |
//! | `cognito_auth_token_expiry_timestamp_seconds` | gauge | `client` | the current token's expiry, in Unix seconds (alert on `… - time() < 60`) |
//! | `cognito_auth_store_adoptions_total` | counter | `client` | fleet: tokens adopted from the shared store |
//! | `cognito_auth_store_fallbacks_total` | counter | `client` | fleet: refreshes that fetched alone because the store failed |
//! | `cognito_auth_session_rotations_total` | counter | `client` | user sessions: refresh tokens rotated |
//!
//! `client` is the app client's id (not a secret) unless the builder sets another label
//! ([`metrics_client`](crate::CognitoAuthLayerBuilder::metrics_client)), for a process with
//! several caches of one client.

use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// Where one cache or grant records, with its `client` label.
#[derive(Clone, Debug, Default)]
pub(crate) struct Metrics {
    #[cfg(feature = "metrics")]
    client: ::metrics::SharedString,
}

/// How a token request ended, as the `outcome` label says it.
pub(crate) fn outcome<T>(result: &Result<T, Error>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(error) => match error.kind() {
            ErrorKind::Rejected => "rejected",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Timeout => "timeout",
            ErrorKind::InvalidResponse => "invalid_response",
            _ => "unavailable",
        },
    }
}

#[cfg(feature = "metrics")]
impl Metrics {
    pub(crate) fn new(client: &str) -> Self {
        Self {
            client: std::sync::Arc::<str>::from(client).into(),
        }
    }

    pub(crate) fn token_request(&self, outcome: &'static str, took: Duration) {
        let client = self.client.clone();
        ::metrics::counter!("cognito_auth_token_requests_total", "client" => client.clone(), "outcome" => outcome)
            .increment(1);
        ::metrics::histogram!("cognito_auth_token_request_duration_seconds", "client" => client)
            .record(took.as_secs_f64());
    }

    pub(crate) fn replay(&self) {
        ::metrics::counter!("cognito_auth_replays_total", "client" => self.client.clone())
            .increment(1);
    }

    pub(crate) fn wait(&self) {
        ::metrics::counter!("cognito_auth_waits_total", "client" => self.client.clone())
            .increment(1);
    }

    /// The current token expires in `remaining` (on Tokio's clock), set as a Unix time.
    pub(crate) fn expiry(&self, remaining: Duration) {
        let at = std::time::SystemTime::now()
            .checked_add(remaining)
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |at| at.as_secs_f64());
        ::metrics::gauge!("cognito_auth_token_expiry_timestamp_seconds", "client" => self.client.clone())
            .set(at);
    }

    #[cfg_attr(not(feature = "store"), allow(dead_code))]
    pub(crate) fn adoption(&self) {
        ::metrics::counter!("cognito_auth_store_adoptions_total", "client" => self.client.clone())
            .increment(1);
    }

    #[cfg_attr(not(feature = "store"), allow(dead_code))]
    pub(crate) fn fallback(&self) {
        ::metrics::counter!("cognito_auth_store_fallbacks_total", "client" => self.client.clone())
            .increment(1);
    }

    pub(crate) fn rotation(&self) {
        ::metrics::counter!("cognito_auth_session_rotations_total", "client" => self.client.clone())
            .increment(1);
    }
}

/// Without the feature: nothing is recorded, and nothing is compiled in.
#[cfg(not(feature = "metrics"))]
#[allow(clippy::unused_self)]
impl Metrics {
    pub(crate) fn new(_client: &str) -> Self {
        Self {}
    }
    pub(crate) fn token_request(&self, _outcome: &'static str, _took: Duration) {}
    pub(crate) fn replay(&self) {}
    pub(crate) fn wait(&self) {}
    pub(crate) fn expiry(&self, _remaining: Duration) {}
    #[allow(dead_code)]
    pub(crate) fn adoption(&self) {}
    #[allow(dead_code)]
    pub(crate) fn fallback(&self) {}
    pub(crate) fn rotation(&self) {}
}
