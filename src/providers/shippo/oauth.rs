//! The Shippo OAuth flow: `shippo connect` issues a single-use state and an authorize URL,
//! and the callback listener spends the state, exchanges the code and stores the token.
//!
//! The state is spent in one registry transaction before Shippo is contacted, so a forged,
//! replayed or expired callback never reaches Shippo's token endpoint. The callback answers
//! small self-contained HTML pages, since a person in a browser is on the other end.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use rand::RngCore;

use super::config::ShippoConfig;
use super::{OAuthClient, Shippo};
use crate::clock::Clock;
use crate::names::{AccountKey, NameError};
use crate::providers::Verdict;
use crate::registry::{Registry, RegistryError, TokenRecord};
use crate::rotation::{Engine, EngineError};
use crate::secret::Secret;

/// How long an authorize link stays good (the issue asks for 30 minutes: long enough to log in
/// at Shippo, short enough that a leaked link soon stops mattering).
pub const STATE_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// The callback path Shippo's platform partners register (the closing slash is Shippo's rule).
pub const CALLBACK_PATH: &str = "/shippo-oauth-redirect/";

/// Random bytes in a state: 256 bits, twice the minimum the issue asks for.
const STATE_BYTES: usize = 32;

/// Why a connect flow could not start.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The name is not a valid account name.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The account exists and is not waiting for a connection.
    #[error(
        "{0} already exists and is not pending; remove it first (`shiptoken accounts remove {0}`) to connect it again"
    )]
    AccountExists(AccountKey),
    /// The registry failed.
    #[error(transparent)]
    Registry(RegistryError),
}

/// Why the flow cannot be set up from the configuration; stops the daemon at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// OAuth is configured but no client secret was found.
    #[error(
        "Shippo OAuth is configured (shippo.client_id is set) but has no client secret: set shippo.client_secret_file or provide the systemd credential shippo.client_secret (or clear shippo.client_id to turn OAuth off)"
    )]
    MissingSecret,
    /// The client secret could not be read (the message names the file, never its content).
    #[error("shippo.client_secret_file: {0}")]
    UnreadableSecret(String),
    /// OAuth is configured but nothing would receive Shippo's redirect.
    #[error(
        "Shippo OAuth is configured (shippo.client_id is set) but shippo.callback_listen is off: the flow ends at that listener"
    )]
    NoCallbackListener,
}

impl From<RegistryError> for OAuthError {
    fn from(e: RegistryError) -> OAuthError {
        match e {
            RegistryError::AccountExists(key) => OAuthError::AccountExists(key),
            e => OAuthError::Registry(e),
        }
    }
}

/// Everything the flow needs; shared by the socket API (`start`) and the callback listener.
pub struct OAuthFlow {
    /// Where states and accounts live.
    registry: Registry,
    /// Builds the authorize URL and exchanges codes.
    shippo: Shippo,
    /// The platform's registration with Shippo; holds the client secret.
    client: OAuthClient,
    /// Probes the new token and promotes it, exactly as for any other token.
    engine: Arc<Engine>,
    /// The daemon's clock, so tests can expire a state by moving it.
    clock: Clock,
    /// Each account's newest link, by its expiry: only the newest link's expiry is reported.
    newest_link:
        Arc<std::sync::Mutex<std::collections::HashMap<AccountKey, crate::clock::Timestamp>>>,
}

impl OAuthFlow {
    /// Builds the flow.
    pub fn new(
        registry: Registry,
        shippo: Shippo,
        client: OAuthClient,
        engine: Arc<Engine>,
        clock: Clock,
    ) -> OAuthFlow {
        OAuthFlow {
            registry,
            shippo,
            client,
            engine,
            clock,
            newest_link: Arc::default(),
        }
    }

    /// Builds the flow from `[shippo]`: `Ok(None)` when OAuth is not configured (no
    /// `client_id`), an error when it is configured but cannot work.
    pub fn from_config(
        config: &ShippoConfig,
        registry: Registry,
        shippo: Shippo,
        engine: Arc<Engine>,
        clock: Clock,
    ) -> Result<Option<OAuthFlow>, SetupError> {
        if !config.oauth_enabled() {
            return Ok(None);
        }
        let client_secret = config
            .client_secret()
            .map_err(SetupError::UnreadableSecret)?
            .ok_or(SetupError::MissingSecret)?;
        if config.callback_listen.is_none() {
            return Err(SetupError::NoCallbackListener);
        }
        let client = OAuthClient {
            client_id: config.client_id.clone(),
            client_secret,
            redirect_uri: config.redirect_uri.clone(),
        };
        Ok(Some(OAuthFlow::new(
            registry, shippo, client, engine, clock,
        )))
    }

    /// Starts a flow for the Shippo account `account`: creates it as `pending` if needed,
    /// stores a fresh single-use state bound to it, and returns the URL to open.
    pub async fn start(&self, account: &str) -> Result<String, OAuthError> {
        let key = AccountKey::new("shippo", account)?;
        let state = new_state();
        let now = self.clock.now();
        let expires_at = now.plus(STATE_LIFETIME);
        self.registry
            .begin_oauth(&key, &state, expires_at, now)
            .await?;
        tracing::info!(
            provider = %key.provider, account = %key.name, event = "connect_started",
            link_expires_at = %expires_at.to_rfc3339(),
            "Shippo OAuth flow started; waiting for the callback"
        );
        self.newest_link
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), expires_at);
        tokio::spawn(report_expiry(
            self.registry.clone(),
            self.clock.clone(),
            self.newest_link.clone(),
            key,
            expires_at,
        ));
        Ok(self.shippo.authorize_url(&self.client, state.expose()))
    }

    /// The callback listener's routes: `GET /shippo-oauth-redirect/` (with or without the
    /// closing slash, since proxies differ in what they pass on).
    pub fn callback_router(self: Arc<Self>) -> Router {
        Router::new()
            .route(CALLBACK_PATH, get(callback))
            .route(CALLBACK_PATH.trim_end_matches('/'), get(callback))
            .fallback(|| async {
                page(
                    StatusCode::NOT_FOUND,
                    Tone::Error,
                    "Not found",
                    "Nothing here",
                    "<p>This address only serves Shippo's OAuth callback.</p>",
                )
            })
            .with_state(self)
    }

    /// Handles one callback. The state is spent first; only a good state goes further.
    async fn finish(&self, query: &str) -> Response {
        let params = Params::parse(query);
        let key = match self.spend_state(params.state).await {
            Ok(key) => key,
            Err(answer) => return answer,
        };
        if let Some(error) = params.error {
            return self
                .declined(&key, &error, params.error_description.as_deref())
                .await;
        }
        let Some(code) = params.code.filter(|c| !c.is_empty() && c.len() <= 2048) else {
            return self.no_code(&key).await;
        };
        let code = Secret::new(code);
        let token = match self.shippo.exchange_code(&self.client, &code).await {
            Ok(token) => token,
            Err(failure) => return self.exchange_failed(&key, failure).await,
        };
        self.store(&key, token).await
    }

    /// The account a callback's state was issued for, spent so it works once; otherwise the
    /// page to answer (Shippo is then never contacted).
    async fn spend_state(&self, state: Option<String>) -> Result<AccountKey, Response> {
        let Some(state) = state.filter(|s| plausible_state(s)) else {
            tracing::warn!(
                event = "connect_refused",
                "OAuth callback without a well-formed state; Shippo not contacted"
            );
            return Err(bad_state());
        };
        let now = self.clock.now();
        match self
            .registry
            .take_oauth_state(&Secret::new(state), now)
            .await
        {
            Ok(Some(key)) => Ok(key),
            Ok(None) => {
                tracing::warn!(
                    event = "connect_refused",
                    "OAuth callback with an unknown, used or expired state; Shippo not contacted"
                );
                Err(bad_state())
            }
            Err(e) => Err(registry_failed(&e)),
        }
    }

    /// A redirect with neither a code nor an error.
    async fn no_code(&self, key: &AccountKey) -> Response {
        let message = "Shippo's redirect carried neither a code nor an error".to_string();
        tracing::warn!(provider = %key.provider, account = %key.name, event = "connect_failed", error = %message, "Shippo OAuth callback unusable");
        self.note_failure(key, message).await;
        page(
            StatusCode::BAD_REQUEST,
            Tone::Error,
            "Connection failed",
            &format!("Shippo account {} was not connected", key.name),
            &format!(
                "<p>The link Shippo sent back has no authorization code.</p>{}",
                retry_hint(key)
            ),
        )
    }

    /// Stores the token Shippo issued and probes it; the page says how that went.
    async fn store(&self, key: &AccountKey, token: Secret) -> Response {
        let now = self.clock.now();
        let record = TokenRecord {
            access_token: token,
            issued_at: now,
            expires_at: None,
        };
        tracing::info!(provider = %key.provider, account = %key.name, event = "connected", "Shippo issued an OAuth token; storing and probing it");
        let refused = |key: &AccountKey| {
            self.registry
                .account(key)
                .is_some_and(|a| a.current.is_none() && a.candidate.is_none())
        };
        match self.engine.accept_issued(key, record).await {
            Ok(_) => connected(key, None),
            Err(EngineError::Registry(e)) => registry_failed(&e),
            // The probe refused the new token: it is not served, and the flow should be
            // started again once the merchant's Shippo account is in order.
            Err(EngineError::Upstream { message, .. }) if refused(key) => page(
                StatusCode::BAD_GATEWAY,
                Tone::Error,
                "Token rejected",
                &format!("Shippo account {} was not connected", key.name),
                &format!(
                    "<p>Shippo issued a token, but its API refuses it: {}</p>{}",
                    escape(&message),
                    retry_hint(key)
                ),
            ),
            // Stored and served; the probe proved nothing yet and is tried again shortly.
            Err(EngineError::Upstream { message, .. }) => connected(key, Some(&message)),
            Err(EngineError::Flagged {
                status, message, ..
            }) => page(
                StatusCode::BAD_GATEWAY,
                Tone::Error,
                "Token rejected",
                &format!("Shippo account {} is {status}", key.name),
                &format!(
                    "<p>Shippo issued a token, but its API rejects it: {}</p>{}",
                    escape(&message),
                    retry_hint(key)
                ),
            ),
            Err(e) => {
                tracing::error!(provider = %key.provider, account = %key.name, error = %e, "could not check the new Shippo token");
                page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Tone::Error,
                    "Check failed",
                    &format!("Shippo account {} is stored but unchecked", key.name),
                    &format!(
                        "<p>shiptoken could not check the new token: {}</p>",
                        escape(&e.to_string())
                    ),
                )
            }
        }
    }

    async fn declined(&self, key: &AccountKey, error: &str, description: Option<&str>) -> Response {
        let error = crate::providers::excerpt(error);
        let description = description.map(crate::providers::excerpt);
        tracing::info!(
            provider = %key.provider, account = %key.name, event = "connect_declined",
            error = %error, description = description.as_deref().unwrap_or(""),
            "the user did not grant access at Shippo"
        );
        // The account was only a placeholder for this flow: drop it rather than leave an
        // empty `pending` row that nothing will ever fill.
        let detail = format!("Shippo connection declined ({error})");
        if let Err(e) = self
            .registry
            .discard_unconnected(key, &detail, self.clock.now())
            .await
        {
            tracing::error!(provider = %key.provider, account = %key.name, error = %e, "cannot remove the unconnected account");
        }
        let said = description
            .map(|d| format!("<p>Shippo said: {}</p>", escape(&d)))
            .unwrap_or_default();
        page(
            StatusCode::OK,
            Tone::Warn,
            "Access declined",
            &format!("Shippo account {} was not connected", key.name),
            &format!(
                "<p>Access was declined at Shippo (<code>{}</code>), so shiptoken received no token and stored nothing.</p>{said}{}",
                escape(&error),
                retry_hint(key)
            ),
        )
    }

    async fn exchange_failed(&self, key: &AccountKey, failure: Verdict) -> Response {
        let message = failure.message().to_string();
        tracing::warn!(
            provider = %key.provider, account = %key.name, event = "connect_failed", error = %message,
            "Shippo OAuth code exchange failed; nothing stored"
        );
        self.note_failure(key, format!("OAuth code exchange failed: {message}"))
            .await;
        let (status, explanation) = match &failure {
            Verdict::Refused(m)
                if m.contains("(invalid_client") || m.contains("(unauthorized_client") =>
            {
                (
                    StatusCode::BAD_GATEWAY,
                    "Shippo refused this platform's client credentials. The operator must check shippo.client_id and the client secret.",
                )
            }
            Verdict::Refused(_) => (
                StatusCode::BAD_REQUEST,
                "Shippo refused the authorization code: it was already used, has expired, or was not issued to this platform.",
            ),
            Verdict::Inconclusive(m) if m.contains("timed out") => (
                StatusCode::GATEWAY_TIMEOUT,
                "Shippo could not be reached: it did not answer in time. The account stays pending.",
            ),
            _ => (
                StatusCode::BAD_GATEWAY,
                "Shippo could not be reached (it was busy, failing, or something between us and Shippo answered instead). The account stays pending.",
            ),
        };
        page(
            status,
            Tone::Error,
            "Connection failed",
            &format!("Shippo account {} was not connected", key.name),
            &format!(
                "<p>{explanation}</p>{}<p>Nothing was stored, and this link cannot be used again.</p>{}",
                refusal_code(&failure),
                retry_hint(key)
            ),
        )
    }

    async fn note_failure(&self, key: &AccountKey, message: String) {
        if let Err(e) = self
            .registry
            .record_connect_failure(key, message, self.clock.now())
            .await
        {
            tracing::error!(provider = %key.provider, account = %key.name, error = %e, "cannot record the failed connection");
        }
    }
}

/// The page's one detail of a refused exchange: the RFC 6749 error code, from our own list.
/// The page is public and shows no upstream text at all, not even our excerpts of it (issue
/// 28 item 5); `last_error` and the log have the rest.
fn refusal_code(failure: &Verdict) -> String {
    let Verdict::Refused(message) = failure else {
        return String::new();
    };
    message
        .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
        .find_map(crate::providers::oauth_error_code)
        .map(|code| format!("<p>Shippo's answer: <code>{code}</code></p>"))
        .unwrap_or_default()
}

async fn callback(State(flow): State<Arc<OAuthFlow>>, RawQuery(query): RawQuery) -> Response {
    flow.finish(query.as_deref().unwrap_or("")).await
}

/// A fresh state: 256 random bits from the thread-local CSPRNG, base64url without padding.
fn new_state() -> Secret {
    let mut bytes = [0u8; STATE_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `s` could be a state we issued; anything else is refused without a registry call.
fn plausible_state(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The callback's query parameters; the first occurrence of each wins.
#[derive(Default)]
struct Params {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Params {
    fn parse(query: &str) -> Params {
        let mut p = Params::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match k.as_ref() {
                "state" => &mut p.state,
                "code" => &mut p.code,
                "error" => &mut p.error,
                "error_description" => &mut p.error_description,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(v.into_owned());
            }
        }
        p
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn retry_hint(key: &AccountKey) -> String {
    format!(
        "<p>To try again, run <code>shiptoken shippo connect {}</code> and open the new link.</p>",
        escape(&key.name)
    )
}

fn connected(key: &AccountKey, unchecked: Option<&str>) -> Response {
    let check = match unchecked {
        None => "<p>shiptoken stored the token and Shippo's API accepted it.</p>".to_string(),
        Some(why) => format!(
            "<p>shiptoken stored the token but could not check it yet ({}); it retries on its own.</p>",
            escape(why)
        ),
    };
    page(
        StatusCode::OK,
        Tone::Ok,
        "Connected",
        &format!("Shippo account {} connected", key.name),
        &format!(
            "{check}<p>Applications on the server read it with <code>shiptoken get shippo/{}</code>.</p><p>You can close this page.</p>",
            escape(&key.name)
        ),
    )
}

fn bad_state() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        Tone::Error,
        "Link not valid",
        "This connection link is not valid",
        "<p>It is unknown, was already used, has expired, or its account was removed: each link \
         works once, within 30 minutes, for the account it was made for. \
         shiptoken did not contact Shippo.</p>\
         <p>To connect an account, run <code>shiptoken shippo connect NAME</code> and open the new link.</p>",
    )
}

fn registry_failed(e: &RegistryError) -> Response {
    tracing::error!(error = %e, "registry failure during the Shippo OAuth callback");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        Tone::Error,
        "Unavailable",
        "shiptoken cannot finish the connection",
        "<p>Its registry is unavailable; the operator should check the daemon's log.</p>",
    )
}

/// The colour of a page's accent.
#[derive(Clone, Copy)]
enum Tone {
    Ok,
    Warn,
    Error,
}

/// A complete page. `title` is plain text (escaped here); `body` is HTML whose
/// untrusted parts the caller escaped.
fn page(status: StatusCode, tone: Tone, label: &str, title: &str, body: &str) -> Response {
    let (accent, mark) = match tone {
        Tone::Ok => ("#1a7f37", "&#10003;"),
        Tone::Warn => ("#9a6700", "!"),
        Tone::Error => ("#cf222e", "&#10005;"),
    };
    let title = escape(title);
    let label = escape(label);
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title} · shiptoken</title>
<style>
:root{{color-scheme:light dark}}
body{{margin:0;padding:1rem;font:1rem/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f3f4f6;color:#1f2328}}
main{{box-sizing:border-box;max-width:36rem;margin:10vh auto 1rem;padding:1.5rem;background:#fff;border-radius:12px;border-top:6px solid {accent};box-shadow:0 1px 4px rgba(0,0,0,.12)}}
.label{{display:flex;align-items:center;gap:.5rem;margin:0 0 .5rem;color:{accent};font-weight:600;text-transform:uppercase;letter-spacing:.04em;font-size:.85rem}}
.mark{{display:inline-flex;align-items:center;justify-content:center;width:1.6rem;height:1.6rem;border-radius:50%;background:{accent};color:#fff;font-size:1rem}}
h1{{font-size:1.45rem;line-height:1.3;margin:0 0 .75rem;overflow-wrap:anywhere}}
p{{margin:.6rem 0;overflow-wrap:anywhere}}
code{{font:.9em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#eef0f3;padding:.1em .35em;border-radius:4px}}
footer{{margin-top:1.25rem;color:#59636e;font-size:.85rem}}
@media (max-width:30rem){{main{{margin-top:1rem;padding:1.25rem}}}}
@media (prefers-color-scheme:dark){{body{{background:#0d1117;color:#e6edf3}}main{{background:#161b22;box-shadow:none}}code{{background:#2a313c}}footer{{color:#8d96a0}}}}
</style>
</head>
<body>
<main>
<p class="label"><span class="mark" aria-hidden="true">{mark}</span>{label}</p>
<h1>{title}</h1>
{body}
<footer>shiptoken · Shippo OAuth</footer>
</main>
</body>
</html>
"#
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // The page's own URL carries the code and state: never pass it on.
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Once a connect link has expired, says so in the account's `last_error` and history if
/// the account still waits for its first token and no newer link was issued, so `accounts
/// list` tells why it is still `pending` and what to do. Follows the daemon's clock (which
/// tests and dev mode move), looking once a second; a restart forgets the links it watched.
async fn report_expiry(
    registry: Registry,
    clock: Clock,
    newest_link: Arc<
        std::sync::Mutex<std::collections::HashMap<AccountKey, crate::clock::Timestamp>>,
    >,
    key: AccountKey,
    expires_at: crate::clock::Timestamp,
) {
    loop {
        let now = clock.now();
        if now >= expires_at {
            break;
        }
        tokio::time::sleep(expires_at.since(now).min(Duration::from_secs(1))).await;
    }
    {
        let mut newest = newest_link.lock().unwrap_or_else(|e| e.into_inner());
        if newest.get(&key) != Some(&expires_at) {
            return;
        }
        newest.remove(&key);
    }
    let waiting = registry.account(&key).is_some_and(|a| {
        a.status == crate::names::Status::Pending && a.current.is_none() && a.candidate.is_none()
    });
    if !waiting {
        return;
    }
    let message = format!(
        "the connect link expired at {} before Shippo called back; run `shiptoken shippo connect {}` for a new one",
        expires_at.to_rfc3339(),
        key.name
    );
    tracing::warn!(provider = %key.provider, account = %key.name, "{message}");
    if let Err(e) = registry
        .record_connect_failure(&key, message, clock.now())
        .await
    {
        tracing::warn!(provider = %key.provider, account = %key.name, error = %e, "could not record that the connect link expired");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_long_random_and_plausible() {
        let a = new_state();
        let b = new_state();
        assert_ne!(a, b);
        assert!(plausible_state(a.expose()), "{}", a.expose());
        assert!(!plausible_state("short"));
        assert!(!plausible_state(&"a".repeat(42).replace('a', "<")));
    }

    #[test]
    fn escapes_everything_that_could_open_markup() {
        assert_eq!(
            escape(r#"<script>"x" & 'y'</script>"#),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn params_take_the_first_value_and_decode() {
        let p = Params::parse("code=a%2Bb&state=s&code=other&error_description=no+way");
        assert_eq!(p.code.as_deref(), Some("a+b"));
        assert_eq!(p.state.as_deref(), Some("s"));
        assert_eq!(p.error_description.as_deref(), Some("no way"));
        assert!(p.error.is_none());
    }

    #[test]
    fn pages_are_uncached_html() {
        let r = page(
            StatusCode::BAD_REQUEST,
            Tone::Error,
            "L",
            "T <b>",
            "<p>x</p>",
        );
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let h = r.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
    }
}
