//! Unit tests of `reject`.

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
    assert!(is_token_rejected(&response(401, None), false));
    assert!(is_token_rejected(&response(401, None), true));
    assert!(is_token_rejected(&response(200, Some("16")), true));
    assert!(is_token_rejected(&response(200, Some(" 16 ")), true));
    assert!(!is_token_rejected(&response(403, None), true));
    assert!(!is_token_rejected(&response(200, None), true));
    assert!(!is_token_rejected(&response(200, Some("0")), true));
    assert!(!is_token_rejected(&response(200, Some("7")), true));
    assert!(!is_token_rejected(&response(200, Some("160")), true));
    // The answer to a request that was not a POST is no gRPC call's.
    assert!(!is_token_rejected(&response(200, Some("16")), false));
}

#[test]
fn may_reject_whenever_is_token_rejected_does() {
    for status in [200, 401, 403] {
        for grpc in [None, Some("16"), Some("0")] {
            for post in [false, true] {
                let response = response(status, grpc);
                if is_token_rejected(&response, post) {
                    assert!(may_reject(&response, post), "{status} {grpc:?} {post}");
                }
            }
        }
    }
    assert!(!may_reject(&response(200, None), true));
    assert!(!may_reject(&response(200, Some("16")), false));
    // Headers without `grpc-status`: looked at, and kept.
    let mut json = Response::new(());
    json.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    assert!(may_reject(&json, true));
    assert!(!is_token_rejected(&json, true));
}
