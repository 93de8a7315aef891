use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::WatchTrailersBody;
use super::body::Watch;

pin_project! {
    /// The response future of [`WatchTrailers`](super::WatchTrailers).
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct WatchTrailersFuture<F> {
        #[pin]
        pub(super) future: F,
        pub(super) watch: Option<Watch>,
    }
}

impl<F> fmt::Debug for WatchTrailersFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WatchTrailersFuture")
    }
}

impl<F, ResBody, E> Future for WatchTrailersFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<WatchTrailersBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.future.poll(cx))?;
        let watch = this.watch.take();
        Poll::Ready(Ok(response.map(|inner| WatchTrailersBody { inner, watch })))
    }
}
