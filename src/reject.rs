//! What counts as "the service rejected our token".
//!
//! - HTTP `401 Unauthorized`.
//! - A gRPC trailers-only response with `grpc-status: 16` (`UNAUTHENTICATED`) in its headers:
//!   what gRPC servers send when they turn a call away before any message. A status 16 in real
//!   trailers arrives after the response has started: it is passed through, and the opt-in
//!   [`trailers`](crate::trailers) layer drops that token.
//!
//! `403 Forbidden` is not a rejection of the token: the token is valid but lacks a permission,
//! and a new one will not help.

use http::{HeaderName, Response, StatusCode};

/// gRPC's `UNAUTHENTICATED` status code.
const GRPC_UNAUTHENTICATED: &[u8] = b"16";
/// A constant name: looked up on every response, it is not parsed each time.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Whether the response rejects the token the request carried.
#[inline]
pub(crate) fn is_token_rejected<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::UNAUTHORIZED
        || (!response.headers().is_empty() && is_grpc_unauthenticated(response.headers()))
}

/// Whether headers (a trailers-only response's, or real trailers) carry `grpc-status: 16`.
pub(crate) fn is_grpc_unauthenticated(headers: &http::HeaderMap) -> bool {
    headers
        .get(&GRPC_STATUS)
        .is_some_and(|status| status.as_bytes().trim_ascii() == GRPC_UNAUTHENTICATED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, grpc: Option<&'static str>) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(g) = grpc {
            r.headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static(g));
        }
        r
    }

    #[test]
    fn rejections() {
        assert!(is_token_rejected(&response(401, None)));
        assert!(is_token_rejected(&response(200, Some("16"))));
        assert!(is_token_rejected(&response(200, Some(" 16 "))));
        assert!(!is_token_rejected(&response(403, None)));
        assert!(!is_token_rejected(&response(200, None)));
        assert!(!is_token_rejected(&response(200, Some("0"))));
        assert!(!is_token_rejected(&response(200, Some("7"))));
        assert!(!is_token_rejected(&response(200, Some("160"))));
    }
}
