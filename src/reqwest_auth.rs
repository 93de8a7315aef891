//! The same tokens for a [reqwest](https://docs.rs/reqwest) client (feature `reqwest`), through
//! [reqwest-middleware](https://docs.rs/reqwest-middleware).
//!
//! reqwest takes no tower layer for its requests, so [`CognitoAuthLayer::reqwest_middleware`]
//! gives a [`CognitoAuthMiddleware`] over the layer's own cache: tower services and reqwest
//! clients built from one layer share one token, one single-flight refresh and one set of
//! counters. The rules are the tower service's, from the same functions:
//! - a request that already has an `Authorization` header is left alone;
//! - the header is marked sensitive;
//! - a `401` drops that token (only that generation, at most once per
//!   [`invalidation_throttle`](crate::CognitoAuthLayerBuilder::invalidation_throttle)), and the
//!   request is sent once more with the next token when the [`Replay`] policy
//!   allows its method, its body fits
//!   [`replay_body_limit`](crate::CognitoAuthLayerBuilder::replay_body_limit) and reqwest can
//!   clone it (`Request::try_clone`: a streaming body cannot be, and is sent once; its `401`
//!   goes back to the caller). The `401`'s body is read (up to 64 KiB) before the replay, so
//!   that its connection goes back to the pool;
//! - unlike the tower service, no `grpc-status` header counts as a rejection: reqwest speaks no
//!   gRPC;
//! - no token, no call: a failure to get one, before the request or after a `401`, is
//!   [`reqwest_middleware::Error::Middleware`] holding this crate's [`Error`], which
//!   `downcast_ref` finds.
//!
//! With reqwest-retry, add its middleware before this one, so that each attempt gets the
//! current token; it treats `Error::Middleware` as fatal, which suits a token failure (the
//! cache has already retried and paces its refreshes).
//!
//! The token requests themselves can go through the same `reqwest::Client`:
//! `reqwest_client(..)` on the builders.
//!
//! ```no_run
//! # async fn example() -> Result<(), tower::BoxError> {
//! use tower_cognito_auth::CognitoAuthLayer;
//!
//! let auth = CognitoAuthLayer::builder()
//!     .cognito_domain("my-pool", "us-east-1")
//!     .client_id(std::env::var("COGNITO_CLIENT_ID")?)
//!     .client_secret(std::env::var("COGNITO_CLIENT_SECRET")?)
//!     .build()?;
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(auth.reqwest_middleware())
//!     .build();
//! let response = client.get("https://api.example.com/wallets").send().await;
//! match response {
//!     Ok(response) => println!("{}", response.status()),
//!     Err(reqwest_middleware::Error::Middleware(e)) => {
//!         if let Some(e) = e.downcast_ref::<tower_cognito_auth::Error>() {
//!             eprintln!("no token: {e}");
//!         }
//!     }
//!     Err(e) => eprintln!("{e}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`CognitoAuthLayer::reqwest_middleware`]: crate::CognitoAuthLayer::reqwest_middleware

use std::fmt;

use http::header::AUTHORIZATION;
use http::{Extensions, HeaderValue};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::cache::{Generation, Lookup, TokenCache};
use crate::error::Error;
use crate::future::header_and_generation;
use crate::reject::{is_rejected_status, replay_with};
use crate::replay::Replay;

/// The most of a rejection's body that is read (and dropped) before a replay, so that its
/// connection goes back to reqwest's pool; a longer body closes the connection instead.
const DRAIN_LIMIT: usize = 64 * 1024;

/// A [`reqwest_middleware::Middleware`] that puts the layer's token on every request and
/// replays a request once when its token is rejected. Made by
/// [`CognitoAuthLayer::reqwest_middleware`](crate::CognitoAuthLayer::reqwest_middleware); see
/// the [module docs](crate::reqwest_auth).
#[derive(Clone)]
pub struct CognitoAuthMiddleware {
    cache: TokenCache,
    replay: Replay,
    replay_body_limit: usize,
}

impl CognitoAuthMiddleware {
    pub(crate) fn new(cache: TokenCache, replay: Replay, replay_body_limit: usize) -> Self {
        Self {
            cache,
            replay,
            replay_body_limit,
        }
    }

    /// The token's header and generation: the cached one, or the refresh's (the tower
    /// service's lookup).
    async fn token(&self) -> Result<(HeaderValue, Generation), Error> {
        if let Some(fresh) = self.cache.fresh_header() {
            return Ok(fresh);
        }
        match self.cache.lookup(header_and_generation) {
            Lookup::Ready(token) => Ok(token),
            Lookup::Wait(wait) => wait.await.map(|entry| header_and_generation(&entry)),
            Lookup::Failed(error) => Err(error),
        }
    }

    /// A copy of the request to send again after a rejection, when the policy, the body's size
    /// and reqwest allow one (made before the header goes in).
    fn keep(&self, request: &Request) -> Option<Request> {
        if !self.replay.allows(request.method()) {
            return None;
        }
        let fits = match request.body() {
            None => true,
            // A stream has no bytes to look at, and is never replayed.
            Some(body) => body
                .as_bytes()
                .is_some_and(|bytes| bytes.len() <= self.replay_body_limit),
        };
        if !fits {
            return None;
        }
        request.try_clone()
    }
}

impl fmt::Debug for CognitoAuthMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CognitoAuthMiddleware")
            .field("replay", &self.replay)
            .field("replay_body_limit", &self.replay_body_limit)
            .finish_non_exhaustive()
    }
}

/// Reads what is left of a rejection's body, up to [`DRAIN_LIMIT`], so that reqwest can reuse
/// its connection for the replay; errors only mean the connection is not reused.
async fn drain(mut response: Response) {
    let mut read = 0;
    while read <= DRAIN_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => return,
        }
    }
}

#[async_trait::async_trait]
impl Middleware for CognitoAuthMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        if request.headers().contains_key(AUTHORIZATION) {
            // The caller chose its own credentials.
            return next.run(request, extensions).await;
        }
        let kept = self.keep(&request);
        let (header, generation) = self
            .token()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        request.headers_mut().insert(AUTHORIZATION, header);
        let response = next.clone().run(request, extensions).await?;
        // The tower service's rule but for gRPC: reqwest speaks HTTP/1 and HTTP/2 without
        // gRPC's framing, so a `grpc-status` header here is an ordinary header.
        if !is_rejected_status(response.status()) {
            return Ok(response);
        }
        self.cache.invalidate(generation);
        let Some(mut again) = kept else {
            // Not replayable (a stream, a body over the limit, or the policy): the rejection
            // goes back, and the next request gets a new token.
            self.cache.count_rejection_returned();
            return Ok(response);
        };
        match self.token().await {
            Ok((header, next_generation)) if replay_with(next_generation, generation) => {
                self.cache.count_replay();
                drain(response).await;
                again.headers_mut().insert(AUTHORIZATION, header);
                let answer = next.run(again, extensions).await?;
                if is_rejected_status(answer.status()) {
                    self.cache.count_rejection_returned();
                }
                Ok(answer)
            }
            // The same token again (the rejection was throttled): a replay cannot do better
            // than the answer we have.
            Ok(_) => {
                self.cache.count_rejection_returned();
                Ok(response)
            }
            // No new token: that is what went wrong, and what the caller gets.
            Err(error) => Err(reqwest_middleware::Error::middleware(error)),
        }
    }
}
