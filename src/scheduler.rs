//! The cron trigger: tokio-cron-scheduler only wakes the sweeper; the sweeper runs
//! [`Engine::sweep`] with the current time.
//!
//! tokio-cron-scheduler neither waits for nor cancels running jobs, and nothing stops a job
//! overlapping its next run. So the job here does nothing but `notify`, and one sweeper task
//! that we own and track runs the sweeps one after another; ticks during a sweep coalesce.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::Notify;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;
use crate::rotation::Engine;

/// The running cron trigger.
pub struct Trigger {
    scheduler: JobScheduler,
    job: Uuid,
    notify: Arc<Notify>,
    schedule: String,
}

impl Trigger {
    /// Starts a scheduler that notifies `notify` on every `schedule` tick (cron with seconds, UTC).
    pub async fn start(schedule: &str, notify: Arc<Notify>) -> Result<Trigger, JobSchedulerError> {
        let scheduler = JobScheduler::new().await?;
        let job = scheduler.add(tick_job(schedule, notify.clone())?).await?;
        scheduler.start().await?;
        Ok(Trigger {
            scheduler,
            job,
            notify,
            schedule: schedule.to_string(),
        })
    }

    /// Replaces the schedule (on reload); a no-op when it did not change.
    pub async fn reschedule(&mut self, schedule: &str) -> Result<(), JobSchedulerError> {
        if schedule == self.schedule {
            return Ok(());
        }
        let job = self
            .scheduler
            .add(tick_job(schedule, self.notify.clone())?)
            .await?;
        self.scheduler.remove(&self.job).await?;
        self.job = job;
        self.schedule = schedule.to_string();
        Ok(())
    }

    /// Stops the ticks. Sweeps are owned by the sweeper, not the scheduler.
    pub async fn stop(&mut self) {
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::debug!(error = %e, "cron scheduler shutdown");
        }
    }
}

fn tick_job(schedule: &str, notify: Arc<Notify>) -> Result<Job, JobSchedulerError> {
    Job::new_async(schedule, move |_id, _scheduler| {
        let notify = notify.clone();
        Box::pin(async move { notify.notify_one() })
    })
}

/// The time between two ticks of `schedule` from now, used to notice a stalled scheduler.
pub fn tick_interval(schedule: &str) -> Option<std::time::Duration> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(schedule)
        .ok()?;
    let start = chrono::DateTime::<chrono::Utc>::from_timestamp(1_800_000_000, 0)?;
    let first = cron.find_next_occurrence(&start, false).ok()?;
    let second = cron.find_next_occurrence(&first, false).ok()?;
    (second - first).to_std().ok()
}

/// Runs a sweep each time `notify` fires (and once at start), until `shutdown`.
/// `last_sweep` holds the clock time (ms) of the last finished sweep, for the watchdog
/// and `/healthz`.
pub async fn run_sweeper(
    engine: Arc<Engine>,
    clock: Clock,
    notify: Arc<Notify>,
    shutdown: CancellationToken,
    last_sweep: Arc<AtomicI64>,
) {
    loop {
        let sweep = engine.sweep(clock.now());
        tokio::pin!(sweep);
        tokio::select! {
            n = &mut sweep => {
                if n > 0 {
                    tracing::debug!(accounts = n, "sweep done");
                }
            }
            () = shutdown.cancelled() => {
                // Let the work in hand finish (a token ShipHero just issued gets stored);
                // what is still waiting after that is abandoned. Every step is its own
                // committed transaction, so stopping between two loses nothing.
                if tokio::time::timeout(engine.stop_grace(), sweep).await.is_err() {
                    tracing::warn!("abandoned a sweep still running at shutdown");
                }
                return;
            }
        }
        last_sweep.store(clock.now().millis(), Ordering::Relaxed);
        tokio::select! {
            () = notify.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}
