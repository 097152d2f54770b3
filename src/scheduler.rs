//! The cron trigger: tokio-cron-scheduler only wakes the sweeper; the sweeper runs
//! [`Engine::sweep`] with the current time.
//!
//! tokio-cron-scheduler neither waits for nor cancels running jobs, and nothing stops a job
//! overlapping its next run. So the job here does nothing but `notify`, and one sweeper task
//! that we own and track runs the sweeps one after another; ticks during a sweep coalesce.
//!
//! The trigger reads the wall clock, so a backward step (NTP) silences it until the wall
//! clock catches up with the tick it had planned. The sweeper therefore also keeps its own
//! time on the monotonic clock: when no tick came within what the schedule allows, it sweeps
//! anyway, and [`LastSweep::silence`] tells `/healthz` and the watchdog how long since a sweep.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::{Clock, Timestamp};
use crate::config::Config;
use crate::rotation::Engine;

/// How late a tick may be, past its time, before the sweeper stops waiting for it. The
/// trigger polls every 500 ms; the margin keeps a tick that is merely late from causing a
/// second sweep.
const TICK_GRACE: Duration = Duration::from_secs(2);

/// When the last sweep finished: the wall-clock time for people (`/v1/health`), and the
/// monotonic time for every "how long ago", which a step of the wall clock must not change.
#[derive(Debug)]
pub struct LastSweep {
    wall_millis: AtomicI64,
    origin: Instant,
    mono_millis: AtomicU64,
}

impl LastSweep {
    /// Counts from `now`, as if a sweep had just finished (start-up).
    pub fn new(now: Timestamp) -> LastSweep {
        LastSweep {
            wall_millis: AtomicI64::new(now.millis()),
            origin: Instant::now(),
            mono_millis: AtomicU64::new(0),
        }
    }

    /// Records a sweep finishing at wall-clock `now`.
    pub fn record(&self, now: Timestamp) {
        self.wall_millis.store(now.millis(), Ordering::Relaxed);
        let since = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.mono_millis.store(since, Ordering::Relaxed);
    }

    /// The wall-clock time the last sweep finished.
    pub fn at(&self) -> Timestamp {
        Timestamp::from_millis(self.wall_millis.load(Ordering::Relaxed))
    }

    /// How long since the last sweep finished, on the monotonic clock.
    pub fn silence(&self) -> Duration {
        self.silence_at(Instant::now())
    }

    fn silence_at(&self, now: Instant) -> Duration {
        let at = self.origin + Duration::from_millis(self.mono_millis.load(Ordering::Relaxed));
        now.saturating_duration_since(at)
    }
}

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
    let cron = crate::config::parse_schedule(schedule).ok()?;
    let start = chrono::DateTime::<chrono::Utc>::from_timestamp(1_800_000_000, 0)?;
    let first = cron.find_next_occurrence(&start, false).ok()?;
    let second = cron.find_next_occurrence(&first, false).ok()?;
    (second - first).to_std().ok()
}

/// How long the trigger may stay silent after a sweep at `now` before the sweeper sweeps
/// anyway: until the schedule's next tick, plus [`TICK_GRACE`]. `None` when the schedule has
/// no next tick (it does not parse, which validation prevents).
pub fn allowed_silence(schedule: &str, now: Timestamp) -> Option<Duration> {
    let cron = crate::config::parse_schedule(schedule).ok()?;
    let now = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(now.millis())?;
    let next = cron.find_next_occurrence(&now, false).ok()?;
    Some((next - now).to_std().ok()? + TICK_GRACE)
}

/// Plans a sweep each time `notify` fires (and once at start), until `shutdown`, while each
/// provider's lane works what the sweeps found ([`Engine::run_lanes`]); when no tick comes
/// within what `rotation.schedule` allows (measured on the monotonic clock), it sweeps anyway.
/// `last_sweep` records each sweep planned, for the watchdog and `/healthz`: planning never
/// waits for a provider, so a slow provider cannot make the scheduler look stuck.
pub async fn run_sweeper(
    engine: Arc<Engine>,
    clock: Clock,
    notify: Arc<Notify>,
    config: watch::Receiver<Arc<Config>>,
    shutdown: CancellationToken,
    last_sweep: Arc<LastSweep>,
) {
    let lanes = engine.clone().run_lanes(shutdown.clone());
    let ticks = plan_sweeps(engine, clock, notify, config, shutdown, last_sweep);
    tokio::join!(lanes, ticks);
}

/// The sweeper's loop of ticks: plans a sweep, then waits for the next tick.
async fn plan_sweeps(
    engine: Arc<Engine>,
    clock: Clock,
    notify: Arc<Notify>,
    config: watch::Receiver<Arc<Config>>,
    shutdown: CancellationToken,
    last_sweep: Arc<LastSweep>,
) {
    let mut trigger_silent = false;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let n = engine.sweep(clock.now());
        if n > 0 {
            tracing::debug!(accounts = n, "sweep planned");
        }
        let now = clock.now();
        last_sweep.record(now);
        let schedule = config.borrow().rotation.schedule.clone();
        // By the time the trigger goes by, not the movable clock.
        let allowed =
            allowed_silence(&schedule, Clock::system_now()).unwrap_or(Duration::from_secs(60));
        tokio::select! {
            () = notify.notified() => {
                if std::mem::take(&mut trigger_silent) {
                    tracing::info!("the cron trigger ticks again");
                }
            }
            () = tokio::time::sleep(allowed) => {
                // Once per silent spell: a step back of the wall clock silences the trigger for
                // as long as the step, and a line per sweep would flood the log.
                if !std::mem::replace(&mut trigger_silent, true) {
                    tracing::warn!(
                        schedule = %schedule,
                        "the cron trigger missed its tick (did the wall clock step back?); sweeping anyway on the monotonic clock until it ticks again"
                    );
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_monotonic_whatever_the_wall_clock_says() {
        let t0 = Timestamp::from_secs(1_800_000_000);
        let last = LastSweep::new(t0);
        let later = Instant::now() + Duration::from_secs(90);
        assert!(last.silence_at(later) >= Duration::from_secs(90));
        // A sweep recorded after the wall clock stepped back an hour: shown as such, but the
        // silence is still counted from when it really happened.
        last.record(Timestamp::from_secs(1_800_000_000 - 3600));
        assert_eq!(last.at().secs(), 1_800_000_000 - 3600);
        let silence = last.silence_at(later);
        assert!(silence <= Duration::from_secs(91), "{silence:?}");
        assert!(silence >= Duration::from_secs(80), "{silence:?}");
    }

    #[test]
    fn the_trigger_may_be_silent_until_its_next_tick_plus_grace() {
        let t = Timestamp::from_secs(1_800_000_000);
        assert_eq!(
            allowed_silence("* * * * * *", t),
            Some(Duration::from_secs(1) + TICK_GRACE)
        );
        assert_eq!(
            allowed_silence("0 * * * * *", Timestamp::from_secs(1_800_000_000)),
            Some(Duration::from_secs(60) + TICK_GRACE)
        );
        assert_eq!(allowed_silence("not cron", t), None);
    }
}
