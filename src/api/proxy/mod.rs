//! The authenticating proxy: `/v1/proxy/<provider>/<account>/<path>` forwards an
//! application's call to the provider's API with the account's served token, so the
//! application never holds a token (none can leak from it, go stale in it, or be used after
//! the account is flagged).
//!
//! The same `[[socket.clients]]` rules as a token read decide who may use which account, and
//! every use is audited (never a body). A flagged or expired account answers 409 like a token
//! read, without calling upstream. What the answers prove goes to the engine as passive
//! evidence ([`crate::rotation::Engine::observed`]), throttled answers spend the account's
//! budget ([`crate::rotation::budget`]) so the next calls wait instead of being throttled,
//! and a call refused with a token a rotation just replaced is sent once more with the new
//! one when it is safe to repeat. `forward` builds the upstream URL and headers.

mod forward;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::access::peer_of;
use super::routes::key_from;
use super::{ApiError, ApiState, Caller, Shared, audit};
use crate::metrics::ProxyOutcome;
use crate::names::AccountKey;
use crate::providers::{Answer, ProxyRules, Verdict};
use crate::registry::ProxiedCall;
use crate::rotation::budget::Admission;
use crate::secret::Secret;

/// The route, as the router and the metrics name it.
pub const PROXY_ROUTE: &str = "/v1/proxy/{provider}/{account}/{*path}";

/// How much of an answer is read before it is passed back: an answer that fits is judged
/// (and may be retried); a longer one (a large list, never an error) is streamed unjudged.
const PEEK: usize = 64 * 1024;

/// The methods forwarded: the APIs' own. `TRACE` (which echoes headers back, the token
/// among them, through any hop that supports it) and `CONNECT` are not.
const FORWARDED_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// How long a refused call waits for a rotation under way before its answer is passed back.
const ROTATION_WAIT: Duration = Duration::from_secs(5);

/// The caller's header that shortens the wait for a throttled account (whole seconds).
const MAX_WAIT_HEADER: &str = "shiptoken-max-wait";
/// The caller's header that marks a request safe to send twice (`true`).
const IDEMPOTENT_HEADER: &str = "shiptoken-idempotent";

/// One HTTP client per provider, built on first use: each its own connection pool (a
/// provider's hung connections never hold another's), no redirects followed (a redirect
/// could lead the token to another host), no timeout of its own (`proxy.timeout` is set per
/// call from the live configuration).
#[derive(Default)]
pub struct ProxyClients {
    clients: std::sync::Mutex<Vec<(crate::names::Provider, reqwest::Client)>>,
}

impl ProxyClients {
    fn get(&self, provider: crate::names::Provider) -> reqwest::Client {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = clients.iter().find(|(p, _)| *p == provider) {
            return c.clone();
        }
        let client = crate::providers::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"));
        clients.push((provider, client.clone()));
        client
    }
}

/// Everything the end of a proxied call records: the audit entry and the metrics.
struct Finish {
    state: Arc<ApiState>,
    key: AccountKey,
    client: Option<String>,
    peer: super::Peer,
    exe: Option<Arc<str>>,
    fingerprint: String,
    call: ProxiedCall,
    started: Instant,
    outcome: ProxyOutcome,
    done: bool,
    /// Bytes of a streamed request body sent so far.
    streamed_in: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Whether the account is registered (it served a token or a 409): only then is it a
    /// metric label.
    registered: bool,
}

impl Finish {
    /// Records the call once; `bytes_out` is what was passed back.
    fn record(&mut self, bytes_out: u64) {
        if self.done {
            return;
        }
        self.done = true;
        self.call.bytes_out = bytes_out;
        self.call.outcome = self.outcome.as_str().into();
        if let Some(sent) = &self.streamed_in {
            self.call.bytes_in = sent.load(std::sync::atomic::Ordering::Relaxed);
        }
        self.call.duration_ms =
            u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Only registered accounts get a series of their own: names from the request line
        // of calls that were refused must not grow the metrics without bound.
        self.state.metrics.proxy_request(
            self.key.provider,
            if self.registered { &self.key.name } else { "-" },
            self.call.status,
            self.outcome,
        );
        self.state.audit.record(audit::Read {
            at: self.state.clock.now(),
            account: &self.key,
            client: self.client.as_deref(),
            peer: self.peer,
            exe: self.exe.as_deref(),
            fingerprint: &self.fingerprint,
            request: Some(&self.call),
        });
    }
}

/// `/v1/proxy/{provider}/{account}/{*path}`, any method. A request refused before its body
/// was read has the body read and dropped first (bounded): answering while the caller is
/// still sending makes the server close the connection under it, and the caller sees a
/// broken pipe instead of the answer.
pub(super) async fn proxy(State(state): Shared, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut unread = Some(body);
    let response = forward_call(state, parts, &mut unread).await;
    if let Some(body) = unread {
        discard(body).await;
    }
    response
}

/// How much of a refused request's body is read and dropped, and for how long, before the
/// answer; a larger or slower one gets its answer with the connection closed after it.
const DISCARD_AT_MOST: usize = 64 * 1024;
const DISCARD_FOR: Duration = Duration::from_secs(1);

/// Reads and drops a body the call did not use, within [`DISCARD_AT_MOST`] and
/// [`DISCARD_FOR`].
async fn discard(body: Body) {
    let mut stream = body.into_data_stream();
    let mut seen = 0;
    let _ = tokio::time::timeout(DISCARD_FOR, async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > DISCARD_AT_MOST {
                break;
            }
        }
    })
    .await;
}

/// The proxied call itself; takes the request body out of `unread` when it uses it.
async fn forward_call(
    state: Arc<ApiState>,
    parts: axum::http::request::Parts,
    unread: &mut Option<Body>,
) -> Response {
    let started = Instant::now();
    let Some((provider, account, rest)) = split_target(&parts.uri) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "a proxied call is /v1/proxy/<provider>/<account>/<path under the provider's API>",
        )
        .into_response();
    };
    let key = match key_from(&provider, &account) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let config = state.config.borrow().clone();
    let peer = match peer_of(&parts.extensions) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let exe = parts.extensions.get::<Caller>().and_then(|c| c.exe.clone());
    let mut finish = Finish {
        state: state.clone(),
        key: key.clone(),
        client: None,
        peer,
        exe,
        fingerprint: String::new(),
        call: ProxiedCall {
            method: parts.method.to_string(),
            path: rest
                .split('?')
                .next()
                .unwrap_or("")
                .chars()
                .take(512)
                .collect(),
            status: None,
            outcome: ProxyOutcome::Refused.as_str().into(),
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0,
        },
        started,
        outcome: ProxyOutcome::Refused,
        done: false,
        streamed_in: None,
        registered: false,
    };
    let refused = |finish: &mut Finish, e: ApiError| {
        // A caller without access leaves no audit entry (it was handed nothing), as for a
        // token read; every other refusal is recorded.
        if e.status != StatusCode::FORBIDDEN {
            finish.record(0);
        } else {
            finish.done = true;
            state
                .metrics
                .proxy_request(key.provider, "-", None, ProxyOutcome::Refused);
        }
        e.into_response()
    };
    // Access first: a peer without rights learns nothing else and leaves no audit entry.
    match state.may_read(&config, &peer, &key) {
        Ok(rule) => finish.client = rule,
        Err(e) => return refused(&mut finish, e),
    }
    if !FORWARDED_METHODS.contains(&parts.method) {
        let e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("the proxy does not forward {} requests", parts.method),
        );
        return refused(&mut finish, e);
    }
    if !config.proxy.enabled {
        let e = ApiError::new(
            StatusCode::NOT_FOUND,
            "proxy_disabled",
            "the proxy is turned off (proxy.enabled = false); read the token instead",
        );
        return refused(&mut finish, e);
    }
    let Some(rules) = crate::providers::rules(key.provider).proxy else {
        let e = ApiError::new(
            StatusCode::NOT_FOUND,
            "not_proxied",
            format!(
                "the proxy does not forward {} calls; read the token instead",
                key.provider
            ),
        );
        return refused(&mut finish, e);
    };
    if config.socket.audit_required
        && let Err(why) = state.audit.can_audit()
    {
        let e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            why.to_string(),
        );
        return refused(&mut finish, e);
    }
    let url = match forward::target(&state.registry, rules, &config, &key, &rest).await {
        Ok(u) => u,
        Err(forward::BadTarget(why)) => {
            return refused(
                &mut finish,
                ApiError::bad_request(format!("cannot forward {rest:?}: {why}")),
            );
        }
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.proxy.max_request_bytes) {
        return refused(&mut finish, too_large(config.proxy.max_request_bytes));
    }
    let idempotent = parts
        .headers
        .get(IDEMPOTENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    // A body that decides whether the call may be repeated, or that may be sent twice (a
    // read's, which is empty), is read first (bounded); any other streams through.
    let reads = matches!(parts.method, Method::GET | Method::HEAD);
    let body = if rules.reads_body || idempotent || reads {
        let Some(unread) = unread.take() else {
            return refused(
                &mut finish,
                ApiError::bad_request("the request body is gone"),
            );
        };
        match read_bounded(unread, config.proxy.max_request_bytes).await {
            Ok(bytes) => Outgoing::Read(bytes),
            Err(e) => return refused(&mut finish, e),
        }
    } else {
        Outgoing::Stream
    };
    let repeatable = match &body {
        Outgoing::Read(bytes) => idempotent || (rules.repeatable)(&parts.method, bytes),
        // A streamed body is gone once sent: such a call is never sent twice.
        Outgoing::Stream => false,
    };
    let max_wait = parts
        .headers
        .get(MAX_WAIT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(config.proxy.max_wait, |s| {
            Duration::from_secs(s).min(config.proxy.max_wait)
        });
    let mut headers = forward::forwarded_headers(&parts.headers, true);
    for (name, value) in (crate::providers::rules(key.provider).served_headers)(&config) {
        forward::set(&mut headers, name, value);
    }

    let judged = (rules.judged)(&parts.method, rest.split('?').next().unwrap_or(""));
    let on_wait = |delta: i64| state.metrics.proxy_queue(key.provider, delta);
    let mut waited = Duration::ZERO;
    let mut retried = false;
    loop {
        let served = served_token(&state, &key).await;
        finish.registered = served
            .as_ref()
            .map_or_else(|e| e.code != "unknown_account", |_| true);
        let mut token = match served {
            Ok(t) => t,
            Err(e) => return refused(&mut finish, e),
        };
        // Held until this call's answer is judged when it is the first after a throttle.
        let _pilot = match state
            .engine
            .budgets()
            .admit(
                &key,
                max_wait.saturating_sub(waited),
                config.proxy.queue_depth,
                &on_wait,
            )
            .await
        {
            Admission::Go(w, pilot) => {
                if !w.is_zero() {
                    state.metrics.proxy_waited(key.provider, w);
                    finish.outcome = ProxyOutcome::Queued;
                    waited += w;
                    // The token may have been replaced, or the account flagged, meanwhile.
                    token = match served_token(&state, &key).await {
                        Ok(t) => t,
                        Err(e) => return refused(&mut finish, e),
                    };
                }
                pilot
            }
            Admission::Refused { retry_after, why } => {
                finish.outcome = ProxyOutcome::Throttled;
                finish.record(0);
                return throttled_here(&key, retry_after, why);
            }
        };
        finish.fingerprint = token.fingerprint();
        if finish.outcome != ProxyOutcome::Queued {
            finish.outcome = ProxyOutcome::Forwarded;
        }
        let request = state
            .proxy
            .get(key.provider)
            .request(parts.method.clone(), url.clone())
            .headers(headers.clone())
            .bearer_auth(token.expose())
            .timeout(config.proxy.timeout);
        let request = match &body {
            Outgoing::Read(bytes) => {
                finish.call.bytes_in = bytes.len() as u64;
                request.body(bytes.clone())
            }
            // Taken at the send, so a refusal before it still finds the body to discard.
            Outgoing::Stream => match unread.take() {
                Some(b) => {
                    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
                    finish.streamed_in = Some(sent.clone());
                    request.body(bounded_stream(b, config.proxy.max_request_bytes, sent))
                }
                None => request,
            },
        };
        if !retried {
            // The daemon's own time: access, token, budget bookkeeping, the request built;
            // not a throttle wait, and not a resend's wait for a rotation.
            state
                .metrics
                .proxy_added(key.provider, started.elapsed().saturating_sub(waited));
        }
        let mut answer = match request.send().await {
            Ok(a) => a,
            Err(e) => {
                finish.record(0);
                return unreachable_upstream(&key, &e);
            }
        };
        let status = answer.status();
        finish.call.status = Some(status.as_u16());
        if answer
            .content_length()
            .is_some_and(|n| n > config.proxy.max_answer_bytes)
        {
            finish.record(0);
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "answer_too_large",
                format!(
                    "{}'s answer is larger than proxy.max_answer_bytes ({} bytes)",
                    key.provider, config.proxy.max_answer_bytes
                ),
            )
            .into_response();
        }
        let answer_headers = answer.headers().clone();
        let peek_at_most = PEEK.min(usize::try_from(config.proxy.max_answer_bytes).unwrap_or(PEEK));
        let (prefix, complete) = match peek(&mut answer, peek_at_most).await {
            Ok(p) => p,
            Err(e) => {
                finish.record(0);
                return unreachable_upstream(&key, &e);
            }
        };
        if !complete {
            return stream_back(
                finish,
                status,
                &answer_headers,
                prefix,
                answer,
                config.proxy.max_answer_bytes,
            );
        }
        let verdict = if judged {
            judge(rules, status, &answer_headers, &prefix, &token)
        } else {
            Verdict::Inconclusive("not a call whose answers are judged".into())
        };
        if let Verdict::Throttled { wait, .. } = &verdict {
            state.engine.budgets().throttle(&key, *wait);
        }
        drop(_pilot);
        if matches!(verdict, Verdict::Refused(_)) && repeatable && !retried {
            // A rotation may have replaced the token while the call was under way, or this
            // refusal starts one (a renewing provider refreshes to tell suspension from
            // revocation): once work on the account is done, with a newer token stored,
            // the call is sent once more.
            state.engine.observed(&key, &token, verdict).await;
            state.engine.quiet(&key, ROTATION_WAIT).await;
            let newer = served_token(&state, &key).await.is_ok_and(|t| t != token);
            if newer {
                retried = true;
                continue;
            }
        } else {
            observe(&state, &key, token.clone(), verdict);
        }
        let bytes_out = prefix.len() as u64;
        finish.record(bytes_out);
        let mut response = Response::new(Body::from(prefix));
        *response.status_mut() = status;
        *response.headers_mut() = forward::forwarded_headers(&answer_headers, false);
        return response;
    }
}

/// The request body: read (it decides repeatability, or may be sent twice), or streamed
/// from the request at the send.
enum Outgoing {
    Read(Bytes),
    Stream,
}

/// `(provider, account, rest)` from the raw request target `/v1/proxy/<p>/<a>/<rest>`; the
/// rest stays percent-encoded, query included.
fn split_target(uri: &axum::http::Uri) -> Option<(String, String, String)> {
    let target = uri.path_and_query()?.as_str();
    let after = target.strip_prefix("/v1/proxy/")?;
    let (provider, after) = after.split_once('/')?;
    let (account, rest) = after.split_once('/')?;
    // Names are checked as they are written (an encoded one is refused as invalid).
    Some((provider.to_string(), account.to_string(), rest.to_string()))
}

/// The token to send for `key` now, or the answer a token read would give instead.
async fn served_token(state: &ApiState, key: &AccountKey) -> Result<Secret, ApiError> {
    let served = state.servable(key).await?;
    served
        .token()
        .map(|t| t.access_token.clone())
        .ok_or_else(|| super::tokens::unusable(&served.record, state.clock.now()))
}

/// Reads a request body of at most `max` bytes.
async fn read_bounded(body: Body, max: u64) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(format!("the request body could not be read: {e}"))
        })?;
        if (out.len() + chunk.len()) as u64 > max {
            return Err(too_large(max));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// A streamed request body that fails (so the upstream call fails) past `max` bytes;
/// `sent` counts what went through, for the audit.
fn bounded_stream(body: Body, max: u64, sent: Arc<std::sync::atomic::AtomicU64>) -> reqwest::Body {
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        let total = sent.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed)
            + chunk.len() as u64;
        if total > max {
            return Err(std::io::Error::other(format!(
                "the request body is larger than proxy.max_request_bytes ({max} bytes)"
            )));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    reqwest::Body::wrap_stream(stream)
}

/// Reads the answer until `at_most` bytes or its end: the bytes, and whether that was all.
async fn peek(
    answer: &mut reqwest::Response,
    at_most: usize,
) -> Result<(Bytes, bool), reqwest::Error> {
    let mut out = Vec::new();
    while out.len() < at_most {
        match answer.chunk().await? {
            Some(chunk) => out.extend_from_slice(&chunk),
            None => return Ok((Bytes::from(out), true)),
        }
    }
    Ok((Bytes::from(out), false))
}

/// Passes a long answer back as it comes: the bytes already read, then the rest, cut off
/// past `max`; the audit entry is written when the body ends (or the caller goes away).
fn stream_back(
    mut finish: Finish,
    status: StatusCode,
    headers: &HeaderMap,
    prefix: Bytes,
    answer: reqwest::Response,
    max: u64,
) -> Response {
    let mut passed = prefix.len() as u64;
    let first = futures_util::stream::once(async move { Ok::<_, std::io::Error>(prefix) });
    let rest = futures_util::stream::unfold(answer, |mut a| async move {
        match a.chunk().await {
            Ok(Some(c)) => Some((Ok(c), a)),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e)), a)),
        }
    });
    let body = first.chain(rest).map(move |chunk| {
        let chunk = chunk?;
        passed += chunk.len() as u64;
        if passed > max {
            finish.record(passed);
            return Err(std::io::Error::other(
                "the answer is larger than proxy.max_answer_bytes",
            ));
        }
        // The audit entry is complete only at the end; until then the counter moves.
        finish.call.bytes_out = passed;
        Ok(chunk)
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = status;
    *response.headers_mut() = forward::forwarded_headers(headers, false);
    response
}

/// However the call ends (its answer's last byte, the caller going away, an early return),
/// it is recorded once.
impl Drop for Finish {
    fn drop(&mut self) {
        let passed = self.call.bytes_out;
        self.record(passed);
    }
}

/// What a whole answer proves, judged on the provider's rows for its API.
fn judge(
    rules: &ProxyRules,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    token: &Secret,
) -> Verdict {
    let answer = Answer {
        status,
        headers: headers.clone(),
        body: String::from_utf8_lossy(body).into_owned(),
        sent: vec![token.clone()],
    };
    (rules.judge)(&answer)
}

/// Hands what an answer proved to the engine, off the caller's path: a pass or evidence is
/// stored like a probe's; the rest proves nothing about the account.
fn observe(state: &Arc<ApiState>, key: &AccountKey, token: Secret, verdict: Verdict) {
    if !matches!(
        verdict,
        Verdict::Pass { .. } | Verdict::Refused(_) | Verdict::Undocumented { .. }
    ) {
        return;
    }
    // A pass is usually nothing new (the token was proven a moment ago): no task for it.
    if matches!(verdict, Verdict::Pass { .. }) && !state.engine.pass_is_news(key, &token) {
        return;
    }
    let engine = state.engine.clone();
    let key = key.clone();
    tokio::spawn(async move { engine.observed(&key, &token, verdict).await });
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        format!("the request body is larger than proxy.max_request_bytes ({max} bytes)"),
    )
}

/// 429 answered here: the account's budget is spent for longer than the caller may wait.
fn throttled_here(key: &AccountKey, retry_after: Duration, why: &str) -> Response {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        format!("{key}: {why}; retry in {secs}s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// 502 (504 for a timeout): no answer came from the provider.
fn unreachable_upstream(key: &AccountKey, e: &reqwest::Error) -> Response {
    let (status, code) = if e.is_timeout() {
        (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
    } else {
        (StatusCode::BAD_GATEWAY, "upstream_unreachable")
    };
    // reqwest's text names the URL, never a header: the token is not in it.
    ApiError::new(
        status,
        code,
        format!(
            "no answer from {} for {key}: {}",
            key.provider,
            crate::providers::excerpt(&e.to_string())
        ),
    )
    .into_response()
}
