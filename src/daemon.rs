//! `shiptoken serve` as a value: [`start`] opens the registry and starts every listener and
//! task, [`Running::run`] serves until the shutdown future it is given resolves, then stops.
//!
//! The caller owns the signals (main.rs: SIGTERM/SIGINT stop, SIGHUP calls
//! [`Reloader::reload`]), the way mini-redis passes shutdown in, so the daemon can also run
//! inside a test. Start-up order matters for systemd: the registry is open and the socket
//! listens before the daemon says it is ready. Shutdown stops accepting, lets in-flight work
//! finish (bounded), removes the socket file and returns.

mod listen;
mod reload;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use listen::bind_socket;
pub use reload::Reloader;

use crate::api::{self, ApiState, AuditLog, Limits};
use crate::clock::Clock;
use crate::config::{Config, LimitsConfig};
use crate::keys::StateLock;
use crate::listeners::{self, HttpLimits};
use crate::logging::LogHandle;
use crate::metrics::Metrics;
use crate::providers::shippo::oauth::OAuthFlow;
use crate::providers::{Providers, shippo::Shippo};
use crate::registry::Registry;
use crate::registry::postgres::PostgresTarget;
use crate::rotation::Engine;
use crate::scheduler::{self, LastSweep, Trigger};
use crate::systemd::Systemd;

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
    /// What systemd passed: notify socket, watchdog, inherited listening socket.
    pub systemd: Systemd,
    /// The global log subscriber's handle, so a reload can apply `log.level`; `None` (a
    /// daemon inside a test) keeps the level the process started with.
    pub log: Option<LogHandle>,
}

/// Where a started daemon listens.
pub struct Ready {
    /// The Unix socket.
    pub socket: PathBuf,
    /// The metrics listener, if on.
    pub metrics: Option<SocketAddr>,
    /// The Shippo OAuth callback listener, if OAuth is configured.
    pub shippo_callback: Option<SocketAddr>,
}

/// What the parts of a daemon share while it runs.
struct Core {
    /// The live configuration; the reloader holds the sending side.
    config: watch::Receiver<Arc<Config>>,
    /// The daemon's clock.
    clock: Clock,
    /// One metrics registry per daemon, so two daemons in one test process never collide.
    metrics: Metrics,
    /// The source of truth.
    registry: Registry,
    /// Rotation and verification.
    engine: Arc<Engine>,
    /// When the last sweep finished: health, the systemd watchdog and `/healthz` read it.
    last_sweep: Arc<LastSweep>,
    /// Fired once on shutdown; every task and connection watches it.
    shutdown: CancellationToken,
    /// Every task and connection, so shutdown can wait for them.
    tracker: TaskTracker,
}

/// A daemon whose listeners and tasks run; [`Running::run`] serves until told to stop.
pub struct Running {
    core: Core,
    ready: Ready,
    reloader: Reloader,
    /// The cron trigger, shared with the reloader (which reschedules it).
    trigger: Arc<Mutex<Trigger>>,
    /// The audit queue, flushed once more after the tasks stopped.
    audit: AuditLog,
    /// Whether systemd passed the socket: then the file is systemd's and stays.
    activated: bool,
    systemd: Systemd,
    /// Where the start-up log line says logs go.
    logs: &'static str,
    /// Held until the daemon stops: `key rotate` refuses to run under a live daemon, and a
    /// second daemon refuses to share the registry.
    _state_lock: StateLock,
}

/// Opens the registry and starts every listener and task: once this returns, the socket
/// accepts connections. The daemon tells systemd it is ready in [`Running::run`].
pub async fn start(config: Config, options: ServeOptions) -> anyhow::Result<Running> {
    warn_about_environment(&options.systemd);
    let movable_clock = movable_clock(&options);
    let clock = options.clock.unwrap_or_else(Clock::system);
    let state_lock = lock_state_dir(&config)?;
    let metrics = Metrics::new();
    let (registry, postgres) = open_registry(&config, &metrics).await?;
    let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
    let (engine, shippo) = engine(&config, &registry, &clock, &metrics, &config_rx);
    // Checked before anything listens: OAuth configured without its secret is a start-up error.
    let oauth = OAuthFlow::from_config(
        &config.shippo,
        registry.clone(),
        shippo,
        engine.clone(),
        clock.clone(),
    )?
    .map(Arc::new);
    let core = Core {
        config: config_rx,
        last_sweep: Arc::new(LastSweep::new(clock.now())),
        clock,
        metrics,
        registry,
        engine,
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
    };

    let mut systemd = options.systemd;
    let activated = systemd.listener.is_some();
    let listener = listen::socket(systemd.listener.take(), &config)?;
    let limits = fit_limits(&config)?;
    let audit = core.start_audit();
    match postgres {
        Some(target) => {
            tracing::info!(registry = %target.shown, host_name = %target.host, "sharing the PostgreSQL registry");
            if let Some(changes) = core.registry.remote_changes() {
                core.tracker.spawn(
                    core.engine
                        .clone()
                        .follow_fleet(changes, core.shutdown.clone()),
                );
            }
            core.tracker.spawn(crate::registry::follow::follow(
                core.registry.clone(),
                target,
                core.metrics.registry_connected(),
                core.shutdown.clone(),
            ));
        }
        None => core.metrics.registry_connected().set(1),
    }
    let state = core.api_state(oauth.clone(), audit.clone(), movable_clock);
    core.tracker
        .spawn(crate::sinks::run(state.clone(), core.shutdown.clone()));
    core.tracker.spawn(api::serve(
        listener,
        api::Handler::new(state),
        Limits::from(&limits),
        core.shutdown.clone(),
        core.tracker.clone(),
    ));
    let ready = Ready {
        socket: config.socket.path.clone(),
        metrics: listen::metrics(&core, &config, HttpLimits::from(&limits)).await?,
        shippo_callback: listen::shippo_callback(&core, oauth.as_ref(), &config, &limits).await?,
    };
    let (trigger, notify) = core.start_sweeps(&config).await?;
    let logs = options
        .log
        .as_ref()
        .map_or("as set up by the caller", |l| l.destination);
    let reloader = Reloader::new(
        config.file.clone(),
        config_tx,
        options.log,
        trigger.clone(),
        notify,
        systemd.notifier.clone(),
        core.registry.clone(),
    );
    Ok(Running {
        core,
        ready,
        reloader,
        trigger,
        audit,
        activated,
        systemd,
        logs,
        _state_lock: state_lock,
    })
}

impl Running {
    /// Where the daemon listens.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// A handle that re-reads the configuration file, for the caller's SIGHUP.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Tells systemd the daemon is ready, serves until `shutdown` resolves, then stops:
    /// no new upstream call, connections and work in flight finish (bounded), the socket file
    /// goes. `shutdown` is polled for the whole run, so it may do work of its own (main.rs
    /// reloads on SIGHUP inside it).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.announce();
        shutdown.await;
        self.stop().await;
        Ok(())
    }

    /// The start-up log line, READY=1 and the systemd supervisor (status and watchdog).
    fn announce(&self) {
        let core = &self.core;
        let off = || "off".to_string();
        tracing::info!(
            socket = %self.ready.socket.display(),
            metrics = %self.ready.metrics.map_or_else(off, |a| a.to_string()),
            shippo_callback = %self.ready.shippo_callback.map_or_else(off, |a| a.to_string()),
            accounts = core.registry.accounts().len(),
            logs = self.logs,
            version = env!("CARGO_PKG_VERSION"),
            "shiptoken ready"
        );
        core.tracker.spawn(report_stranded(
            core.registry.clone(),
            core.config.borrow().clone(),
        ));
        let notifier = &self.systemd.notifier;
        notifier.ready(&crate::systemd::registry_status(&core.registry));
        core.tracker.spawn(crate::systemd::supervise(
            notifier.clone(),
            self.systemd.watchdog,
            core.registry.clone(),
            core.last_sweep.clone(),
            core.config.clone(),
            core.shutdown.clone(),
        ));
    }

    /// The graceful stop.
    async fn stop(self) {
        let core = self.core;
        self.systemd.notifier.stopping();
        // First: no new upstream call. A refresh already sent is waited for and its token
        // stored (not probed), so nothing a provider issued is lost to a restart.
        core.engine.stop_new_work();
        self.trigger.lock().await.stop().await;
        core.shutdown.cancel();
        core.tracker.close();
        let wait = core.engine.stop_grace() + SHUTDOWN_MARGIN;
        if tokio::time::timeout(wait, core.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "some connections or work did not finish within {wait:?}; abandoning them"
            );
        }
        // Reads answered while the audit flusher was stopping.
        self.audit.flush(&core.registry).await;
        // With socket activation the file belongs to systemd, which keeps listening on it.
        if !self.activated {
            listen::remove_socket(&self.ready.socket);
        }
        tracing::info!("stopped");
    }
}

impl Core {
    /// The audit queue and its flusher.
    fn start_audit(&self) -> AuditLog {
        let audit = AuditLog::with_dropped_counter(self.metrics.audit_dropped());
        self.tracker.spawn(audit.clone().run(
            self.registry.clone(),
            self.clock.clone(),
            self.config.clone(),
            self.shutdown.clone(),
        ));
        audit
    }

    /// What the socket's handlers share.
    fn api_state(
        &self,
        oauth: Option<Arc<OAuthFlow>>,
        audit: AuditLog,
        movable_clock: bool,
    ) -> Arc<ApiState> {
        Arc::new(ApiState {
            registry: self.registry.clone(),
            engine: self.engine.clone(),
            config: self.config.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            daemon_uid: own_uid(),
            movable_clock,
            last_sweep: self.last_sweep.clone(),
            oauth,
            audit,
            answers: api::Answers::default(),
            shutdown: self.shutdown.clone(),
            proxy: api::proxy::ProxyClients::default(),
        })
    }

    /// The cron trigger and the sweeper it wakes; the `Notify` also wakes it after a reload.
    async fn start_sweeps(
        &self,
        config: &Config,
    ) -> anyhow::Result<(Arc<Mutex<Trigger>>, Arc<Notify>)> {
        let notify = Arc::new(Notify::new());
        let trigger = Trigger::start(&config.rotation.schedule, notify.clone())
            .await
            .context("cannot start the rotation scheduler")?;
        self.tracker.spawn(scheduler::run_sweeper(
            self.engine.clone(),
            self.clock.clone(),
            notify.clone(),
            self.config.clone(),
            self.shutdown.clone(),
            self.last_sweep.clone(),
        ));
        Ok((Arc::new(Mutex::new(trigger)), notify))
    }
}

/// What the environment got wrong: variables that name no key, and systemd's oddities.
fn warn_about_environment(systemd: &Systemd) {
    for var in Config::unknown_env_vars() {
        tracing::warn!(variable = %var, "environment variable names no configuration key; ignored");
    }
    for warning in &systemd.warnings {
        tracing::warn!("{warning}");
    }
}

/// Whether `POST /v1/debug/clock` may move the clock.
fn movable_clock(options: &ServeOptions) -> bool {
    #[cfg(feature = "dev")]
    return options.movable_clock;
    // Without the dev feature there is no route that could move the clock.
    #[cfg(not(feature = "dev"))]
    {
        let _ = options;
        false
    }
}

/// Prepares the state folder and takes its lock.
fn lock_state_dir(config: &Config) -> anyhow::Result<StateLock> {
    crate::keys::prepare_state_dir(&config.state_dir)?;
    crate::keys::StateLock::try_take(&config.state_dir)?.with_context(|| {
        format!(
            "another shiptoken process is using the state folder {}; stop it first",
            config.state_dir.display()
        )
    })
}

async fn open_registry(
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<(Registry, Option<PostgresTarget>)> {
    let postgres = config
        .registry
        .postgres()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let registry = Registry::open_with(
        &config.state_dir,
        crate::registry::OpenOptions {
            key_file: config.key_file.clone(),
            errors: Some(metrics.registry_errors()),
            postgres: postgres.clone(),
        },
    )
    .await;
    let registry = match &postgres {
        Some(target) => registry.with_context(|| {
            format!(
                "cannot open the PostgreSQL registry {} (registry.url)",
                target.shown
            )
        })?,
        None => registry.with_context(|| {
            format!("cannot open the registry in {}", config.state_dir.display())
        })?,
    };
    Ok((registry, postgres))
}

/// The engine over one client (connection pool, TLS setup) per provider, each with its own
/// timeout; the Shippo client too, for the OAuth flow.
fn engine(
    config: &Config,
    registry: &Registry,
    clock: &Clock,
    metrics: &Metrics,
    config_rx: &watch::Receiver<Arc<Config>>,
) -> (Arc<Engine>, Shippo) {
    let providers = Providers::new(config, metrics);
    let shippo = providers.shippo().clone();
    let engine = Engine::new(
        registry.clone(),
        providers,
        clock.clone(),
        metrics.clone(),
        config_rx.clone(),
    )
    .with_notifier(crate::notify::Notifier::start(&config.notify));
    (Arc::new(engine), shippo)
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

/// Logs an ERROR for each account the configuration cannot serve any more (its provider's
/// [`crate::providers::Rules::stranded`]), at start-up rather than at its next token call.
async fn report_stranded(registry: Registry, config: Arc<Config>) {
    for account in registry.accounts() {
        let Some(stranded) = crate::providers::rules(account.key.provider).stranded else {
            continue;
        };
        let why = match registry.refresh_token(&account.key).await {
            Ok(Some(credential)) => stranded(&config, &credential),
            _ => None,
        };
        if let Some(why) = why {
            tracing::error!(provider = %account.key.provider, account = %account.key.name, "{} {why}; its next token call will fail", account.key);
        }
    }
}

/// The daemon's own uid, which may always administer.
fn own_uid() -> u32 {
    rustix::process::getuid().as_raw()
}
