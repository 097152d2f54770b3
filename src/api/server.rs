//! The Unix socket listener: HTTP/1.1 connections, each tagged with its peer's credentials.
//!
//! The caller binds the listener and passes a shutdown token in, so tests start a server on
//! a temporary path. A connection permit is taken *before* `accept`, which caps open
//! connections without ever accepting one we cannot serve. Once the peer is known, a peer
//! that may read nothing gets a slot of a small shared pool, any other non-admin uid one of
//! its own few, or the connection is closed at once: no flood from one uid, or from every
//! uid without rights, keeps a reader out. On shutdown each connection finishes the request
//! in hand and closes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
    /// Connections open at once per uid that may read but is no admin; past it, the uid's
    /// next connection is closed at once, so one application cannot take every slot.
    pub per_uid: usize,
    /// Connections shared by every peer that may read nothing; past it, closed at once.
    pub unauthorized: usize,
    /// Time allowed to send a request's headers (and between keep-alive requests).
    pub header_read_timeout: Duration,
    /// Largest buffered request head.
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from(&crate::config::LimitsConfig::default())
    }
}

impl From<&crate::config::LimitsConfig> for Limits {
    fn from(l: &crate::config::LimitsConfig) -> Limits {
        Limits {
            max_connections: l.socket_connections,
            per_uid: l.socket_connections_per_uid,
            unauthorized: l.socket_connections_unauthorized,
            header_read_timeout: l.header_timeout,
            max_head_bytes: 16 * 1024,
        }
    }
}

/// What a peer may do, as far as the accept loop cares; decided by the same rules as each
/// request (`ApiState::standing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The daemon's uid or one of `socket.admin_uids`: no cap but the total.
    Admin,
    /// May read some token: a `[[socket.clients]]` rule lists its uid or gid, or there are no
    /// rules. Capped per uid.
    Reader,
    /// May read nothing: shares the small pool with every other such peer.
    Stranger,
}

/// The per-uid and shared-pool slots in use.
struct Slots {
    per_uid: Mutex<HashMap<u32, usize>>,
    unauthorized: Arc<Semaphore>,
    limits: Limits,
}

/// A connection's hold on its slot, given back when the connection ends.
enum Slot {
    Free,
    Uid(Arc<Slots>, u32),
    Pool { _permit: OwnedSemaphorePermit },
}

impl Slots {
    fn new(limits: Limits) -> Arc<Slots> {
        Arc::new(Slots {
            per_uid: Mutex::default(),
            unauthorized: Arc::new(Semaphore::new(limits.unauthorized)),
            limits,
        })
    }

    /// A slot for `peer`, or the reason (a metrics label) why there is none.
    fn take(self: &Arc<Self>, peer: &Peer, standing: Standing) -> Result<Slot, &'static str> {
        match standing {
            Standing::Admin => Ok(Slot::Free),
            Standing::Stranger => match self.unauthorized.clone().try_acquire_owned() {
                Ok(permit) => Ok(Slot::Pool { _permit: permit }),
                Err(_) => Err("unauthorized"),
            },
            Standing::Reader => {
                let mut open = self.per_uid.lock().unwrap_or_else(PoisonError::into_inner);
                let n = open.entry(peer.uid).or_default();
                if *n >= self.limits.per_uid {
                    return Err("per_uid");
                }
                *n += 1;
                Ok(Slot::Uid(self.clone(), peer.uid))
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Slot::Uid(slots, uid) = self {
            let mut open = slots.per_uid.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = open.get_mut(uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(uid);
                }
            }
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
    let slots = Slots::new(limits);
    let mut refusals = crate::listeners::RefusalLog::new("socket");
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
        let slot = match slots.take(&peer, handler.standing(&peer)) {
            Ok(slot) => slot,
            Err(reason) => {
                handler.metrics().connection_refused("socket", reason);
                refusals.refused(reason, Some(peer.uid));
                continue;
            }
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permits = (permit, slot);
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
