//! What counts as "the service rejected our token".
//!
//! - HTTP `401 Unauthorized`.
//! - A gRPC trailers-only response with `grpc-status: 16` (`UNAUTHENTICATED`) in its headers:
//!   what gRPC servers send when they turn a call away before any message. A status 16 in real
//!   trailers arrives after the response has started: it is passed through, and the opt-in
//!   [`trailers`](crate::trailers) layer drops that token. gRPC calls (and gRPC-Web's) are
//!   `POST`s, so the answer to a request of any other method is not looked at for
//!   `grpc-status`: a `GET` answered with headers costs no lookup.
//!
//! `403 Forbidden` is not a rejection of the token: the token is valid but lacks a permission,
//! and a new one will not help.

use http::{HeaderName, Response, StatusCode};

/// gRPC's `UNAUTHENTICATED` status code.
const GRPC_UNAUTHENTICATED: &[u8] = b"16";
/// A constant name: looked up on every response, it is not parsed each time.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Whether the response rejects the token the request carried; `post`: whether that request
/// was a `POST`, as a gRPC call is.
#[inline]
pub(crate) fn is_token_rejected<B>(response: &Response<B>, post: bool) -> bool {
    is_rejected_status(response.status())
        || (may_be_grpc_rejection(response, post) && is_grpc_unauthenticated(response.headers()))
}

/// An HTTP status that rejects the token it was sent with: `401`, never `403` (the token was
/// understood, and the answer is "not allowed": a new token would not change it).
pub(crate) fn is_rejected_status(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED
}

/// After a rejection of generation `rejected`, whether a replay with the token of generation
/// `next` can do better: only with a newer token. The same token comes back when the
/// rejection was throttled (or an older generation was rejected), and is rejected again.
pub(crate) fn replay_with<G: PartialEq>(next: G, rejected: G) -> bool {
    next != rejected
}

/// Whether [`is_token_rejected`] may answer yes, told from fields of the response without
/// handing its address to a call: the caller can then, on a `no`, move the response on without
/// copying it (each copy of a freshly written response is a stall of a few nanoseconds).
#[inline(always)]
pub(crate) fn may_reject<B>(response: &Response<B>, post: bool) -> bool {
    response.status() == StatusCode::UNAUTHORIZED || may_be_grpc_rejection(response, post)
}

/// A trailers-only gRPC answer: to a `POST`, with headers.
#[inline(always)]
fn may_be_grpc_rejection<B>(response: &Response<B>, post: bool) -> bool {
    post && !response.headers().is_empty()
}

/// Whether headers (a trailers-only response's, or real trailers) carry `grpc-status: 16`.
pub(crate) fn is_grpc_unauthenticated(headers: &http::HeaderMap) -> bool {
    headers
        .get(&GRPC_STATUS)
        .is_some_and(|status| status.as_bytes().trim_ascii() == GRPC_UNAUTHENTICATED)
}

#[cfg(test)]
mod tests;
