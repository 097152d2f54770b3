//! A fake ShipHero public API (`/auth/refresh`, `/auth/token`, `/graphql`) on a loopback port.
//!
//! It models developer users with static refresh tokens and expiring JWT access tokens, and lets
//! tests put each user in a mode (suspended, revoked, down, throttled, slow, hanging) and pick
//! which of the UNCONFIRMED answer shapes in `UPSTREAM.md` that user's failures take.
//!
//! Here: the handle tests drive and the fake's state; `routes` answers the HTTP requests.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, json};
use tokio::sync::{Notify, watch};

use crate::sim::{Lifecycle, jwt, lock, random_hex, spawn_server, unix_now, wait_until};

mod routes;

use routes::{auth_failure, ok_json, root_field, throttled_body};

/// ShipHero's access-token lifetime: 28 days.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(2_419_200);

/// How a developer user's requests are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShipHeroMode {
    /// Everything works.
    #[default]
    Active,
    /// The silent failure: refresh still answers 200 with a token, but no token works on graphql.
    Suspended,
    /// Refresh is rejected (see [`RefreshRejectShape`]) and graphql fails like `Suspended`.
    Revoked,
    /// Every request attributable to the user gets an HTTP 503 with an HTML body.
    Down,
    /// Graphql answers HTTP 200 with a code-30 "not enough credits" error; refresh still works.
    Throttled {
        /// Seconds until enough credits are back, as told in the error.
        seconds: u64,
    },
    /// Graphql and refresh answer HTTP 429 with `Retry-After`.
    Throttled429 {
        /// The `Retry-After` value in seconds.
        seconds: u64,
    },
    /// Answers like `Active`, after this delay.
    Slow(Duration),
    /// Never answers (until the fake shuts down), so client timeouts can be tested.
    Hang,
}

/// How graphql rejects a token that does not work (UNCONFIRMED upstream, so all are offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthFailureShape {
    /// HTTP 401 `{"message": "Unauthorized"}`.
    Http401,
    /// HTTP 403 `{"message": "Forbidden", ...}`.
    Http403,
    /// HTTP 200 with an `errors` entry and the requested field null in `data`.
    #[default]
    GraphqlError,
    /// HTTP 200, no errors, but `data.account.data` is null.
    NullData,
}

/// How `/auth/refresh` rejects a revoked refresh token (UNCONFIRMED upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefreshRejectShape {
    /// HTTP 401 `{"error": "invalid_grant", "error_description": ...}`.
    #[default]
    InvalidGrant401,
    /// HTTP 403 `{"message": ...}`.
    Message403,
    /// HTTP 400 `{"error": "invalid_grant"}`.
    InvalidGrant400,
}

/// The credentials ShipHero shows once when a developer user is created.
#[derive(Clone, PartialEq, Eq)]
pub struct DeveloperUser {
    /// The user's email, unique across the fake; also the key for every per-user switch.
    pub email: String,
    /// The static refresh token; it never changes.
    pub refresh_token: String,
    /// The first access token, a JWT valid for the lifetime in force when it was made.
    pub access_token: String,
}

impl fmt::Debug for DeveloperUser {
    // Tokens must never reach a log, even from a test's debug print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeveloperUser")
            .field("email", &self.email)
            .field("refresh_token", &"[redacted]")
            .field("access_token", &"[redacted]")
            .finish()
    }
}

/// A running fake ShipHero. Clones share one server.
///
/// The server stops when [`FakeShipHero::shutdown`] is called or the last clone is dropped;
/// requests hanging or sleeping in it are then answered with a 503 at once.
#[derive(Clone)]
pub struct FakeShipHero {
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
    state: Mutex<ShipHeroState>,
    /// Woken after every counted request, for the `wait_for_*` helpers.
    events: Notify,
    /// Flips on shutdown, ending hangs and sleeps.
    shutdown: watch::Receiver<bool>,
}

/// One developer user.
struct User {
    /// Unique email.
    email: String,
    /// The static refresh token.
    refresh_token: String,
    /// The base64 global id of the user's ShipHero account, as graphql reports it.
    account_id: String,
    /// How the user's requests are answered.
    mode: ShipHeroMode,
    /// How graphql rejects this user's tokens.
    auth_failure_shape: AuthFailureShape,
    /// How refresh rejects this user's refresh token when revoked.
    refresh_reject_shape: RefreshRejectShape,
    /// Per-user token lifetime, overriding the fake-wide one.
    lifetime: Option<Duration>,
    /// Every access token issued, oldest first.
    issued: Vec<String>,
    /// `/auth/refresh` calls carrying this user's refresh token, whatever the answer.
    refresh_count: usize,
    /// `/graphql` calls carrying one of this user's access tokens, whatever the answer.
    graphql_count: usize,
    /// Refreshes of this user issue tokens of that user instead (a mix-up upstream).
    issue_as: Option<String>,
}

/// What the fake knows about an issued access token.
struct Issued {
    /// Whose token it is.
    email: String,
    /// Expiry, unix seconds on the fake's clock.
    exp: u64,
}

/// The fake's mutable state.
struct ShipHeroState {
    /// Users by email.
    users: HashMap<String, User>,
    /// Email by refresh token.
    by_refresh: HashMap<String, String>,
    /// Every access token ever issued.
    tokens: HashMap<String, Issued>,
    /// Lifetime of tokens issued from now on.
    lifetime: Duration,
    /// UNCONFIRMED upstream: whether a new token makes the older ones stop working.
    refresh_invalidates_previous: bool,
    /// Whether throttle details go under `extensions` rather than at the error's top level.
    throttle_in_extensions: bool,
    /// Whether rejections quote the credential they were sent (some APIs do), to prove the
    /// daemon scrubs upstream error bodies before logging or storing them.
    echo_credentials: bool,
    /// Extra delay before every answer, for benchmarks.
    latency: Duration,
    /// How far the fake's clock is ahead of real time.
    clock_offset: Duration,
    /// Every request received, attributable or not.
    total_requests: usize,
    /// Answers sent instead of the real ones (proxies, WAFs, non-evidence errors).
    canned: crate::sim::canned::Switchboard,
}

impl ShipHeroState {
    /// Unix seconds on the fake's clock.
    fn now(&self) -> u64 {
        unix_now(self.clock_offset)
    }

    /// Issues a fresh access token for `email`, returning it and its lifetime in seconds.
    fn issue(&mut self, email: &str) -> Option<(String, u64)> {
        let now = self.now();
        let default_lifetime = self.lifetime;
        let user = self.users.get_mut(email)?;
        let lifetime = user.lifetime.unwrap_or(default_lifetime).as_secs();
        let exp = now.saturating_add(lifetime);
        let token = jwt::mint(&json!({
            "iss": "https://login.shiphero.com/",
            "sub": format!("auth0|{}", random_hex(12)),
            "aud": "shiphero-public-api",
            "email": user.email,
            "iat": now,
            "exp": exp,
            "jti": random_hex(16),
            "scope": "openid profile offline_access",
        }));
        user.issued.push(token.clone());
        self.tokens.insert(
            token.clone(),
            Issued {
                email: email.to_owned(),
                exp,
            },
        );
        Some((token, lifetime))
    }

    /// Why `token` would not authenticate on graphql, or `None` if it would.
    ///
    /// Transient modes (down, throttled, slow, hang) do not make a token invalid.
    fn token_problem(&self, token: &str) -> Option<&'static str> {
        let Some(issued) = self.tokens.get(token) else {
            return Some("Not authorized: invalid access token");
        };
        let Some(user) = self.users.get(&issued.email) else {
            return Some("Not authorized: invalid access token");
        };
        if self.now() >= issued.exp {
            return Some("Not authorized: access token has expired");
        }
        if self.refresh_invalidates_previous
            && user.issued.last().map(String::as_str) != Some(token)
        {
            return Some("Not authorized: access token has been superseded");
        }
        match user.mode {
            ShipHeroMode::Suspended | ShipHeroMode::Revoked => {
                Some("Not authorized: this account is suspended or inactive")
            }
            _ => None,
        }
    }

    /// The full graphql answer for a request that got past the transient modes.
    fn graphql_answer(&self, token: &str, query: &str) -> Response {
        let request_id = random_hex(12);
        let field = root_field(query);
        let user = self
            .tokens
            .get(token)
            .and_then(|issued| self.users.get(&issued.email));
        if let Some(reason) = self.token_problem(token) {
            let shape = user.map_or(AuthFailureShape::GraphqlError, |u| u.auth_failure_shape);
            let reason = if self.echo_credentials {
                format!("{reason} (access token {token})")
            } else {
                reason.to_string()
            };
            return auth_failure(shape, field, &reason, &request_id);
        }
        let Some(user) = user else {
            // token_problem already rejects unknown tokens; this keeps the compiler and reader sure.
            return auth_failure(
                AuthFailureShape::GraphqlError,
                field,
                "unknown",
                &request_id,
            );
        };
        if query.trim().is_empty() {
            return ok_json(json!({
                "errors": [{"message": "Syntax Error: Unexpected <EOF>", "request_id": request_id}],
                "data": null,
            }));
        }
        if let ShipHeroMode::Throttled { seconds } = user.mode {
            return ok_json(throttled_body(
                seconds,
                field,
                &request_id,
                self.throttle_in_extensions,
            ));
        }
        let mut data = Map::new();
        if query.contains("account") {
            data.insert(
                "account".into(),
                json!({
                    "request_id": request_id,
                    "complexity": 1,
                    "data": {"id": user.account_id, "email": user.email, "status": "active"},
                }),
            );
        }
        if query.contains("user_quota") {
            data.insert(
                "user_quota".into(),
                json!({"credits_remaining": 4004, "max_available": 4004, "increment_rate": 60}),
            );
        }
        ok_json(json!({ "data": data }))
    }
}

impl FakeShipHero {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> io::Result<FakeShipHero> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts the fake on `addr`, which must be a loopback address (port 0 picks a free one).
    pub async fn start_on(addr: SocketAddr) -> io::Result<FakeShipHero> {
        let (lifecycle, shutdown) = Lifecycle::new();
        let shared = Arc::new(Shared {
            state: Mutex::new(ShipHeroState {
                users: HashMap::new(),
                by_refresh: HashMap::new(),
                tokens: HashMap::new(),
                lifetime: DEFAULT_TOKEN_LIFETIME,
                refresh_invalidates_previous: false,
                throttle_in_extensions: false,
                echo_credentials: false,
                latency: Duration::ZERO,
                clock_offset: Duration::ZERO,
                total_requests: 0,
                canned: Default::default(),
            }),
            events: Notify::new(),
            shutdown: shutdown.clone(),
        });
        let router = routes::router(shared.clone());
        let addr = spawn_server(addr, router, shutdown).await?;
        Ok(FakeShipHero {
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

    /// Creates an active developer user with a random static refresh token and a first access token.
    ///
    /// Adding an email that exists keeps its refresh token and issues it a fresh access token.
    pub fn add_user(&self, email: &str) -> DeveloperUser {
        let mut st = lock(&self.shared.state);
        if !st.users.contains_key(email) {
            let refresh_token = random_hex(24);
            let account_number = rand::random::<u32>() % 900_000 + 100_000;
            st.users.insert(
                email.to_owned(),
                User {
                    email: email.to_owned(),
                    refresh_token: refresh_token.clone(),
                    account_id: STANDARD.encode(format!("Account:{account_number}")),
                    mode: ShipHeroMode::Active,
                    auth_failure_shape: AuthFailureShape::default(),
                    refresh_reject_shape: RefreshRejectShape::default(),
                    lifetime: None,
                    issued: Vec::new(),
                    refresh_count: 0,
                    graphql_count: 0,
                    issue_as: None,
                },
            );
            st.by_refresh.insert(refresh_token, email.to_owned());
        }
        let access_token = st.issue(email).map(|(t, _)| t).unwrap_or_default();
        let refresh_token = st
            .users
            .get(email)
            .map(|u| u.refresh_token.clone())
            .unwrap_or_default();
        DeveloperUser {
            email: email.to_owned(),
            refresh_token,
            access_token,
        }
    }

    /// Sets the lifetime (`expires_in` and JWT `exp`) of tokens issued from now on; default 28 days.
    pub fn set_token_lifetime(&self, d: Duration) {
        lock(&self.shared.state).lifetime = d;
    }

    /// Overrides the token lifetime for one user's future tokens. Unknown emails are ignored.
    pub fn set_user_token_lifetime(&self, email: &str, d: Duration) {
        self.with_user(email, |u| u.lifetime = Some(d));
    }

    /// Answers `route` with `answer` instead of the real answer, for one user's requests
    /// (`Some(email)`) or everyone's (`None`); `None` as the answer switches it off.
    pub fn set_canned(
        &self,
        email: Option<&str>,
        route: crate::sim::Route,
        answer: Option<crate::sim::Canned>,
    ) {
        lock(&self.shared.state).canned.set(email, route, answer);
    }

    /// Makes refreshes of `email` issue tokens that act for `other`'s account (`None`: their
    /// own again), as a mix-up at the provider would.
    pub fn set_issue_as(&self, email: &str, other: Option<&str>) {
        let other = other.map(str::to_owned);
        self.with_user(email, |u| u.issue_as = other);
    }

    /// Puts a user in a mode. Unknown emails are ignored.
    pub fn set_mode(&self, email: &str, mode: ShipHeroMode) {
        self.with_user(email, |u| u.mode = mode);
    }

    /// The user's current mode, `None` for an unknown email.
    pub fn mode(&self, email: &str) -> Option<ShipHeroMode> {
        lock(&self.shared.state).users.get(email).map(|u| u.mode)
    }

    /// Chooses how graphql rejects this user's non-working tokens (default `GraphqlError`).
    pub fn set_auth_failure_shape(&self, email: &str, shape: AuthFailureShape) {
        self.with_user(email, |u| u.auth_failure_shape = shape);
    }

    /// Chooses how refresh rejects this user's refresh token in mode `Revoked`.
    pub fn set_refresh_reject_shape(&self, email: &str, shape: RefreshRejectShape) {
        self.with_user(email, |u| u.refresh_reject_shape = shape);
    }

    /// When true, only each user's newest access token works on graphql (default false).
    pub fn set_refresh_invalidates_previous(&self, yes: bool) {
        lock(&self.shared.state).refresh_invalidates_previous = yes;
    }

    /// When true, throttle details go under the error's `extensions`; else at its top level.
    pub fn set_throttle_in_extensions(&self, yes: bool) {
        lock(&self.shared.state).throttle_in_extensions = yes;
    }

    /// Makes rejections quote the refresh or access token they were sent (default off).
    pub fn set_echo_credentials(&self, yes: bool) {
        lock(&self.shared.state).echo_credentials = yes;
    }

    /// A fixed delay before every answer, on every endpoint (default none).
    pub fn set_latency(&self, d: Duration) {
        lock(&self.shared.state).latency = d;
    }

    /// Moves the fake's clock forward; expiry checks and new `iat`/`exp` use it.
    pub fn advance_clock(&self, d: Duration) {
        let mut st = lock(&self.shared.state);
        st.clock_offset = st.clock_offset.saturating_add(d);
    }

    /// Unix seconds on the fake's clock.
    pub fn now_unix(&self) -> u64 {
        lock(&self.shared.state).now()
    }

    /// The user's static refresh token.
    pub fn refresh_token(&self, email: &str) -> Option<String> {
        lock(&self.shared.state)
            .users
            .get(email)
            .map(|u| u.refresh_token.clone())
    }

    /// `/auth/refresh` calls carrying the user's refresh token, whatever they were answered.
    pub fn refresh_count(&self, email: &str) -> usize {
        lock(&self.shared.state)
            .users
            .get(email)
            .map_or(0, |u| u.refresh_count)
    }

    /// `/graphql` calls carrying one of the user's access tokens, whatever they were answered.
    pub fn graphql_count(&self, email: &str) -> usize {
        lock(&self.shared.state)
            .users
            .get(email)
            .map_or(0, |u| u.graphql_count)
    }

    /// The user's newest access token.
    pub fn latest_token(&self, email: &str) -> Option<String> {
        lock(&self.shared.state)
            .users
            .get(email)
            .and_then(|u| u.issued.last().cloned())
    }

    /// Every access token issued to the user, oldest first, the initial one included.
    pub fn issued_tokens(&self, email: &str) -> Vec<String> {
        lock(&self.shared.state)
            .users
            .get(email)
            .map(|u| u.issued.clone())
            .unwrap_or_default()
    }

    /// Whether `token` is known, unexpired, not superseded and its user not suspended or revoked.
    ///
    /// Transient modes (down, throttled, slow, hang) do not count against it.
    pub fn token_is_valid(&self, token: &str) -> bool {
        lock(&self.shared.state).token_problem(token).is_none()
    }

    /// Every request the fake received.
    pub fn total_requests(&self) -> usize {
        lock(&self.shared.state).total_requests
    }

    /// Returns once the user's refresh count reaches `n`; wrap it in `tokio::time::timeout`.
    pub async fn wait_for_refreshes(&self, email: &str, n: usize) {
        wait_until(&self.shared.events, || self.refresh_count(email) >= n).await;
    }

    /// Returns once the user's graphql count reaches `n`; wrap it in `tokio::time::timeout`.
    pub async fn wait_for_graphql(&self, email: &str, n: usize) {
        wait_until(&self.shared.events, || self.graphql_count(email) >= n).await;
    }

    /// Returns once the fake has received `n` requests in all.
    pub async fn wait_for_requests(&self, n: usize) {
        wait_until(&self.shared.events, || self.total_requests() >= n).await;
    }

    /// Applies `f` to a known user; unknown emails are ignored (logged at debug).
    fn with_user(&self, email: &str, f: impl FnOnce(&mut User)) {
        match lock(&self.shared.state).users.get_mut(email) {
            Some(user) => f(user),
            None => tracing::debug!(email, "fake shiphero: switch for an unknown user ignored"),
        }
    }
}

#[cfg(test)]
// Panicking on a failed expectation is what a test is for.
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::Value;

    use super::*;

    const PROBE: &str = "query { account { request_id complexity data { id email status } } }";

    async fn refresh_call(fake: &FakeShipHero, refresh_token: &str) -> reqwest::Response {
        crate::providers::plain_client()
            .post(format!("{}/auth/refresh", fake.base_url()))
            .json(&json!({ "refresh_token": refresh_token }))
            .send()
            .await
            .unwrap()
    }

    async fn graphql_call(fake: &FakeShipHero, token: &str, query: &str) -> (u16, Value) {
        let response = crate::providers::plain_client()
            .post(format!("{}/graphql", fake.base_url()))
            .bearer_auth(token)
            .json(&json!({ "query": query }))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// The daemon's own rule: a token works only with no errors and non-null account data.
    fn probe_ok(status: u16, body: &Value) -> bool {
        status == 200 && body.get("errors").is_none() && !body["data"]["account"]["data"].is_null()
    }

    #[tokio::test]
    async fn refresh_issues_new_jwt_without_refresh_token() {
        let fake = FakeShipHero::start().await.unwrap();
        let user = fake.add_user("dev@example.com");
        let response = refresh_call(&fake, &user.refresh_token).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["expires_in"], 2_419_200);
        assert_eq!(body["token_type"], "Bearer");
        assert!(body.get("refresh_token").is_none());
        let token = body["access_token"].as_str().unwrap();
        assert_ne!(token, user.access_token);
        let claims = jwt::claims(token).unwrap();
        let exp = claims["exp"].as_u64().unwrap();
        assert_eq!(exp - claims["iat"].as_u64().unwrap(), 2_419_200);
        assert_eq!(claims["email"], "dev@example.com");
        assert_eq!(fake.refresh_count("dev@example.com"), 1);
        assert_eq!(fake.latest_token("dev@example.com").as_deref(), Some(token));
        assert_eq!(fake.issued_tokens("dev@example.com").len(), 2);
        // Older tokens keep working by default.
        assert!(fake.token_is_valid(&user.access_token));
        assert!(fake.token_is_valid(token));
        assert!(!format!("{user:?}").contains(&user.refresh_token));
    }

    #[tokio::test]
    async fn refresh_rejects_bad_requests_and_unknown_tokens() {
        let fake = FakeShipHero::start().await.unwrap();
        let response = crate::providers::plain_client()
            .post(format!("{}/auth/refresh", fake.base_url()))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let response = refresh_call(&fake, "nope").await;
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(fake.total_requests(), 2);
    }

    #[tokio::test]
    async fn graphql_probe_and_quota_work_for_active_user() {
        let fake = FakeShipHero::start().await.unwrap();
        let user = fake.add_user("a@example.com");
        let (status, body) = graphql_call(&fake, &user.access_token, PROBE).await;
        assert!(probe_ok(status, &body), "{body}");
        assert_eq!(body["data"]["account"]["data"]["email"], "a@example.com");
        assert!(body["data"]["account"]["request_id"].as_str().is_some());
        let (_, body) = graphql_call(
            &fake,
            &user.access_token,
            "query { user_quota { credits_remaining max_available increment_rate } }",
        )
        .await;
        assert_eq!(body["data"]["user_quota"]["credits_remaining"], 4004);
        let (_, body) = graphql_call(&fake, &user.access_token, "   ").await;
        assert!(body["errors"].is_array());
        assert_eq!(fake.graphql_count("a@example.com"), 3);
    }

    #[tokio::test]
    async fn graphql_without_or_with_garbage_authorization_is_401() {
        let fake = FakeShipHero::start().await.unwrap();
        let client = crate::providers::plain_client();
        let url = format!("{}/graphql", fake.base_url());
        let response = client
            .post(&url)
            .json(&json!({"query": PROBE}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        let response = client
            .post(&url)
            .header("authorization", "Basic Zm9vOmJhcg==")
            .json(&json!({"query": PROBE}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        // A well-formed but unknown bearer token is a graphql error by default.
        let (status, body) = graphql_call(&fake, "not-a-token", PROBE).await;
        assert_eq!(status, 200);
        assert!(body["errors"][0]["message"].is_string());
        assert!(body["data"]["account"].is_null());
    }

    #[tokio::test]
    async fn suspended_refresh_succeeds_but_graphql_fails_in_every_shape() {
        let fake = FakeShipHero::start().await.unwrap();
        let email = "s@example.com";
        let user = fake.add_user(email);
        fake.set_mode(email, ShipHeroMode::Suspended);
        let response = refresh_call(&fake, &user.refresh_token).await;
        assert_eq!(response.status(), 200, "the silent failure");
        let token = fake.latest_token(email).unwrap();
        assert!(!fake.token_is_valid(&token));
        let (status, body) = graphql_call(&fake, &token, PROBE).await;
        assert_eq!(status, 200);
        assert_eq!(body["errors"][0]["operation"], "account");
        assert!(body["errors"][0]["request_id"].is_string());
        assert!(!probe_ok(status, &body));
        fake.set_auth_failure_shape(email, AuthFailureShape::Http401);
        assert_eq!(graphql_call(&fake, &token, PROBE).await.0, 401);
        fake.set_auth_failure_shape(email, AuthFailureShape::Http403);
        assert_eq!(graphql_call(&fake, &token, PROBE).await.0, 403);
        fake.set_auth_failure_shape(email, AuthFailureShape::NullData);
        let (status, body) = graphql_call(&fake, &token, PROBE).await;
        assert_eq!(status, 200);
        assert!(body.get("errors").is_none());
        assert!(body["data"]["account"]["data"].is_null());
        assert!(!probe_ok(status, &body));
        fake.set_mode(email, ShipHeroMode::Active);
        let (status, body) = graphql_call(&fake, &token, PROBE).await;
        assert!(probe_ok(status, &body));
    }

    #[tokio::test]
    async fn revoked_refresh_rejected_in_every_shape() {
        let fake = FakeShipHero::start().await.unwrap();
        let email = "r@example.com";
        let user = fake.add_user(email);
        fake.set_mode(email, ShipHeroMode::Revoked);
        let response = refresh_call(&fake, &user.refresh_token).await;
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant");
        fake.set_refresh_reject_shape(email, RefreshRejectShape::Message403);
        let response = refresh_call(&fake, &user.refresh_token).await;
        assert_eq!(response.status(), 403);
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].is_string());
        fake.set_refresh_reject_shape(email, RefreshRejectShape::InvalidGrant400);
        assert_eq!(refresh_call(&fake, &user.refresh_token).await.status(), 400);
        assert_eq!(fake.refresh_count(email), 3);
        assert_eq!(
            fake.issued_tokens(email).len(),
            1,
            "no token issued when revoked"
        );
        let (status, body) = graphql_call(&fake, &user.access_token, PROBE).await;
        assert!(!probe_ok(status, &body));
    }

    #[tokio::test]
    async fn expiry_follows_the_fake_clock_and_lifetimes() {
        let fake = FakeShipHero::start().await.unwrap();
        let email = "e@example.com";
        fake.set_token_lifetime(Duration::from_secs(100));
        let user = fake.add_user(email);
        assert!(fake.token_is_valid(&user.access_token));
        fake.advance_clock(Duration::from_secs(101));
        assert!(!fake.token_is_valid(&user.access_token));
        fake.set_auth_failure_shape(email, AuthFailureShape::Http401);
        assert_eq!(graphql_call(&fake, &user.access_token, PROBE).await.0, 401);
        fake.set_user_token_lifetime(email, Duration::from_secs(7));
        let body: Value = refresh_call(&fake, &user.refresh_token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["expires_in"], 7);
        let token = body["access_token"].as_str().unwrap();
        let claims = jwt::claims(token).unwrap();
        assert!(claims["iat"].as_u64().unwrap() >= fake.now_unix() - 1);
        assert!(fake.token_is_valid(token));
    }

    #[tokio::test]
    async fn refresh_can_invalidate_previous_tokens() {
        let fake = FakeShipHero::start().await.unwrap();
        let email = "i@example.com";
        let user = fake.add_user(email);
        fake.set_refresh_invalidates_previous(true);
        refresh_call(&fake, &user.refresh_token).await;
        assert!(!fake.token_is_valid(&user.access_token));
        let (status, body) = graphql_call(&fake, &user.access_token, PROBE).await;
        assert!(!probe_ok(status, &body));
        let latest = fake.latest_token(email).unwrap();
        let (status, body) = graphql_call(&fake, &latest, PROBE).await;
        assert!(probe_ok(status, &body));
    }

    #[tokio::test]
    async fn throttled_error_in_both_placements_and_429() {
        let fake = FakeShipHero::start().await.unwrap();
        let email = "t@example.com";
        let user = fake.add_user(email);
        fake.set_mode(email, ShipHeroMode::Throttled { seconds: 18 });
        let (status, body) = graphql_call(&fake, &user.access_token, PROBE).await;
        assert_eq!(status, 200);
        let error = &body["errors"][0];
        assert_eq!(error["code"], 30);
        assert_eq!(error["time_remaining"], "18 seconds");
        assert!(error["message"].as_str().unwrap().contains("In 18 seconds"));
        assert!(body["data"].is_null());
        fake.set_throttle_in_extensions(true);
        let (_, body) = graphql_call(&fake, &user.access_token, PROBE).await;
        let error = &body["errors"][0];
        assert!(error.get("time_remaining").is_none());
        assert_eq!(error["extensions"]["time_remaining"], "18 seconds");
        assert_eq!(error["extensions"]["required_credits"], 101);
        // Refresh still works while credit-throttled.
        assert_eq!(refresh_call(&fake, &user.refresh_token).await.status(), 200);

        fake.set_mode(email, ShipHeroMode::Throttled429 { seconds: 7 });
        let response = refresh_call(&fake, &user.refresh_token).await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "7");
        assert_eq!(graphql_call(&fake, &user.access_token, PROBE).await.0, 429);
        assert!(fake.token_is_valid(&user.access_token));
    }

    #[tokio::test]
    async fn down_answers_503_html_only_for_that_user() {
        let fake = FakeShipHero::start().await.unwrap();
        let down_user = fake.add_user("d@example.com");
        let other = fake.add_user("o@example.com");
        fake.set_mode("d@example.com", ShipHeroMode::Down);
        let response = refresh_call(&fake, &down_user.refresh_token).await;
        assert_eq!(response.status(), 503);
        assert!(response.text().await.unwrap().contains("<html>"));
        assert_eq!(
            graphql_call(&fake, &down_user.access_token, PROBE).await.0,
            503
        );
        let (status, body) = graphql_call(&fake, &other.access_token, PROBE).await;
        assert!(probe_ok(status, &body));
    }

    #[tokio::test]
    async fn slow_answers_late_and_hang_never_answers() {
        let fake = FakeShipHero::start().await.unwrap();
        let email = "h@example.com";
        let user = fake.add_user(email);
        fake.set_mode(email, ShipHeroMode::Slow(Duration::from_millis(300)));
        let started = std::time::Instant::now();
        let (status, body) = graphql_call(&fake, &user.access_token, PROBE).await;
        assert!(probe_ok(status, &body));
        assert!(started.elapsed() >= Duration::from_millis(300));

        fake.set_mode(email, ShipHeroMode::Hang);
        let client = crate::providers::client_builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let result = client
            .post(format!("{}/auth/refresh", fake.base_url()))
            .json(&json!({"refresh_token": user.refresh_token}))
            .send()
            .await;
        assert!(result.unwrap_err().is_timeout());
        // The hanging request was still counted, so tests can wait on it.
        assert_eq!(fake.refresh_count(email), 1);
    }

    #[tokio::test]
    async fn latency_delays_every_endpoint() {
        let fake = FakeShipHero::start().await.unwrap();
        fake.set_latency(Duration::from_millis(200));
        let started = std::time::Instant::now();
        assert_eq!(refresh_call(&fake, "unknown").await.status(), 401);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn password_login_is_minimal() {
        let fake = FakeShipHero::start().await.unwrap();
        let user = fake.add_user("p@example.com");
        let client = crate::providers::plain_client();
        let url = format!("{}/auth/token", fake.base_url());
        let response = client
            .post(&url)
            .json(&json!({"username": "p@example.com", "password": "pw"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["refresh_token"], user.refresh_token.as_str());
        assert!(body["access_token"].is_string());
        let response = client
            .post(&url)
            .json(&json!({"username": "p@example.com", "password": ""}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }

    #[tokio::test]
    async fn waits_return_once_counts_are_reached() {
        let fake = FakeShipHero::start().await.unwrap();
        let user = fake.add_user("w@example.com");
        let waiter = {
            let fake = fake.clone();
            tokio::spawn(async move {
                tokio::join!(
                    fake.wait_for_refreshes("w@example.com", 2),
                    fake.wait_for_graphql("w@example.com", 1)
                )
            })
        };
        refresh_call(&fake, &user.refresh_token).await;
        refresh_call(&fake, &user.refresh_token).await;
        graphql_call(&fake, &user.access_token, PROBE).await;
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        let not_yet = tokio::time::timeout(
            Duration::from_millis(100),
            fake.wait_for_refreshes("w@example.com", 3),
        )
        .await;
        assert!(not_yet.is_err());
    }

    #[tokio::test]
    async fn shutdown_stops_server_and_ends_hangs() {
        let fake = FakeShipHero::start().await.unwrap();
        let user = fake.add_user("x@example.com");
        fake.set_mode("x@example.com", ShipHeroMode::Hang);
        let hanging = tokio::spawn({
            let url = format!("{}/auth/refresh", fake.base_url());
            async move {
                crate::providers::plain_client()
                    .post(url)
                    .json(&json!({"refresh_token": user.refresh_token}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        });
        fake.wait_for_refreshes("x@example.com", 1).await;
        let url = fake.base_url();
        drop(fake);
        let status = tokio::time::timeout(Duration::from_secs(5), hanging)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.unwrap(), 503);
        // Give the server task a moment to drop its listener.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(crate::providers::http_get(url).await.is_err());
    }

    #[tokio::test]
    async fn refuses_non_loopback_addresses() {
        let err = FakeShipHero::start_on("0.0.0.0:0".parse().unwrap())
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
