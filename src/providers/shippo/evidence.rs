//! What Shippo's answers prove: its two calls and their rows, each citing its source
//! (UPSTREAM.md, Shippo's API reference and OAuth guide). The matching machinery is
//! [`crate::providers::evidence`]'s.

use crate::providers::evidence::{Call, Judged::*, Reads, Row, Shape::*, row};

/// Shippo `GET /carrier_accounts?results=1`, the probe.
pub static PROBE: Call = Call {
    name: "Shippo GET /carrier_accounts (probe)",
    reads: Reads {
        token: false,
        form: false,
        account: false,
        list_and_detail: true,
        message: false,
        data: false,
        object: false,
    },
    rows: PROBE_ROWS,
};

/// Shippo `POST /oauth/access_token`, the code exchange.
pub static EXCHANGE: Call = Call {
    name: "Shippo POST /oauth/access_token",
    reads: Reads {
        token: true,
        form: true,
        account: false,
        list_and_detail: true,
        message: false,
        data: false,
        object: false,
    },
    rows: EXCHANGE_ROWS,
};

/// An application's own call forwarded by the proxy (`/v1/proxy/shippo/...`): any endpoint,
/// so a 403 is an ownership check on one object (not evidence), and a pass is Shippo's JSON.
pub static PROXIED: Call = Call {
    name: "Shippo API (proxied)",
    reads: Reads {
        token: false,
        form: false,
        account: false,
        list_and_detail: true,
        message: false,
        data: false,
        object: true,
    },
    rows: PROXIED_ROWS,
};

/// Every Shippo call, for tests that try each.
pub static CALLS: &[&Call] = &[&PROBE, &EXCHANGE, &PROXIED];

// Rows that the probe and an application's proxied calls share.
const PASS_LIST: Row = row(
    (200, 299),
    List,
    Pass,
    "Shippo API reference: list endpoints answer {\"results\": [...]}; a 2xx proves the token only with Shippo's JSON",
);
const REFUSED_401: Row = row(
    (401, 401),
    Detail,
    Refused,
    "Shippo status codes: 401, the token provided does not exist",
);
const THROTTLED_409: Row = row(
    (409, 409),
    Any,
    Throttled,
    "Shippo status codes: 409 could be caused by too many concurrent calls",
);
const THROTTLED_429: Row = row(
    (429, 429),
    Any,
    Throttled,
    "Shippo rate limits: 429, maybe with X-RateLimit-Reset",
);

const PROBE_ROWS: &[Row] = &[
    PASS_LIST,
    REFUSED_401,
    row(
        (403, 403),
        Detail,
        Refused,
        "Shippo status codes: 403 on a list of the account's own objects: the token cannot act for its account",
    ),
    THROTTLED_409,
    THROTTLED_429,
];

const PROXIED_ROWS: &[Row] = &[
    PASS_LIST,
    row(
        (200, 299),
        Object,
        Pass,
        "Shippo API reference: objects carry object_id; a 2xx proves the token only with Shippo's JSON",
    ),
    REFUSED_401,
    THROTTLED_409,
    THROTTLED_429,
];

const EXCHANGE_ROWS: &[Row] = &[
    row(
        (200, 299),
        Token,
        Pass,
        "Shippo OAuth guide, step 3: {\"access_token\": \"oauth...\", ...}, JSON or form-encoded",
    ),
    row(
        (400, 401),
        OAuthError(&[
            "invalid_grant",
            "invalid_client",
            "unauthorized_client",
            "invalid_request",
        ]),
        Refused,
        "Shippo OAuth guide, step 3: failure {\"error\": \"invalid_grant\", ...}",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::evidence::{Judged, judge, shape};

    fn j(call: &Call, status: u16, body: &str) -> Judged {
        judge(call, status, &shape(call, body))
    }

    const HTML: &str = "<html><body><h1>Request blocked</h1></body></html>";

    #[test]
    fn shippo_shapes() {
        assert_eq!(j(&PROBE, 200, r#"{"results":[],"next":null}"#), Pass);
        assert_eq!(j(&PROBE, 200, HTML), Inconclusive);
        assert_eq!(j(&PROBE, 200, r#"{"hello":1}"#), Inconclusive);
        assert_eq!(
            j(&PROBE, 401, r#"{"detail":"Token does not exist"}"#),
            Refused
        );
        assert_eq!(
            j(
                &PROBE,
                403,
                r#"{"detail":"You do not have permission to perform this action."}"#
            ),
            Refused
        );
        assert_eq!(
            j(&PROBE, 409, r#"{"detail":"too many concurrent calls"}"#),
            Throttled
        );
        assert_eq!(j(&PROBE, 404, r#"{"detail":"Not found."}"#), Inconclusive);
        assert_eq!(j(&PROBE, 400, r#"{"detail":"Bad request"}"#), Inconclusive);
        assert_eq!(j(&EXCHANGE, 200, "access_token=oauth.x&scope=*"), Pass);
        assert_eq!(j(&EXCHANGE, 400, r#"{"error":"invalid_grant"}"#), Refused);
        assert_eq!(j(&EXCHANGE, 429, r#"{"detail":"slow down"}"#), Inconclusive);
        assert_eq!(j(&EXCHANGE, 503, HTML), Inconclusive);
    }

    #[test]
    fn an_applications_answer_passes_on_shippo_json_and_403_is_not_evidence() {
        let q = |status, body| j(&PROXIED, status, body);
        assert_eq!(q(200, r#"{"results":[]}"#), Pass);
        assert_eq!(q(201, r#"{"object_id":"abc","status":"SUCCESS"}"#), Pass);
        assert_eq!(q(401, r#"{"detail":"Token does not exist"}"#), Refused);
        // One object the account does not own: an ownership check, not a dead token.
        assert_eq!(
            q(
                403,
                r#"{"detail":"You do not have permission to perform this action."}"#
            ),
            Inconclusive
        );
        assert_eq!(q(429, "{}"), Throttled);
        assert_eq!(q(200, r#"{"ok":true}"#), Inconclusive);
        assert_eq!(q(503, HTML), Inconclusive);
    }
}
