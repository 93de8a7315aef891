use std::fmt;

use tower::Layer;

use super::WatchTrailers;
use crate::cache::TokenCache;

/// A [`Layer`] that drops a token rejected in a response's trailers. Made by
/// [`CognitoAuthLayer::watch_trailers`](crate::CognitoAuthLayer::watch_trailers); see the
/// [module docs](crate::trailers) for where it goes and an example.
#[derive(Clone)]
pub struct WatchTrailersLayer {
    cache: TokenCache,
}

impl WatchTrailersLayer {
    pub(crate) fn new(cache: TokenCache) -> Self {
        Self { cache }
    }
}

impl fmt::Debug for WatchTrailersLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WatchTrailersLayer")
    }
}

impl<S> Layer<S> for WatchTrailersLayer {
    type Service = WatchTrailers<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WatchTrailers {
            inner,
            cache: self.cache.clone(),
        }
    }
}
