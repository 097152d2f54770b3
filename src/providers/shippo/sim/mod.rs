//! A fake Shippo: the OAuth host (`/oauth/authorize`, `/oauth/access_token`) and the API host
//! (`/carrier_accounts`, `/parcel-templates`) served from one loopback port.
//!
//! Configure the daemon with `oauth_base = api_base = base_url()`. Platform clients are registered
//! with [`FakeShippo::new_client`]; each account can be put in a mode, and the UNCONFIRMED answer
//! variants of `UPSTREAM.md` (form or JSON token answers, 401 or 403 for suspended accounts,
//! 429 with or without `X-RateLimit-Reset`) are chosen by switches.
//!
//! Here: the handle tests drive and the fake's state; `routes` answers the HTTP requests.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::sim::{Lifecycle, form_encode, lock, random_hex, spawn_server, unix_now, wait_until};

mod routes;

use routes::invalid_grant;

/// How long an authorization code may wait before it is exchanged.
pub const CODE_LIFETIME: Duration = Duration::from_secs(600);

/// The account name a grant is for until [`FakeShippo::set_next_grant_account`] says otherwise.
pub const DEFAULT_GRANT_ACCOUNT: &str = "demo-merchant";

/// The oldest `Shippo-API-Version` Shippo accepts for OAuth tokens.
const MIN_API_VERSION: &str = "2018-02-08";

/// How API calls made with an account's tokens are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShippoMode {
    /// Everything works.
    #[default]
    Active,
    /// Calls are refused (403 or 401, see [`SuspendedShape`]).
    Suspended,
    /// Calls get HTTP 503 with an HTML body.
    Down,
    /// Calls get HTTP 429, with `X-RateLimit-Reset` unless switched off.
    RateLimited {
        /// Seconds from now (on the fake's clock) to the reset time sent in the header.
        reset_in_secs: u64,
    },
    /// Calls answer like `Active`, after this delay.
    Slow(Duration),
}

/// How a suspended account's calls are refused (UNCONFIRMED upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SuspendedShape {
    /// HTTP 403 `{"detail": "You do not have permission to perform this action."}`.
    #[default]
    Forbidden403,
    /// HTTP 401 `{"detail": "Token does not exist"}`.
    Unauthorized401,
}

/// What the simulated user clicks on Shippo's consent page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserDecision {
    /// Redirect back with a code.
    #[default]
    Grant,
    /// Redirect back with `error=access_denied`.
    Decline,
}

/// How `/oauth/access_token` behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExchangeMode {
    /// Normal answers.
    #[default]
    Normal,
    /// HTTP 503 with an HTML body.
    Down,
    /// Never answers (until the fake shuts down).
    Hang,
}

/// A running fake Shippo. Clones share one server.
///
/// The server stops when [`FakeShippo::shutdown`] is called or the last clone is dropped;
/// requests hanging or sleeping in it are then answered with a 503 at once.
#[derive(Clone)]
pub struct FakeShippo {
    /// State shared with the request handlers.
    shared: Arc<Shared>,
    /// Held only by handles, not handlers, so dropping the last handle stops the server.
    lifecycle: Arc<Lifecycle>,
    /// Where the server listens.
    addr: SocketAddr,
}

/// What handlers and handles share.
struct Shared {
    /// Everything mutable; never held across an `.await`.
    state: Mutex<ShippoState>,
    /// Woken after every counted request, for the `wait_for_*` helpers.
    events: Notify,
    /// Flips on shutdown, ending hangs and sleeps.
    shutdown: watch::Receiver<bool>,
}

/// A registered platform partner.
struct Client {
    /// Its secret.
    secret: String,
    /// Registered callback URLs; the first is used when the request names none.
    redirect_uris: Vec<String>,
}

/// An authorization code not yet exchanged.
struct Code {
    /// The client it was issued to; only that client may exchange it.
    client_id: String,
    /// The account the resulting token acts for.
    account: String,
    /// Unix seconds on the fake's clock after which it is refused.
    expires_at: u64,
}

/// An OAuth access token.
struct Token {
    /// The account it acts for.
    account: String,
    /// Revoked tokens answer "Token does not exist".
    revoked: bool,
}

/// Per-account switches.
#[derive(Default, Clone, Copy)]
struct Account {
    /// How the account's calls are answered.
    mode: ShippoMode,
    /// How calls are refused while suspended.
    suspended_shape: SuspendedShape,
}

/// The fake's mutable state.
struct ShippoState {
    /// Platform partners by client id.
    clients: HashMap<String, Client>,
    /// What the consent page answers.
    decision: UserDecision,
    /// The account the next grant is for.
    next_grant_account: String,
    /// Unexchanged codes.
    codes: HashMap<String, Code>,
    /// Every token ever made.
    tokens: HashMap<String, Token>,
    /// Account switches; an absent account is active.
    accounts: HashMap<String, Account>,
    /// UNCONFIRMED upstream: answer the token exchange form-encoded instead of JSON.
    token_answer_form_encoded: bool,
    /// How the token exchange behaves.
    exchange_mode: ExchangeMode,
    /// Whether 429 answers carry `X-RateLimit-Reset` (Shippo sends it only sometimes).
    rate_limit_reset_header: bool,
    /// Extra delay before every answer, for benchmarks.
    latency: Duration,
    /// How far the fake's clock is ahead of real time.
    clock_offset: Duration,
    /// `/oauth/authorize` requests.
    authorize_count: usize,
    /// `/oauth/access_token` requests.
    exchange_count: usize,
    /// `Content-Type` of the latest exchange request.
    last_exchange_content_type: Option<String>,
    /// API requests per bearer token, whatever the answer.
    api_counts: HashMap<String, usize>,
    /// Every request received.
    total_requests: usize,
    /// Answers sent instead of the real ones (proxies, WAFs, throttling, odd statuses).
    canned: crate::sim::canned::Switchboard,
}

impl ShippoState {
    /// Unix seconds on the fake's clock.
    fn now(&self) -> u64 {
        unix_now(self.clock_offset)
    }

    /// Switches of `account`, defaults if never set.
    fn account(&self, account: &str) -> Account {
        self.accounts.get(account).copied().unwrap_or_default()
    }

    /// Makes a new token for `account`.
    fn new_token(&mut self, account: &str) -> String {
        let token = format!("oauth.{}", random_hex(24));
        self.tokens.insert(
            token.clone(),
            Token {
                account: account.to_owned(),
                revoked: false,
            },
        );
        token
    }

    /// The account a live (known, unrevoked) token acts for.
    fn live_account(&self, token: &str) -> Option<String> {
        self.tokens
            .get(token)
            .filter(|t| !t.revoked)
            .map(|t| t.account.clone())
    }

    /// The redirect for an authorize request, or the 400 page explaining why there is none.
    fn authorize(&mut self, params: &HashMap<String, String>) -> Result<String, &'static str> {
        let param = |k: &str| params.get(k).map(String::as_str);
        let client_id = param("client_id").unwrap_or("");
        let client = self.clients.get(client_id).ok_or("Unknown client_id")?;
        if param("response_type") != Some("code") {
            return Err("response_type must be code");
        }
        if param("scope") != Some("*") {
            return Err("scope must be *");
        }
        let callback = match param("redirect_uri") {
            Some(uri) if client.redirect_uris.iter().any(|r| r == uri) => uri.to_owned(),
            Some(_) => return Err("redirect_uri mismatch"),
            None => client
                .redirect_uris
                .first()
                .cloned()
                .ok_or("no callback URL is registered for this client")?,
        };
        let answer = match self.decision {
            UserDecision::Grant => {
                let code = random_hex(20);
                let expires_at = self.now().saturating_add(CODE_LIFETIME.as_secs());
                self.codes.insert(
                    code.clone(),
                    Code {
                        client_id: client_id.to_owned(),
                        account: self.next_grant_account.clone(),
                        expires_at,
                    },
                );
                format!("code={code}")
            }
            UserDecision::Decline => {
                "error=access_denied&error_description=The+user+denied+access".to_owned()
            }
        };
        let state = param("state")
            .map(|s| format!("&state={}", form_encode(s)))
            .unwrap_or_default();
        let separator = if callback.contains('?') { '&' } else { '?' };
        Ok(format!("{callback}{separator}{answer}{state}"))
    }

    /// Checks an exchange request and, if good, makes the token; else the error status and body.
    fn exchange(
        &mut self,
        params: &HashMap<String, String>,
    ) -> Result<String, (StatusCode, Value)> {
        let param = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
        let client_id = param("client_id");
        let client_ok = self
            .clients
            .get(client_id)
            .is_some_and(|c| c.secret == param("client_secret"));
        if !client_ok {
            return Err((StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"})));
        }
        if param("grant_type") != "authorization_code" {
            return Err(invalid_grant("grant_type must be authorization_code"));
        }
        let now = self.now();
        // Codes are single use: taken out whether or not the rest of the request is good.
        let code = self
            .codes
            .remove(param("code"))
            .ok_or_else(|| invalid_grant("Invalid or already used authorization code"))?;
        if code.client_id != client_id {
            return Err(invalid_grant(
                "Authorization code was issued to another client",
            ));
        }
        if now > code.expires_at {
            return Err(invalid_grant("Authorization code has expired"));
        }
        Ok(self.new_token(&code.account))
    }
}

impl FakeShippo {
    /// Starts the fake on a free loopback port, with no clients registered.
    pub async fn start() -> io::Result<FakeShippo> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts the fake on `addr`, which must be a loopback address (port 0 picks a free one).
    pub async fn start_on(addr: SocketAddr) -> io::Result<FakeShippo> {
        let (lifecycle, shutdown) = Lifecycle::new();
        let shared = Arc::new(Shared {
            state: Mutex::new(ShippoState {
                clients: HashMap::new(),
                decision: UserDecision::Grant,
                next_grant_account: DEFAULT_GRANT_ACCOUNT.to_owned(),
                codes: HashMap::new(),
                tokens: HashMap::new(),
                accounts: HashMap::new(),
                token_answer_form_encoded: false,
                exchange_mode: ExchangeMode::Normal,
                rate_limit_reset_header: true,
                latency: Duration::ZERO,
                clock_offset: Duration::ZERO,
                authorize_count: 0,
                exchange_count: 0,
                last_exchange_content_type: None,
                api_counts: HashMap::new(),
                total_requests: 0,
                canned: Default::default(),
            }),
            events: Notify::new(),
            shutdown: shutdown.clone(),
        });
        let router = routes::router(shared.clone());
        let addr = spawn_server(addr, router, shutdown).await?;
        Ok(FakeShippo {
            shared,
            lifecycle: Arc::new(lifecycle),
            addr,
        })
    }

    /// The base URL, like `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server for every clone; hanging and sleeping requests are answered 503 at once.
    pub fn shutdown(&self) {
        self.lifecycle.shutdown();
    }

    /// Registers (or replaces) a platform partner with its secret and callback URLs.
    pub fn new_client(&self, client_id: &str, client_secret: &str, redirect_uris: &[&str]) {
        lock(&self.shared.state).clients.insert(
            client_id.to_owned(),
            Client {
                secret: client_secret.to_owned(),
                redirect_uris: redirect_uris.iter().map(|u| (*u).to_owned()).collect(),
            },
        );
    }

    /// What the simulated user answers on the consent page (default `Grant`).
    pub fn set_user_decision(&self, d: UserDecision) {
        lock(&self.shared.state).decision = d;
    }

    /// The account that grants from now on are for (default [`DEFAULT_GRANT_ACCOUNT`]).
    pub fn set_next_grant_account(&self, name: &str) {
        lock(&self.shared.state).next_grant_account = name.to_owned();
    }

    /// When true, a successful exchange answers form-encoded instead of JSON (default false).
    pub fn set_token_answer_form_encoded(&self, yes: bool) {
        lock(&self.shared.state).token_answer_form_encoded = yes;
    }

    /// How the token exchange behaves (default `Normal`).
    pub fn set_exchange_mode(&self, mode: ExchangeMode) {
        lock(&self.shared.state).exchange_mode = mode;
    }

    /// Creates a token for `account` obtained outside the daemon's OAuth flow.
    pub fn add_token(&self, account: &str) -> String {
        lock(&self.shared.state).new_token(account)
    }

    /// Revokes a token: it then answers 401 "Token does not exist". Unknown tokens are ignored.
    pub fn revoke(&self, token: &str) {
        if let Some(t) = lock(&self.shared.state).tokens.get_mut(token) {
            t.revoked = true;
        }
    }

    /// Answers `route` with `answer` instead of the real answer, for one account's calls
    /// (`Some(name)`) or everyone's (`None`); `None` as the answer switches it off.
    pub fn set_canned(
        &self,
        account: Option<&str>,
        route: crate::sim::Route,
        answer: Option<crate::sim::Canned>,
    ) {
        lock(&self.shared.state).canned.set(account, route, answer);
    }

    /// Puts an account in a mode, affecting every token of it.
    pub fn set_mode(&self, account: &str, mode: ShippoMode) {
        let mut st = lock(&self.shared.state);
        st.accounts.entry(account.to_owned()).or_default().mode = mode;
    }

    /// How a suspended account's calls are refused (default 403).
    pub fn set_suspended_shape(&self, account: &str, shape: SuspendedShape) {
        let mut st = lock(&self.shared.state);
        st.accounts
            .entry(account.to_owned())
            .or_default()
            .suspended_shape = shape;
    }

    /// Whether 429 answers carry `X-RateLimit-Reset` (default true).
    pub fn set_rate_limit_reset_header(&self, yes: bool) {
        lock(&self.shared.state).rate_limit_reset_header = yes;
    }

    /// A fixed delay before every answer, on every endpoint (default none).
    pub fn set_latency(&self, d: Duration) {
        lock(&self.shared.state).latency = d;
    }

    /// Moves the fake's clock forward; code expiry and `X-RateLimit-Reset` use it.
    pub fn advance_clock(&self, d: Duration) {
        let mut st = lock(&self.shared.state);
        st.clock_offset = st.clock_offset.saturating_add(d);
    }

    /// Unix seconds on the fake's clock.
    pub fn now_unix(&self) -> u64 {
        lock(&self.shared.state).now()
    }

    /// The account a token acts for, revoked or not.
    pub fn token_account(&self, token: &str) -> Option<String> {
        lock(&self.shared.state)
            .tokens
            .get(token)
            .map(|t| t.account.clone())
    }

    /// Every token made for `account`, in no particular order.
    pub fn tokens_of(&self, account: &str) -> Vec<String> {
        lock(&self.shared.state)
            .tokens
            .iter()
            .filter(|(_, t)| t.account == account)
            .map(|(token, _)| token.clone())
            .collect()
    }

    /// Whether `token` is known, unrevoked and its account not suspended.
    ///
    /// Transient modes (down, rate-limited, slow) do not count against it.
    pub fn token_is_valid(&self, token: &str) -> bool {
        let st = lock(&self.shared.state);
        st.live_account(token)
            .is_some_and(|a| st.account(&a).mode != ShippoMode::Suspended)
    }

    /// `/oauth/authorize` requests received.
    pub fn authorize_count(&self) -> usize {
        lock(&self.shared.state).authorize_count
    }

    /// `/oauth/access_token` requests received, whatever the answer.
    pub fn exchange_count(&self) -> usize {
        lock(&self.shared.state).exchange_count
    }

    /// API requests carrying `token` as bearer, whatever the answer.
    pub fn api_count(&self, token: &str) -> usize {
        lock(&self.shared.state)
            .api_counts
            .get(token)
            .copied()
            .unwrap_or(0)
    }

    /// Every request the fake received.
    pub fn total_requests(&self) -> usize {
        lock(&self.shared.state).total_requests
    }

    /// `Content-Type` of the latest exchange request, so tests can check the daemon form-encodes.
    pub fn last_exchange_content_type(&self) -> Option<String> {
        lock(&self.shared.state).last_exchange_content_type.clone()
    }

    /// Returns once `n` authorize requests arrived; wrap it in `tokio::time::timeout`.
    pub async fn wait_for_authorizes(&self, n: usize) {
        wait_until(&self.shared.events, || self.authorize_count() >= n).await;
    }

    /// Returns once `n` exchange requests arrived; wrap it in `tokio::time::timeout`.
    pub async fn wait_for_exchanges(&self, n: usize) {
        wait_until(&self.shared.events, || self.exchange_count() >= n).await;
    }

    /// Returns once `n` API requests carried `token`; wrap it in `tokio::time::timeout`.
    pub async fn wait_for_api_calls(&self, token: &str, n: usize) {
        wait_until(&self.shared.events, || self.api_count(token) >= n).await;
    }
}

#[cfg(test)]
// Panicking on a failed expectation is what a test is for.
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::sim::form_decode;

    const CALLBACK: &str = "https://platform.example/shippo-oauth-redirect/";

    async fn fake_with_client() -> FakeShippo {
        let fake = FakeShippo::start().await.unwrap();
        fake.new_client(
            "cid",
            "secret",
            &[CALLBACK, "https://other.example/shippo-oauth-redirect/"],
        );
        fake
    }

    fn no_redirects() -> reqwest::Client {
        crate::providers::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    async fn authorize_call(fake: &FakeShippo, query: &[(&str, &str)]) -> reqwest::Response {
        no_redirects()
            .get(format!("{}/oauth/authorize", fake.base_url()))
            .query(query)
            .send()
            .await
            .unwrap()
    }

    /// Runs the consent step and returns the code from the redirect.
    async fn grant_code(fake: &FakeShippo) -> String {
        let response = authorize_call(
            fake,
            &[
                ("response_type", "code"),
                ("client_id", "cid"),
                ("scope", "*"),
                ("state", "st"),
            ],
        )
        .await;
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let query = location.split_once('?').unwrap().1;
        form_decode(query)["code"].clone()
    }

    async fn exchange_form(fake: &FakeShippo, params: &[(&str, &str)]) -> reqwest::Response {
        crate::providers::plain_client()
            .post(format!("{}/oauth/access_token", fake.base_url()))
            .form(params)
            .send()
            .await
            .unwrap()
    }

    async fn api_get(fake: &FakeShippo, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = crate::providers::plain_client()
            .get(format!("{}{path}", fake.base_url()))
            .header("Shippo-API-Version", "2018-02-08");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    #[tokio::test]
    async fn authorize_grants_code_with_state_or_declines() {
        let fake = fake_with_client().await;
        let response = authorize_call(
            &fake,
            &[
                ("response_type", "code"),
                ("client_id", "cid"),
                ("scope", "*"),
                ("state", "a b&c"),
            ],
        )
        .await;
        assert_eq!(response.status(), 302);
        let location = response.headers()["location"].to_str().unwrap();
        let (target, query) = location.split_once('?').unwrap();
        assert_eq!(target, CALLBACK, "first registered callback by default");
        let query = form_decode(query);
        assert_eq!(query["state"], "a b&c");
        assert_eq!(query["code"].len(), 40);

        fake.set_user_decision(UserDecision::Decline);
        let other = "https://other.example/shippo-oauth-redirect/";
        let response = authorize_call(
            &fake,
            &[
                ("response_type", "code"),
                ("client_id", "cid"),
                ("scope", "*"),
                ("state", "s2"),
                ("redirect_uri", other),
            ],
        )
        .await;
        assert_eq!(response.status(), 302);
        let location = response.headers()["location"].to_str().unwrap();
        assert!(location.starts_with(other));
        let query = form_decode(location.split_once('?').unwrap().1);
        assert_eq!(query["error"], "access_denied");
        assert_eq!(query["error_description"], "The user denied access");
        assert_eq!(query["state"], "s2");
        assert!(!query.contains_key("code"));
        assert_eq!(fake.authorize_count(), 2);
    }

    #[tokio::test]
    async fn authorize_rejects_bad_requests_with_400() {
        let fake = fake_with_client().await;
        let cases: [&[(&str, &str)]; 4] = [
            &[
                ("response_type", "code"),
                ("client_id", "nope"),
                ("scope", "*"),
            ],
            &[
                ("response_type", "token"),
                ("client_id", "cid"),
                ("scope", "*"),
            ],
            &[
                ("response_type", "code"),
                ("client_id", "cid"),
                ("scope", "read"),
            ],
            &[
                ("response_type", "code"),
                ("client_id", "cid"),
                ("scope", "*"),
                (
                    "redirect_uri",
                    "https://platform.example/shippo-oauth-redirect",
                ),
            ],
        ];
        for query in cases {
            let response = authorize_call(&fake, query).await;
            assert_eq!(response.status(), 400, "{query:?}");
            assert!(response.headers().get("location").is_none());
        }
    }

    #[tokio::test]
    async fn exchange_form_and_json_then_code_is_single_use() {
        let fake = fake_with_client().await;
        fake.set_next_grant_account("acme");
        let code = grant_code(&fake).await;
        let response = exchange_form(
            &fake,
            &[
                ("client_id", "cid"),
                ("client_secret", "secret"),
                ("code", &code),
                ("grant_type", "authorization_code"),
            ],
        )
        .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let token = body["access_token"].as_str().unwrap();
        assert!(token.starts_with("oauth."));
        assert_eq!(body["scope"], "*");
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(fake.token_account(token).as_deref(), Some("acme"));
        assert_eq!(
            fake.last_exchange_content_type().as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        let again = exchange_form(
            &fake,
            &[
                ("client_id", "cid"),
                ("client_secret", "secret"),
                ("code", &code),
                ("grant_type", "authorization_code"),
            ],
        )
        .await;
        assert_eq!(again.status(), 400);
        let body: Value = again.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant");

        let code = grant_code(&fake).await;
        let response = crate::providers::plain_client()
            .post(format!("{}/oauth/access_token", fake.base_url()))
            .json(
                &json!({"client_id": "cid", "client_secret": "secret", "code": code,
                          "grant_type": "authorization_code"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            fake.last_exchange_content_type().as_deref(),
            Some("application/json")
        );
        assert_eq!(fake.exchange_count(), 3);
        assert_eq!(fake.tokens_of("acme").len(), 2);
    }

    #[tokio::test]
    async fn exchange_rejects_bad_client_grant_type_and_expired_code() {
        let fake = fake_with_client().await;
        let code = grant_code(&fake).await;
        let bad_secret = exchange_form(
            &fake,
            &[
                ("client_id", "cid"),
                ("client_secret", "wrong"),
                ("code", &code),
                ("grant_type", "authorization_code"),
            ],
        )
        .await;
        assert_eq!(bad_secret.status(), 401);
        let body: Value = bad_secret.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client");
        let bad_grant = exchange_form(
            &fake,
            &[
                ("client_id", "cid"),
                ("client_secret", "secret"),
                ("code", &code),
                ("grant_type", "refresh_token"),
            ],
        )
        .await;
        assert_eq!(bad_grant.status(), 400);
        fake.advance_clock(CODE_LIFETIME + Duration::from_secs(1));
        let expired = exchange_form(
            &fake,
            &[
                ("client_id", "cid"),
                ("client_secret", "secret"),
                ("code", &code),
                ("grant_type", "authorization_code"),
            ],
        )
        .await;
        assert_eq!(expired.status(), 400);
        let body: Value = expired.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant");
    }

    #[tokio::test]
    async fn exchange_answer_form_encoded_and_modes() {
        let fake = fake_with_client().await;
        fake.set_token_answer_form_encoded(true);
        let code = grant_code(&fake).await;
        let params = [
            ("client_id", "cid"),
            ("client_secret", "secret"),
            ("code", code.as_str()),
            ("grant_type", "authorization_code"),
        ];
        let response = exchange_form(&fake, &params).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/x-www-form-urlencoded"
        );
        let body = form_decode(&response.text().await.unwrap());
        assert!(body["access_token"].starts_with("oauth."));
        assert_eq!(body["scope"], "*");
        assert_eq!(body["token_type"], "bearer");

        fake.set_exchange_mode(ExchangeMode::Down);
        assert_eq!(exchange_form(&fake, &params).await.status(), 503);
        fake.set_exchange_mode(ExchangeMode::Hang);
        let result = crate::providers::client_builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap()
            .post(format!("{}/oauth/access_token", fake.base_url()))
            .form(&params)
            .send()
            .await;
        assert!(result.unwrap_err().is_timeout());
    }

    #[tokio::test]
    async fn api_authentication_and_version_checks() {
        let fake = fake_with_client().await;
        let token = fake.add_token("shop");
        let response = api_get(&fake, "/carrier_accounts?results=1", Some(&token)).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert!(body["next"].is_null());
        assert_eq!(body["results"][0]["object_owner"], "shop");
        let response = api_get(&fake, "/parcel-templates?page=1&results=1", Some(&token)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(fake.api_count(&token), 2);

        let response = api_get(&fake, "/carrier_accounts", None).await;
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["detail"],
            "Authentication credentials were not provided."
        );
        let response = api_get(&fake, "/carrier_accounts", Some("oauth.unknown")).await;
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["detail"], "Token does not exist");

        let client = crate::providers::plain_client();
        let url = format!("{}/carrier_accounts", fake.base_url());
        let missing = client.get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(missing.status(), 400);
        let old = client
            .get(&url)
            .bearer_auth(&token)
            .header("Shippo-API-Version", "2017-08-01")
            .send()
            .await
            .unwrap();
        assert_eq!(old.status(), 400);
        let api_key_scheme = client
            .get(&url)
            .header("Authorization", format!("ShippoToken {token}"))
            .header("Shippo-API-Version", "2018-02-08")
            .send()
            .await
            .unwrap();
        assert_eq!(api_key_scheme.status(), 401);

        assert!(fake.token_is_valid(&token));
        fake.revoke(&token);
        assert!(!fake.token_is_valid(&token));
        let response = api_get(&fake, "/carrier_accounts", Some(&token)).await;
        assert_eq!(response.status(), 401);
    }

    #[tokio::test]
    async fn account_modes() {
        let fake = fake_with_client().await;
        let token = fake.add_token("shop");
        let other = fake.add_token("other");
        fake.set_mode("shop", ShippoMode::Suspended);
        assert!(!fake.token_is_valid(&token));
        assert_eq!(
            api_get(&fake, "/carrier_accounts", Some(&token))
                .await
                .status(),
            403
        );
        fake.set_suspended_shape("shop", SuspendedShape::Unauthorized401);
        assert_eq!(
            api_get(&fake, "/carrier_accounts", Some(&token))
                .await
                .status(),
            401
        );
        assert_eq!(
            api_get(&fake, "/carrier_accounts", Some(&other))
                .await
                .status(),
            200
        );

        fake.set_mode("shop", ShippoMode::Down);
        assert_eq!(
            api_get(&fake, "/carrier_accounts", Some(&token))
                .await
                .status(),
            503
        );

        fake.set_mode("shop", ShippoMode::RateLimited { reset_in_secs: 30 });
        let response = api_get(&fake, "/carrier_accounts", Some(&token)).await;
        assert_eq!(response.status(), 429);
        let reset: u64 = response.headers()["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(reset >= fake.now_unix() + 29);
        fake.set_rate_limit_reset_header(false);
        let response = api_get(&fake, "/carrier_accounts", Some(&token)).await;
        assert_eq!(response.status(), 429);
        assert!(response.headers().get("x-ratelimit-reset").is_none());

        fake.set_mode("shop", ShippoMode::Slow(Duration::from_millis(250)));
        let started = std::time::Instant::now();
        assert_eq!(
            api_get(&fake, "/parcel-templates", Some(&token))
                .await
                .status(),
            200
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(fake.api_count(&token), 6);
    }

    #[tokio::test]
    async fn waits_return_once_counts_are_reached() {
        let fake = fake_with_client().await;
        let token = fake.add_token("shop");
        let waiter = {
            let fake = fake.clone();
            let token = token.clone();
            tokio::spawn(async move {
                tokio::join!(
                    fake.wait_for_authorizes(1),
                    fake.wait_for_exchanges(1),
                    fake.wait_for_api_calls(&token, 2)
                )
            })
        };
        let code = grant_code(&fake).await;
        exchange_form(&fake, &[("code", code.as_str())]).await;
        api_get(&fake, "/carrier_accounts", Some(&token)).await;
        api_get(&fake, "/carrier_accounts", Some(&token)).await;
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        let not_yet =
            tokio::time::timeout(Duration::from_millis(100), fake.wait_for_exchanges(2)).await;
        assert!(not_yet.is_err());
    }
}
