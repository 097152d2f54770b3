//! The proxy's metrics (`/v1/proxy/...`): requests by outcome, the throttle queue, and the
//! time the daemon adds to a call. Apart from the rest so the proxy's series are read in
//! one place.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Registry};

use super::{add, counters, int_gauges, must};
use crate::names::Provider;

/// What became of a proxied request: the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyOutcome {
    /// Sent upstream at once; the upstream's answer was passed back.
    Forwarded,
    /// Sent upstream after waiting out the account's throttle.
    Queued,
    /// Refused here (no access, flagged account, bad path or header, too large): nothing
    /// was sent upstream.
    Refused,
    /// Answered 429 here because the account's budget is spent: nothing was sent.
    Throttled,
}

impl ProxyOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyOutcome::Forwarded => "forwarded",
            ProxyOutcome::Queued => "queued",
            ProxyOutcome::Refused => "refused",
            ProxyOutcome::Throttled => "throttled",
        }
    }
}

/// The proxy's series.
#[derive(Clone)]
pub(super) struct ProxyMetrics {
    requests: IntCounterVec,
    queue_depth: IntGaugeVec,
    queue_wait: HistogramVec,
    added: HistogramVec,
}

impl ProxyMetrics {
    pub(super) fn new(r: &Registry) -> ProxyMetrics {
        let m = ProxyMetrics {
            requests: counters(
                r,
                "shiptoken_proxy_requests_total",
                "Requests through the proxy by provider, account, upstream status class (2xx..5xx, none when nothing was sent) and outcome: forwarded, queued (after a throttle), refused, throttled (answered 429 here)",
                &["provider", "account", "status_class", "outcome"],
            ),
            queue_depth: int_gauges(
                r,
                "shiptoken_proxy_queue_depth",
                "Proxied requests waiting for their account's throttle to end",
                &["provider"],
            ),
            queue_wait: add(
                r,
                must(HistogramVec::new(
                    HistogramOpts::new(
                        "shiptoken_proxy_queue_wait_seconds",
                        "How long proxied requests waited for their account's throttle",
                    )
                    .buckets(vec![0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
                    &["provider"],
                )),
            ),
            added: add(
                r,
                must(HistogramVec::new(
                    HistogramOpts::new(
                        "shiptoken_proxy_added_latency_seconds",
                        "Time the daemon adds to a proxied call (access, token, forwarding), besides the upstream's and any throttle wait",
                    )
                    .buckets(vec![
                        0.00005, 0.0001, 0.00015, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1,
                    ]),
                    &["provider"],
                )),
            ),
        };
        // Created at zero, so a dashboard shows the provider before its first queued call.
        for p in Provider::ALL {
            m.queue_depth.with_label_values(&[p.as_str()]).set(0);
            m.queue_wait.with_label_values(&[p.as_str()]);
            m.added.with_label_values(&[p.as_str()]);
        }
        m
    }
}

impl super::Metrics {
    /// Counts one proxied request.
    pub fn proxy_request(
        &self,
        provider: Provider,
        account: &str,
        status: Option<u16>,
        outcome: ProxyOutcome,
    ) {
        let class = match status {
            Some(s) => ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .get(usize::from(s / 100).saturating_sub(1))
                .copied()
                .unwrap_or("other"),
            None => "none",
        };
        self.proxy
            .requests
            .with_label_values(&[provider.as_str(), account, class, outcome.as_str()])
            .inc();
    }

    /// A proxied request started (`+1`) or stopped (`-1`) waiting for its account's throttle.
    pub fn proxy_queue(&self, provider: Provider, delta: i64) {
        self.proxy
            .queue_depth
            .with_label_values(&[provider.as_str()])
            .add(delta);
    }

    /// How long a proxied request waited for its account's throttle.
    pub fn proxy_waited(&self, provider: Provider, waited: Duration) {
        self.proxy
            .queue_wait
            .with_label_values(&[provider.as_str()])
            .observe(waited.as_secs_f64());
    }

    /// The time the daemon added to a proxied call.
    pub fn proxy_added(&self, provider: Provider, added: Duration) {
        self.proxy
            .added
            .with_label_values(&[provider.as_str()])
            .observe(added.as_secs_f64());
    }
}
