//! Unit tests of `error`.

use super::*;

#[test]
fn retry_after_is_quoted_as_the_endpoint_asked() {
    let text = |after: Option<Duration>| Error::rate_limited(after).to_string();
    assert!(text(Some(Duration::from_secs(30))).ends_with("asked to retry after 30s"));
    assert!(text(Some(Duration::from_secs(86_400))).ends_with("after a day or more"));
    // A date already past, or no header: no suffix.
    assert!(text(Some(Duration::ZERO)).ends_with("(HTTP 429)"));
    assert!(text(None).ends_with("(HTTP 429)"));
}

/// An unreachable endpoint is named by its host, with the innermost cause: what an
/// operator reads first, not only in `source()`.
#[test]
fn an_unreachable_endpoint_says_where_and_why() {
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    let wrapped: BoxError = Box::new(std::io::Error::other(refused));
    let e = Error::connect("auth.example.com", wrapped);
    let text = e.to_string();
    assert!(
        text.starts_with("could not reach the token endpoint at auth.example.com: "),
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
}

#[test]
fn kinds_and_predicates() {
    let e = Error::rejected(StatusCode::BAD_REQUEST, Some("invalid_client"), None);
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert!(e.is_invalid_client());
    assert!(e.is_permanent());
    assert!(!e.is_retryable());
    assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(
        e.to_string(),
        "the token endpoint rejected the request with HTTP 400 Bad Request: invalid_client"
    );

    let e = Error::rate_limited(Some(Duration::from_secs(2)));
    assert!(e.is_retryable());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));

    let e = Error::connect(
        "auth.example.com",
        Box::new(std::io::Error::other("refused")),
    );
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn invalid_grant_says_sign_in_again() {
    let e = Error::rejected(
        StatusCode::BAD_REQUEST,
        Some("invalid_grant"),
        Some("Refresh Token has been revoked"),
    );
    assert!(e.is_permanent());
    assert!(e.is_invalid_grant());
    assert!(!e.is_invalid_client());
    assert_eq!(
        e.to_string(),
        "the token endpoint rejected the request with HTTP 400 Bad Request: invalid_grant \
         (Refresh Token has been revoked); the session has ended (its refresh token expired, \
         was revoked or was reused): the user must sign in again"
    );
    let other = Error::rejected(StatusCode::BAD_REQUEST, Some("invalid_scope"), None);
    assert!(!other.to_string().contains("sign in"));
}

#[test]
fn server_text_is_sanitized() {
    let long = "x".repeat(10_000);
    let e = Error::rejected(
        StatusCode::BAD_REQUEST,
        Some("bad\r\nforged: line"),
        Some(&long),
    );
    assert_eq!(e.oauth_error(), Some("badforged: line"));
    assert_eq!(
        e.oauth_error_description().map(str::len),
        Some(MAX_OAUTH_TEXT)
    );
}

#[test]
fn error_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Error>();
}

#[test]
fn a_custom_error_keeps_its_kind_message_and_source() {
    let e = Error::new(ErrorKind::Rejected, "the key service\nrefused us");
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert!(e.is_permanent() && !e.is_retryable());
    assert_eq!(
        e.to_string(),
        "the key servicerefused us",
        "no forged log line"
    );
    assert!(std::error::Error::source(&e).is_none());
    assert_eq!(e.oauth_error(), None);

    let io = std::io::Error::from(std::io::ErrorKind::TimedOut);
    let e = Error::with_source(ErrorKind::Timeout, "the key service timed out", io);
    assert!(e.is_timeout() && e.is_retryable() && !e.is_permanent());
    let source = std::error::Error::source(&e).expect("the source is kept");
    assert!(source.downcast_ref::<std::io::Error>().is_some());
    assert!(format!("{e:?}").contains("TimedOut"), "{e:?}");
    assert_eq!(
        Error::new(ErrorKind::Internal, "x".repeat(5000))
            .to_string()
            .len(),
        1024
    );
}
