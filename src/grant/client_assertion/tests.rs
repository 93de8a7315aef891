//! Unit tests of `client_assertion`: the claims, a new `jti` each time, the signatures, and
//! keys that are not keys. (tests/client_assertion.rs runs them against oidc-provider.)

use super::*;

fn decode(jwt: &str) -> (serde_json::Value, serde_json::Value, Vec<u8>, String) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let json = |p: &str| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
    (
        json(parts[0]),
        json(parts[1]),
        URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
        format!("{}.{}", parts[0], parts[1]),
    )
}

fn check_claims(claims: &serde_json::Value) {
    assert_eq!(claims["iss"], "client-1");
    assert_eq!(claims["sub"], "client-1");
    assert_eq!(claims["aud"], "https://idp.example.com/oauth2/token");
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["nbf"].as_u64(), Some(iat));
    assert_eq!(claims["exp"].as_u64(), Some(iat + 300), "five minutes");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(iat <= now && now - iat < 60, "{iat} {now}");
}

const AUD: &str = "https://idp.example.com/oauth2/token";

#[test]
fn an_ec_key_signs_es256_with_its_kid_and_a_new_jti_each_time() {
    let generated = rcgen::KeyPair::generate().unwrap(); // P-256, PKCS#8
    let key = ClientAssertionKey::from_pkcs8_pem(generated.serialize_pem())
        .unwrap()
        .key_id("ec-1");
    let first = key.assertion("client-1", AUD).unwrap();
    let (header, claims, signature, input) = decode(&first);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], "ec-1");
    check_claims(&claims);
    signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_FIXED,
        generated.public_key_raw(),
    )
    .verify(input.as_bytes(), &signature)
    .expect("a valid ES256 signature");

    let second = key.assertion("client-1", AUD).unwrap();
    assert_ne!(decode(&second).1["jti"], claims["jti"], "never reused");
}

#[test]
fn a_secret_signs_hs256() {
    let jwt = secret_assertion("the-client-secret", "client-1", AUD).unwrap();
    let (header, claims, signature, input) = decode(&jwt);
    assert_eq!(header["alg"], "HS256");
    assert!(header.get("kid").is_none());
    check_claims(&claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"the-client-secret");
    ring::hmac::verify(&key, input.as_bytes(), &signature).expect("a valid HS256 tag");
    assert!(!jwt.contains("the-client-secret"));
}

#[test]
fn what_is_not_a_usable_key_is_a_configuration_error_without_the_key() {
    let not_pem = ClientAssertionKey::from_pkcs8_pem("hunter2").unwrap_err();
    assert_eq!(not_pem.kind(), crate::ErrorKind::InvalidConfig);
    assert!(not_pem.to_string().contains("PKCS#8"), "{not_pem}");
    assert!(!not_pem.to_string().contains("hunter2"));

    // An Ed25519 key is PKCS#8, but neither RS256 nor ES256.
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let error = ClientAssertionKey::from_pkcs8_pem(ed.serialize_pem()).unwrap_err();
    assert!(error.to_string().contains("neither"), "{error}");

    let missing = ClientAssertionKey::from_file("/nonexistent/tower-cognito-auth/key.pem");
    let error = missing.assertion("client-1", AUD).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("/nonexistent/tower-cognito-auth/key.pem does not exist"),
        "{error}"
    );
}

#[test]
fn a_key_file_is_read_at_each_assertion() {
    let dir = std::env::temp_dir().join(format!("tower-cognito-auth-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key.pem");
    let first = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&path, first.serialize_pem()).unwrap();
    let key = ClientAssertionKey::from_file(&path);
    let verifies = |jwt: &str, pair: &rcgen::KeyPair| {
        let (_, _, signature, input) = decode(jwt);
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            pair.public_key_raw(),
        )
        .verify(input.as_bytes(), &signature)
        .is_ok()
    };
    assert!(verifies(&key.assertion("client-1", AUD).unwrap(), &first));
    let second = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&path, second.serialize_pem()).unwrap();
    assert!(verifies(&key.assertion("client-1", AUD).unwrap(), &second));
}

#[test]
fn debug_shows_the_algorithm_and_kid_only() {
    let generated = rcgen::KeyPair::generate().unwrap();
    let pem = generated.serialize_pem();
    let key = ClientAssertionKey::from_pkcs8_pem(&pem)
        .unwrap()
        .key_id("k");
    let shown = format!("{key:?}");
    assert!(
        shown.contains("ES256") && shown.contains("\"k\""),
        "{shown}"
    );
    let body: String = pem.lines().nth(1).unwrap().chars().take(20).collect();
    assert!(!shown.contains(&body), "{shown}");
}
