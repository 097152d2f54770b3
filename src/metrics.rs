//! Prometheus metrics: one `Registry` per daemon instance (so tests can run two daemons in a
//! process), updated where the work happens, and per-account gauges derived at scrape time
//! from the registry so a removed account's series disappear by themselves.

use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry as PromRegistry, TextEncoder,
};

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
    /// Connections a listener closed at once because a cap was reached.
    connections_refused: IntCounterVec,
    /// File sink writes and removals, by result (`[[sink]]`, src/sinks.rs).
    sink_writes: IntCounterVec,
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

fn must<T>(r: prometheus::Result<T>) -> T {
    match r {
        Ok(v) => v,
        // Only reachable through a malformed metric name or a duplicate registration, both
        // programming errors caught by the first test that builds a `Metrics`.
        Err(e) => panic!("metric definition error: {e}"),
    }
}

impl Metrics {
    /// Creates and registers every metric, including the process collector and build info.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Metrics {
        let registry = PromRegistry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| must(registry.register(c));
        let account_status = must(IntGaugeVec::new(
            Opts::new(
                "shiptoken_account_status",
                "1 for the account's current status, 0 for the others",
            ),
            &["provider", "account", "status"],
        ));
        let token_expiry = must(GaugeVec::new(
            Opts::new(
                "shiptoken_token_expiry_timestamp_seconds",
                "When the served access token expires (ShipHero)",
            ),
            &["provider", "account"],
        ));
        let last_rotation = must(GaugeVec::new(
            Opts::new(
                "shiptoken_last_rotation_timestamp_seconds",
                "When the provider last issued a token for the account",
            ),
            &["provider", "account"],
        ));
        let last_verification = must(GaugeVec::new(
            Opts::new(
                "shiptoken_last_verification_timestamp_seconds",
                "When a probe last proved the account's token works",
            ),
            &["provider", "account"],
        ));
        let rotations = must(IntCounterVec::new(
            Opts::new(
                "shiptoken_rotations_total",
                "Token refresh attempts by outcome",
            ),
            &["provider", "result"],
        ));
        let verifications = must(IntCounterVec::new(
            Opts::new("shiptoken_verifications_total", "Token probes by outcome"),
            &["provider", "result"],
        ));
        let upstream_requests = must(IntCounterVec::new(
            Opts::new(
                "shiptoken_upstream_requests_total",
                "HTTP requests to providers by endpoint and status code",
            ),
            &["provider", "endpoint", "code"],
        ));
        // Upstream calls take tens of milliseconds to tens of seconds (the timeout).
        let upstream_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "shiptoken_upstream_request_duration_seconds",
                "Latency of requests to providers",
            )
            .buckets(vec![0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["provider", "endpoint"],
        ));
        let socket_requests = must(IntCounterVec::new(
            Opts::new(
                "shiptoken_socket_requests_total",
                "Requests on the Unix socket by route and status code",
            ),
            &["route", "code"],
        ));
        // Tokens are served from memory: tens of microseconds normally, more under load. The
        // admin routes (add, rotate, verify) and a token read that waits for a probe verdict
        // wait for the provider, up to its timeout: the top buckets keep those out of +Inf.
        let socket_duration = must(Histogram::with_opts(
            HistogramOpts::new(
                "shiptoken_socket_request_duration_seconds",
                "Latency of Unix socket requests",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0, 30.0,
            ]),
        ));
        let last_sweep = must(IntGauge::new(
            "shiptoken_last_sweep_timestamp_seconds",
            "When the scheduler last completed a sweep for due work",
        ));
        let registry_errors = must(IntCounter::new(
            "shiptoken_registry_errors_total",
            "Writes to registry.db that failed (read-only file system, disk full, I/O error)",
        ));
        let connections_refused = must(IntCounterVec::new(
            Opts::new(
                "shiptoken_connections_refused_total",
                "Connections closed at once because a [limits] cap was reached, by listener and cap",
            ),
            &["listener", "reason"],
        ));
        for (listener, reason) in REFUSAL_SERIES {
            connections_refused.with_label_values(&[listener, reason]);
        }
        let sink_writes = must(IntCounterVec::new(
            Opts::new(
                "shiptoken_sink_writes_total",
                "File sink updates: written, removed (no token served), or failed (retried every 30s)",
            ),
            &["result"],
        ));
        for result in ["written", "removed", "failed"] {
            sink_writes.with_label_values(&[result]);
        }
        let build_info = must(IntGaugeVec::new(
            Opts::new(
                "shiptoken_build_info",
                "Always 1; the version label tells which build runs",
            ),
            &["version"],
        ));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        reg(Box::new(registry_errors.clone()));
        reg(Box::new(connections_refused.clone()));
        reg(Box::new(sink_writes.clone()));
        reg(Box::new(account_status.clone()));
        reg(Box::new(token_expiry.clone()));
        reg(Box::new(last_rotation.clone()));
        reg(Box::new(last_verification.clone()));
        reg(Box::new(rotations.clone()));
        reg(Box::new(verifications.clone()));
        reg(Box::new(upstream_requests.clone()));
        reg(Box::new(upstream_duration.clone()));
        reg(Box::new(socket_requests.clone()));
        reg(Box::new(socket_duration.clone()));
        reg(Box::new(last_sweep.clone()));
        let incident = must(IntGaugeVec::new(
            Opts::new(
                "shiptoken_upstream_incident",
                "1 while many of the provider's accounts answer with evidence at once; their flags are held",
            ),
            &["provider"],
        ));
        reg(Box::new(incident.clone()));
        for p in Provider::ALL {
            incident.with_label_values(&[p.as_str()]).set(0);
        }
        reg(Box::new(build_info));
        reg(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        for p in Provider::ALL {
            for r in ["ok", "rejected", "throttled", "failed"] {
                rotations.with_label_values(&[p.as_str(), r]);
                verifications.with_label_values(&[p.as_str(), r]);
            }
        }
        Metrics {
            registry,
            account_status,
            token_expiry,
            last_rotation,
            last_verification,
            rotations,
            verifications,
            upstream_requests,
            upstream_duration,
            socket_requests,
            socket_duration,
            last_sweep,
            registry_errors,
            incident,
            connections_refused,
            sink_writes,
            render_lock: std::sync::Arc::default(),
        }
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

    /// Counts a refresh attempt; `result` is ok, rejected, throttled or failed (see
    /// [`crate::providers::Verdict::metric_result`]).
    pub fn rotation(&self, provider: Provider, result: &str) {
        self.rotations
            .with_label_values(&[provider.as_str(), result])
            .inc();
    }

    /// Counts a probe; `result` is ok, rejected, undocumented, misconfigured, throttled or
    /// failed (see [`crate::providers::Verdict::metric_result`]).
    pub fn verification(&self, provider: Provider, result: &str) {
        self.verifications
            .with_label_values(&[provider.as_str(), result])
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
            let (p, n) = (a.key.provider.as_str(), a.key.name.as_str());
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
