//! Unit tests of `seal`.

use super::*;
use proptest::prelude::*;

fn identity(scopes: &[&str], secret: &str) -> SharedIdentity {
    SharedIdentity::client_credentials(
        "https://auth.example.com/oauth2/token",
        "client-id",
        scopes.iter().copied(),
        secret,
    )
}

fn sealer() -> Sealer {
    Sealer::new(&identity(&["a/read"], "client-secret")).unwrap()
}

#[test]
fn round_trip() {
    let s = sealer();
    let hour = Duration::from_secs(3600);
    let sealed = s.seal("tok.en-1", hour, hour / 2).unwrap();
    assert_eq!(sealed[0], VERSION);
    assert_eq!(&sealed[..TAG_PREFIX_LEN], &s.tag_prefix("tok.en-1"));
    let opened = s.open(&sealed).unwrap();
    assert_eq!((opened.token.as_str(), opened.lifetime), ("tok.en-1", hour));
    let left = opened.sealed_remaining();
    assert!(
        left <= hour / 2 && left > hour / 2 - Duration::from_secs(60),
        "{left:?}"
    );
    // Sealed as already expired: nothing left.
    let past = s.seal("tok.en-1", hour, Duration::ZERO).unwrap();
    assert_eq!(s.open(&past).unwrap().sealed_remaining(), Duration::ZERO);
    // A random nonce: two seals of one token differ past the tag.
    let again = s.seal("tok.en-1", hour, hour / 2).unwrap();
    assert_ne!(sealed, again);
    assert_eq!(&sealed[..TAG_PREFIX_LEN], &again[..TAG_PREFIX_LEN]);
}

#[test]
fn names_hide_the_identity_and_differ_per_identity() {
    let s = sealer();
    assert!(s.key_name().starts_with(KEY_PREFIX));
    // The hash, in braces: a Redis Cluster hash tag, so the lease and the refusal record
    // share the token's slot.
    assert_eq!(s.key_name().len(), KEY_PREFIX.len() + 64 + 2);
    let tag = &s.key_name()[KEY_PREFIX.len()..];
    assert!(
        tag.starts_with('{') && tag.ends_with('}'),
        "{}",
        s.key_name()
    );
    for name in [s.lease_name(), s.refused_name()] {
        assert!(name.starts_with(s.key_name()), "{name}");
    }
    assert_eq!(s.lease_name(), format!("{}:lease", s.key_name()));
    assert!(!s.key_name().contains("client-id"));
    // Scope order and repeats do not matter; the scope set, the secret and the client do.
    let a = Sealer::new(&identity(&["b", "a", "a"], "x")).unwrap();
    let b = Sealer::new(&identity(&["a", "b"], "x")).unwrap();
    assert_eq!(a.key_name(), b.key_name());
    let c = Sealer::new(&identity(&["a"], "x")).unwrap();
    assert_ne!(a.key_name(), c.key_name());
    let d = Sealer::new(&identity(&["a", "b"], "y")).unwrap();
    assert_ne!(a.key_name(), d.key_name());
    let e = Sealer::new(&SharedIdentity::new("ns", "x")).unwrap();
    assert_ne!(a.key_name(), e.key_name());
}

#[test]
fn empty_key_material_is_refused() {
    let err = Sealer::new(&SharedIdentity::new("ns", "")).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig);
}

#[test]
fn anything_else_is_a_miss() {
    let s = sealer();
    let sealed = s
        .seal("token", Duration::from_secs(60), Duration::from_secs(60))
        .unwrap();
    // Truncated at every length.
    for len in 0..sealed.len() {
        assert_eq!(s.open(&sealed[..len]), None, "{len}");
    }
    // Every single-bit flip.
    for i in 0..sealed.len() {
        let mut v = sealed.to_vec();
        v[i] ^= 0x01;
        assert_eq!(s.open(&v), None, "{i}");
    }
    // Another key, or the same value under another identity's name.
    let other = Sealer::new(&identity(&["a/read"], "rotated-secret")).unwrap();
    assert_eq!(other.open(&sealed), None);
    let other_name = Sealer::new(&identity(&["b/read"], "client-secret")).unwrap();
    assert_eq!(other_name.open(&sealed), None);
    // A value whose tag was swapped for another token's.
    let mut swapped = sealed.to_vec();
    swapped[..TAG_PREFIX_LEN].copy_from_slice(&s.tag_prefix("another"));
    assert_eq!(s.open(&swapped), None);
    assert_eq!(s.open(b"garbage"), None);
}

#[test]
fn debug_shows_no_key() {
    let s = sealer();
    let debug = format!("{s:?}");
    assert!(debug.contains(s.key_name()));
    assert!(!debug.contains("client-secret"));
    assert!(!format!("{:?}", identity(&[], "client-secret")).contains("client-secret"));
}

#[test]
fn client_credentials_name_follows_the_scope_set() {
    let name = |scopes: &[&str]| {
        let mut builder = crate::ClientCredentials::builder()
            .token_url("http://127.0.0.1:1/oauth2/token")
            .client_id("id")
            .client_secret("secret")
            .http_client(tower::service_fn(
                |_req: http::Request<http_body_util::Full<Bytes>>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(Bytes::new()),
                    ))
                },
            ));
        for scope in scopes {
            builder = builder.scope(*scope);
        }
        let source = builder.build().unwrap();
        let identity = crate::TokenSource::shared_identity(&source).unwrap();
        Sealer::new(&identity).unwrap().key_name().to_owned()
    };
    assert_eq!(name(&["b", "a", "a"]), name(&["a", "b"]));
    assert_ne!(name(&["a", "b"]), name(&["a"]));
    assert_ne!(name(&[]), name(&["a"]));
    assert_ne!(name(&["ab"]), name(&["a", "b"]));
}

proptest! {
    #[test]
    fn open_never_panics(value in proptest::collection::vec(any::<u8>(), 0..256)) {
        let s = sealer();
        let _ = s.open(&value);
        let mut versioned = value.clone();
        versioned.insert(0, VERSION);
        let _ = s.open(&versioned);
    }

    /// Two different scope sets never share a key name; the same set in any order and with
    /// repeats always does.
    #[test]
    fn scope_sets_never_share_a_name(
        a in proptest::collection::vec("[!#-\\[\\]-~]{1,6}", 0..5),
        b in proptest::collection::vec("[!#-\\[\\]-~]{1,6}", 0..5),
    ) {
        let set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
        let name = |v: &[String]| {
            let id = SharedIdentity::client_credentials(
                "https://auth.example.com/oauth2/token",
                "client",
                v.iter().map(String::as_str),
                "secret",
            );
            Sealer::new(&id).unwrap().key_name().to_owned()
        };
        let mut shuffled = a.clone();
        shuffled.reverse();
        shuffled.extend(a.iter().take(1).cloned());
        prop_assert_eq!(name(&a), name(&shuffled));
        prop_assert_eq!(set(&a) == set(&b), name(&a) == name(&b));
    }

    #[test]
    fn tokens_round_trip(token in "[!-~]{1,200}", ms in any::<u64>()) {
        let s = sealer();
        let lifetime = Duration::from_millis(ms);
        let sealed = s.seal(&token, lifetime, lifetime).unwrap();
        let opened = s.open(&sealed).unwrap();
        prop_assert_eq!((opened.token, opened.lifetime), (token, lifetime));
    }
}
