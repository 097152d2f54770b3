//! Prometheus metrics: one `Registry` per daemon instance (so tests can run two daemons in a
//! process), updated where the work happens, and per-account gauges derived at scrape time
//! from the registry so a removed account's series disappear by themselves.

use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry as PromRegistry, TextEncoder,
};

mod proxy;

pub use proxy::ProxyOutcome;

use crate::clock::Timestamp;
use crate::names::{Provider, Status};
use crate::registry::AccountRecord;

/// Every metric the daemon exports.
#[derive(Clone)]
pub struct Metrics {
    registry: PromRegistry,
    account_status: IntGaugeVec,
    token_expiry: GaugeVec,
    last_rotation: GaugeVec,
    last_verification: GaugeVec,
    rotations: IntCounterVec,
    verifications: IntCounterVec,
    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    socket_requests: IntCounterVec,
    socket_duration: Histogram,
    last_sweep: IntGauge,
    /// 1 while a provider has an incident (many accounts answering with evidence at once).
    incident: IntGaugeVec,
    /// Failed registry writes; the registry increments it itself.
    registry_errors: IntCounter,
    /// 1 while the registry is reachable and (PostgreSQL) its change feed followed.
    registry_connected: IntGauge,
    /// Socket reads that were served but never audited (the audit queue was full).
    audit_dropped: IntCounter,
    /// Fleet-wide leases asked for, by answer (PostgreSQL registry).
    leases: IntCounterVec,
    /// Connections a listener closed at once because a cap was reached.
    connections_refused: IntCounterVec,
    /// File sink writes and removals, by result (`[[sink]]`, src/sinks.rs).
    sink_writes: IntCounterVec,
    /// Sink writes and removals that failed, by what failed (src/sinks.rs).
    sink_failures: IntCounterVec,
    /// The proxy's series (`metrics/proxy.rs`).
    proxy: proxy::ProxyMetrics,
    /// `render` resets and rebuilds the per-account gauges; two scrapes at once (an HA pair of
    /// Prometheus servers) must not gather while the other is half way through the rebuild.
    render_lock: std::sync::Arc<std::sync::Mutex<()>>,
}

/// Every `(listener, reason)` pair of `shiptoken_connections_refused_total`, created at zero
/// so an alert on its rate sees the series before the first refusal: the socket's per-uid cap
/// and its pool for peers that may read nothing, and each TCP listener's connection cap.
pub const REFUSAL_SERIES: [(&str, &str); 4] = [
    ("socket", "per_uid"),
    ("socket", "unauthorized"),
    ("metrics", "connections"),
    ("shippo_callback", "connections"),
];

/// The `result` label of `shiptoken_rotations_total` and `shiptoken_verifications_total`:
/// what a refresh or a probe came to (`providers::Verdict::metric_result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// The provider issued a token, or the probe passed.
    Ok,
    /// Evidence against the account: the provider refused the credentials.
    Rejected,
    /// An answer no document explains; a refusal only once confirmed.
    Undocumented,
    /// The probe is wrong for this token (a missing scope): never a flag.
    Misconfigured,
    /// The provider asked us to slow down.
    Throttled,
    /// Inconclusive: an outage, a proxy, a timeout.
    Failed,
}

impl CheckResult {
    /// Every result, each created at zero for every provider when the daemon starts: an
    /// alert on `increase(...) > 0` cannot see a series' first increment unless the series
    /// was exported, at zero, before it (ShiptokenProbeMisconfigured on the first
    /// `misconfigured` answer).
    pub const ALL: [CheckResult; 6] = [
        CheckResult::Ok,
        CheckResult::Rejected,
        CheckResult::Undocumented,
        CheckResult::Misconfigured,
        CheckResult::Throttled,
        CheckResult::Failed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckResult::Ok => "ok",
            CheckResult::Rejected => "rejected",
            CheckResult::Undocumented => "undocumented",
            CheckResult::Misconfigured => "misconfigured",
            CheckResult::Throttled => "throttled",
            CheckResult::Failed => "failed",
        }
    }
}

fn must<T>(r: prometheus::Result<T>) -> T {
    match r {
        Ok(v) => v,
        // Only reachable through a malformed metric name or a duplicate registration, both
        // programming errors caught by the first test that builds a `Metrics`.
        Err(e) => panic!("metric definition error: {e}"),
    }
}

/// `shiptoken_last_sweep_timestamp_seconds`: name and help.
const LAST_SWEEP: (&str, &str) = (
    "shiptoken_last_sweep_timestamp_seconds",
    "When the scheduler last completed a sweep for due work",
);

/// `shiptoken_registry_errors_total`: name and help.
const REGISTRY_ERRORS: (&str, &str) = (
    "shiptoken_registry_errors_total",
    "Writes to registry.db that failed (read-only file system, disk full, I/O error)",
);

/// Upstream calls take tens of milliseconds to tens of seconds (the timeout).
fn upstream_duration(registry: &PromRegistry) -> HistogramVec {
    let opts = HistogramOpts::new(
        "shiptoken_upstream_request_duration_seconds",
        "Latency of requests to providers",
    )
    .buckets(vec![0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
    add(
        registry,
        must(HistogramVec::new(opts, &["provider", "endpoint"])),
    )
}

/// Tokens are served from memory: tens of microseconds normally, more under load. The admin
/// routes (add, rotate, verify) and a token read that waits for a probe verdict wait for the
/// provider, up to its timeout: the top buckets keep those out of +Inf.
fn socket_duration(registry: &PromRegistry) -> Histogram {
    let opts = HistogramOpts::new(
        "shiptoken_socket_request_duration_seconds",
        "Latency of Unix socket requests",
    )
    .buckets(vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0, 30.0,
    ]);
    add(registry, must(Histogram::with_opts(opts)))
}

/// Registers `collector` in `registry` and hands it back, so each metric is built in one place.
fn add<C: prometheus::core::Collector + Clone + 'static>(
    registry: &PromRegistry,
    collector: C,
) -> C {
    must(registry.register(Box::new(collector.clone())));
    collector
}

fn int_gauges(registry: &PromRegistry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    add(
        registry,
        must(IntGaugeVec::new(Opts::new(name, help), labels)),
    )
}

fn gauges(registry: &PromRegistry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    add(registry, must(GaugeVec::new(Opts::new(name, help), labels)))
}

fn counters(registry: &PromRegistry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    add(
        registry,
        must(IntCounterVec::new(Opts::new(name, help), labels)),
    )
}

impl Metrics {
    /// Creates and registers every metric, including the process collector and build info.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Metrics {
        let registry = PromRegistry::new();
        let r = &registry;
        let account = ["provider", "account"];
        let metrics = Metrics {
            account_status: int_gauges(
                r,
                "shiptoken_account_status",
                "1 for the account's current status, 0 for the others",
                &["provider", "account", "status"],
            ),
            token_expiry: gauges(
                r,
                "shiptoken_token_expiry_timestamp_seconds",
                "When the served access token expires (ShipHero)",
                &account,
            ),
            last_rotation: gauges(
                r,
                "shiptoken_last_rotation_timestamp_seconds",
                "When the provider last issued a token for the account",
                &account,
            ),
            last_verification: gauges(
                r,
                "shiptoken_last_verification_timestamp_seconds",
                "When a probe last proved the account's token works",
                &account,
            ),
            rotations: counters(
                r,
                "shiptoken_rotations_total",
                "Token refresh attempts by outcome",
                &["provider", "result"],
            ),
            verifications: counters(
                r,
                "shiptoken_verifications_total",
                "Token probes by outcome",
                &["provider", "result"],
            ),
            upstream_requests: counters(
                r,
                "shiptoken_upstream_requests_total",
                "HTTP requests to providers by endpoint and status code",
                &["provider", "endpoint", "code"],
            ),
            upstream_duration: upstream_duration(r),
            socket_requests: counters(
                r,
                "shiptoken_socket_requests_total",
                "Requests on the Unix socket by route and status code",
                &["route", "code"],
            ),
            socket_duration: socket_duration(r),
            last_sweep: add(r, must(IntGauge::new(LAST_SWEEP.0, LAST_SWEEP.1))),
            registry_errors: add(
                r,
                must(IntCounter::new(REGISTRY_ERRORS.0, REGISTRY_ERRORS.1)),
            ),
            audit_dropped: add(
                r,
                must(IntCounter::new(
                    "shiptoken_audit_dropped_total",
                    "Token reads served but never audited: the audit queue (100,000 distinct entries) was full while the registry could not be written, or the daemon stopped before it could",
                )),
            ),
            registry_connected: add(
                r,
                must(IntGauge::new(
                    "shiptoken_registry_connected",
                    "1 while the registry answers and, for a shared PostgreSQL registry, its change feed is followed; 0 while the daemon serves from memory",
                )),
            ),
            leases: counters(
                r,
                "shiptoken_leases_total",
                "Fleet-wide leases on accounts asked for before upstream work (PostgreSQL registry), by answer: granted, busy (another daemon works on it), moved (another daemon saved it first), lost (taken over before the result was stored)",
                &["result"],
            ),
            incident: int_gauges(
                r,
                "shiptoken_upstream_incident",
                "1 while many of the provider's accounts answer with evidence at once; their flags are held",
                &["provider"],
            ),
            connections_refused: counters(
                r,
                "shiptoken_connections_refused_total",
                "Connections closed at once because a [limits] cap was reached, by listener and cap",
                &["listener", "reason"],
            ),
            sink_writes: counters(
                r,
                "shiptoken_sink_writes_total",
                "File sink updates: written, removed (no token served), or failed (retried every 30s)",
                &["result"],
            ),
            sink_failures: counters(
                r,
                "shiptoken_sink_failures_total",
                "File sink writes or removals that failed (the last file written stays), by what: write, remove or render (a template)",
                &["what"],
            ),
            proxy: proxy::ProxyMetrics::new(r),
            render_lock: std::sync::Arc::default(),
            registry,
        };
        metrics.start_at_zero();
        metrics
    }

    /// Creates the series alerts and dashboards expect before the first event, at zero, and
    /// the build info and process metrics.
    fn start_at_zero(&self) {
        for (listener, reason) in REFUSAL_SERIES {
            self.connections_refused
                .with_label_values(&[listener, reason]);
        }
        for result in ["granted", "busy", "moved", "lost"] {
            self.leases.with_label_values(&[result]);
        }
        for result in ["written", "removed", "failed"] {
            self.sink_writes.with_label_values(&[result]);
        }
        for what in ["write", "remove", "render"] {
            self.sink_failures.with_label_values(&[what]);
        }
        for p in Provider::ALL {
            self.incident.with_label_values(&[p.as_str()]).set(0);
            for r in CheckResult::ALL {
                self.rotations.with_label_values(&[p.as_str(), r.as_str()]);
                self.verifications
                    .with_label_values(&[p.as_str(), r.as_str()]);
            }
        }
        let build_info = int_gauges(
            &self.registry,
            "shiptoken_build_info",
            "Always 1; the version label tells which build runs",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let process = prometheus::process_collector::ProcessCollector::for_self();
        must(self.registry.register(Box::new(process)));
    }

    /// Marks an incident at `provider` as going on or over.
    pub fn incident(&self, provider: Provider, on: bool) {
        self.incident
            .with_label_values(&[provider.as_str()])
            .set(i64::from(on));
    }

    /// The counter of failed registry writes, handed to the registry when it opens.
    pub fn registry_errors(&self) -> IntCounter {
        self.registry_errors.clone()
    }

    /// `shiptoken_audit_dropped_total`, which the audit queue (`api::audit`) increments.
    pub fn audit_dropped(&self) -> IntCounter {
        self.audit_dropped.clone()
    }

    /// `shiptoken_registry_connected`, set by whoever watches the registry's connection.
    pub fn registry_connected(&self) -> IntGauge {
        self.registry_connected.clone()
    }

    /// Counts a lease answer: `granted`, `busy`, `moved` or `lost`.
    pub fn lease(&self, result: &str) {
        self.leases.with_label_values(&[result]).inc();
    }

    /// Counts a connection `listener` closed at once because its `reason` cap was reached
    /// (one of [`REFUSAL_SERIES`]).
    pub fn connection_refused(&self, listener: &str, reason: &str) {
        self.connections_refused
            .with_label_values(&[listener, reason])
            .inc();
    }

    /// Counts a file sink update; `result` is written, removed or failed.
    pub fn sink_write(&self, result: &str) {
        self.sink_writes.with_label_values(&[result]).inc();
    }

    /// Counts a failed sink write or removal; `what` is write or remove.
    pub fn sink_failure(&self, what: &str) {
        self.sink_failures.with_label_values(&[what]).inc();
    }

    /// Counts a refresh attempt by what it came to (see
    /// [`crate::providers::Verdict::metric_result`]).
    pub fn rotation(&self, provider: Provider, result: CheckResult) {
        self.rotations
            .with_label_values(&[provider.as_str(), result.as_str()])
            .inc();
    }

    /// Counts a probe by what it came to (see [`crate::providers::Verdict::metric_result`]).
    pub fn verification(&self, provider: Provider, result: CheckResult) {
        self.verifications
            .with_label_values(&[provider.as_str(), result.as_str()])
            .inc();
    }

    /// Records one upstream HTTP request; `code` is the status or `timeout`/`error`.
    pub fn upstream(&self, provider: Provider, endpoint: &str, code: &str, took: Duration) {
        self.upstream_requests
            .with_label_values(&[provider.as_str(), endpoint, code])
            .inc();
        self.upstream_duration
            .with_label_values(&[provider.as_str(), endpoint])
            .observe(took.as_secs_f64());
    }

    /// Records one socket request; `code` is the status as digits (`StatusCode::as_str`, which
    /// costs no allocation on the hot path).
    pub fn socket_request(&self, route: &str, code: &str, took: Duration) {
        self.socket_requests.with_label_values(&[route, code]).inc();
        self.socket_duration.observe(took.as_secs_f64());
    }

    /// Records a finished sweep.
    pub fn sweep_done(&self, at: Timestamp) {
        self.last_sweep.set(at.secs());
    }

    /// The Prometheus text exposition, with the per-account gauges rebuilt from `accounts`.
    pub fn render(&self, accounts: &[std::sync::Arc<AccountRecord>]) -> String {
        // A poisoned lock only means another render panicked; the gauges are rebuilt anyway.
        let _rendering = self
            .render_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.account_status.reset();
        self.token_expiry.reset();
        self.last_rotation.reset();
        self.last_verification.reset();
        for a in accounts {
            let (p, n) = (a.key.provider.as_str(), a.key.name.as_ref());
            for s in Status::ALL {
                self.account_status
                    .with_label_values(&[p, n, s.as_str()])
                    .set(i64::from(a.status == s));
            }
            if let Some(exp) = a.current.as_ref().and_then(|t| t.expires_at) {
                self.token_expiry
                    .with_label_values(&[p, n])
                    .set(exp.secs() as f64);
            }
            if let Some(t) = a.last_rotated_at {
                self.last_rotation
                    .with_label_values(&[p, n])
                    .set(t.secs() as f64);
            }
            if let Some(t) = a.last_verified_at {
                self.last_verification
                    .with_label_values(&[p, n])
                    .set(t.secs() as f64);
            }
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
// Panicking on a failed expectation is what a test is for.
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn result_labels_are_the_words_alerts_and_dashboards_query() {
        let metrics = Metrics::new();
        let results = [
            (CheckResult::Ok, "ok"),
            (CheckResult::Rejected, "rejected"),
            (CheckResult::Undocumented, "undocumented"),
            (CheckResult::Misconfigured, "misconfigured"),
            (CheckResult::Throttled, "throttled"),
            (CheckResult::Failed, "failed"),
        ];
        for (result, _) in results {
            metrics.verification(Provider::ShipHero, result);
        }
        metrics.rotation(Provider::Shippo, CheckResult::Misconfigured);
        let text = metrics.render(&[]);
        for (_, word) in results {
            let line = format!(
                "shiptoken_verifications_total{{provider=\"shiphero\",result=\"{word}\"}} 1"
            );
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        // Series an alert needs before the first event exist at zero.
        let fresh = Metrics::new().render(&[]);
        for p in Provider::ALL {
            for r in CheckResult::ALL {
                for counter in ["shiptoken_rotations_total", "shiptoken_verifications_total"] {
                    let line = format!(
                        "{counter}{{provider=\"{}\",result=\"{}\"}} 0",
                        p.as_str(),
                        r.as_str()
                    );
                    assert!(fresh.contains(&line), "{line} missing from:\n{fresh}");
                }
            }
        }
        assert!(text.contains("shiptoken_rotations_total{provider=\"shiphero\",result=\"ok\"} 0"));
        assert!(
            text.contains(
                "shiptoken_rotations_total{provider=\"shippo\",result=\"misconfigured\"} 1"
            )
        );
    }
}
