//! The daemon's listeners: the Unix socket (bound here or passed by systemd), the metrics and
//! `/healthz` port, and the Shippo OAuth callback.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::UnixListener;

use super::Core;
use crate::config::{Config, LimitsConfig};
use crate::listeners::{self, HttpLimits};
use crate::providers::shippo::oauth::OAuthFlow;
use crate::registry::Registry;
use crate::scheduler::{self, LastSweep};

/// The socket systemd passed (socket activation: systemd owns the file, so it is neither bound
/// nor removed here), else the configured path, bound.
pub(super) fn socket(
    inherited: Option<Result<StdUnixListener, String>>,
    config: &Config,
) -> anyhow::Result<UnixListener> {
    match inherited {
        Some(inherited) => {
            let inherited = inherited.map_err(anyhow::Error::msg)?;
            tracing::info!(socket = ?inherited.local_addr().ok(), "using the socket passed by systemd");
            crate::systemd::into_tokio(inherited).context("cannot use the socket passed by systemd")
        }
        None => bind_socket(&config.socket.path, config.socket.mode),
    }
}

/// Binds the Unix socket, replacing a stale file left by a crash but refusing to steal the
/// path from a live daemon.
pub fn bind_socket(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the socket folder {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            bail!(
                "{} exists and is not a socket; remove it or set socket.path elsewhere",
                path.display()
            )
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => bail!(
                "another process is already listening on {}; stop it (is shiptoken already running?) or set socket.path elsewhere",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "removing a stale socket file left by a previous run");
                std::fs::remove_file(path).with_context(|| {
                    format!("cannot remove the stale socket {}", path.display())
                })?;
            }
            Err(e) => bail!("cannot check the existing socket {}: {e}", path.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("cannot inspect {}: {e}", path.display()),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {mode:o} on {}", path.display()))?;
    Ok(listener)
}

/// Removes the socket file the daemon bound; one already gone is fine.
pub(super) fn remove_socket(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove the socket file"),
    }
}

/// Starts `/metrics` and `/healthz` on `metrics.listen`, if set; returns where it listens.
pub(super) async fn metrics(
    core: &Core,
    config: &Config,
    limits: HttpLimits,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = config.metrics_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on metrics.listen {addr}"))?;
    let bound = listener.local_addr()?;
    // A sweep that has not finished in two ticks plus a minute means the scheduler stalled.
    let stall_after =
        scheduler::tick_interval(&config.rotation.schedule).unwrap_or(Duration::from_secs(60)) * 2
            + Duration::from_secs(60);
    let render = {
        let (metrics, registry) = (core.metrics.clone(), core.registry.clone());
        move || {
            let body = metrics.render(&registry.accounts());
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                body,
            )
        }
    };
    let (registry, last_sweep) = (core.registry.clone(), core.last_sweep.clone());
    let app = axum::Router::new()
        .route("/metrics", get(move || std::future::ready(render())))
        .route(
            "/healthz",
            get(move || healthz(registry.clone(), last_sweep.clone(), stall_after)),
        );
    core.tracker.spawn(listeners::serve(
        listener,
        app,
        limits,
        "metrics",
        core.metrics.clone(),
        core.shutdown.clone(),
        core.tracker.clone(),
    ));
    Ok(Some(bound))
}

/// `/healthz`: 200 `ok`, or 503 saying what is wrong.
async fn healthz(
    registry: Registry,
    last_sweep: Arc<LastSweep>,
    stall_after: Duration,
) -> Response {
    if let Err(e) = registry.ping().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("registry unusable: {e}\n"),
        )
            .into_response();
    }
    // Tokens are still served from memory, but a restart now would lose the unsaved ones.
    if let Some(problem) = registry.write_problem().or_else(|| registry.feed_problem()) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")).into_response();
    }
    // Monotonic: a step of the wall clock neither hides a stall nor fakes one.
    let age = last_sweep.silence();
    if age > stall_after {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("scheduler stalled: last sweep {}s ago\n", age.as_secs()),
        )
            .into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

/// Starts the Shippo OAuth callback on `shippo.callback_listen` when OAuth is configured;
/// returns where it listens.
pub(super) async fn shippo_callback(
    core: &Core,
    oauth: Option<&Arc<OAuthFlow>>,
    config: &Config,
    limits: &LimitsConfig,
) -> anyhow::Result<Option<SocketAddr>> {
    let (Some(flow), Some(addr)) = (oauth, config.shippo.callback_listen) else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on shippo.callback_listen {addr}"))?;
    let bound = listener.local_addr()?;
    core.tracker.spawn(listeners::serve(
        listener,
        flow.clone().callback_router(),
        HttpLimits::from(limits),
        "shippo_callback",
        core.metrics.clone(),
        core.shutdown.clone(),
        core.tracker.clone(),
    ));
    Ok(Some(bound))
}
