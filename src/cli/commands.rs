//! The client commands: each asks the daemon over its socket and prints the answer, mapping
//! failures to the exit codes of CONTRACT.md.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Value, json};

use super::render::{self, Screen, render_watch, say, say_raw, terminal_rows, terminal_width};
use super::wait::Waiter;
use super::{AddArgs, AddCommand, Cli};
use crate::client::{self, ClientError, Reply};
use crate::clock::{Clock, Timestamp};
use crate::config::{Config, DEFAULT_CONFIG_PATH};

/// A client command's failure, with its exit code.
#[derive(Debug)]
pub(super) struct Failed {
    /// The exit code (CONTRACT.md).
    pub(super) code: u8,
    /// What to print on standard error.
    pub(super) message: String,
}

impl From<ClientError> for Failed {
    fn from(e: ClientError) -> Failed {
        let code = match e {
            ClientError::Unreachable { .. } => 4,
            ClientError::Protocol { .. } => 1,
        };
        Failed {
            code,
            message: e.to_string(),
        }
    }
}

pub(super) fn fail(message: impl Into<String>) -> Failed {
    Failed {
        code: 1,
        message: message.into(),
    }
}

/// The socket a client command talks to: `--socket`, else the config's `socket.path`, else
/// the default.
pub(super) fn socket_path(cli: &Cli) -> Result<PathBuf, Failed> {
    if let Some(s) = &cli.globals.socket {
        return Ok(s.clone());
    }
    match &cli.globals.config {
        // Read, not loaded: the sink folder checks are the daemon's, and a client may run as
        // a user who could not pass them.
        Some(file) => Config::read(Some(file))
            .map(|c| c.socket.path)
            .map_err(|e| fail(format!("{e}"))),
        // The default file may be unreadable for an unprivileged client: fall back quietly.
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => Ok(Config::read(None)
            .map(|c| c.socket.path)
            .unwrap_or_else(|_| default_socket())),
        None => Ok(default_socket()),
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from(crate::config::RawConfig::default().socket.path)
}

/// `key rotate` through the running daemon, which re-seals while it serves. `Ok(false)` when
/// no daemon answers on the socket: the caller rotates offline.
pub(super) fn rotate_key_online(socket: &Path) -> Result<bool, Failed> {
    let reply = match client::call_blocking(socket, "POST", "/v1/key/rotate", None) {
        Ok(reply) => reply,
        Err(ClientError::Unreachable { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    expect_ok(&reply)?;
    let text = |k: &str| {
        reply
            .body
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let accounts = reply
        .body
        .get("accounts")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    say(format_args!(
        "re-sealed {accounts} account(s) with a new key, now in {}, while the daemon served",
        text("key_file")
    ));
    say_old_key(&text("old_key_file"));
    Ok(true)
}

/// What every rotation says about the key it replaced.
pub(crate) fn say_old_key(old_key_file: &str) {
    say(format_args!(
        "the old key is kept in {old_key_file}: backups taken before this rotation open only with it; delete it once no such backup is kept"
    ));
}

/// `key generate FILE`: the key is never printed, only where it is.
pub(super) fn generate_key(file: &Path) -> ExitCode {
    match crate::keys::generate_file(file) {
        Ok(()) => {
            say(format_args!(
                "wrote a new key to {} (mode 0600); install this same file on every host that shares the registry, as the systemd credential shiptoken.key or key_file",
                file.display()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shiptoken: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `completions SHELL`: the script, from the whole command tree.
pub(super) fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "shiptoken", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// `man`: the man page, from the whole command tree.
pub(super) fn man() -> ExitCode {
    use std::io::Write;
    let mut page = Vec::new();
    let written =
        super::manpage::render(&mut page).and_then(|()| std::io::stdout().write_all(&page));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shiptoken: cannot write the man page: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `accounts remove`: the account and its tokens.
pub(super) fn remove(socket: &Path, account: &str) -> Result<(), Failed> {
    let reply = client::call_blocking(socket, "DELETE", &account_path(account)?, None)?;
    expect_ok(&reply)?;
    say(format_args!("removed {account}"));
    Ok(())
}

/// `shippo connect`: starts the flow and prints the URL to open.
pub(super) fn shippo_connect(socket: &Path, name: &str) -> Result<(), Failed> {
    let reply = client::call_blocking(
        socket,
        "POST",
        "/v1/shippo/connect",
        Some(&json!({ "account": name })),
    )?;
    expect_ok(&reply)?;
    let url = reply
        .body
        .get("authorize_url")
        .and_then(Value::as_str)
        .unwrap_or_default();
    say(format_args!(
        "Open this URL to connect the Shippo account {name}:\n\n  {url}\n"
    ));
    say(format_args!(
        "The daemon finishes the flow at its callback; then `shiptoken get shippo/{name}` works."
    ));
    Ok(())
}

/// The exit code of a client command; a failure's message goes to stderr.
pub(super) fn exit_with(result: Result<u8, Failed>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("shiptoken: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// `shiptoken audit`: the daemon parses `--since` with its own clock, so "1h" means an hour
/// before the daemon's now.
pub(super) fn audit(
    socket: &Path,
    account: Option<&str>,
    since: Option<&str>,
    json: bool,
) -> Result<(), Failed> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(a) = account {
        account_path(a)?;
        query.append_pair("account", a);
    }
    if let Some(s) = since {
        query.append_pair("since", s);
    }
    let query = query.finish();
    let path = if query.is_empty() {
        "/v1/audit".to_string()
    } else {
        format!("/v1/audit?{query}")
    };
    let reply = client::call_blocking(socket, "GET", &path, None)?;
    expect_ok(&reply)?;
    let entries = reply
        .body
        .get("entries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if json {
        say(format_args!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(entries)).unwrap_or_default()
        ));
        return Ok(());
    }
    for line in render::audit_table(&entries) {
        say(format_args!("{line}"));
    }
    Ok(())
}

pub(super) fn account_path(account: &str) -> Result<String, Failed> {
    let key = crate::names::AccountKey::parse(account).map_err(|e| Failed {
        code: 2,
        message: e.to_string(),
    })?;
    Ok(format!("/v1/accounts/{}/{}", key.provider, key.name))
}

/// Maps an error answer to an exit code: 3 when the account has no usable token.
pub(super) fn expect_ok(reply: &Reply) -> Result<(), Failed> {
    if (200..300).contains(&reply.status) {
        return Ok(());
    }
    let code = match reply.code() {
        "account_suspended" | "account_revoked" | "token_expired" | "account_pending" => 3,
        _ => 1,
    };
    let mut message = reply.message();
    if let Some(e) = reply.body.get("last_error").and_then(Value::as_str) {
        message.push_str(&format!(" (last error: {e})"));
    }
    Err(Failed { code, message })
}

pub(super) fn get(socket: &Path, account: &str, json: bool) -> Result<(), Failed> {
    let key = crate::names::AccountKey::parse(account).map_err(|e| Failed {
        code: 2,
        message: e.to_string(),
    })?;
    let reply = client::call_blocking(
        socket,
        "GET",
        &format!("/v1/tokens/{}/{}", key.provider, key.name),
        None,
    )?;
    expect_ok(&reply)?;
    if json {
        say(format_args!(
            "{}",
            serde_json::to_string_pretty(&reply.body).unwrap_or_default()
        ));
    } else {
        let token = reply
            .body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("answer has no access_token"))?;
        say(format_args!("{token}"));
    }
    Ok(())
}

pub(super) fn act(
    socket: &Path,
    account: &str,
    action: &str,
    waiter: &Waiter,
) -> Result<(), Failed> {
    let provider = crate::names::AccountKey::parse(account)
        .ok()
        .map(|k| k.provider);
    let line = waiter.wait_on(provider, || act_quiet(socket, account, action))?;
    say(format_args!("{line}"));
    Ok(())
}

/// Performs `action` on one account and returns the line to print.
fn act_quiet(socket: &Path, account: &str, action: &str) -> Result<String, Failed> {
    let path = format!("{}/{action}", account_path(account)?);
    let reply = client::call_blocking(socket, "POST", &path, None)?;
    expect_ok(&reply)?;
    let b = &reply.body;
    let s = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    Ok(format!(
        "{account}: {} (expires {}, last check {})",
        s("status"),
        s("expires_at"),
        s("last_verified_at")
    ))
}

/// Rotates several accounts one after another: a progress bar on a terminal, a line per
/// account otherwise. Exits with the worst outcome (1 before 3 before 0).
pub(super) fn rotate_many(
    socket: &Path,
    accounts: &[String],
    all: bool,
    waiter: &Waiter,
) -> Result<(), Failed> {
    let keys: Vec<String> = if all {
        let reply = client::call_blocking(socket, "GET", "/v1/accounts", None)?;
        expect_ok(&reply)?;
        let empty = Vec::new();
        let list = reply
            .body
            .get("accounts")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        list.iter()
            .map(|a| {
                format!(
                    "{}/{}",
                    a["provider"].as_str().unwrap_or(""),
                    a["account"].as_str().unwrap_or("")
                )
            })
            .collect()
    } else {
        accounts.to_vec()
    };
    if let [only] = keys.as_slice() {
        return act(socket, only, "rotate", waiter);
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(keys.len() as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}")
        {
            bar.set_style(style);
        }
        bar
    });
    let mut worst: Option<Failed> = None;
    for key in &keys {
        if let Some(b) = &bar {
            let provider = crate::names::AccountKey::parse(key)
                .ok()
                .map(|k| k.provider);
            b.set_message(match provider {
                Some(p) => format!("{key}: {}", waiter.what(p)),
                None => key.clone(),
            });
        }
        let line = match act_quiet(socket, key, "rotate") {
            Ok(line) => line,
            Err(f) if f.code == 4 => return Err(f),
            Err(f) => {
                // The daemon's message may name the account already.
                let line = if f.message.starts_with(&format!("{key}:")) {
                    f.message
                } else {
                    format!("{key}: {}", f.message)
                };
                if worst.as_ref().is_none_or(|w| w.code != 1) {
                    worst = Some(Failed {
                        code: f.code,
                        message: line.clone(),
                    });
                }
                line
            }
        };
        match &bar {
            Some(b) => {
                b.println(line);
                b.inc(1);
            }
            None => say(format_args!("{line}")),
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match worst {
        Some(w) => Err(Failed {
            code: w.code,
            message: format!("not every rotation worked; first problem: {}", w.message),
        }),
        None => Ok(()),
    }
}

/// `accounts list --watch`: redraws the table every second until interrupted. On a terminal
/// it clears the screen and colours the status; without one (or with NO_COLOR) it prints
/// plain snapshots.
pub(super) async fn watch(socket: &Path) -> Result<(), Failed> {
    use std::io::Write;
    let tty = std::io::stdout().is_terminal();
    let color = tty && std::env::var_os("NO_COLOR").is_none();
    loop {
        let reply = client::call(socket, "GET", "/v1/accounts", None).await?;
        expect_ok(&reply)?;
        // The daemon's clock, so the view agrees with it even when tests move it.
        let health = client::call(socket, "GET", "/v1/health", None)
            .await
            .map(|h| h.body)
            .unwrap_or(Value::Null);
        let now = health
            .get("now")
            .and_then(Value::as_str)
            .and_then(Timestamp::parse_rfc3339)
            .unwrap_or_else(|| Clock::system().now());
        let size = Screen {
            width: terminal_width(),
            rows: terminal_rows(),
        };
        let screen = render_watch(&reply.body, now, size, color);
        if tty {
            say_raw(format_args!("\x1b[H\x1b[2J{screen}"));
        } else {
            say(format_args!("{screen}"));
        }
        let _ = std::io::stdout().flush();
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn read_secret(path: &Path, what: &str, stdin_used: &mut bool) -> Result<String, Failed> {
    let text = if path == Path::new("-") {
        if *stdin_used {
            return Err(Failed {
                code: 2,
                message: "only one secret can come from stdin (\"-\")".into(),
            });
        }
        *stdin_used = true;
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| fail(format!("cannot read the {what} from stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            fail(format!(
                "cannot read the {what} from {}: {e}",
                path.display()
            ))
        })?
    };
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(fail(format!("the {what} file {} is empty", path.display())));
    }
    Ok(token)
}

pub(super) fn add_account(socket: &Path, add: &AddArgs, waiter: &Waiter) -> Result<(), Failed> {
    let mut stdin_used = false;
    let mut read = |file: &Path, what: &str| read_secret(file, what, &mut stdin_used);
    let body = match &add.provider {
        AddCommand::Shiphero(args) => args.body(&mut read)?,
        AddCommand::Shippo(args) => args.body(&mut read)?,
        AddCommand::Oauth2(args) => args.body(&mut read)?,
    };
    let path = if add.wait {
        "/v1/accounts?wait=true"
    } else {
        "/v1/accounts"
    };
    let provider = body
        .get("provider")
        .and_then(Value::as_str)
        .and_then(crate::names::Provider::parse);
    let reply = waiter.wait_on(provider, || {
        client::call_blocking(socket, "POST", path, Some(&body))
    })?;
    expect_ok(&reply)?;
    let b = &reply.body;
    let s = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    say(format_args!(
        "added {}/{}: {}",
        s("provider"),
        s("account"),
        s("status")
    ));
    if let Some(e) = b.get("last_error").and_then(Value::as_str) {
        say(format_args!("last error: {e}"));
    }
    if let Some(secs) = b.get("check_in_seconds").and_then(Value::as_u64) {
        say(format_args!(
            "first check queued behind {}'s pacing, in about {secs}s (`shiptoken accounts list` shows its status; --wait waits for it)",
            s("provider")
        ));
    }
    refused_at_add(socket, b)
}

/// Exit 3, as `get` would, when the provider refused what was registered (it answered with
/// evidence against the credentials, or the account is flagged already): the account is
/// kept (it can be fixed or removed), but a script must notice. An account still queued
/// behind its provider's pacing, or whose first check proved nothing (the provider down, a
/// timeout), was refused nothing: it is checked again, and the add exits 0.
fn refused_at_add(socket: &Path, body: &Value) -> Result<(), Failed> {
    let s = |k: &str| body.get(k).and_then(Value::as_str);
    let status = s("status").unwrap_or("-");
    let error = s("last_error");
    let key = format!(
        "{}/{}",
        s("provider").unwrap_or("-"),
        s("account").unwrap_or("-")
    );
    let refused = match status {
        "active" => false,
        "pending" if error.is_none() => false,
        "pending" => held_against(socket, &key),
        _ => true,
    };
    if !refused {
        return Ok(());
    }
    Err(Failed {
        code: 3,
        message: format!(
            "{key} was registered but has no usable token: {status}, {}",
            error.unwrap_or("no reason given")
        ),
    })
}

/// Whether the daemon holds evidence against `key`'s credentials (`detail`'s
/// `token_doubt` or `renew_doubt`). An answer that cannot be read counts as none: the add
/// itself worked.
fn held_against(socket: &Path, key: &str) -> bool {
    let Ok(path) = account_path(key) else {
        return false;
    };
    match client::call_blocking(socket, "GET", &format!("{path}/detail"), None) {
        Ok(reply) if (200..300).contains(&reply.status) => ["token_doubt", "renew_doubt"]
            .iter()
            .any(|k| reply.body.get(*k).is_some_and(|d| !d.is_null())),
        _ => false,
    }
}

pub(super) fn list(socket: &Path, json: bool) -> Result<(), Failed> {
    let reply = client::call_blocking(socket, "GET", "/v1/accounts", None)?;
    expect_ok(&reply)?;
    if json {
        say(format_args!(
            "{}",
            serde_json::to_string_pretty(&reply.body).unwrap_or_default()
        ));
        return Ok(());
    }
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    for line in render::accounts_table(&reply.body, Clock::system().now(), color) {
        say(format_args!("{line}"));
    }
    Ok(())
}
