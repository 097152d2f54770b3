#![cfg(feature = "postgres")]
//! PostgreSQL for the tests: a database of its own per test on a shared server, and a TCP
//! proxy that can cut every connection to it, standing in for a server restart.
//!
//! The server is `TEST_POSTGRES_URL` (default [`DEFAULT_SERVER`]). Without one, tests
//! that need it print why they skip and pass; with `TEST_REQUIRE_POSTGRES=1` they fail
//! instead. (Not `SHIPTOKEN_*` names: the daemon reads those as its configuration and refuses
//! one that names no key.)
//!
//! Databases are not dropped when their test ends: the daemons under test still hold
//! connections then, and a test that failed is easier to read with its data in place.
//! Instead the first [`fresh_database`] call of a process drops, in the background, the
//! databases left by test processes that no longer run (the pid is part of the name). This
//! assumes the server is used by test
//! processes of this machine only, which holds for the local and CI servers it is meant for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The server tests use when `TEST_POSTGRES_URL` is not set.
pub const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Every test database's name starts with this, then `<pid>_<counter>_<random>`.
const PREFIX: &str = "shiptoken_t_";

/// Databases made by this process so far, for unique names.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether this process has dropped the databases of exited test processes yet.
static SWEPT: AtomicBool = AtomicBool::new(false);

/// The server URL the tests use.
pub fn server_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_SERVER.to_string())
}

/// Whether a missing server fails the test instead of skipping it.
fn required() -> bool {
    std::env::var("TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// Connects to `url`, driving the connection in a spawned task.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await;
    match attempt {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                // Ends when the client is dropped or the server goes away; nothing to report.
                let _ = connection.await;
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5 s".to_string()),
    }
}

/// Creates an empty database of its own on the test server and returns its URL, or `None`
/// (after saying so on stderr) when no server answers and `TEST_REQUIRE_POSTGRES` is
/// not `1`.
pub async fn fresh_database() -> Option<String> {
    let server = server_url();
    let admin = match connect(&server).await {
        Ok(c) => c,
        Err(e) if required() => {
            panic!("no PostgreSQL at {server} ({e}), and TEST_REQUIRE_POSTGRES=1")
        }
        Err(e) => {
            eprintln!(
                "skipped: no PostgreSQL at {server} ({e}); set TEST_POSTGRES_URL or start one"
            );
            return None;
        }
    };
    // Once per test process is enough: the databases it finds were all left before it began.
    // Each DROP DATABASE waits for a checkpoint (about a second here), so a thread of its own
    // does it while the tests run; one cut short when the process ends is finished by the next.
    if !SWEPT.swap(true, Ordering::Relaxed) {
        let server = server.clone();
        std::thread::spawn(move || drop_abandoned(&server));
    }
    let name = format!(
        "{PREFIX}{}_{}_{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {server}: {e}"));
    Some(with_database(&server, &name))
}

/// `url` naming database `name` instead of its own, every other part kept.
fn with_database(url: &str, name: &str) -> String {
    let mut u = url::Url::parse(url).unwrap_or_else(|e| panic!("bad PostgreSQL URL {url}: {e}"));
    u.set_path(&format!("/{name}"));
    u.to_string()
}

/// Drops the test databases on `server` whose process has exited (see the module comment).
fn drop_abandoned(server: &str) {
    let Ok(mut admin) = postgres::Client::connect(server, postgres::NoTls) else {
        return;
    };
    let rows = admin
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
            &[&PREFIX],
        )
        .unwrap_or_default();
    for row in rows {
        let name: String = row.get(0);
        let pid = name[PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Another test process may be dropping the same one: errors are expected and harmless.
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    }
}

/// A TCP proxy in front of PostgreSQL that can cut every connection and refuse new ones.
///
/// Tests use it instead of restarting the server because other tests use the same server at
/// the same time. From a client's side a restart is exactly this: every connection dropped,
/// new ones refused, later accepted again.
pub struct Proxy {
    /// Where the proxy listens; the same port again after [`Proxy::restore`].
    addr: SocketAddr,
    /// The server behind it.
    upstream: SocketAddr,
    /// Bumped by [`Proxy::cut`]; every connection ends when it changes.
    cuts: watch::Sender<u64>,
    /// The accept loop, absent while cut (the listener is closed then, so connecting fails).
    accepting: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port in front of the server `upstream_url` names.
    pub async fn start(upstream_url: &str) -> Arc<Proxy> {
        let u = url::Url::parse(upstream_url).unwrap();
        let host = u.host_str().unwrap_or("127.0.0.1").to_string();
        let port = u.port().unwrap_or(5432);
        let upstream = tokio::net::lookup_host((host.as_str(), port))
            .await
            .unwrap()
            .next()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            upstream,
            cuts: watch::channel(0).0,
            accepting: std::sync::Mutex::new(None),
        };
        proxy.accept_on(listener);
        Arc::new(proxy)
    }

    /// `db_url` (a URL from [`fresh_database`]) reached through this proxy.
    pub fn url_for(&self, db_url: &str) -> String {
        let mut u = url::Url::parse(db_url).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.addr.port())).unwrap();
        u.to_string()
    }

    /// Drops every connection and closes the listening socket, so new connections are refused.
    pub fn cut(&self) {
        if let Some(task) = self.accepting.lock().unwrap().take() {
            task.abort();
        }
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Listens again on the same port, passing connections through as before.
    pub async fn restore(&self) {
        // The port was ours a moment ago; SO_REUSEADDR (tokio sets it) lets us take it back
        // while closed connections linger in TIME_WAIT. The aborted task may still hold the
        // old listener for an instant, hence the retry.
        let listener = super::wait_for("the proxy's port to be free again", || async {
            TcpListener::bind(self.addr).await.ok()
        })
        .await;
        self.accept_on(listener);
    }

    /// Spawns the accept loop on `listener`.
    fn accept_on(&self, listener: TcpListener) {
        let upstream = self.upstream;
        let cuts = self.cuts.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(pipe(client, upstream, cuts.clone()));
            }
        });
        *self.accepting.lock().unwrap() = Some(task);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies bytes both ways between `client` and the server until either side closes or the
/// proxy is cut.
async fn pipe(mut client: TcpStream, upstream: SocketAddr, mut cuts: watch::Receiver<u64>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cuts.changed() => {}
    }
}
