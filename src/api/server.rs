//! The Unix socket listener: HTTP/1.1 connections, each tagged with its peer's credentials.
//!
//! The caller binds the listener and passes a shutdown token in, so tests start a server on
//! a temporary path. A connection permit is taken *before* `accept`, which caps open
//! connections without ever accepting one we cannot serve. On shutdown each connection
//! finishes the request in hand and closes.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Who is on the other end of a connection, from `SO_PEERCRED`: never from anything it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The peer process's user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
    /// Its process id, when the kernel reports it.
    pub pid: Option<i32>,
}

/// Everything known about the caller of a request, attached to it as one extension (each
/// extension is an allocation on the hot path).
#[derive(Clone, Debug)]
pub struct Caller {
    /// The peer's credentials.
    pub peer: Peer,
    /// The peer's executable, read once per connection from `/proc/<pid>/exe` for the audit;
    /// `None` when the process is gone or belongs to a user the daemon may not inspect.
    pub exe: Option<Arc<str>>,
}

impl Caller {
    /// The caller on the other end of a connection whose credentials are `peer`.
    pub fn of(peer: Peer) -> Caller {
        let exe = peer
            .pid
            .and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
            .map(|path| Arc::from(path.to_string_lossy().as_ref()));
        Caller { peer, exe }
    }
}

/// Bounds that keep a misbehaving client from holding resources.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; the next waits in the kernel's backlog.
    pub max_connections: usize,
    /// Time allowed to send a request's headers (and between keep-alive requests).
    pub header_read_timeout: Duration,
    /// Largest buffered request head.
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            max_head_bytes: 16 * 1024,
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` fires, then lets open connections finish
/// the request they are on. Connection tasks are tracked by `tracker`.
pub async fn serve(
    listener: UnixListener,
    handler: super::Handler,
    limits: Limits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %e, "socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let peer = match stream.peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials; closing connection");
                continue;
            }
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let caller = Caller::of(peer);
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(caller.clone());
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(handler.handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_head_bytes.max(8192))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, uid = peer.uid, "socket connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
