//! What the proxy sends and passes back: the upstream URL built from the provider's API base
//! and the caller's path (never another host), and the headers that cross in each direction.
//!
//! The URL is built from the raw, still percent-encoded request target, so an encoded slash
//! or dot cannot turn into a path step upstream, and checked again once parsed: same scheme,
//! host and port as the API base, under its path.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

/// Headers that belong to one connection (RFC 9110 7.6.1), never forwarded either way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The prefix of the daemon's own request headers (`Shiptoken-Max-Wait`,
/// `Shiptoken-Idempotent`), which are for the daemon and never forwarded.
pub const OWN_HEADER_PREFIX: &str = "shiptoken-";

/// Why a request target cannot be forwarded.
#[derive(Debug, PartialEq, Eq)]
pub struct BadTarget(pub String);

/// The upstream URL of a proxied call to `key`: `rest` under the provider's API base for that
/// account (a carrier account's comes from its stored credential), or why there is none.
pub async fn target(
    registry: &crate::registry::Registry,
    rules: &crate::providers::ProxyRules,
    config: &crate::config::Config,
    key: &crate::names::AccountKey,
    rest: &str,
) -> Result<url::Url, BadTarget> {
    let credential = match crate::providers::rules(key.provider).reads_credential {
        true => registry
            .refresh_token(key)
            .await
            .map_err(|e| BadTarget(e.to_string()))?,
        false => None,
    };
    let base = (rules.api_base)(config, credential.as_ref()).map_err(BadTarget)?;
    upstream_url(&base, rest)
}

/// The upstream URL for `rest` (the raw request target after `/v1/proxy/<p>/<a>/`, query
/// included) under `api_base`, or why there is none.
pub fn upstream_url(api_base: &str, rest: &str) -> Result<url::Url, BadTarget> {
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(BadTarget(
            "no path after the account: name the API path, e.g. /v1/proxy/shiphero/acme/graphql"
                .into(),
        ));
    }
    let lower = path.to_ascii_lowercase();
    for (needle, what) in [
        ("%2f", "an encoded slash"),
        ("%5c", "an encoded backslash"),
        ("%2e", "an encoded dot"),
        ("%25", "an encoded percent sign"),
        ("\\", "a backslash"),
        ("://", "an absolute URL"),
    ] {
        if lower.contains(needle) {
            return Err(BadTarget(format!(
                "the path holds {what}, which could name something else upstream"
            )));
        }
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(BadTarget(
                "the path has an empty, `.` or `..` step; write the API path plainly".into(),
            ));
        }
    }
    if let Some(q) = query
        && q.contains('#')
    {
        return Err(BadTarget("the query holds a fragment".into()));
    }
    let base = url::Url::parse(api_base)
        .map_err(|e| BadTarget(format!("the provider's api_base does not parse: {e}")))?;
    let joined = match query {
        Some(q) => format!("{}/{path}?{q}", api_base.trim_end_matches('/')),
        None => format!("{}/{path}", api_base.trim_end_matches('/')),
    };
    let url = url::Url::parse(&joined).map_err(|e| BadTarget(format!("not a valid path: {e}")))?;
    let base_path = base.path().trim_end_matches('/');
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default();
    let under_base = url.path().starts_with(&format!("{base_path}/"));
    if !(same_origin && under_base) || url.username() != "" || url.password().is_some() {
        return Err(BadTarget(
            "the path leads outside the provider's API base".into(),
        ));
    }
    Ok(url)
}

/// The headers of `from` that may cross the proxy: without the hop-by-hop ones (and any the
/// `Connection` header names), `Host`, `Content-Length` (the body is re-framed), and, for a
/// request, the caller's `Authorization`, `Accept-Encoding` (a compressed answer could not
/// be judged), `Expect` and the daemon's own `Shiptoken-*` headers.
pub fn forwarded_headers(from: &HeaderMap, request: bool) -> HeaderMap {
    let named_by_connection: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        let n = name.as_str();
        let dropped = HOP_BY_HOP.contains(&n)
            || named_by_connection.iter().any(|c| c == n)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || (request
                && (name == header::AUTHORIZATION
                    // The answer must reach the daemon readable, to be judged.
                    || name == header::ACCEPT_ENCODING
                    || name == header::EXPECT
                    || n.starts_with(OWN_HEADER_PREFIX)));
        if !dropped {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Sets `name: value` on `headers`, replacing what the caller sent; a value that is not a
/// valid header is skipped (the configuration checked it already).
pub fn set(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.insert(n, v);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const BASE: &str = "http://127.0.0.1:8080";

    #[test]
    fn a_plain_path_goes_under_the_api_base_with_its_query() {
        assert_eq!(
            upstream_url(BASE, "graphql").unwrap().as_str(),
            "http://127.0.0.1:8080/graphql"
        );
        assert_eq!(
            upstream_url("http://127.0.0.1:8080/api/", "shipments/abc?results=1")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/api/shipments/abc?results=1"
        );
    }

    #[test]
    fn tricks_that_would_leave_the_api_base_are_refused() {
        for rest in [
            "",
            "../admin",
            "a/../../etc",
            "a//b",
            "./graphql",
            "%2e%2e/admin",
            "a%2Fb",
            "a%5cb",
            "a\\b",
            "http://evil.test/x",
            "@evil.test/x",
            "%252e%252e/admin",
        ] {
            let got = upstream_url(BASE, rest);
            let leaves = got
                .as_ref()
                .is_ok_and(|u| u.host_str() != Some("127.0.0.1") || u.port() != Some(8080));
            assert!(got.is_err() || !leaves, "{rest:?} -> {got:?}");
            if !rest.starts_with('@') {
                assert!(got.is_err(), "{rest:?} -> {got:?}");
            }
        }
    }

    #[test]
    fn hop_by_hop_host_and_authorization_never_cross() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("authorization", "Bearer caller"),
            ("host", "evil.test"),
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("shiptoken-max-wait", "3"),
            ("accept-encoding", "gzip"),
            ("content-type", "application/json"),
            ("x-request-id", "abc"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let out = forwarded_headers(&h, true);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "x-request-id"]);
        // An answer keeps its Authorization-like headers (there are none) but not hop-by-hop.
        assert!(forwarded_headers(&h, false).contains_key("authorization"));
    }
}
