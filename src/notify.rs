//! Tells the outside world when an account's status changes: signed webhooks and/or a
//! command with the event on stdin, besides the log line and the metrics.
//!
//! Delivery runs on its own task behind a bounded queue, so a slow or failing receiver
//! never delays a rotation; at worst an event is dropped with a warning.

use std::process::Stdio;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::clock::Timestamp;
use crate::config::NotifyConfig;
use crate::names::{Provider, Status};
use crate::secret::Secret;

/// Delivery attempts per webhook and event.
const ATTEMPTS: u32 = 3;

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Shiptoken-Signature";

/// One status change, as sent to receivers (documented in the README).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusChange {
    /// Always `account.status_changed`.
    pub event: &'static str,
    /// The provider.
    pub provider: Provider,
    /// The account name.
    pub account: String,
    /// The status before.
    pub previous_status: Status,
    /// The status now.
    pub status: Status,
    /// When it changed.
    pub at: Timestamp,
    /// What the provider answered (for a flag), or why it cleared.
    pub reason: Option<String>,
}

/// A handle to queue status changes; cheap to clone. A disabled notifier drops them.
#[derive(Clone, Default)]
pub struct Notifier {
    queue: Option<mpsc::Sender<StatusChange>>,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// Starts the delivery task when anything is configured. It ends when the last
    /// `Notifier` is dropped; deliveries still retrying then are abandoned.
    pub fn start(config: &NotifyConfig) -> Notifier {
        if config.webhooks.is_empty() && config.command.is_empty() {
            return Notifier::disabled();
        }
        let (tx, mut rx) = mpsc::channel::<StatusChange>(1024);
        let http = crate::providers::http_client(config.timeout);
        let config = config.clone();
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                let body = match serde_json::to_vec(&change) {
                    Ok(b) => b,
                    Err(_) => continue,
                };
                for hook in &config.webhooks {
                    let (http, hook, body) = (http.clone(), hook.clone(), body.clone());
                    tokio::spawn(async move {
                        deliver_webhook(&http, &hook.url, &hook.secret_file, &body).await
                    });
                }
                if !config.command.is_empty() {
                    let (argv, body, timeout) =
                        (config.command.clone(), body.clone(), config.timeout);
                    tokio::spawn(async move { run_command(&argv, &body, timeout).await });
                }
            }
        });
        Notifier { queue: Some(tx) }
    }

    /// Queues a change without waiting.
    pub fn status_changed(&self, change: StatusChange) {
        if let Some(q) = &self.queue
            && q.try_send(change).is_err()
        {
            tracing::warn!("notification queue full or closed; a status-change event was dropped");
        }
    }
}

/// `sha256=<hex>` of the body under `key`.
pub fn signature(key: &Secret, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// How a webhook is named in logs: scheme, host and port only. Receivers such as Slack or
/// Teams carry their secret in the path or query, so the rest of the URL never reaches a log.
pub fn webhook_label(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("?");
            match u.port() {
                Some(port) => format!("{}://{host}:{port}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            }
        }
        Err(_) => "(an unparsable URL)".to_string(),
    }
}

async fn deliver_webhook(http: &reqwest::Client, url: &str, secret_file: &str, body: &[u8]) {
    let webhook = webhook_label(url);
    let key = if secret_file.is_empty() {
        None
    } else {
        match std::fs::read_to_string(secret_file) {
            Ok(s) => Some(Secret::new(s.trim())),
            Err(e) => {
                tracing::error!(%webhook, error = %e, "cannot read the webhook secret file; not sending unsigned");
                return;
            }
        }
    };
    for attempt in 1..=ATTEMPTS {
        let mut request = http
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-Shiptoken-Event", "account.status_changed")
            .body(body.to_vec());
        if let Some(k) = &key {
            request = request.header(SIGNATURE_HEADER, signature(k, body));
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(
                %webhook,
                attempt,
                status = r.status().as_u16(),
                "webhook receiver refused the event"
            ),
            // reqwest's error text names the full URL; the label above stands in for it.
            Err(e) => {
                tracing::warn!(%webhook, attempt, error = %e.without_url(), "webhook delivery failed")
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(u64::from(attempt * attempt))).await;
        }
    }
    tracing::error!(
        %webhook,
        "gave up delivering a status-change event after {ATTEMPTS} attempts"
    );
}

async fn run_command(argv: &[String], body: &[u8], timeout: Duration) {
    let Some((program, args)) = argv.split_first() else {
        return;
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(command = %program, error = %e, "cannot run the notify command");
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(body).await;
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => tracing::warn!(command = %program, %status, "the notify command failed"),
        Ok(Err(e)) => tracing::warn!(command = %program, error = %e, "the notify command failed"),
        Err(_) => tracing::warn!(command = %program, "the notify command timed out; killed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_are_named_by_scheme_host_and_port() {
        assert_eq!(
            webhook_label("https://hooks.slack.com/services/T0/B0/XyZsecret?x=1#y"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            webhook_label("http://user:pw@127.0.0.1:8080/a/secret"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(webhook_label("not a url/secret"), "(an unparsable URL)");
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let sig = signature(&Secret::new("Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
