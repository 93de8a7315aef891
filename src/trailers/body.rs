use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::cache::TokenCache;
use crate::reject::is_grpc_unauthenticated;

/// The token a request carried, to drop if the trailers reject it.
pub(super) struct Watch {
    pub(super) token: HeaderValue,
    pub(super) cache: TokenCache,
}

pin_project! {
    /// A response body that drops its request's token when its trailers say
    /// `grpc-status: 16`. Its frames are the inner body's, untouched.
    pub struct WatchTrailersBody<B> {
        #[pin]
        pub(super) inner: B,
        pub(super) watch: Option<Watch>,
    }
}

impl<B> fmt::Debug for WatchTrailersBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WatchTrailersBody")
    }
}

impl<B: Body> Body for WatchTrailersBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(trailers) = frame.trailers_ref()
            && is_grpc_unauthenticated(trailers)
            && let Some(watch) = this.watch.take()
        {
            watch.cache.invalidate_token(&watch.token);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
