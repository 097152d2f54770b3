//! The CLI's side of the socket: one HTTP/1.1 request over a Unix socket connection, either
//! blocking (the commands that ask once and exit start no async runtime) or async (the
//! long-running commands, tests and benchmarks).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Why a request to the daemon did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the path (or we may not open it).
    #[error("the daemon is not reachable at {path}: {source}")]
    Unreachable {
        /// The socket path tried.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The connection broke or the answer was not HTTP/JSON.
    #[error("bad answer from the daemon at {path}: {message}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
}

/// An answer from the daemon.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The JSON body (`Value::Null` when empty).
    pub body: Value,
}

impl Reply {
    /// The `message` (or `error`) of an error answer.
    pub fn message(&self) -> String {
        self.body
            .get("message")
            .or_else(|| self.body.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .to_string()
    }

    /// The `error` code of an error answer.
    pub fn code(&self) -> &str {
        self.body.get("error").and_then(Value::as_str).unwrap_or("")
    }
}

/// Sends `method path` with an optional JSON body to the daemon listening on `socket`.
pub async fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Reply, ClientError> {
    let protocol = |message: String| ClientError::Protocol {
        path: socket.to_path_buf(),
        message,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Unreachable {
            path: socket.to_path_buf(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(e.to_string()))?;
    tokio::spawn(connection);
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| protocol(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| protocol(e.to_string()))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| protocol(e.to_string()))?
        .to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| protocol(format!("not JSON ({e})")))?
    };
    Ok(Reply { status, body })
}

/// The most of an answer [`call_blocking`] reads: far above the largest real one (the list of
/// 10,000 accounts is about 4 MB), and a bound on what a wrong peer can make us hold.
const MAX_ANSWER: u64 = 256 * 1024 * 1024;

/// Sends `method path` with an optional JSON body to the daemon listening on `socket`, on a
/// blocking std socket: one request with `Connection: close`, the answer read to its end.
/// No runtime and no thread: what a `get` in a script's loop pays is the connect, one write
/// and the reads (docs/socket.md has the figures).
pub fn call_blocking(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Reply, ClientError> {
    let protocol = |message: String| ClientError::Protocol {
        path: socket.to_path_buf(),
        message,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|source| {
        ClientError::Unreachable {
            path: socket.to_path_buf(),
            source,
        }
    })?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    // One write: the request line, headers and body leave in one segment.
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\naccept: application/json\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{payload}",
        payload.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| protocol(e.to_string()))?;
    // Room for a token answer (a ShipHero JWT twice, ~1 KiB) in one read; an empty Vec would
    // be probed 32 bytes at a time.
    let mut answer = Vec::with_capacity(16 * 1024);
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|e| protocol(e.to_string()))?;
    let (status, bytes) = parse_answer(&answer).map_err(|e| protocol(e.to_string()))?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| protocol(format!("not JSON ({e})")))?
    };
    Ok(Reply { status, body })
}

/// Splits a whole HTTP/1.1 answer into its status and body: the body is `content-length`
/// bytes, or chunked, or (neither given) everything up to the close.
fn parse_answer(answer: &[u8]) -> Result<(u16, Vec<u8>), &'static str> {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer ended inside its headers")?;
    let head = std::str::from_utf8(&answer[..end]).map_err(|_| "headers are not UTF-8")?;
    let rest = &answer[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.strip_prefix("HTTP/1.1 "))
        .and_then(|line| line.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("no HTTP/1.1 status line")?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("a header without a colon")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "a bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    if chunked {
        return dechunk(rest).map(|body| (status, body));
    }
    match length {
        Some(n) => rest
            .get(..n)
            .map(|body| (status, body.to_vec()))
            .ok_or("the answer is shorter than its content-length"),
        None => Ok((status, rest.to_vec())),
    }
}

/// Joins the chunks of a chunked body (RFC 9112 section 7.1; extensions and trailers ignored).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without a size line")?;
        let size_line = std::str::from_utf8(&rest[..line_end]).map_err(|_| "a bad chunk size")?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| "a bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("the answer ended inside a chunk")?;
        body.extend_from_slice(chunk);
        rest = rest
            .get(size + 2..)
            .ok_or("the answer ended inside a chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_cut_at_its_content_length() {
        let answer =
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nconnection: close\r\n\r\n{\"a\":1}trailing";
        assert_eq!(parse_answer(answer), Ok((200, br#"{"a":1}"#.to_vec())));
    }

    #[test]
    fn a_chunked_body_is_joined() {
        let answer = b"HTTP/1.1 409 Conflict\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_answer(answer), Ok((409, br#"{"a":1}"#.to_vec())));
    }

    #[test]
    fn without_a_length_the_body_runs_to_the_close() {
        let answer = b"HTTP/1.1 404 Not Found\r\n\r\n{}";
        assert_eq!(parse_answer(answer), Ok((404, b"{}".to_vec())));
    }

    #[test]
    fn broken_answers_are_refused() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n"[..],
            b"HTTP/1.0 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{}",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ] {
            assert!(
                parse_answer(answer).is_err(),
                "{:?}",
                String::from_utf8_lossy(answer)
            );
        }
    }
}
