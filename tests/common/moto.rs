//! A throwaway moto server (PyPI `moto[server]`, an AWS emulator nobody here wrote) on
//! 127.0.0.1, for tests against Cognito's user-pool API (and any other AWS JSON 1.1 service
//! moto emulates, such as Secrets Manager).
//!
//! `Moto::start()` runs the `moto_server` named by `TOWER_COGNITO_AUTH_MOTO_SERVER`, else the
//! one on `PATH`, else the one `.ci/get-moto` installed in the user's cache directory, on a
//! free port, and waits until it accepts connections. Without one it panics with a message
//! saying how to get one: a test that needs moto fails, it never skips. The process is killed
//! when the handle is dropped.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

/// The environment variable that names the `moto_server` to run.
pub const MOTO_ENV: &str = "TOWER_COGNITO_AUTH_MOTO_SERVER";

const MOTO_NOT_FOUND: &str = "moto_server not found: run `.ci/get-moto` (it installs PyPI \
     `moto[server]` without root into ~/.cache/tower-cognito-auth/moto), or `pip install \
     'moto[server]'`, or set TOWER_COGNITO_AUTH_MOTO_SERVER to a moto_server";

/// How long moto gets to start listening (it imports a lot of Python).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `moto_server` to run; panics with how to get one when there is none.
fn moto_binary() -> PathBuf {
    if let Some(named) = std::env::var_os(MOTO_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(named);
        assert!(
            path.is_file(),
            "{MOTO_ENV} names {}, which is not a file",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("moto_server"))
            .find(|candidate| candidate.is_file())
    });
    let cached = || {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
        let path = cache.join("tower-cognito-auth/moto/bin/moto_server");
        path.is_file().then_some(path)
    };
    on_path.or_else(cached).expect(MOTO_NOT_FOUND)
}

/// A running `moto_server`, killed on drop.
pub struct Moto {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Moto {
    /// Starts `moto_server -H 127.0.0.1 -p PORT` on a free port and waits until it accepts
    /// connections (at most a minute of real time: this is a process starting, not a test's
    /// timing). Blocks the calling thread meanwhile.
    pub fn start() -> Moto {
        let binary = moto_binary();
        let port = {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            listener.local_addr().unwrap().port()
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = std::env::temp_dir().join(format!("moto-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("could not run {}: {e}; {MOTO_NOT_FOUND}", binary.display())
            });
        let mut moto = Moto { child, addr, log };
        let started = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return moto;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited ({status}): {}", moto.log_text());
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "moto_server did not listen within {READY_TIMEOUT:?}: {}",
                moto.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT/`: the endpoint of every service moto emulates.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One AWS JSON 1.1 call, unsigned (moto does not check signatures): `POST /` with
    /// `X-Amz-Target: {target}` (e.g. `AWSCognitoIdentityProviderService.CreateUserPool` or
    /// `secretsmanager.GetSecretValue`). Returns the status and the JSON answer.
    pub async fn call(
        &self,
        target: &str,
        body: serde_json::Value,
    ) -> (http::StatusCode, serde_json::Value) {
        let request = http::Request::post(self.url())
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", target)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = super::http().request(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// [`call`](Self::call) that must succeed; panics with moto's answer otherwise.
    pub async fn ok(&self, target: &str, body: serde_json::Value) -> serde_json::Value {
        let (status, json) = self.call(target, body).await;
        assert!(status.is_success(), "{target}: {status} {json}");
        json
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
