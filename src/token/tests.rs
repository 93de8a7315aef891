//! Unit tests of `token`.

use super::*;
use proptest::prelude::*;

fn parse(body: &str) -> Result<(Token, Duration), Error> {
    parse_token_response(body.as_bytes(), Instant::now(), SystemTime::now())
}

fn jwt_with(payload: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        b64.encode(br#"{"alg":"RS256"}"#),
        b64.encode(payload),
        b64.encode(b"sig")
    )
}

#[tokio::test]
async fn parses_cognito_answer() {
    let (token, lifetime) =
        parse(r#"{"access_token":"eyJ.abc.def","expires_in":3600,"token_type":"Bearer"}"#).unwrap();
    assert_eq!(token.access_token().secret(), "eyJ.abc.def");
    assert_eq!(lifetime, Duration::from_secs(3600));
    assert_eq!(
        token.access_token().header_value(),
        HeaderValue::from_static("Bearer eyJ.abc.def")
    );
}

#[tokio::test]
async fn numeric_string_and_case() {
    let (_, lifetime) =
        parse(r#"{"access_token":"t","expires_in":" 60 ","token_type":"bearer"}"#).unwrap();
    assert_eq!(lifetime, Duration::from_secs(60));
}

#[tokio::test]
async fn rejects_bad_answers() {
    for (body, why) in [
        ("not json", "not a JSON"),
        (r#"{"expires_in":1,"token_type":"Bearer"}"#, "access_token"),
        (r#"{"access_token":"t","token_type":"mac"}"#, "token_type"),
        (r#"{"access_token":"t"}"#, "token_type"),
        (
            r#"{"access_token":"a b","token_type":"Bearer"}"#,
            "characters",
        ),
        (r#"{"access_token":"","token_type":"Bearer"}"#, "empty"),
        (
            r#"{"access_token":"t","token_type":"Bearer","expires_in":0}"#,
            "zero",
        ),
        (
            r#"{"access_token":"t","token_type":"Bearer","expires_in":-5}"#,
            "non-negative",
        ),
        (
            r#"{"access_token":"t","token_type":"Bearer","expires_in":"soon"}"#,
            "non-negative",
        ),
    ] {
        let err = parse(body).unwrap_err();
        assert!(err.to_string().contains(why), "{body}: {err}");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidResponse);
    }
}

#[tokio::test]
async fn lifetime_from_jwt_exp_or_default() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = jwt_with(&format!(r#"{{"exp":{}}}"#, now + 900));
    let (_, lifetime) = parse(&format!(
        r#"{{"access_token":"{jwt}","token_type":"Bearer"}}"#
    ))
    .unwrap();
    assert_eq!(lifetime, Duration::from_secs(900));

    let (_, lifetime) = parse(r#"{"access_token":"opaque","token_type":"Bearer"}"#).unwrap();
    assert_eq!(lifetime, DEFAULT_LIFETIME);

    let jwt = jwt_with(&format!(r#"{{"exp":{}}}"#, now - 10));
    let err = parse(&format!(
        r#"{{"access_token":"{jwt}","token_type":"Bearer"}}"#
    ))
    .unwrap_err();
    assert!(err.to_string().contains("past"));
}

#[test]
fn huge_lifetime_is_capped() {
    let (_, lifetime) = parse_token_response(
        br#"{"access_token":"t","token_type":"Bearer","expires_in":18446744073709551615}"#,
        Instant::now(),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(lifetime, MAX_LIFETIME);
}

#[test]
fn refresh_token_is_read_apart_from_the_rest() {
    assert_eq!(
        parse_refresh_token(br#"{"refresh_token":"r2","access_token":5,"id_token":"i"}"#)
            .as_deref(),
        Some("r2")
    );
    assert_eq!(parse_refresh_token(br#"{"access_token":"a"}"#), None);
    assert_eq!(parse_refresh_token(br#"{"refresh_token":""}"#), None);
    assert_eq!(parse_refresh_token(br#"{"refresh_token":7}"#), None);
    assert_eq!(parse_refresh_token(b"not json"), None);
}

#[test]
fn jwt_exp_reader() {
    assert_eq!(
        jwt_exp(&jwt_with(r#"{"exp":1700000000}"#)),
        Some(1_700_000_000)
    );
    assert_eq!(jwt_exp(&jwt_with(r#"{"exp":1.7e9}"#)), Some(1_700_000_000));
    assert_eq!(jwt_exp(&jwt_with(r#"{"sub":"x"}"#)), None);
    assert_eq!(jwt_exp("a.b"), None);
    assert_eq!(jwt_exp("a.b.c.d"), None);
    assert_eq!(jwt_exp("a.!!!.c"), None);
}

#[test]
fn access_token_debug_is_redacted() {
    let t = AccessToken::new("super-secret-token").unwrap();
    assert!(!format!("{t:?}").contains("super-secret"));
    let token = Token::new(t, Instant::now());
    assert!(!format!("{token:?}").contains("super-secret"));
}

proptest! {
    #[test]
    fn parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_token_response(&body, Instant::now(), SystemTime::now());
        let _ = parse_refresh_token(&body);
    }

    #[test]
    fn parser_never_panics_on_jsonish(
        token in "[ -~]{0,64}",
        ty in "[a-zA-Z]{0,8}",
        exp in proptest::option::of(any::<i64>()),
        exp_f in any::<f64>(),
    ) {
        let exp_json = exp.map_or("null".to_string(), |e| e.to_string());
        let body = serde_json::json!({"access_token": token, "token_type": ty}).to_string();
        let _ = parse_token_response(body.as_bytes(), Instant::now(), SystemTime::now());
        let body = format!(
            r#"{{"access_token":"t","token_type":"Bearer","expires_in":{exp_json}}}"#
        );
        let _ = parse_token_response(body.as_bytes(), Instant::now(), SystemTime::now());
        if exp_f.is_finite() {
            let body = format!(
                r#"{{"access_token":"t","token_type":"Bearer","expires_in":{exp_f}}}"#
            );
            let _ = parse_token_response(body.as_bytes(), Instant::now(), SystemTime::now());
        }
    }

    #[test]
    fn jwt_reader_never_panics(s in "\\PC{0,256}") {
        let _ = jwt_exp(&s);
    }

    #[test]
    fn jwt_reader_never_panics_on_payloads(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!("h.{}.s", b64.encode(&payload));
        let _ = jwt_exp(&token);
    }
}
