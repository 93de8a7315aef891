//! The [`ReplayBody`] implementations of the crate, and the body types they are built with.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt as _, Empty, Full};
use pin_project_lite::pin_project;

use super::ReplayBody;

pub(super) fn join_data(taken: Vec<Frame<Bytes>>) -> Bytes {
    let mut data: Vec<Bytes> = taken
        .into_iter()
        .filter_map(|frame| frame.into_data().ok())
        .collect();
    match data.len() {
        0 => Bytes::new(),
        1 => data.pop().unwrap_or_default(),
        _ => {
            let mut joined = BytesMut::with_capacity(data.iter().map(Bytes::len).sum());
            for chunk in data {
                joined.extend_from_slice(&chunk);
            }
            joined.freeze()
        }
    }
}

/// `Full` yields its one frame and is then exhausted, so `rejoin` only meets an empty rest.
impl ReplayBody for Full<Bytes> {
    fn from_kept(kept: Bytes) -> Self {
        Full::new(kept)
    }

    fn rejoin(taken: Vec<Frame<Bytes>>, _rest: Self) -> Self {
        Full::new(join_data(taken))
    }
}

/// `Empty` yields nothing: what is kept is always empty.
impl ReplayBody for Empty<Bytes> {
    fn from_kept(_kept: Bytes) -> Self {
        Empty::new()
    }

    fn rejoin(_taken: Vec<Frame<Bytes>>, rest: Self) -> Self {
        rest
    }
}

/// A `String` yields its text as one frame and is then empty. Rebuilding one copies the bytes
/// (a `String` cannot share them); prefer `Full<Bytes>` for large bodies.
impl ReplayBody for String {
    fn from_kept(kept: Bytes) -> Self {
        match String::from_utf8(kept.to_vec()) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    fn rejoin(taken: Vec<Frame<Bytes>>, rest: Self) -> Self {
        let mut text = Self::from_kept(join_data(taken));
        text.push_str(&rest);
        text
    }
}

impl<E: 'static> ReplayBody for UnsyncBoxBody<Bytes, E> {
    fn from_kept(kept: Bytes) -> Self {
        Full::new(kept).map_err(never::<E>).boxed_unsync()
    }

    fn rejoin(taken: Vec<Frame<Bytes>>, rest: Self) -> Self {
        Rejoin::new(taken, rest).boxed_unsync()
    }
}

impl<E: 'static> ReplayBody for BoxBody<Bytes, E> {
    fn from_kept(kept: Bytes) -> Self {
        Full::new(kept).map_err(never::<E>).boxed()
    }

    fn rejoin(taken: Vec<Frame<Bytes>>, rest: Self) -> Self {
        Rejoin::new(taken, rest).boxed()
    }
}

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
impl ReplayBody for tonic::body::Body {
    fn from_kept(kept: Bytes) -> Self {
        tonic::body::Body::new(Full::new(kept))
    }

    fn rejoin(taken: Vec<Frame<Bytes>>, rest: Self) -> Self {
        tonic::body::Body::new(Rejoin::new(taken, rest))
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl ReplayBody for axum_core::body::Body {
    fn from_kept(kept: Bytes) -> Self {
        axum_core::body::Body::new(Full::new(kept))
    }

    fn rejoin(taken: Vec<Frame<Bytes>>, rest: Self) -> Self {
        axum_core::body::Body::new(Rejoin::new(taken, rest))
    }
}

fn never<E>(never: Infallible) -> E {
    match never {}
}

pin_project! {
    /// A body that yields frames already taken from a body, then the rest of that body.
    ///
    /// The building block for [`ReplayBody::rejoin`] on boxed and wrapping body types.
    #[derive(Debug)]
    pub struct Rejoin<B> {
        taken: VecDeque<Frame<Bytes>>,
        #[pin]
        rest: B,
    }
}

impl<B> Rejoin<B> {
    /// The frames in `taken`, then `rest`.
    pub fn new(taken: Vec<Frame<Bytes>>, rest: B) -> Self {
        Self {
            taken: taken.into(),
            rest,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Rejoin<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.taken.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => this.rest.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.taken.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let taken: u64 = self
            .taken
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(taken));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(taken));
        }
        hint
    }
}
