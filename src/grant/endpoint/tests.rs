//! Unit tests of `endpoint`.

use super::*;

/// Issue #10: `localhost` is not left to the system resolver, which may map it anywhere:
/// the secret would then cross a network in clear text.
#[test]
fn localhost_is_pinned_to_the_loopback_address() {
    let uri = parse_token_url("http://localhost:8080/oauth2/token").unwrap();
    assert_eq!(uri.host(), Some("127.0.0.1"));
    assert_eq!(uri.port_u16(), Some(8080));
    assert_eq!(uri.path(), "/oauth2/token");
    let uri = parse_token_url("http://LocalHost/t?x=1").unwrap();
    assert_eq!(uri.to_string(), "http://127.0.0.1/t?x=1");
    // https keeps the name: the certificate is checked against it.
    let uri = parse_token_url("https://localhost:8443/t").unwrap();
    assert_eq!(uri.host(), Some("localhost"));
}

#[test]
fn token_url_rules() {
    assert!(parse_token_url("https://auth.example.com/oauth2/token").is_ok());
    assert!(parse_token_url("http://127.0.0.1:8080/oauth2/token").is_ok());
    assert!(parse_token_url("http://127.9.9.9/oauth2/token").is_ok());
    assert!(parse_token_url("http://localhost:1/t").is_ok());
    assert!(parse_token_url("http://[::1]:1/t").is_ok());
    for bad in [
        "http://auth.example.com/oauth2/token",
        "http://10.0.0.1/t",
        "ftp://127.0.0.1/t",
        "https://user:pass@auth.example.com/t",
        "/oauth2/token",
        "not a url",
    ] {
        let err = parse_token_url(bad).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig, "{bad}");
    }
    let err = parse_token_url("http://auth.example.com/t").unwrap_err();
    assert!(err.to_string().contains("must use https"));
}

#[test]
fn cognito_domain_rules() {
    assert_eq!(
        cognito_url("smart-capital", "us-east-1").unwrap(),
        "https://smart-capital.auth.us-east-1.amazoncognito.com/oauth2/token"
    );
    assert!(cognito_url("a", "ap-southeast-2").is_ok());
    assert!(cognito_url("us-gov", "us-gov-west-1").is_ok());
    for (d, r) in [
        ("", "us-east-1"),
        ("-x", "us-east-1"),
        ("UPPER", "us-east-1"),
        ("evil.com/", "us-east-1"),
        ("ok", "useast1"),
        ("ok", "us-east-x"),
        ("ok", "us-east-1.evil.com"),
    ] {
        assert!(cognito_url(d, r).is_err(), "{d} {r}");
    }
}

#[test]
fn client_authentication_forms() {
    let run = |auth, secret: Option<&str>| {
        let mut form = form_urlencoded::Serializer::new(String::new());
        let header =
            client_authentication(&mut form, &auth, "id:1", secret, "https://a/token").unwrap();
        (header, form.finish())
    };
    let (header, form) = run(ClientAuth::Basic, None);
    assert!(header.is_none());
    assert_eq!(form, "client_id=id%3A1");
    let (header, form) = run(ClientAuth::Post, None);
    assert!(header.is_none());
    assert_eq!(form, "client_id=id%3A1");
    let (header, form) = run(ClientAuth::Post, Some("s p"));
    assert!(header.is_none());
    assert_eq!(form, "client_id=id%3A1&client_secret=s+p");
    let (header, form) = run(ClientAuth::Basic, Some("s p"));
    let header = header.unwrap();
    assert!(header.is_sensitive());
    let expected = base64::engine::general_purpose::STANDARD.encode("id%3A1:s+p");
    assert_eq!(header, format!("Basic {expected}").as_str());
    assert_eq!(form, "");
}

#[test]
fn never_sent_looks_for_a_refused_connection() {
    let refused = Error::connect(
        "auth.example.com",
        Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
    );
    assert!(never_sent(&refused));
    let reset = Error::connect(
        "auth.example.com",
        Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
    );
    assert!(!never_sent(&reset));
    assert!(!never_sent(&Error::timeout("x", Duration::from_secs(1))));
}
