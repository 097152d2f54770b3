//! Reloading the configuration of a running daemon (SIGHUP): re-read the file, refuse what
//! would widen access silently or cannot be applied, apply the rest, tell systemd.
//!
//! What a reload may change is decided in `config::reload`; this applies it.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{Mutex, Notify, watch};

use crate::config::Config;
use crate::logging::LogHandle;
use crate::registry::Registry;
use crate::scheduler::Trigger;
use crate::systemd::{Notifier, registry_status};

/// Re-reads the configuration of a running daemon; cheap to clone. Reloads run one at a time.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    /// The file the daemon was started with (`None`: defaults and environment only).
    file: Option<PathBuf>,
    /// The live configuration: its current value is what a reload compares against.
    config: watch::Sender<Arc<Config>>,
    log: Option<LogHandle>,
    /// Locked for a whole reload, which also makes reloads take turns.
    trigger: Arc<Mutex<Trigger>>,
    /// Wakes the sweeper, so changed intervals apply at once.
    sweep: Arc<Notify>,
    notifier: Notifier,
    /// For the STATUS= line sent with READY=1.
    registry: Registry,
}

impl Reloader {
    pub(super) fn new(
        file: Option<PathBuf>,
        config: watch::Sender<Arc<Config>>,
        log: Option<LogHandle>,
        trigger: Arc<Mutex<Trigger>>,
        sweep: Arc<Notify>,
        notifier: Notifier,
        registry: Registry,
    ) -> Reloader {
        Reloader {
            inner: Arc::new(Inner {
                file,
                config,
                log,
                trigger,
                sweep,
                notifier,
                registry,
            }),
        }
    }

    /// Re-reads the file and applies it; `false` when it was refused (an ERROR line says why)
    /// and the running configuration stays. systemd hears RELOADING=1, then READY=1 either
    /// way.
    pub async fn reload(&self) -> bool {
        let inner = &self.inner;
        let mut trigger = inner.trigger.lock().await;
        // systemd pairs RELOADING=1 with the READY=1 that follows, failed or not.
        inner.notifier.reloading();
        let status = registry_status(&inner.registry);
        // A shared registry's next key is copied to every host, then each is reloaded.
        if let Err(e) = inner.registry.stage_next_key().await {
            tracing::error!(error = %e, "reload: cannot stage the next key; `key rotate` waits for it");
        }
        let current = inner.config.borrow().clone();
        match reload(
            inner.file.as_deref(),
            &current,
            inner.log.as_ref(),
            &mut trigger,
        )
        .await
        {
            Some(new) => {
                inner.config.send_replace(Arc::new(new));
                inner.sweep.notify_one();
                inner.notifier.ready(&status);
                true
            }
            None => {
                inner.notifier.ready(&format!(
                    "reload refused, previous configuration kept (see the log); {status}"
                ));
                false
            }
        }
    }
}

/// Re-reads the configuration; returns it when it was valid and applied.
async fn reload(
    file: Option<&std::path::Path>,
    current: &Config,
    log: Option<&LogHandle>,
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
    if let Some(Err(e)) = log.map(|log| log.set_level(&new.log_level)) {
        tracing::error!(error = %e, "reload: cannot apply log.level");
    }
    if let Err(e) = trigger.reschedule(&new.rotation.schedule).await {
        tracing::error!(error = %e, "reload: cannot apply rotation.schedule; keeping the old schedule");
    }
    warn_needs_restart(current, &new);
    tracing::info!("configuration reloaded");
    Some(new)
}

/// A WARN for each changed key that only a restart applies.
fn warn_needs_restart(current: &Config, new: &Config) {
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
        // Its rotate_at applies at once, as rotation.rotate_at does.
        (
            "oauth2",
            crate::config::OAuth2Config {
                rotate_at: new.oauth2.rotate_at,
                ..current.oauth2.clone()
            } != new.oauth2,
        ),
        ("limits", current.limits != new.limits),
        // The lease applies at once; where the registry is and who this daemon is do not.
        (
            "registry",
            current.registry.url != new.registry.url
                || current.registry.password_file != new.registry.password_file
                || current.registry.host_name != new.registry.host_name,
        ),
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
}
