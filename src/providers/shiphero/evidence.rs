//! What ShipHero's answers prove: its two calls and their rows, each citing its source
//! (UPSTREAM.md, ShipHero's error glossary). The matching machinery is
//! [`crate::providers::evidence`]'s.

use crate::providers::evidence::{
    Call, Judged::*, REFUSING_OAUTH_ERRORS, Reads, Row, Shape::*, row,
};

/// GraphQL error codes that mean the token is not authorized. ShipHero's documents give no
/// number for this; UPSTREAM.md says an invalid token may come as an `errors` entry, and
/// ShipHero reuses HTTP numbers in `code`, so 401 and 403 are the authorization codes.
const AUTH_CODES: &[i64] = &[401, 403];

/// ShipHero `POST /auth/refresh`.
pub static REFRESH: Call = Call {
    name: "ShipHero POST /auth/refresh",
    reads: Reads {
        token: true,
        form: false,
        account: false,
        list_and_detail: false,
        message: true,
        data: false,
        object: false,
    },
    rows: REFRESH_ROWS,
};

/// ShipHero `POST /graphql` with the probe query.
pub static PROBE: Call = Call {
    name: "ShipHero POST /graphql (probe)",
    reads: Reads {
        token: false,
        form: false,
        account: true,
        list_and_detail: false,
        message: true,
        data: false,
        object: false,
    },
    rows: PROBE_ROWS,
};

/// An application's own call forwarded by the proxy (`/v1/proxy/shiphero/...`): any query,
/// so a pass is any data without errors, and only the documented refusals of the token and
/// throttling say more than nothing.
pub static PROXIED: Call = Call {
    name: "ShipHero POST /graphql (proxied)",
    reads: Reads {
        token: false,
        form: false,
        account: false,
        list_and_detail: false,
        message: true,
        data: true,
        object: false,
    },
    rows: PROXIED_ROWS,
};

/// Every ShipHero call, for tests that try each.
pub static CALLS: &[&Call] = &[&REFRESH, &PROBE, &PROXIED];

const REFRESH_ROWS: &[Row] = &[
    row(
        (200, 299),
        Token,
        Pass,
        "UPSTREAM.md, ShipHero endpoints: refresh answers access_token and expires_in, no refresh_token",
    ),
    row(
        (429, 429),
        Any,
        Throttled,
        "UPSTREAM.md, ShipHero throttling (UNCONFIRMED): HTTP 429 with Retry-After",
    ),
    row(
        (400, 403),
        OAuthError(REFUSING_OAUTH_ERRORS),
        Refused,
        "UPSTREAM.md (UNCONFIRMED): a bad or revoked refresh token answers 401 or 403, maybe {\"error\": \"invalid_grant\"}",
    ),
    row(
        (401, 403),
        Message,
        Refused,
        "UPSTREAM.md (UNCONFIRMED): a bad or revoked refresh token answers 401 or 403 with {\"message\": ...}",
    ),
];

// Rows that the probe and an application's proxied calls share: the same answer means the
// same thing whichever query got it.
const THROTTLED_CODE_30: Row = row(
    (200, 299),
    GraphqlCode(&[30]),
    Throttled,
    "ShipHero error glossary: code 30, not enough credits, with time_remaining",
);
const THROTTLED_429: Row = row(
    (429, 429),
    Any,
    Throttled,
    "UPSTREAM.md (UNCONFIRMED): throttling may come as HTTP 429 with Retry-After",
);
const REFUSED_200_AUTH_CODE: Row = row(
    (200, 299),
    GraphqlCode(AUTH_CODES),
    Refused,
    "UPSTREAM.md (UNCONFIRMED): an invalid access token may answer 200 with an errors entry",
);
const REFUSED_4XX_AUTH_CODE: Row = row(
    (401, 403),
    GraphqlCode(AUTH_CODES),
    Refused,
    "UPSTREAM.md (UNCONFIRMED): an invalid access token answers 401/403",
);
const REFUSED_4XX_MESSAGE: Row = row(
    (401, 403),
    Message,
    Refused,
    "UPSTREAM.md (UNCONFIRMED): an invalid access token answers 401/403 (ShipHero's {\"message\": ...})",
);
const REFUSED_4XX_OAUTH: Row = row(
    (401, 403),
    OAuthError(REFUSING_OAUTH_ERRORS),
    Refused,
    "UPSTREAM.md (UNCONFIRMED): an invalid access token answers 401/403",
);

const PROBE_ROWS: &[Row] = &[
    row(
        (200, 299),
        AccountData,
        Pass,
        "UPSTREAM.md, the probe: the token works when there are no errors and data.account.data is not null",
    ),
    THROTTLED_CODE_30,
    THROTTLED_429,
    row(
        (200, 400),
        GraphqlCode(&[7]),
        Misconfigured,
        "ShipHero error glossary: code 7, \"Missing required scope(s)\": the token works, the probe needs a scope it lacks",
    ),
    row(
        (200, 400),
        GraphqlMessage("Missing required scope"),
        Misconfigured,
        "ShipHero error glossary: the scope error's exact message",
    ),
    row(
        (200, 400),
        GraphqlMessage("Cannot query field"),
        Misconfigured,
        "GraphQL specification, validation: the schema rejects the probe query, not the token",
    ),
    REFUSED_200_AUTH_CODE,
    REFUSED_4XX_AUTH_CODE,
    REFUSED_4XX_MESSAGE,
    REFUSED_4XX_OAUTH,
    row(
        (200, 299),
        GraphqlUncoded,
        Inconclusive,
        "ShipHero error glossary: GraphQL answers 200 for server failures too (e.g. a statement timeout), without an account code",
    ),
    row(
        (200, 299),
        GraphqlOtherCode,
        Undocumented,
        "UPSTREAM.md, what is evidence: an error code no document explains is judged by repetition",
    ),
    row(
        (200, 299),
        NullAccount,
        Undocumented,
        "UPSTREAM.md, the probe: null account data without errors is not a pass, and no document says it is a refusal",
    ),
];

const PROXIED_ROWS: &[Row] = &[
    row(
        (200, 299),
        Data,
        Pass,
        "UPSTREAM.md, ShipHero API: failures come in an errors array; data without errors is a working token",
    ),
    THROTTLED_CODE_30,
    THROTTLED_429,
    REFUSED_200_AUTH_CODE,
    REFUSED_4XX_AUTH_CODE,
    REFUSED_4XX_MESSAGE,
    REFUSED_4XX_OAUTH,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::evidence::{Judged, judge, shape};

    fn j(call: &Call, status: u16, body: &str) -> Judged {
        judge(call, status, &shape(call, body))
    }

    #[test]
    fn shiphero_refusals() {
        assert_eq!(
            j(
                &REFRESH,
                401,
                r#"{"error":"invalid_grant","error_description":"x"}"#
            ),
            Refused
        );
        assert_eq!(j(&REFRESH, 400, r#"{"error":"invalid_grant"}"#), Refused);
        assert_eq!(
            j(&REFRESH, 403, r#"{"message":"Refresh token is revoked"}"#),
            Refused
        );
        assert_eq!(
            j(&REFRESH, 400, r#"{"error":"server_error"}"#),
            Inconclusive
        );
        assert_eq!(j(&REFRESH, 400, r#"{"message":"bad"}"#), Inconclusive);
        assert_eq!(j(&PROBE, 401, r#"{"message":"Unauthorized"}"#), Refused);
        assert_eq!(
            j(
                &PROBE,
                200,
                r#"{"errors":[{"message":"Not authorized","code":401}],"data":{"account":null}}"#
            ),
            Refused
        );
    }

    #[test]
    fn shiphero_non_evidence() {
        let timeout = r#"{"errors":[{"message":"canceling statement due to statement timeout"}],"data":{"account":null}}"#;
        assert_eq!(j(&PROBE, 200, timeout), Inconclusive);
        let scope = r#"{"errors":[{"message":"Missing required scope(s): view:orders","code":7}]}"#;
        assert_eq!(j(&PROBE, 200, scope), Misconfigured);
        let schema =
            r#"{"errors":[{"message":"Cannot query field \"status\" on type \"Account\"."}]}"#;
        assert_eq!(j(&PROBE, 200, schema), Misconfigured);
        assert_eq!(j(&PROBE, 400, schema), Misconfigured);
        assert_eq!(j(&PROBE, 400, r#"{"foo":1}"#), Inconclusive);
        assert_eq!(
            j(&PROBE, 200, r#"{"errors":[{"message":"x","code":30}]}"#),
            Throttled
        );
        assert_eq!(
            j(&PROBE, 200, r#"{"data":{"account":{"data":null}}}"#),
            Undocumented
        );
        assert_eq!(
            j(&PROBE, 200, r#"{"errors":[{"message":"odd","code":12}]}"#),
            Undocumented
        );
        assert_eq!(
            j(
                &PROBE,
                200,
                r#"{"data":{"account":{"data":{"id":"QWNjb3VudDox"}}}}"#
            ),
            Pass
        );
        assert_eq!(j(&PROBE, 200, r#"{"ok":true}"#), Inconclusive);
    }

    #[test]
    fn an_applications_answer_passes_on_any_data_and_refuses_only_on_auth_codes() {
        let q = |status, body| j(&PROXIED, status, body);
        assert_eq!(q(200, r#"{"data":{"orders":{"data":[]}}}"#), Pass);
        // An application's lookup that finds nothing is null data: nothing about the token.
        assert_eq!(q(200, r#"{"data":{"orders":null}}"#), Inconclusive);
        // An empty data object is nobody's documented answer: it proves nothing.
        assert_eq!(q(200, r#"{"data":{}}"#), Inconclusive);
        assert_eq!(
            q(
                200,
                r#"{"errors":[{"code":401,"message":"x"}],"data":{"orders":null}}"#
            ),
            Refused
        );
        assert_eq!(q(401, r#"{"message":"Unauthorized"}"#), Refused);
        // The application's own mistakes and missing scopes say nothing about the token.
        assert_eq!(
            q(
                200,
                r#"{"errors":[{"code":7,"message":"Missing required scope(s)"}]}"#
            ),
            Inconclusive
        );
        assert_eq!(
            q(
                200,
                r#"{"errors":[{"code":5,"message":"not found"}],"data":{"order":null}}"#
            ),
            Inconclusive
        );
        assert_eq!(
            q(200, r#"{"errors":[{"code":30,"message":"x"}]}"#),
            Throttled
        );
        assert_eq!(q(502, "<html>bad gateway</html>"), Inconclusive);
    }
}
