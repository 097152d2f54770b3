//! Answers that say nothing about an account, for the fakes to send instead of their own:
//! what load balancers, WAFs, captive proxies and middleboxes answer, and the provider answers
//! that are not evidence (server-side GraphQL errors, scope and schema errors, throttling).
//! Each fake switches them on per account or for everyone, so tests can show that none of
//! them flags an account or withholds a working token.

use std::collections::HashMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The call a canned answer replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// ShipHero `POST /auth/refresh`.
    Refresh,
    /// ShipHero `POST /graphql`.
    Graphql,
    /// Shippo's API (`/carrier_accounts`, `/parcel-templates`).
    ShippoApi,
    /// Shippo `POST /oauth/access_token`.
    ShippoToken,
}

/// One answer, sent as it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Canned {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
}

impl Canned {
    /// An HTML page at `status`, as a load balancer, WAF or captive portal sends.
    pub fn html(status: u16) -> Canned {
        Canned {
            status,
            content_type: "text/html; charset=utf-8",
            body: format!(
                "<!DOCTYPE html><html><head><title>{status}</title></head><body><h1>Request blocked</h1>\
                 <p>The request was stopped by the edge. Reference #18.c0ffee.</p></body></html>"
            ),
            headers: Vec::new(),
        }
    }

    /// JSON at `status`.
    pub fn json(status: u16, body: Value) -> Canned {
        Canned {
            status,
            content_type: "application/json",
            body: body.to_string(),
            headers: Vec::new(),
        }
    }

    /// A GraphQL error answered with HTTP 200 and the account field null, ShipHero's way.
    pub fn graphql_error(code: Option<i64>, message: &str) -> Canned {
        let mut error = json!({
            "message": message,
            "operation": "account",
            "field": "account",
            "request_id": "5f2b1c0ffee",
        });
        if let Some(code) = code {
            error["code"] = json!(code);
        }
        Canned::json(200, json!({"errors": [error], "data": {"account": null}}))
    }

    /// The same answer with one more header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Canned {
        self.headers.push((name, value.into()));
        self
    }

    /// The HTTP response.
    pub fn response(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut response = (status, self.body.clone()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(*name, v);
            }
        }
        response
    }
}

/// Canned answers switched on: per account (by the fake's own key for it, an email or an
/// account name) or, under `None`, for every account.
#[derive(Debug, Default)]
pub struct Switchboard {
    answers: HashMap<(Option<String>, Route), Canned>,
}

impl Switchboard {
    /// Switches an answer on (`Some`) or off (`None`).
    pub fn set(&mut self, who: Option<&str>, route: Route, answer: Option<Canned>) {
        let key = (who.map(str::to_owned), route);
        match answer {
            Some(a) => self.answers.insert(key, a),
            None => self.answers.remove(&key),
        };
    }

    /// The answer for `who` on `route`: its own, else the one for everyone.
    pub fn get(&self, who: Option<&str>, route: Route) -> Option<Canned> {
        who.and_then(|w| self.answers.get(&(Some(w.to_owned()), route)))
            .or_else(|| self.answers.get(&(None, route)))
            .cloned()
    }
}
