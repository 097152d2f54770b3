//! Fuzzes the socket's request handling: arbitrary methods, paths, queries, headers, bodies
//! and peers go through the socket's real handler (in process, with a real registry).
//! Whatever comes in, nothing panics, nothing answers 500, and every answer but a bare token
//! is JSON, with `error` and `message` when it is a refusal. Token requests, which the handler
//! matches by hand before its router, must get exactly the router's answer too.
//!
//! The corpus: `CORPUS` below (inputs that once broke or nearly broke a handler) runs first;
//! failures proptest finds are kept in `proptest-regressions/fuzz_router.txt` and replayed
//! first on every run. Commit that file when it changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::Value;
use tower::ServiceExt;

use shiptoken::api::{self, ApiState, AuditLog, Caller, Peer};
use shiptoken::clock::Clock;
use shiptoken::config::{ClientRule, Config, RawConfig};
use shiptoken::metrics::Metrics;
use shiptoken::names::AccountKey;
use shiptoken::providers::{self, shiphero::ShipHero, shippo::Shippo};
use shiptoken::registry::{NewAccount, Registry};
use shiptoken::rotation::Engine;
use shiptoken::secret::Secret;

/// Nothing listens here: upstream calls fail fast with "connection refused".
const NOWHERE: &str = "http://127.0.0.1:9";

struct World {
    runtime: tokio::runtime::Runtime,
    /// What the socket runs.
    handler: api::Handler,
    /// The router alone, over the same state: the reference for the token route.
    router: axum::Router,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state = runtime.block_on(state(dir.path()));
        World {
            runtime,
            handler: api::Handler::new(state.clone()),
            router: api::router(state),
            _dir: dir,
        }
    })
}

async fn state(dir: &std::path::Path) -> Arc<ApiState> {
    let mut raw = RawConfig {
        state_dir: dir.join("state").display().to_string(),
        ..RawConfig::default()
    };
    raw.socket.path = dir.join("shiptoken.sock").display().to_string();
    raw.socket.clients = vec![ClientRule {
        name: "order-sync".into(),
        uids: vec![1001],
        gids: vec![],
        accounts: vec!["shippo/one".into()],
    }];
    raw.shiphero.api_base = NOWHERE.into();
    raw.shippo.api_base = NOWHERE.into();
    raw.shippo.oauth_base = NOWHERE.into();
    let figment = figment::Figment::from(figment::providers::Serialized::defaults(raw));
    let config = Config::from_figment(&figment, None).unwrap();
    let registry = Registry::open(&config.state_dir).await.unwrap();
    let clock = Clock::system();
    let key = AccountKey::parse("shippo/one").unwrap();
    let added = registry
        .add(
            NewAccount::shippo(
                key.clone(),
                Secret::new("shippo_oauth_fuzz_token_0123456789"),
                clock.now(),
            ),
            clock.now(),
        )
        .await
        .unwrap();
    // Stored as proven, which is what a passing first probe leaves.
    let mut proven = (*added).clone();
    proven.current = proven.candidate.take().map(|c| *c);
    proven.status = shiptoken::names::Status::Active;
    registry
        .save(proven, Vec::new(), clock.now())
        .await
        .unwrap();
    let metrics = Metrics::new();
    let http = providers::http_client(Duration::from_millis(500));
    let (_tx, config_rx) = tokio::sync::watch::channel(Arc::new(config.clone()));
    // The sender may go: the receiver keeps the last value.
    let engine = Arc::new(Engine::new(
        registry.clone(),
        providers::Providers::from_parts(
            ShipHero::new(http.clone(), NOWHERE, metrics.clone()),
            Shippo::new(
                http.clone(),
                NOWHERE,
                NOWHERE,
                "2018-02-08",
                metrics.clone(),
            ),
            providers::oauth2::OAuth2::new(http, Default::default(), metrics.clone()),
        ),
        clock.clone(),
        metrics.clone(),
        config_rx.clone(),
    ));
    Arc::new(ApiState {
        registry,
        engine,
        config: config_rx,
        clock,
        metrics,
        daemon_uid: 4040,
        movable_clock: false,
        last_sweep: Arc::new(shiptoken::scheduler::LastSweep::new(
            shiptoken::clock::Timestamp::from_millis(0),
        )),
        oauth: None,
        audit: AuditLog::new(),
        answers: Default::default(),
        shutdown: tokio_util::sync::CancellationToken::new(),
        proxy: Default::default(),
    })
}

/// One request as the fuzzer sees it.
#[derive(Debug, Clone)]
struct Input {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    uid: u32,
}

/// The request `input` describes, from a peer with its uid; `None` when it is not a request
/// hyper would ever hand us (bad method, URI or header syntax).
fn build_request(input: &Input) -> Option<Request<Body>> {
    let mut builder = Request::builder()
        .method(input.method.as_str())
        .uri(input.uri.as_str());
    for (k, v) in &input.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let mut request = builder.body(Body::from(input.body.clone())).ok()?;
    request.extensions_mut().insert(Caller {
        peer: Peer {
            uid: input.uid,
            gid: input.uid,
            pid: Some(1),
        },
        exe: None,
    });
    Some(request)
}

/// What a client sees of an answer: status, headers and body.
#[derive(Debug, PartialEq)]
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
}

impl Answer {
    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn collect(response: axum::response::Response) -> Answer {
    let (mut parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    // The router states Content-Length (for HEAD, the GET body's); without it hyper writes
    // the same from the body's exact size, so on the wire the two are alike.
    parts.headers.remove("content-length");
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Checks the invariants for one request; `Err` describes the violation.
fn check(input: &Input) -> Result<(), String> {
    let w = world();
    let Some(request) = build_request(input) else {
        return Ok(());
    };
    let answer = w
        .runtime
        .block_on(async { collect(w.handler.handle(request).await).await });
    // Long polls are left out here only because they would double the wait.
    if input.uri.starts_with("/v1/tokens/") && !input.uri.contains("wait=") {
        let routed = w.runtime.block_on(async {
            let request = build_request(input).unwrap();
            collect(w.router.clone().oneshot(request).await.unwrap()).await
        });
        if routed != answer {
            return Err(format!(
                "the handler answered {answer:?}, the router {routed:?}, for {input:?}"
            ));
        }
    }
    let (status, content_type, body) = (answer.status, answer.content_type(), &answer.body);
    if status == StatusCode::INTERNAL_SERVER_ERROR
        || (status.is_server_error()
            && status != StatusCode::BAD_GATEWAY
            && status != StatusCode::SERVICE_UNAVAILABLE)
    {
        return Err(format!("{status} for {input:?}"));
    }
    if content_type.starts_with("text/plain") && status == StatusCode::OK {
        return Ok(()); // the bare token, asked for with Accept: text/plain
    }
    if input.method == "HEAD" && body.is_empty() {
        return Ok(());
    }
    let json: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "{status} not JSON ({e}): {:?} for {input:?}",
            String::from_utf8_lossy(body)
        )
    })?;
    if status.as_u16() >= 400 && !(json["error"].is_string() && json["message"].is_string()) {
        return Err(format!(
            "{status} error without error/message: {json} for {input:?}"
        ));
    }
    Ok(())
}

/// Inputs worth keeping: each once made, or could make, a handler answer plain text or panic.
fn corpus() -> Vec<Input> {
    let get = |uri: &str| Input {
        method: "GET".into(),
        uri: uri.into(),
        headers: vec![],
        body: vec![],
        uid: 0,
    };
    let post = |uri: &str, body: &str| Input {
        method: "POST".into(),
        uri: uri.into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.as_bytes().to_vec(),
        uid: 0,
    };
    vec![
        get("/v1/tokens/shiphero/%FF"),
        get("/v1/tokens/shippo/one"),
        get("/v1/tokens/shippo/o%6ee"),
        get("/v1/tokens/shippo/one/"),
        get("/v1/tokens/shippo/nobody"),
        get("/v1/tokens/bogus/one"),
        get("/v1/tokens/shippo/..?x=1"),
        Input {
            uid: 5000,
            ..get("/v1/tokens/shippo/one")
        },
        get("/v1/tokens/shippo/one?wait=99999999999999999999"),
        get("/v1/tokens/shippo/one?wait=0&known="),
        get("/v1/tokens/shippo/one?wait=1&wait=2"),
        get("/v1/audit?limit=0"),
        get("/v1/audit?account=shippo/%2e%2e"),
        get("/v1/audit?since=99999999999999999999d"),
        get("/v1/accounts/shippo/one/events?x=1"),
        get("/v1/accounts/%00/x"),
        post(
            "/v1/accounts",
            "{\"provider\":\"shiphero\",\"account\":\"a\",\"email\":\"@\",\"refresh_token\":\"r\"}",
        ),
        post(
            "/v1/accounts",
            "{\"provider\":\"shippo\",\"account\":\"b\",\"access_token\":\" \"}",
        ),
        post(
            "/v1/accounts",
            "{\"provider\":\"shiphero\",\"account\":\"c\",\"email\":\"a@b\",\"refresh_token\":\"r\",\"access_token\":\"x.y.z\"}",
        ),
        post("/v1/shippo/connect", "{\"account\":\"../x\"}"),
        post("/v1/debug/clock", "{\"advance\":\"1000000000y\"}"),
        Input {
            uid: 1001,
            ..get("/v1/audit")
        },
        Input {
            headers: vec![("accept".into(), "text/plain".into())],
            ..get("/v1/tokens/shippo/one")
        },
    ]
}

#[test]
fn the_corpus_passes() {
    for input in corpus() {
        if let Err(e) = check(&input) {
            panic!("{e}");
        }
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("shiphero".to_string()),
        Just("shippo".to_string()),
        Just("one".to_string()),
        Just("..".to_string()),
        Just("%2e%2e%2f".to_string()),
        Just("%FF".to_string()),
        "[a-z0-9._-]{0,70}",
        "[ -~]{0,12}",
        "(%[0-9A-Fa-f]{2}){1,6}",
    ]
}

fn uri() -> impl Strategy<Value = String> {
    let templates = prop_oneof![
        Just("/v1/tokens/{}/{}"),
        Just("/v1/accounts/{}/{}"),
        Just("/v1/accounts/{}/{}/rotate"),
        Just("/v1/accounts/{}/{}/verify"),
        Just("/v1/accounts/{}/{}/events"),
        Just("/v1/accounts"),
        Just("/v1/audit"),
        Just("/v1/health"),
        Just("/v1/shippo/connect"),
        Just("/v1/debug/clock"),
        Just("/{}/{}"),
    ];
    let query = prop_oneof![
        Just(String::new()),
        "\\?(wait|known|account|since|limit|x)=[ -~]{0,16}(&(wait|known|limit)=[0-9a-z]{0,8})?",
    ];
    (templates, segment(), segment(), query)
        .prop_map(|(t, a, b, q)| format!("{}{q}", t.replacen("{}", &a, 1).replacen("{}", &b, 1)))
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("provider"),
        Just("account"),
        Just("email"),
        Just("refresh_token"),
        Just("access_token"),
        Just("first_name"),
        Just("advance"),
        Just("bogus"),
    ];
    let value = prop_oneof![
        "\"[ -~]{0,20}\"",
        Just("\"shippo\"".to_string()),
        Just("\"shiphero\"".to_string()),
        Just("null".to_string()),
        Just("12".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec((field, value), 0..5).prop_map(|fields| {
            let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", inner.join(",")).into_bytes()
        }),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    let method = prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("DELETE".to_string()),
        Just("PUT".to_string()),
        Just("HEAD".to_string()),
        Just("OPTIONS".to_string()),
        "[A-Z]{1,10}",
    ];
    let header = prop_oneof![
        Just(("accept".to_string(), "text/plain".to_string())),
        Just(("content-type".to_string(), "application/json".to_string())),
        Just(("content-length".to_string(), "99999999".to_string())),
        ("[a-zA-Z-]{1,16}", "[ -~]{0,40}"),
    ];
    (
        method,
        uri(),
        proptest::collection::vec(header, 0..4),
        body(),
        prop_oneof![Just(0u32), Just(1001u32), Just(4040u32), Just(5000u32)],
    )
        .prop_map(|(method, uri, headers, body, uid)| Input {
            method,
            uri,
            headers,
            body,
            uid,
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 600,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz_router.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_request_gets_a_json_answer_and_never_a_500(input in input()) {
        if let Err(e) = check(&input) {
            prop_assert!(false, "{}", e);
        }
    }
}
