//! Unit tests of `client_secret`: reading, trimming, the errors, and noticing a change.

use super::*;

fn temp_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-cognito-auth-secret-{}-{}",
        std::process::id(),
        name
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("client-secret")
}

#[tokio::test]
async fn a_file_is_read_each_time_and_trimmed() {
    let path = temp_file("read");
    std::fs::write(&path, "first-secret\n").unwrap();
    let cell = SecretCell::new(ClientSecret::from_file(&path));
    assert_eq!(cell.read().await.unwrap(), "first-secret");
    std::fs::write(&path, "second secret \r\n\t").unwrap();
    assert_eq!(
        cell.read().await.unwrap(),
        "second secret",
        "inner spaces kept"
    );
}

#[tokio::test]
async fn missing_empty_and_oversized_files_name_the_path_not_the_content() {
    let path = temp_file("errors");
    let _ = std::fs::remove_file(&path);
    let cell = SecretCell::new(ClientSecret::from_file(&path));
    let shown = path.display().to_string();

    let missing = cell.read().await.unwrap_err();
    assert_eq!(missing.kind(), crate::ErrorKind::InvalidConfig);
    assert!(missing.to_string().contains(&shown), "{missing}");
    assert!(missing.to_string().contains("does not exist"), "{missing}");

    std::fs::write(&path, " \n\n").unwrap();
    let empty = cell.read().await.unwrap_err();
    assert!(empty.to_string().contains(&shown), "{empty}");
    assert!(empty.to_string().ends_with("is empty"), "{empty}");

    std::fs::write(&path, "x".repeat(64 * 1024 + 1)).unwrap();
    let large = cell.read().await.unwrap_err();
    assert!(!large.to_string().contains("xxx"), "{large}");
    assert!(large.to_string().contains("64 KiB"), "{large}");

    std::fs::write(&path, [0xff, 0xfe, b'a']).unwrap();
    let binary = cell.read().await.unwrap_err();
    assert!(binary.to_string().contains("not UTF-8"), "{binary}");
}

#[tokio::test(start_paused = true)]
async fn the_epoch_moves_when_a_recheck_sees_another_secret() {
    let path = temp_file("epoch");
    std::fs::write(&path, "one").unwrap();
    let cell = SecretCell::new(ClientSecret::from_file(&path));
    assert_eq!(cell.epoch(), 0);
    cell.read().await.unwrap();
    // A token request's own read changes nothing: it uses what it read.
    std::fs::write(&path, "two").unwrap();
    cell.read().await.unwrap();
    assert_eq!(cell.epoch(), 0);
    // Without a failure for good on record, `epoch` does not read.
    std::fs::write(&path, "three").unwrap();
    assert_eq!(cell.epoch(), 0);

    // After one, `epoch` reads the secret, at most once per RECHECK_EVERY.
    cell.note(true);
    assert_eq!(cell.epoch(), 1, "three is not two");
    std::fs::remove_file(&path).unwrap();
    assert_eq!(cell.epoch(), 1, "not read again yet");
    tokio::time::advance(RECHECK_EVERY).await;
    assert_eq!(cell.epoch(), 2, "gone is a change");
    tokio::time::advance(RECHECK_EVERY).await;
    assert_eq!(cell.epoch(), 2, "still gone is not");
    std::fs::write(&path, "four").unwrap();
    tokio::time::advance(RECHECK_EVERY).await;
    assert_eq!(cell.epoch(), 3, "back is a change");
    cell.note(false);
    std::fs::write(&path, "five").unwrap();
    tokio::time::advance(RECHECK_EVERY).await;
    assert_eq!(cell.epoch(), 3, "no failure on record: no read");
}

#[tokio::test]
async fn a_function_is_called_each_time_and_its_error_kept() {
    let calls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let cell = SecretCell::new(ClientSecret::from_fn(move || {
        match counted.fetch_add(1, Ordering::SeqCst) {
            0 => Ok("from-fn\n".to_owned()),
            1 => Ok("   ".to_owned()),
            _ => Err(Error::new(
                crate::ErrorKind::Unavailable,
                "the vault is away",
            )),
        }
    }));
    assert_eq!(cell.read().await.unwrap(), "from-fn");
    let empty = cell.read().await.unwrap_err();
    assert_eq!(
        empty.to_string(),
        "invalid configuration: the client secret provider returned an empty secret"
    );
    let away = cell.read().await.unwrap_err();
    assert!(away.is_retryable(), "the provider's own kind");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn debug_never_shows_a_secret() {
    assert_eq!(
        format!("{:?}", ClientSecret::new("hunter2")),
        "ClientSecret([redacted])"
    );
    let f = ClientSecret::from_fn(|| Ok("hunter2".into()));
    assert_eq!(format!("{f:?}"), "ClientSecret::Fn");
    let file = ClientSecret::from_file("/run/secrets/x");
    assert_eq!(
        format!("{file:?}"),
        "ClientSecret::File(\"/run/secrets/x\")"
    );
}

#[tokio::test]
async fn a_fixed_secret_is_taken_as_given() {
    // Trailing whitespace is trimmed only from what is read (a file's newline): a secret given
    // as a string may end with a space.
    let cell = SecretCell::new(ClientSecret::new("ends with a space "));
    assert_eq!(cell.read().await.unwrap(), "ends with a space ");
}
