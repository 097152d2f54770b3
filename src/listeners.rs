//! The TCP listeners (metrics, Shippo OAuth callback) and what keeps any listener from
//! starving the socket: a cap on open connections (past it, a new one is closed at once), a
//! header timeout and an idle timeout; and, at start-up, the check that every listener's cap
//! fits under the open-file limit with `limits.reserved_fds` to spare.
//!
//! A TCP peer has no identity worth trusting, so these listeners only count connections; the
//! socket's accept loop (`api::server`) also tells readers from peers that may read nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::LimitsConfig;
use crate::metrics::Metrics;

/// One TCP listener's bounds.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections open at once; past it, a new connection is closed at once, never queued,
    /// so a flood holds at most this many of the daemon's file descriptors.
    pub max_connections: usize,
    /// Time to send a request's headers, and to start the next one on a kept-alive connection.
    pub header_timeout: Duration,
    /// A connection where no byte moves for this long while no request is handled (a client
    /// that stops reading the answer) is closed. Stalled bodies need no such guard: the routes
    /// read none, and hyper closes a connection whose request body was left unread.
    pub idle_timeout: Duration,
}

impl From<&LimitsConfig> for HttpLimits {
    fn from(l: &LimitsConfig) -> HttpLimits {
        HttpLimits {
            max_connections: l.http_connections,
            header_timeout: l.header_timeout,
            idle_timeout: l.idle_timeout,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` fires; then each connection finishes the
/// request in hand. `name` labels the refusals in the metrics and the log (one of
/// [`crate::metrics::REFUSAL_SERIES`]). Connection tasks are tracked by `tracker`.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    name: &'static str,
    metrics: Metrics,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut refusals = RefusalLog::new(name);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %e, listener = name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Taken after accept: a queue in the kernel's backlog would keep every later client,
        // Prometheus included, waiting behind the flood instead of failing fast.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connection_refused(name, "connections");
            refusals.refused("connections", None);
            continue;
        };
        let (router, shutdown) = (router.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _permit = permit;
            serve_connection(stream, router, limits, name, shutdown).await;
        });
    }
}

/// One connection: hyper with the header timeout, plus a watchdog for the idle timeout.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: axum::Router,
    limits: HttpLimits,
    name: &'static str,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(Activity::default());
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let (router, busy) = (router.clone(), Busy::start(&activity));
            async move {
                let response = router.oneshot(req.map(axum::body::Body::new)).await;
                drop(busy);
                response
            }
        })
    };
    let io = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut seen = activity.bytes.load(Ordering::Relaxed);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, listener = name, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep(limits.idle_timeout) => {
                let now = activity.bytes.load(Ordering::Relaxed);
                if now == seen && activity.busy.load(Ordering::Relaxed) == 0 {
                    tracing::debug!(listener = name, "closing a connection idle for {:?}", limits.idle_timeout);
                    return;
                }
                seen = now;
            }
            () = shutdown.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What a connection's watchdog looks at: bytes moved, and requests being handled.
#[derive(Default)]
struct Activity {
    bytes: AtomicU64,
    busy: AtomicUsize,
}

/// A request being handled; while one is, the connection is not idle however long it takes.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: &Arc<Activity>) -> Busy {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that counts the bytes it moves, for the idle watchdog.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let moved = buf.filled().len() - before;
        self.activity
            .bytes
            .fetch_add(moved as u64, Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.activity.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Logs refused connections as a WARN at most once a minute per listener, with how many were
/// refused since, so a flood is seen in the journal without flooding it.
pub struct RefusalLog {
    listener: &'static str,
    next_warn: Option<Instant>,
    since: u64,
}

/// How often a listener may log a refusal at WARN.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

impl RefusalLog {
    /// A quiet log for `listener`.
    pub fn new(listener: &'static str) -> RefusalLog {
        RefusalLog {
            listener,
            next_warn: None,
            since: 0,
        }
    }

    /// Notes a connection closed because the `reason` cap was reached; `uid` when known.
    pub fn refused(&mut self, reason: &'static str, uid: Option<u32>) {
        self.since += 1;
        let now = Instant::now();
        if self.next_warn.is_some_and(|at| now < at) {
            tracing::debug!(listener = self.listener, reason, uid, "connection refused");
            return;
        }
        tracing::warn!(
            listener = self.listener,
            reason,
            uid,
            refused = self.since,
            "connections refused: the {reason} cap of [limits] is reached (see shiptoken_connections_refused_total)"
        );
        self.since = 0;
        self.next_warn = Some(now + REFUSAL_LOG_EVERY);
    }
}

/// The open-file limit cannot hold the listeners' caps plus the reserve, even lowered.
#[derive(Debug, thiserror::Error)]
#[error(
    "the open-file limit ({nofile}, RLIMIT_NOFILE) is too low: limits.reserved_fds ({reserved}) \
     plus {tcp} TCP connections (limits.http_connections per listener) leave the socket {left}, \
     not more than limits.socket_connections_unauthorized ({unauthorized}); raise the limit \
     (LimitNOFILE= in the unit, ulimit -n) or lower those keys"
)]
pub struct TooFewFiles {
    nofile: usize,
    reserved: usize,
    tcp: usize,
    left: usize,
    unauthorized: usize,
}

/// `limits` fitted under an open-file limit of `nofile` with `tcp_listeners` TCP listeners on:
/// unchanged when the caps and the reserve fit, else with `socket_connections` (and the
/// per-uid cap) lowered to what fits, and a warning saying so.
pub fn fit(
    limits: LimitsConfig,
    tcp_listeners: usize,
    nofile: usize,
) -> Result<(LimitsConfig, Option<String>), TooFewFiles> {
    let available = nofile.saturating_sub(limits.reserved_fds);
    let tcp = limits.http_connections * tcp_listeners;
    if limits.socket_connections + tcp <= available {
        return Ok((limits, None));
    }
    let left = available.saturating_sub(tcp);
    if left <= limits.socket_connections_unauthorized {
        return Err(TooFewFiles {
            nofile,
            reserved: limits.reserved_fds,
            tcp,
            left,
            unauthorized: limits.socket_connections_unauthorized,
        });
    }
    let warning = format!(
        "limits.socket_connections lowered from {} to {left}: the open-file limit is {nofile} \
         (RLIMIT_NOFILE) and limits.reserved_fds ({}) plus {tcp} TCP connections must fit under \
         it; raise LimitNOFILE= (or ulimit -n) to keep {}",
        limits.socket_connections, limits.reserved_fds, limits.socket_connections
    );
    let fitted = LimitsConfig {
        socket_connections: left,
        socket_connections_per_uid: limits.socket_connections_per_uid.min(left),
        ..limits
    };
    Ok((fitted, Some(warning)))
}

/// The process's soft limit on open files; `usize::MAX` when unlimited or unreadable.
pub fn open_file_limit() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives for the call.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0;
    if !ok || rl.rlim_cur == libc::RLIM_INFINITY {
        return usize::MAX;
    }
    usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Larger than what loopback socket buffers hold.
    const BIG: usize = 32 << 20;

    /// A listener serving `GET /` (and `/big`) with 2 connections, 1 s timeouts; its address and metrics.
    async fn small_listener() -> (std::net::SocketAddr, Metrics, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let limits = HttpLimits {
            max_connections: 2,
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        };
        let router = axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route("/big", axum::routing::get(|| async { vec![b'x'; BIG] }));
        tokio::spawn(serve(
            listener,
            router,
            limits,
            "metrics",
            metrics.clone(),
            shutdown.clone(),
            TaskTracker::new(),
        ));
        (addr, metrics, shutdown)
    }

    /// Reads until the server closes the connection; how long that took, or `None` after 5 s.
    async fn closed_after(s: &mut TcpStream) -> Option<Duration> {
        let started = Instant::now();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .ok()
            .map(|_| started.elapsed())
    }

    #[tokio::test]
    async fn past_the_cap_a_connection_is_closed_at_once_and_counted() {
        let (addr, metrics, _shutdown) = small_listener().await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            held.push(s);
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        let took = closed_after(&mut third).await.unwrap();
        assert!(took < Duration::from_millis(900), "closed after {took:?}");
        let scrape = metrics.render(&[]);
        assert!(
            scrape.contains(
                "shiptoken_connections_refused_total{listener=\"metrics\",reason=\"connections\"} 1"
            ),
            "{scrape}"
        );
        // The unfinished heads hit the header timeout, which frees their slots.
        for s in &mut held {
            assert!(
                closed_after(s).await.is_some(),
                "a half-sent head was never closed"
            );
        }
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_closed_by_the_idle_timeout() {
        let (addr, _metrics, _shutdown) = small_listener().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Not reading: the answer fills the socket buffers and the daemon's write stalls.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .expect("never closed")
            .ok();
        assert!(
            got.len() < BIG,
            "the whole answer came: the connection was not closed"
        );
    }

    #[test]
    fn the_defaults_fit_under_1024_open_files() {
        let (fitted, warning) = fit(LimitsConfig::default(), 2, 1024).unwrap();
        assert_eq!(fitted, LimitsConfig::default());
        assert_eq!(warning, None);
    }

    #[test]
    fn the_socket_cap_is_lowered_to_what_fits_and_the_reserve_is_kept() {
        let (fitted, warning) = fit(LimitsConfig::default(), 2, 800).unwrap();
        // 800 - 256 reserved - 2 x 64 TCP.
        assert_eq!(fitted.socket_connections, 416);
        assert_eq!(fitted.socket_connections_per_uid, 64);
        assert_eq!(fitted.reserved_fds, 256);
        let warning = warning.unwrap();
        assert!(warning.contains("lowered from 512 to 416"), "{warning}");
        assert!(warning.contains("LimitNOFILE"), "{warning}");
    }

    #[test]
    fn a_limit_that_leaves_readers_nothing_is_an_error_naming_the_keys() {
        let e = fit(LimitsConfig::default(), 1, 300)
            .unwrap_err()
            .to_string();
        assert!(e.contains("(300, RLIMIT_NOFILE)"), "{e}");
        assert!(e.contains("limits.reserved_fds (256)"), "{e}");
        assert!(
            e.contains("limits.socket_connections_unauthorized (16)"),
            "{e}"
        );
    }
}
