//! The oauth2 client's judging of real carrier answers (UPSTREAM.md, carriers).

use super::*;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use std::collections::BTreeMap;

fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status: StatusCode::from_u16(status).unwrap(),
        headers: HeaderMap::new(),
        body: body.into(),
        sent: Vec::new(),
    }
}

fn credential(refresh: Option<&str>) -> Credential {
    Credential {
        preset: "ups".into(),
        token_url: None,
        client_id: "id".into(),
        client_secret: "secret".into(),
        auth: None,
        scope: None,
        form: BTreeMap::new(),
        headers: BTreeMap::new(),
        refresh_token: refresh.map(str::to_string),
        api_base: None,
        probe_method: None,
        probe_url: None,
        probe_status: None,
    }
}

#[test]
fn ups_string_lifetime_and_fedex_number_are_read() {
    let ups = r#"{"token_type":"Bearer","issued_at":"1765000000000","client_id":"id","access_token":"tok","expires_in":"14399","status":"approved"}"#;
    let i = judge_token(&answer(200, ups), &credential(None)).unwrap();
    assert_eq!(i.lifetime, Some(Duration::from_secs(14_399)));
    assert!(i.refresh.is_none());
    let fedex = r#"{"access_token":"tok","token_type":"bearer","expires_in":3599,"scope":"CXS"}"#;
    let i = judge_token(&answer(200, fedex), &credential(None)).unwrap();
    assert_eq!(i.lifetime, Some(Duration::from_secs(3599)));
}

#[test]
fn absurd_or_missing_lifetimes_store_nothing() {
    for body in [
        r#"{"access_token":"t","expires_in":"1765000000000"}"#,
        r#"{"access_token":"t","expires_in":0}"#,
        r#"{"access_token":"t","expires_in":"soon"}"#,
        r#"{"access_token":"t"}"#,
    ] {
        let r = judge_token(&answer(200, body), &credential(None));
        assert!(matches!(r, Err(Verdict::Inconclusive(_))), "{body}");
    }
}

#[test]
fn a_rotated_refresh_token_is_handed_back_and_a_missing_one_loses_nothing() {
    let c = credential(Some("r1"));
    let rotated = r#"{"access_token":"t","expires_in":3600,"refresh_token":"r2"}"#;
    let i = judge_token(&answer(200, rotated), &c).unwrap();
    let stored = Credential::decode(&i.refresh.unwrap()).unwrap();
    assert_eq!(stored.refresh_token.as_deref(), Some("r2"));
    assert_eq!(stored.client_id, "id");
    for same in [
        r#"{"access_token":"t","expires_in":3600}"#,
        r#"{"access_token":"t","expires_in":3600,"refresh_token":"r1"}"#,
        r#"{"access_token":"t","expires_in":3600,"refresh_token":""}"#,
    ] {
        assert!(
            judge_token(&answer(200, same), &c)
                .unwrap()
                .refresh
                .is_none()
        );
    }
}

#[test]
fn token_endpoint_verdicts() {
    let c = credential(None);
    let refused = judge_token(&answer(401, r#"{"error":"invalid_client"}"#), &c);
    assert!(matches!(refused, Err(Verdict::Refused(m)) if m.contains("invalid_client")));
    let scope = judge_token(&answer(400, r#"{"error":"invalid_scope"}"#), &c);
    assert!(matches!(scope, Err(Verdict::Misconfigured(_))));
    for (s, b) in [(500, "oops"), (400, "<html>x</html>"), (503, "{}")] {
        assert!(matches!(
            judge_token(&answer(s, b), &c),
            Err(Verdict::Inconclusive(_))
        ));
    }
    let mut a = answer(429, "");
    a.headers.insert("retry-after", "9".parse().unwrap());
    assert!(
        matches!(judge_token(&a, &c), Err(Verdict::Throttled { wait, .. }) if wait == Duration::from_secs(9))
    );
}

#[test]
fn probes_read_the_bearer_challenge_only() {
    assert!(matches!(
        judge_api(&answer(200, "{}"), Some(200)),
        Verdict::Pass { .. }
    ));
    let mut a = answer(401, "");
    a.headers.insert(
        "www-authenticate",
        r#"Bearer realm="api", error="invalid_token", error_description="expired""#
            .parse()
            .unwrap(),
    );
    assert!(matches!(judge_api(&a, Some(200)), Verdict::Refused(_)));
    let mut a = answer(403, "");
    a.headers.insert(
        "www-authenticate",
        r#"Bearer error="insufficient_scope""#.parse().unwrap(),
    );
    assert!(matches!(
        judge_api(&a, Some(200)),
        Verdict::Misconfigured(_)
    ));
    // A JSON error without the challenge is not the API's word on the token.
    let a = answer(401, r#"{"error":"invalid_token"}"#);
    assert!(matches!(judge_api(&a, Some(200)), Verdict::Inconclusive(_)));
    assert!(matches!(
        judge_api(&answer(502, "<html>"), Some(200)),
        Verdict::Inconclusive(_)
    ));
}

#[test]
fn a_proxied_answer_passes_on_any_success_and_a_missing_scope_is_not_evidence() {
    for status in [200, 201, 204] {
        assert!(matches!(
            judge_api(&answer(status, ""), None),
            Verdict::Pass { .. }
        ));
    }
    let mut a = answer(401, "");
    a.headers.insert(
        "www-authenticate",
        r#"Bearer error="invalid_token""#.parse().unwrap(),
    );
    assert!(matches!(judge_api(&a, None), Verdict::Refused(_)));
    let mut a = answer(403, "");
    a.headers.insert(
        "www-authenticate",
        r#"Bearer error="insufficient_scope""#.parse().unwrap(),
    );
    assert!(matches!(judge_api(&a, None), Verdict::Inconclusive(_)));
    assert!(matches!(
        judge_api(&answer(404, "{}"), None),
        Verdict::Inconclusive(_)
    ));
}

#[test]
fn the_proxy_goes_to_the_account_api_host_else_its_preset_one() {
    let config = crate::config::tests::load("").unwrap();
    let base = |c: &Credential| (PROXY.api_base)(&config, Some(&c.encode()));
    let mut c = Credential {
        preset: "fedex".into(),
        ..Credential::default()
    };
    assert_eq!(base(&c).unwrap(), "https://apis.fedex.com");
    c.api_base = Some("https://api.example.test".into());
    assert_eq!(base(&c).unwrap(), "https://api.example.test");
    let generic = Credential {
        preset: "generic".into(),
        ..Credential::default()
    };
    assert!(base(&generic).unwrap_err().contains("--api-base"));
    assert!((PROXY.api_base)(&config, None).is_err());
}

#[test]
fn requests_follow_the_preset_and_the_account_overrides_it() {
    let client = OAuth2::new(
        crate::providers::plain_client(),
        presets::built_in().unwrap(),
        Metrics::new(),
    );
    let field =
        |t: &TokenRequest, k: &str| t.form.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
    // UPS: Basic, so the secret is not in the form.
    let mut c = credential(None);
    let t = client.resolve(&c).unwrap();
    assert_eq!(t.auth, ClientAuth::Basic);
    assert!(t.url.ends_with("/security/v1/oauth/token"));
    assert_eq!(
        field(&t, "grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(field(&t, "client_secret"), None);
    assert!(t.probe.is_none());
    // FedEx: the credentials in the form body, with the account's scope and extra field.
    c.preset = "fedex".into();
    c.scope = Some("CXS".into());
    c.form.insert("child_key".into(), "k".into());
    c.probe_url = Some("https://apis.fedex.com/ping".into());
    let t = client.resolve(&c).unwrap();
    assert_eq!(t.auth, ClientAuth::Body);
    assert_eq!(field(&t, "client_id").as_deref(), Some("id"));
    assert_eq!(field(&t, "client_secret").as_deref(), Some("secret"));
    assert_eq!(field(&t, "scope").as_deref(), Some("CXS"));
    assert_eq!(field(&t, "child_key").as_deref(), Some("k"));
    assert_eq!(t.probe.unwrap().status, 200);
    // A refresh-token account uses the refresh grant.
    let t = client.resolve(&credential(Some("r1"))).unwrap();
    assert_eq!(field(&t, "grant_type").as_deref(), Some("refresh_token"));
    assert_eq!(field(&t, "refresh_token").as_deref(), Some("r1"));
    // generic has no token URL of its own; an unknown preset is the configuration's fault.
    c.preset = "generic".into();
    assert!(matches!(client.resolve(&c), Err(Verdict::Misconfigured(_))));
    c.preset = "dhl".into();
    assert!(matches!(client.resolve(&c), Err(Verdict::Misconfigured(m)) if m.contains("dhl")));
}
