//! What a carrier's answers prove: the token endpoint's rows (RFC 6749 5.1 and 5.2) and the
//! probe's (RFC 6750 3.1), each citing UPSTREAM.md's carriers section. The matching machinery
//! is [`crate::providers::evidence`]'s; a probe's `WWW-Authenticate` header is read into an
//! OAuth error body before matching (`super::probe_body`).

use crate::providers::evidence::{Call, Judged::*, Reads, Row, Shape::*, row};

/// The error codes that refuse the account's credential itself: the client (4.4) or the
/// refresh token (6).
pub const REVOKING: &[&str] = &["invalid_client", "invalid_grant"];

/// The error codes that say the request is wrong, not the account: the configuration is.
pub const CONFIG: &[&str] = &[
    "invalid_scope",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_request",
];

/// `POST {token_url}` with either grant.
pub static TOKEN: Call = Call {
    name: "OAuth 2.0 POST {token_url}",
    reads: Reads {
        token: true,
        form: false,
        account: false,
        list_and_detail: false,
        message: false,
        data: false,
        object: false,
    },
    rows: TOKEN_ROWS,
};

/// The account's probe; its own pass (the expected status) is matched before these rows.
pub static PROBE: Call = Call {
    name: "OAuth 2.0 API probe",
    reads: Reads {
        token: false,
        form: false,
        account: false,
        list_and_detail: false,
        message: false,
        data: false,
        object: false,
    },
    rows: PROBE_ROWS,
};

/// Every oauth2 call, for tests that try each.
pub static CALLS: &[&Call] = &[&TOKEN, &PROBE];

const TOKEN_ROWS: &[Row] = &[
    row(
        (200, 200),
        Token,
        Pass,
        "UPSTREAM.md, carriers: RFC 6749 5.1, a success is 200 JSON with access_token and expires_in",
    ),
    row(
        (429, 429),
        Any,
        Throttled,
        "UPSTREAM.md, What is evidence: 429 is throttling, never evidence",
    ),
    row(
        (400, 401),
        OAuthError(REVOKING),
        Refused,
        "UPSTREAM.md, carriers: RFC 6749 5.2, 400 (401 with HTTP Basic) invalid_client or invalid_grant refuses the client or the refresh token",
    ),
    row(
        (400, 401),
        OAuthError(CONFIG),
        Misconfigured,
        "UPSTREAM.md, carriers: RFC 6749 5.2, invalid_scope, unauthorized_client, unsupported_grant_type and invalid_request say the request is wrong, not the account",
    ),
];

const PROBE_ROWS: &[Row] = &[
    row(
        (429, 429),
        Any,
        Throttled,
        "UPSTREAM.md, What is evidence: 429 is throttling, never evidence",
    ),
    row(
        (401, 401),
        OAuthError(&["invalid_token"]),
        Refused,
        "UPSTREAM.md, carriers: RFC 6750 3.1, 401 with WWW-Authenticate: Bearer error=\"invalid_token\" refuses the token",
    ),
    row(
        (403, 403),
        OAuthError(&["insufficient_scope"]),
        Misconfigured,
        "UPSTREAM.md, carriers: RFC 6750 3.1, 403 insufficient_scope: the token works, the probe needs a scope it lacks",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::evidence::{Body, Judged, judge, shape};

    fn j(call: &Call, status: u16, body: &str) -> Judged {
        judge(call, status, &shape(call, body))
    }

    #[test]
    fn token_endpoint_rows() {
        let ups = r#"{"token_type":"Bearer","issued_at":"1765000000000","client_id":"c","access_token":"t","expires_in":"14399","status":"approved"}"#;
        assert_eq!(j(&TOKEN, 200, ups), Pass);
        for code in REVOKING {
            for status in [400, 401] {
                let body = format!(r#"{{"error":"{code}"}}"#);
                assert_eq!(j(&TOKEN, status, &body), Refused, "{code} {status}");
            }
        }
        for code in CONFIG {
            let body = format!(r#"{{"error":"{code}","error_description":"x"}}"#);
            assert_eq!(j(&TOKEN, 400, &body), Misconfigured, "{code}");
        }
        for (status, body) in [
            (400, r#"{"error":"server_error"}"#),
            (400, r#"{"error":"temporarily_unavailable"}"#),
            (401, "<html>proxy login</html>"),
            (403, r#"{"error":"invalid_client"}"#),
            (500, r#"{"error":"invalid_client"}"#),
            (502, "bad gateway"),
            (200, "<html>ok</html>"),
            (200, r#"{"token_type":"Bearer"}"#),
        ] {
            assert_eq!(j(&TOKEN, status, body), Inconclusive, "{status} {body}");
        }
        assert_eq!(j(&TOKEN, 429, "<html>slow</html>"), Throttled);
    }

    #[test]
    fn probe_rows_read_the_bearer_challenge() {
        let invalid = Body::OAuthError("invalid_token".into());
        assert_eq!(judge(&PROBE, 401, &invalid), Refused);
        assert_eq!(judge(&PROBE, 403, &invalid), Inconclusive);
        let scope = Body::OAuthError("insufficient_scope".into());
        assert_eq!(judge(&PROBE, 403, &scope), Misconfigured);
        assert_eq!(judge(&PROBE, 401, &Body::NotJson), Inconclusive);
        assert_eq!(judge(&PROBE, 503, &Body::Foreign), Inconclusive);
    }
}
