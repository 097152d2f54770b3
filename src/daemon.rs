//! `shiptoken serve`: wires the parts together, runs until SIGTERM/SIGINT, reloads on SIGHUP.
//!
//! Start-up order matters for systemd: the registry is open and the socket listens before
//! the daemon says it is ready. Shutdown stops accepting, lets in-flight work finish (bounded),
//! removes the socket file and returns.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::net::UnixListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState, Limits};
use crate::clock::Clock;
use crate::config::{Config, LimitsConfig};
use crate::listeners::{self, HttpLimits};
use crate::logging::LogHandle;
use crate::metrics::Metrics;
use crate::providers::{self, shiphero::ShipHero, shippo::Shippo};
use crate::registry::Registry;
use crate::rotation::Engine;
use crate::scheduler::{self, Trigger};

/// How long shutdown waits for connections after the work in flight (see
/// [`Engine::stop_grace`]) has had its time.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

/// Options of `serve` beyond the configuration.
#[derive(Default)]
pub struct ServeOptions {
    /// Allow `POST /v1/debug/clock` (tests, dev mode).
    #[cfg(feature = "dev")]
    pub movable_clock: bool,
    /// The clock to use (dev mode shares it with its simulated upstreams).
    pub clock: Option<Clock>,
    /// Called once the daemon is ready, with where it listens.
    pub on_ready: Option<OnReady>,
    /// What systemd passed: notify socket, watchdog, inherited listening socket.
    pub systemd: crate::systemd::Systemd,
}

/// A callback run once the daemon is ready.
pub type OnReady = Box<dyn FnOnce(&Ready) + Send>;

/// Where a ready daemon listens.
pub struct Ready {
    /// The Unix socket.
    pub socket: PathBuf,
    /// The metrics listener, if on.
    pub metrics: Option<SocketAddr>,
    /// The Shippo OAuth callback listener, if OAuth is configured.
    pub shippo_callback: Option<SocketAddr>,
}

/// Runs the daemon until it is told to stop.
pub async fn serve(config: Config, log: LogHandle, options: ServeOptions) -> anyhow::Result<()> {
    for var in Config::unknown_env_vars() {
        tracing::warn!(variable = %var, "environment variable names no configuration key; ignored");
    }
    let clock = options.clock.unwrap_or_else(Clock::system);
    // Held until the process ends: `key rotate` refuses to run under a live daemon, and a
    // second daemon refuses to share the registry.
    crate::keys::prepare_state_dir(&config.state_dir)?;
    let _state_lock = crate::keys::StateLock::try_take(&config.state_dir)?.with_context(|| {
        format!(
            "another shiptoken process is using the state folder {}; stop it first",
            config.state_dir.display()
        )
    })?;
    let metrics = Metrics::new();
    let registry = Registry::open_with(
        &config.state_dir,
        crate::registry::OpenOptions {
            key_file: config.key_file.clone(),
            errors: Some(metrics.registry_errors()),
        },
    )
    .await
    .with_context(|| format!("cannot open the registry in {}", config.state_dir.display()))?;
    // One client (connection pool, TLS setup) per provider, each with its own timeout.
    let shiphero = ShipHero::new(
        providers::http_client(config.shiphero.timeout),
        &config.shiphero.api_base,
        metrics.clone(),
    );
    let shippo = Shippo::new(
        providers::http_client(config.shippo.timeout),
        &config.shippo.api_base,
        &config.shippo.oauth_base,
        &config.shippo.api_version,
        metrics.clone(),
    );
    let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
    let engine = Arc::new(
        Engine::new(
            registry.clone(),
            shiphero,
            shippo.clone(),
            clock.clone(),
            metrics.clone(),
            config_rx.clone(),
        )
        .with_notifier(crate::notify::Notifier::start(&config.notify)),
    );
    // Checked before anything listens: OAuth configured without its secret is a start-up error.
    let oauth = crate::oauth::OAuthFlow::from_config(
        &config.shippo,
        registry.clone(),
        shippo,
        engine.clone(),
        clock.clone(),
    )?
    .map(Arc::new);

    let mut systemd = options.systemd;
    for warning in &systemd.warnings {
        tracing::warn!("{warning}");
    }
    // Socket activation: systemd owns the socket file, so it is neither bound nor removed here.
    let activated = systemd.listener.is_some();
    let listener = match systemd.listener.take() {
        Some(inherited) => {
            let inherited = inherited.map_err(anyhow::Error::msg)?;
            tracing::info!(socket = ?inherited.local_addr().ok(), "using the socket passed by systemd");
            crate::systemd::into_tokio(inherited)
                .context("cannot use the socket passed by systemd")?
        }
        None => bind_socket(&config.socket.path, config.socket.mode)?,
    };
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let limits = fit_limits(&config)?;

    let last_sweep = Arc::new(scheduler::LastSweep::new(clock.now()));
    let audit = api::AuditLog::new();
    tracker.spawn(audit.clone().run(
        registry.clone(),
        clock.clone(),
        config_rx.clone(),
        shutdown.clone(),
    ));
    // Without the dev feature there is no route that could move the clock.
    #[cfg(feature = "dev")]
    let movable_clock = options.movable_clock;
    #[cfg(not(feature = "dev"))]
    let movable_clock = false;
    let state = Arc::new(ApiState {
        registry: registry.clone(),
        engine: engine.clone(),
        config: config_rx.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
        daemon_uid: own_uid(),
        movable_clock,
        last_sweep: last_sweep.clone(),
        oauth: oauth.clone(),
        audit: audit.clone(),
        answers: api::Answers::default(),
        shutdown: shutdown.clone(),
    });
    tracker.spawn(crate::sinks::run(state.clone(), shutdown.clone()));
    tracker.spawn(api::serve(
        listener,
        api::Handler::new(state),
        Limits::from(&limits),
        shutdown.clone(),
        tracker.clone(),
    ));

    let metrics_addr = match config.metrics_listen {
        Some(addr) => Some(
            start_metrics(
                addr,
                metrics.clone(),
                registry.clone(),
                last_sweep.clone(),
                &config,
                HttpLimits::from(&limits),
                shutdown.clone(),
                &tracker,
            )
            .await?,
        ),
        None => None,
    };

    let shippo_callback = match (&oauth, config.shippo.callback_listen) {
        (Some(flow), Some(addr)) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on shippo.callback_listen {addr}"))?;
            let bound = listener.local_addr()?;
            tracker.spawn(listeners::serve(
                listener,
                flow.clone().callback_router(),
                HttpLimits::from(&limits),
                "shippo_callback",
                metrics.clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
            Some(bound)
        }
        _ => None,
    };

    let notify = Arc::new(Notify::new());
    let mut trigger = Trigger::start(&config.rotation.schedule, notify.clone())
        .await
        .context("cannot start the rotation scheduler")?;
    tracker.spawn(scheduler::run_sweeper(
        engine.clone(),
        clock.clone(),
        notify.clone(),
        config_rx.clone(),
        shutdown.clone(),
        last_sweep.clone(),
    ));

    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    let signals_handle = signals.handle();

    let accounts = registry.accounts().len();
    tracing::info!(
        socket = %config.socket.path.display(),
        metrics = %metrics_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        shippo_callback = %shippo_callback.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        accounts,
        logs = log.destination,
        version = env!("CARGO_PKG_VERSION"),
        "shiptoken ready"
    );
    systemd
        .notifier
        .ready(&crate::systemd::registry_status(&registry));
    tracker.spawn(crate::systemd::supervise(
        systemd.notifier.clone(),
        systemd.watchdog,
        registry.clone(),
        last_sweep.clone(),
        config_rx.clone(),
        shutdown.clone(),
    ));
    if let Some(on_ready) = options.on_ready {
        on_ready(&Ready {
            socket: config.socket.path.clone(),
            metrics: metrics_addr,
            shippo_callback,
        });
    }

    let file = config.file.clone();
    let mut current = config;
    while let Some(signal) = signals.next().await {
        match signal {
            SIGHUP => {
                // systemd pairs RELOADING=1 with the READY=1 that follows, failed or not.
                systemd.notifier.reloading();
                let status = crate::systemd::registry_status(&registry);
                if let Some(new) = reload(file.as_deref(), &current, &log, &mut trigger).await {
                    current = new.clone();
                    config_tx.send_replace(Arc::new(new));
                    notify.notify_one();
                    systemd.notifier.ready(&status);
                } else {
                    systemd.notifier.ready(&format!(
                        "reload refused, previous configuration kept (see the log); {status}"
                    ));
                }
            }
            _ => {
                tracing::info!(signal, "stopping");
                systemd.notifier.stopping();
                break;
            }
        }
    }
    signals_handle.close();
    // First: no new upstream call. A refresh already sent is waited for and its token
    // stored (not probed), so nothing a provider issued is lost to a restart.
    engine.stop_new_work();
    trigger.stop().await;
    shutdown.cancel();
    tracker.close();
    let wait = engine.stop_grace() + SHUTDOWN_MARGIN;
    if tokio::time::timeout(wait, tracker.wait()).await.is_err() {
        tracing::warn!("some connections or work did not finish within {wait:?}; abandoning them");
    }
    // Reads answered while the audit flusher was stopping.
    audit.flush(&registry).await;
    // With socket activation the file belongs to systemd, which keeps listening on it.
    let removed = if activated {
        Ok(())
    } else {
        std::fs::remove_file(&current.socket.path)
    };
    match removed {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove the socket file"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// `[limits]` fitted under the open-file limit with the TCP listeners that will be on: lowered
/// with a warning when they do not fit, an error when not even that leaves readers a slot.
fn fit_limits(config: &Config) -> anyhow::Result<LimitsConfig> {
    let oauth_on = config.shippo.oauth_enabled() && config.shippo.callback_listen.is_some();
    let tcp_listeners = usize::from(config.metrics_listen.is_some()) + usize::from(oauth_on);
    let nofile = listeners::open_file_limit();
    let (limits, warning) = listeners::fit(config.limits, tcp_listeners, nofile)?;
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    Ok(limits)
}

/// The daemon's own uid, which may always administer.
fn own_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Re-reads the configuration; returns it when it was valid and applied.
async fn reload(
    file: Option<&Path>,
    current: &Config,
    log: &LogHandle,
    trigger: &mut Trigger,
) -> Option<Config> {
    let new = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload refused: the configuration is invalid; keeping the running one");
            return None;
        }
    };
    match crate::config::reload::check(current, &new) {
        Ok(grants) => {
            for grant in grants {
                tracing::warn!(peer = %grant.peer, grant = %grant.what, "reload widens access: {grant}");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "reload refused: keeping the running configuration");
            return None;
        }
    }
    if let Err(e) = log.set_level(&new.log_level) {
        tracing::error!(error = %e, "reload: cannot apply log.level");
    }
    if let Err(e) = trigger.reschedule(&new.rotation.schedule).await {
        tracing::error!(error = %e, "reload: cannot apply rotation.schedule; keeping the old schedule");
    }
    let needs_restart = [
        ("state_dir", current.state_dir != new.state_dir),
        ("key_file", current.key_file != new.key_file),
        ("socket.path", current.socket.path != new.socket.path),
        ("socket.mode", current.socket.mode != new.socket.mode),
        (
            "metrics.listen",
            current.metrics_listen != new.metrics_listen,
        ),
        (
            "shippo.callback_listen",
            current.shippo.callback_listen != new.shippo.callback_listen,
        ),
        ("shiphero", current.shiphero != new.shiphero),
        ("shippo", current.shippo != new.shippo),
        ("limits", current.limits != new.limits),
        (
            "rotation.concurrency",
            current.rotation.concurrency != new.rotation.concurrency,
        ),
    ];
    for (key, changed) in needs_restart {
        if changed {
            tracing::warn!(
                key,
                "reload: {key} changed but takes effect only after a restart"
            );
        }
    }
    tracing::info!("configuration reloaded");
    Some(new)
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

#[allow(clippy::too_many_arguments)]
async fn start_metrics(
    addr: SocketAddr,
    metrics: Metrics,
    registry: Registry,
    last_sweep: Arc<scheduler::LastSweep>,
    config: &Config,
    limits: HttpLimits,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<SocketAddr> {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on metrics.listen {addr}"))?;
    let bound = listener.local_addr()?;
    // A sweep that has not finished in two ticks plus a minute means the scheduler stalled.
    let stall_after =
        scheduler::tick_interval(&config.rotation.schedule).unwrap_or(Duration::from_secs(60)) * 2
            + Duration::from_secs(60);
    let render = {
        let (metrics, registry) = (metrics.clone(), registry.clone());
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
    let healthz = move || {
        let (registry, last_sweep) = (registry.clone(), last_sweep.clone());
        async move {
            if let Err(e) = registry.ping().await {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("registry unusable: {e}\n"),
                )
                    .into_response();
            }
            // Tokens are still served from memory, but a restart now would lose the unsaved ones.
            if let Some(problem) = registry.write_problem() {
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
    };
    let app = axum::Router::new()
        .route("/metrics", get(move || std::future::ready(render())))
        .route("/healthz", get(healthz));
    tracker.spawn(listeners::serve(
        listener,
        app,
        limits,
        "metrics",
        metrics,
        shutdown,
        tracker.clone(),
    ));
    Ok(bound)
}
