//! What the crate records through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`), for the application's own exporter (Prometheus, OpenTelemetry, …). Without a
//! recorder installed each record is a call that does nothing; without the feature, nothing is
//! compiled in. A request served from a cached token records nothing.
//!
//! The names and labels are a contract:
//!
//! | name | kind | labels | what | [`Stats`](crate::Stats) field |
//! |---|---|---|---|---|
//! | `cognito_auth_token_requests_total` | counter | `client`, `outcome` | HTTP requests sent to the token endpoint, each retry counted | none: `token_requests` counts fetches, whose retries are not counted apart |
//! | `cognito_auth_token_request_duration_seconds` | histogram | `client`, `outcome` | one HTTP request to the token endpoint, sent to answered (or timed out) | none |
//! | `cognito_auth_refresh_failures_total` | counter | `client`, `outcome` | refreshes that failed, after their retries | `token_failures` |
//! | `cognito_auth_invalidations_total` | counter | `client` | tokens dropped because the service rejected them (401, gRPC 16) | `invalidations` |
//! | `cognito_auth_replays_total` | counter | `client` | requests sent again after a rejection | `replays` |
//! | `cognito_auth_rejections_returned_total` | counter | `client` | rejections handed back to the caller: with no replay made, or the replay's own | `rejections_returned` |
//! | `cognito_auth_waits_total` | counter | `client` | requests that waited for a refresh | `waited` |
//! | `cognito_auth_token_expiry_timestamp_seconds` | gauge | `client` | when the current token expires, in Unix seconds (alert on `… - time() < 60`); not set by a user session's cache | none |
//! | `cognito_auth_store_adoptions_total` | counter | `client` | fleet: tokens adopted from the shared store | `adopted` |
//! | `cognito_auth_store_fallbacks_total` | counter | `client` | fleet: refreshes that fetched alone because the store failed | `store_fallbacks` |
//! | `cognito_auth_session_rotations_total` | counter | `client` | user sessions: refresh tokens rotated | none |
//!
//! `outcome` is `ok`, `rejected` (a 4xx such as `invalid_client`), `rate_limited` (429),
//! `unavailable` (5xx, no connection), `timeout`, `invalid_response`, `invalid_config` or
//! `internal` (the refresh ended without a result): one value per [`ErrorKind`], so that slow
//! timeouts do not hide among the successes of the histogram.
//!
//! `client` is the label of the cache the series belongs to: the app client's id (not a
//! secret), unless the builder sets another with
//! [`metrics_client`](crate::CognitoAuthLayerBuilder::metrics_client). It covers every series
//! of that cache, those of its token source included: the token requests and rotations of a
//! [`RefreshTokenGrant`](crate::RefreshTokenGrant) or a
//! [`ClientCredentials`](crate::ClientCredentials) given to
//! [`token_source`](crate::CognitoAuthLayerBuilder::token_source) carry the layer's label while
//! the layer's cache fetches with them. A custom [`TokenSource`](crate::TokenSource) records
//! nothing itself; its cache's series are labelled with its
//! [`client_id`](crate::TokenSource::client_id), else `unknown`.
//!
//! Several caches may share a label (many users' sessions of one app client): the counters add
//! up. The expiry gauge is one cache's: a user session's cache never sets it (each session has
//! an expiry of its own, and thousands share an app client's label); other caches that share a
//! label set the same gauge, the last to get a token winning, so give each a label of its own
//! ([`metrics_client`](crate::CognitoAuthLayerBuilder::metrics_client)) to watch them apart.
//! No process-wide registry is kept for it.
//!
//! Descriptions (Prometheus `# HELP`) and units are registered with the recorder when a cache
//! or a grant is built; call [`describe`] if the recorder is installed after that.
//!
//! The histogram shows up in Prometheus as a summary unless the exporter is given buckets,
//! e.g. with `metrics-exporter-prometheus`:
//! `PrometheusBuilder::new().set_buckets_for_metric(Matcher::Prefix("cognito_auth_".into()),
//! &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])`.

use crate::error::{Error, ErrorKind};

/// Registers the descriptions and units of the crate's metrics with the installed recorder
/// (Prometheus shows them as `# HELP`). Building a cache or a grant does it too; call this when
/// the recorder is installed after that.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "cognito_auth_token_requests_total",
        Unit::Count,
        "HTTP requests sent to the OAuth token endpoint, each retry counted, by outcome"
    );
    describe_histogram!(
        "cognito_auth_token_request_duration_seconds",
        Unit::Seconds,
        "Time of one HTTP request to the OAuth token endpoint, sent to answered, by outcome"
    );
    describe_counter!(
        "cognito_auth_refresh_failures_total",
        Unit::Count,
        "Token refreshes that failed after their retries, by outcome"
    );
    describe_counter!(
        "cognito_auth_invalidations_total",
        Unit::Count,
        "Tokens dropped because the service rejected them (HTTP 401, gRPC UNAUTHENTICATED)"
    );
    describe_counter!(
        "cognito_auth_replays_total",
        Unit::Count,
        "Requests sent again with a new token after a rejection"
    );
    describe_counter!(
        "cognito_auth_rejections_returned_total",
        Unit::Count,
        "Rejections (HTTP 401, gRPC UNAUTHENTICATED) handed back to the caller, a replay's included"
    );
    describe_counter!(
        "cognito_auth_waits_total",
        Unit::Count,
        "Requests that found no usable token and waited for a refresh"
    );
    describe_gauge!(
        "cognito_auth_token_expiry_timestamp_seconds",
        Unit::Seconds,
        "When the current access token of the client's cache expires, as a Unix timestamp"
    );
    describe_counter!(
        "cognito_auth_store_adoptions_total",
        Unit::Count,
        "Tokens adopted from the fleet's shared store instead of requested"
    );
    describe_counter!(
        "cognito_auth_store_fallbacks_total",
        Unit::Count,
        "Refreshes that fetched for this process alone because the shared store failed"
    );
    describe_counter!(
        "cognito_auth_session_rotations_total",
        Unit::Count,
        "Refresh tokens rotated by the token endpoint in user sessions"
    );
}

/// How a token request or a refresh ended, as the `outcome` label says it: one value per
/// error kind (a new kind does not compile until it has its own).
pub(crate) fn outcome<T>(result: &Result<T, Error>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(error) => error_outcome(error),
    }
}

/// The `outcome` label of a failure.
pub(crate) fn error_outcome(error: &Error) -> &'static str {
    match error.kind() {
        ErrorKind::Rejected => "rejected",
        ErrorKind::RateLimited => "rate_limited",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Timeout => "timeout",
        ErrorKind::InvalidResponse => "invalid_response",
        ErrorKind::InvalidConfig => "invalid_config",
        ErrorKind::Internal => "internal",
    }
}

#[cfg(feature = "metrics")]
pub(crate) use enabled::Metrics;

#[cfg(feature = "metrics")]
mod enabled {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use ::metrics::SharedString;

    tokio::task_local! {
        /// The label of the cache whose refresh is running: a token source's series carry it.
        static LABEL: SharedString;
    }

    /// Where one cache or grant records, with its `client` label.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Metrics {
        client: SharedString,
        /// Whether this cache sets the expiry gauge: not a user session's (thousands of them
        /// share one app client's label, and each has its own expiry).
        expiry_gauge: bool,
    }

    fn gauge(client: &SharedString) -> ::metrics::Gauge {
        ::metrics::gauge!("cognito_auth_token_expiry_timestamp_seconds", "client" => client.clone())
    }

    impl Metrics {
        pub(crate) fn new(client: &str) -> Self {
            super::describe();
            Self {
                client: Arc::<str>::from(client).into(),
                expiry_gauge: true,
            }
        }

        /// This one, without the expiry gauge (a user session's cache).
        pub(crate) fn without_expiry_gauge(self) -> Self {
            Self {
                expiry_gauge: false,
                ..self
            }
        }

        /// The label: the running refresh's cache's, else this one's.
        fn label(&self) -> SharedString {
            LABEL
                .try_with(SharedString::clone)
                .unwrap_or_else(|_| self.client.clone())
        }

        /// This one, or the running refresh's cache's label when there is one: for a grant
        /// that records from a thread of its own, taken where its fetch starts.
        pub(crate) fn in_scope(&self) -> Self {
            Self {
                client: self.label(),
                expiry_gauge: false,
            }
        }

        /// `future`, run under this one's label (see [`in_scope`](Self::in_scope)).
        pub(crate) fn labelling<F: Future>(&self, future: F) -> impl Future<Output = F::Output> {
            LABEL.scope(self.client.clone(), future)
        }

        /// Runs `fetch` (its synchronous part and its future) under this cache's label.
        pub(crate) fn scoped<'a, T: 'a>(
            &self,
            fetch: impl FnOnce() -> Pin<Box<dyn Future<Output = T> + Send + 'a>>,
        ) -> Pin<Box<dyn Future<Output = T> + Send + 'a>> {
            let future = LABEL.sync_scope(self.client.clone(), fetch);
            Box::pin(LABEL.scope(self.client.clone(), future))
        }

        pub(crate) fn token_request(&self, outcome: &'static str, took: Duration) {
            let client = self.label();
            ::metrics::counter!("cognito_auth_token_requests_total", "client" => client.clone(), "outcome" => outcome)
                .increment(1);
            ::metrics::histogram!("cognito_auth_token_request_duration_seconds", "client" => client, "outcome" => outcome)
                .record(took.as_secs_f64());
        }

        pub(crate) fn refresh_failure(&self, outcome: &'static str) {
            ::metrics::counter!("cognito_auth_refresh_failures_total", "client" => self.client.clone(), "outcome" => outcome)
                .increment(1);
        }

        pub(crate) fn invalidation(&self) {
            ::metrics::counter!("cognito_auth_invalidations_total", "client" => self.client.clone())
                .increment(1);
        }

        pub(crate) fn replay(&self) {
            ::metrics::counter!("cognito_auth_replays_total", "client" => self.client.clone())
                .increment(1);
        }

        pub(crate) fn rejection_returned(&self) {
            ::metrics::counter!("cognito_auth_rejections_returned_total", "client" => self.client.clone())
                .increment(1);
        }

        pub(crate) fn wait(&self) {
            ::metrics::counter!("cognito_auth_waits_total", "client" => self.client.clone())
                .increment(1);
        }

        /// The current token expires in `remaining` (on Tokio's clock), kept as a Unix time.
        /// A cache that shares its label with another sets the same gauge: the last one to
        /// get a token wins (give each its own label with `metrics_client`).
        pub(crate) fn expiry(&self, remaining: Duration) {
            if !self.expiry_gauge {
                return;
            }
            let at = SystemTime::now()
                .checked_add(remaining)
                .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                .map_or(0.0, |at| at.as_secs_f64());
            gauge(&self.client).set(at);
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
            ::metrics::counter!("cognito_auth_session_rotations_total", "client" => self.label())
                .increment(1);
        }
    }
}

/// Where one cache or grant records: without the feature, nowhere, and nothing is compiled in.
#[cfg(not(feature = "metrics"))]
#[derive(Clone, Debug, Default)]
pub(crate) struct Metrics {}

#[cfg(not(feature = "metrics"))]
#[allow(clippy::unused_self)]
impl Metrics {
    pub(crate) fn new(_client: &str) -> Self {
        Self {}
    }
    pub(crate) fn without_expiry_gauge(self) -> Self {
        self
    }
    pub(crate) fn in_scope(&self) -> Self {
        Self {}
    }
    pub(crate) fn scoped<'a, T: 'a>(
        &self,
        fetch: impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>,
    ) -> std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>> {
        fetch()
    }
    pub(crate) fn labelling<F: Future>(&self, future: F) -> F {
        future
    }
    pub(crate) fn token_request(&self, _outcome: &'static str, _took: std::time::Duration) {}
    pub(crate) fn refresh_failure(&self, _outcome: &'static str) {}
    pub(crate) fn invalidation(&self) {}
    pub(crate) fn replay(&self) {}
    pub(crate) fn rejection_returned(&self) {}
    pub(crate) fn wait(&self) {}
    pub(crate) fn expiry(&self, _remaining: std::time::Duration) {}
    #[allow(dead_code)]
    pub(crate) fn adoption(&self) {}
    #[allow(dead_code)]
    pub(crate) fn fallback(&self) {}
    pub(crate) fn rotation(&self) {}
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use http::StatusCode;

    use super::error_outcome;
    use crate::error::Error;

    /// Each error kind has an `outcome` of its own (none falls into another's).
    #[test]
    fn every_error_kind_has_its_own_outcome() {
        let errors = [
            Error::rejected(StatusCode::BAD_REQUEST, Some("invalid_client"), None),
            Error::rate_limited(None),
            Error::server_error(StatusCode::BAD_GATEWAY, None),
            Error::timeout("the token request", Duration::from_secs(10)),
            Error::invalid_response("not a token response"),
            Error::invalid_config("no client id"),
            Error::internal("the token source panicked"),
        ];
        let kinds: HashSet<_> = errors.iter().map(Error::kind).collect();
        let outcomes: HashSet<_> = errors.iter().map(error_outcome).collect();
        assert_eq!(kinds.len(), errors.len(), "one error per kind");
        assert_eq!(outcomes.len(), kinds.len(), "{outcomes:?}");
        assert!(!outcomes.contains("ok"));
    }
}
