//! Following an account's served token through the socket's long poll
//! (`GET /v1/tokens/{p}/{a}?wait=N&known=TAG`, docs/socket.md), and `get --watch` on top of it.
//!
//! The daemon answers a long poll as soon as the token or the account's state differs from
//! `known`, so a follower learns of a rotation at once and costs nothing in between.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};

use super::commands::{Failed, fail};
use super::render::say;
use crate::client;
use crate::names::AccountKey;

/// The longest wait asked of the daemon, in seconds (its maximum, `api::MAX_WAIT_SECS`).
const WAIT_SECS: u64 = 300;

/// The longest pause between attempts while the daemon cannot be reached (a restart).
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the socket serves for an account at one moment.
#[derive(Debug, Clone)]
pub(super) enum Seen {
    /// A token: its fingerprint and the whole JSON answer.
    Token {
        /// `fingerprint` of the answer: what changes when the token does.
        fingerprint: String,
        /// The answer.
        body: Value,
    },
    /// No token to serve: the error code (`account_suspended`, ...) and message.
    Withheld {
        /// The error code.
        code: String,
        /// The message, with the last upstream error when there is one.
        message: String,
    },
}

/// One account's served token, followed answer after answer.
pub(super) struct Follow {
    socket: PathBuf,
    key: AccountKey,
    /// The tag of the last answer (fingerprint or error code); `None` before the first.
    known: Option<String>,
}

impl Follow {
    /// Follows `key` through the daemon at `socket`.
    pub(super) fn new(socket: &Path, key: AccountKey) -> Follow {
        Follow {
            socket: socket.to_path_buf(),
            key,
            known: None,
        }
    }

    /// The first answer at once; after that, the next one that differs from the last. A
    /// daemon that cannot be reached (a restart) or answers 5xx after the first answer is
    /// waited for; an answer that will not change by waiting (unknown account, forbidden) is
    /// an error.
    pub(super) async fn next(&mut self) -> Result<Seen, Failed> {
        let mut pause = Duration::from_secs(1);
        loop {
            let path = match &self.known {
                None => format!("/v1/tokens/{}/{}", self.key.provider, self.key.name),
                Some(known) => format!(
                    "/v1/tokens/{}/{}?{}",
                    self.key.provider,
                    self.key.name,
                    url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("wait", &WAIT_SECS.to_string())
                        .append_pair("known", known)
                        .finish()
                ),
            };
            let reply = match client::call(&self.socket, "GET", &path, None).await {
                // The registry briefly unusable: as passing as a restart, once following.
                Ok(reply) if reply.status >= 500 && self.known.is_some() => Err(reply.message()),
                Ok(reply) => Ok(reply),
                Err(e) if self.known.is_none() => return Err(e.into()),
                Err(e) => Err(e.to_string()),
            };
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) => {
                    if pause == Duration::from_secs(1) {
                        eprintln!("shiptoken: {}: {e}; retrying", self.key);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                    continue;
                }
            };
            let seen = match reply.status {
                200 => Seen::Token {
                    fingerprint: reply
                        .body
                        .get("fingerprint")
                        .and_then(Value::as_str)
                        .ok_or_else(|| fail("the daemon's answer has no fingerprint"))?
                        .to_string(),
                    body: reply.body,
                },
                409 => Seen::Withheld {
                    code: reply.code().to_string(),
                    message: super::commands::expect_ok(&reply)
                        .err()
                        .map(|f| f.message)
                        .unwrap_or_default(),
                },
                _ => {
                    return Err(super::commands::expect_ok(&reply).err().unwrap_or_else(|| {
                        fail(format!(
                            "unexpected answer {} from the daemon",
                            reply.status
                        ))
                    }));
                }
            };
            let tag = match &seen {
                Seen::Token { fingerprint, .. } => fingerprint.clone(),
                Seen::Withheld { code, .. } => code.clone(),
            };
            // A long poll that ran out answers the state it started from: ask again.
            if self.known.as_ref() == Some(&tag) {
                pause = Duration::from_secs(1);
                continue;
            }
            self.known = Some(tag);
            return Ok(seen);
        }
    }
}

/// Resolves once SIGINT or SIGTERM arrives.
async fn interrupted() {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// `get --watch`: prints each new token (or its JSON answer, one line) once, as it is served,
/// until SIGINT or SIGTERM, or until the reader of standard output goes away. While the
/// account has no token to serve, a line on standard error says why, and the watch goes on.
pub(super) async fn get_watch(socket: &Path, account: &str, json: bool) -> Result<(), Failed> {
    let key = AccountKey::parse(account).map_err(|e| Failed {
        code: 2,
        message: e.to_string(),
    })?;
    let mut follow = Follow::new(socket, key);
    let stop = interrupted();
    tokio::pin!(stop);
    let mut printed: Option<String> = None;
    loop {
        let seen = tokio::select! {
            seen = follow.next() => seen?,
            () = &mut stop => return Ok(()),
        };
        match seen {
            // The same token again after a flag cleared is not new.
            Seen::Token { fingerprint, .. } if printed.as_ref() == Some(&fingerprint) => {}
            Seen::Token { fingerprint, body } => {
                if json {
                    say(format_args!("{body}"));
                } else {
                    let token = body
                        .get("access_token")
                        .and_then(Value::as_str)
                        .ok_or_else(|| fail("answer has no access_token"))?;
                    say(format_args!("{token}"));
                }
                printed = Some(fingerprint);
            }
            Seen::Withheld { message, .. } => eprintln!("shiptoken: {message}; waiting"),
        }
    }
}
