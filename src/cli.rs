//! The command line: clap definitions, and the client commands that talk to the daemon.
//!
//! Exit codes (CONTRACT.md): 0 success, 1 failure, 2 usage error (clap), 3 the account
//! exists but has no usable token, 4 the daemon is not reachable.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::client::{self, ClientError, Reply};
use crate::clock::{Clock, Timestamp};
use crate::config::{Config, DEFAULT_CONFIG_PATH};

/// Keeps ShipHero and Shippo API tokens alive and serves them over a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "shiptoken", version, about, propagate_version = true)]
pub struct Cli {
    /// The daemon's Unix socket (client commands); default: the config's socket.path.
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Configuration file [default: /etc/shiptoken/shiptoken.toml].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (systemd Type=notify).
    Serve(ServeArgs),
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print an account's current access token.
    Get {
        /// PROVIDER/ACCOUNT, e.g. shiphero/acme.
        account: String,
        /// Print the daemon's whole JSON answer (token, expiry, headers to send).
        #[arg(long)]
        json: bool,
    },
    /// List, register and remove accounts.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Refresh access tokens now, then check them (a progress bar for many).
    Rotate {
        /// PROVIDER/ACCOUNT, one or more.
        #[arg(required_unless_present = "all")]
        accounts: Vec<String>,
        /// Every registered account.
        #[arg(long, conflicts_with = "accounts")]
        all: bool,
    },
    /// Check the current token against the provider's API now.
    Verify {
        /// PROVIDER/ACCOUNT.
        account: String,
    },
    /// Shippo OAuth.
    #[command(subcommand)]
    Shippo(ShippoCommand),
    /// Show who was handed which token: time, client rule, uid, gid, pid, executable, account
    /// and the token's fingerprint (admins only).
    Audit {
        /// Only this PROVIDER/ACCOUNT.
        #[arg(long)]
        account: Option<String>,
        /// Only since this RFC 3339 time, or this long ago ("1h", "7d").
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `shiptoken man > shiptoken.1`.
    Man,
    /// Copy the registry consistently while the daemon runs (SQLite online backup).
    Backup {
        /// Where to write the copy (must not exist; created with mode 0600).
        file: PathBuf,
    },
    /// The key that seals tokens at rest.
    #[command(subcommand)]
    Key(KeyCommand),
}

/// `key` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Re-seal every token with a new key, in one transaction; run with the daemon stopped.
    Rotate {
        /// Write the new key here instead of replacing the key file (required when the key
        /// is the systemd credential shiptoken.key).
        #[arg(long, value_name = "FILE")]
        new_key_out: Option<PathBuf>,
    },
}

/// Options of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A complete local demo: temporary state, simulated ShipHero and Shippo, demo accounts
    /// (in builds with the `dev` feature, the default; not in the .deb).
    #[arg(long)]
    pub dev: bool,
    /// With --dev: keep the temporary state folder on exit.
    #[arg(long, requires = "dev")]
    pub keep: bool,
    /// Testing aid: allow POST /v1/debug/clock to move the daemon's clock forward.
    #[cfg(feature = "dev")]
    #[arg(long, hide = true)]
    pub movable_clock: bool,
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective values (secrets redacted).
    Check,
}

/// `accounts` subcommands.
#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// One row per account: status, expiry, last rotation, last check, last error.
    List {
        /// Print JSON instead of a table.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw a live view every second: status, token lifetime, rotation point.
        #[arg(long)]
        watch: bool,
    },
    /// Register an account.
    #[command(subcommand)]
    Add(AddCommand),
    /// Remove an account and its tokens.
    Remove {
        /// PROVIDER/ACCOUNT.
        account: String,
    },
}

/// `accounts add` subcommands.
#[derive(Debug, Subcommand)]
pub enum AddCommand {
    /// Register a ShipHero developer user (secrets are read from files, never arguments).
    Shiphero {
        /// Account name: 1-64 characters of a-z 0-9 . _ -
        name: String,
        /// The developer user's email (unique across ShipHero).
        #[arg(long)]
        email: String,
        /// The developer user's first name.
        #[arg(long)]
        first_name: Option<String>,
        /// The developer user's last name.
        #[arg(long)]
        last_name: Option<String>,
        /// File holding the refresh token ("-" for stdin).
        #[arg(long, value_name = "FILE")]
        refresh_token_file: PathBuf,
        /// File holding the access token ShipHero showed ("-" for stdin).
        #[arg(long, value_name = "FILE")]
        access_token_file: Option<PathBuf>,
    },
    /// Register a Shippo OAuth token obtained elsewhere.
    Shippo {
        /// Account name: 1-64 characters of a-z 0-9 . _ -
        name: String,
        /// File holding the OAuth access token ("-" for stdin).
        #[arg(long, value_name = "FILE")]
        access_token_file: PathBuf,
    },
}

/// `shippo` subcommands.
#[derive(Debug, Subcommand)]
pub enum ShippoCommand {
    /// Start the OAuth flow for account NAME and print the URL to open.
    Connect {
        /// Account name to create.
        name: String,
    },
}

/// A client command's failure, with its exit code.
struct Failed {
    code: u8,
    message: String,
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

fn fail(message: impl Into<String>) -> Failed {
    Failed {
        code: 1,
        message: message.into(),
    }
}

/// The socket a client command talks to: `--socket`, else the config's `socket.path`, else
/// the default.
fn socket_path(cli: &Cli) -> Result<PathBuf, Failed> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    match &cli.config {
        Some(file) => Config::load(Some(file))
            .map(|c| c.socket.path)
            .map_err(|e| fail(format!("{e}"))),
        // The default file may be unreadable for an unprivileged client: fall back quietly.
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => Ok(Config::load(None)
            .map(|c| c.socket.path)
            .unwrap_or_else(|_| default_socket())),
        None => Ok(default_socket()),
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from(crate::config::RawConfig::default().socket.path)
}

/// Runs a client command (everything but `serve` and `config check`).
pub async fn run_client(cli: &Cli) -> ExitCode {
    match &cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "shiptoken", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            return match page.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("shiptoken: cannot write the man page: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let result = async {
        let socket = socket_path(cli)?;
        match &cli.command {
            Command::Get { account, json } => get(&socket, account, *json).await,
            Command::Accounts(AccountsCommand::List { watch: true, .. }) => watch(&socket).await,
            Command::Accounts(AccountsCommand::List { json, .. }) => list(&socket, *json).await,
            Command::Accounts(AccountsCommand::Add(add)) => add_account(&socket, add).await,
            Command::Accounts(AccountsCommand::Remove { account }) => {
                let reply = client::call(&socket, "DELETE", &account_path(account)?, None).await?;
                expect_ok(&reply)?;
                say(format_args!("removed {account}"));
                Ok(())
            }
            Command::Rotate { accounts, all } => rotate_many(&socket, accounts, *all).await,
            Command::Verify { account } => act(&socket, account, "verify").await,
            Command::Audit { account, since, json } => {
                audit(&socket, account.as_deref(), since.as_deref(), *json).await
            }
            Command::Shippo(ShippoCommand::Connect { name }) => {
                let reply = client::call(&socket, "POST", "/v1/shippo/connect", Some(&json!({ "account": name }))).await?;
                expect_ok(&reply)?;
                let url = reply.body.get("authorize_url").and_then(Value::as_str).unwrap_or_default();
                say(format_args!("Open this URL to connect the Shippo account {name}:\n\n  {url}\n"));
                say(format_args!("The daemon finishes the flow at its callback; then `shiptoken get shippo/{name}` works."));
                Ok(())
            }
            Command::Serve(_)
            | Command::Config(_)
            | Command::Completions { .. }
            | Command::Man
            | Command::Backup { .. }
            | Command::Key(_) => {
                Err(fail("not a client command"))
            }
        }
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("shiptoken: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// `shiptoken audit`: the daemon parses `--since` with its own clock, so "1h" means an hour
/// before the daemon's now.
async fn audit(
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
    let reply = client::call(socket, "GET", &path, None).await?;
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
    let text = |e: &Value, k: &str| match e.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_string(),
        Some(v) => v.to_string(),
    };
    say(format_args!(
        "AT\tLAST\tCOUNT\tACCOUNT\tCLIENT\tUID\tGID\tPID\tEXE\tFINGERPRINT"
    ));
    for e in &entries {
        say(format_args!(
            "{}",
            [
                "at",
                "last_at",
                "count",
                "account",
                "client",
                "uid",
                "gid",
                "pid",
                "exe",
                "fingerprint"
            ]
            .map(|k| text(e, k))
            .join("\t")
        ));
    }
    Ok(())
}

fn account_path(account: &str) -> Result<String, Failed> {
    let key = crate::names::AccountKey::parse(account).map_err(|e| Failed {
        code: 2,
        message: e.to_string(),
    })?;
    Ok(format!("/v1/accounts/{}/{}", key.provider, key.name))
}

/// Maps an error answer to an exit code: 3 when the account has no usable token.
fn expect_ok(reply: &Reply) -> Result<(), Failed> {
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

async fn get(socket: &Path, account: &str, json: bool) -> Result<(), Failed> {
    let key = crate::names::AccountKey::parse(account).map_err(|e| Failed {
        code: 2,
        message: e.to_string(),
    })?;
    let reply = client::call(
        socket,
        "GET",
        &format!("/v1/tokens/{}/{}", key.provider, key.name),
        None,
    )
    .await?;
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

async fn act(socket: &Path, account: &str, action: &str) -> Result<(), Failed> {
    let line = act_quiet(socket, account, action).await?;
    say(format_args!("{line}"));
    Ok(())
}

/// Performs `action` on one account and returns the line to print.
async fn act_quiet(socket: &Path, account: &str, action: &str) -> Result<String, Failed> {
    let path = format!("{}/{action}", account_path(account)?);
    let reply = client::call(socket, "POST", &path, None).await?;
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
async fn rotate_many(socket: &Path, accounts: &[String], all: bool) -> Result<(), Failed> {
    let keys: Vec<String> = if all {
        let reply = client::call(socket, "GET", "/v1/accounts", None).await?;
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
        return act(socket, only, "rotate").await;
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
            b.set_message(key.clone());
        }
        let line = match act_quiet(socket, key, "rotate").await {
            Ok(line) => line,
            Err(f) if f.code == 4 => return Err(f),
            Err(f) => {
                let line = format!("{key}: {}", f.message);
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

/// The terminal's width in columns (`COLUMNS`, else the tty's, else 100).
fn terminal_width() -> usize {
    if let Some(n) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return n;
    }
    match rustix::termios::tcgetwinsize(std::io::stdout()) {
        Ok(size) if size.ws_col > 0 => usize::from(size.ws_col),
        _ => 100,
    }
}

/// A bar of a token's life: `#` for time gone, `.` for time left, `|` at the rotation point.
pub fn lifetime_bar(
    issued: Timestamp,
    refresh_after: Option<Timestamp>,
    expires: Timestamp,
    now: Timestamp,
    width: usize,
) -> String {
    let total = expires.since(issued).as_secs_f64().max(1.0);
    let cell =
        |t: Timestamp| ((t.since(issued).as_secs_f64() / total) * width as f64).round() as usize;
    let gone = cell(now).min(width);
    let mark = refresh_after.map(|r| cell(r).min(width.saturating_sub(1)));
    (0..width)
        .map(|i| {
            if Some(i) == mark {
                '|'
            } else if i < gone {
                '#'
            } else {
                '.'
            }
        })
        .collect()
}

/// `accounts list --watch`: redraws the table every second until interrupted. On a terminal
/// it clears the screen and colours the status; without one (or with NO_COLOR) it prints
/// plain snapshots.
async fn watch(socket: &Path) -> Result<(), Failed> {
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
        let screen = render_watch(&reply.body, now, terminal_width(), color);
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

/// Cuts a line to `width` characters; the last columns (the error) go first.
fn fit(line: String, width: usize) -> String {
    if line.chars().count() <= width {
        return line;
    }
    line.chars()
        .take(width.saturating_sub(1))
        .collect::<String>()
        + "…"
}

/// One frame of the live view.
pub fn render_watch(accounts: &Value, now: Timestamp, width: usize, color: bool) -> String {
    let ts = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(Timestamp::parse_rfc3339)
    };
    let key_of = |a: &Value| {
        format!(
            "{}/{}",
            a["provider"].as_str().unwrap_or(""),
            a["account"].as_str().unwrap_or("")
        )
    };
    let empty = Vec::new();
    let list = accounts
        .get("accounts")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let name_w = list
        .iter()
        .map(|a| key_of(a).len())
        .max()
        .unwrap_or(7)
        .max(7);
    let bar_w = 25;
    let mut out = format!(
        "shiptoken  {}  {} accounts\n\n",
        now.to_rfc3339(),
        list.len()
    );
    let header = format!(
        "{:<name_w$}  {:<10} {:<bar_w$}  {:<14} {:<14} LAST ERROR",
        "ACCOUNT", "STATUS", "TOKEN LIFE (| rotation)", "EXPIRES", "LAST CHECK"
    );
    out.push_str(&fit(header, width));
    out.push('\n');
    for a in list {
        let status = a["status"].as_str().unwrap_or("-");
        let bar = match (ts(a, "issued_at"), ts(a, "expires_at")) {
            (Some(i), Some(e)) => lifetime_bar(i, ts(a, "refresh_after"), e, now, bar_w),
            (Some(_), None) => format!("{:<bar_w$}", "never expires"),
            _ => format!("{:<bar_w$}", "-"),
        };
        let expires = if a["expires_at"].is_null() && a["issued_at"].is_string() {
            "never".to_string()
        } else {
            relative(ts(a, "expires_at"), now)
        };
        let padded = format!("{status:<10}");
        let status_cell = if color {
            let code = match status {
                "active" => "32",
                "pending" => "33",
                _ => "31",
            };
            format!("\x1b[{code}m{padded}\x1b[0m")
        } else {
            padded
        };
        let checked = relative(ts(a, "last_verified_at"), now);
        let error = a["last_error"].as_str().unwrap_or("-");
        let line = format!(
            "{:<name_w$}  {status_cell} {bar}  {expires:<14} {checked:<14} {error}",
            key_of(a)
        );
        // Colour codes take no room on screen.
        out.push_str(&fit(line, if color { width + 9 } else { width }));
        out.push('\n');
    }
    out
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

async fn add_account(socket: &Path, add: &AddCommand) -> Result<(), Failed> {
    let mut stdin_used = false;
    let body = match add {
        AddCommand::Shiphero {
            name,
            email,
            first_name,
            last_name,
            refresh_token_file,
            access_token_file,
        } => {
            let refresh = read_secret(refresh_token_file, "refresh token", &mut stdin_used)?;
            let access = match access_token_file {
                Some(f) => Some(read_secret(f, "access token", &mut stdin_used)?),
                None => None,
            };
            json!({
                "provider": "shiphero", "account": name, "email": email, "first_name": first_name,
                "last_name": last_name, "refresh_token": refresh, "access_token": access,
            })
        }
        AddCommand::Shippo {
            name,
            access_token_file,
        } => {
            let access = read_secret(access_token_file, "access token", &mut stdin_used)?;
            json!({ "provider": "shippo", "account": name, "access_token": access })
        }
    };
    let reply = client::call(socket, "POST", "/v1/accounts", Some(&body)).await?;
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
    Ok(())
}

/// "in 13 days", "5 minutes ago", or "-".
pub fn relative(t: Option<Timestamp>, now: Timestamp) -> String {
    let Some(t) = t else { return "-".into() };
    let (d, future) = if t >= now {
        (t.since(now), true)
    } else {
        (now.since(t), false)
    };
    let secs = d.as_secs();
    if secs == 0 {
        return "now".into();
    }
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    let plural = if n == 1 { "" } else { "s" };
    if future {
        format!("in {n} {unit}{plural}")
    } else {
        format!("{n} {unit}{plural} ago")
    }
}

async fn list(socket: &Path, json: bool) -> Result<(), Failed> {
    let reply = client::call(socket, "GET", "/v1/accounts", None).await?;
    expect_ok(&reply)?;
    if json {
        say(format_args!(
            "{}",
            serde_json::to_string_pretty(&reply.body).unwrap_or_default()
        ));
        return Ok(());
    }
    let now = Clock::system().now();
    let ts = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(Timestamp::parse_rfc3339)
    };
    let mut rows = vec![[
        "ACCOUNT".to_string(),
        "STATUS".into(),
        "EXPIRES".into(),
        "LAST ROTATION".into(),
        "LAST CHECK".into(),
        "LAST ERROR".into(),
    ]];
    let empty = Vec::new();
    for a in reply
        .body
        .get("accounts")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
    {
        let s = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        let status = match ts(a, "status_since") {
            Some(since) if s("status") != "active" => {
                format!("{} ({})", s("status"), relative(Some(since), now))
            }
            _ => s("status"),
        };
        let expires =
            if a.get("expires_at").is_some_and(Value::is_null) && s("provider") == "shippo" {
                "never".to_string()
            } else {
                relative(ts(a, "expires_at"), now)
            };
        rows.push([
            format!("{}/{}", s("provider"), s("account")),
            status,
            expires,
            relative(ts(a, "last_rotated_at"), now),
            relative(ts(a, "last_verified_at"), now),
            s("last_error"),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    for (n, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let padded = if i == 5 {
                cell.clone()
            } else {
                format!("{cell:<w$}  ", w = widths[i])
            };
            if color && i == 1 && n > 0 {
                let code = if cell.starts_with("active") {
                    "32"
                } else if cell.starts_with("pending") {
                    "33"
                } else {
                    "31"
                };
                line.push_str(&format!("\x1b[{code}m{padded}\x1b[0m"));
            } else {
                line.push_str(&padded);
            }
        }
        say(format_args!("{}", line.trim_end()));
    }
    Ok(())
}

/// Writes a line to standard output. When the reader has gone (`shiptoken audit | head`),
/// the command ends quietly with success, as Unix tools do; `println!` would panic. Any other
/// write error is reported, since output was lost.
pub fn say(line: std::fmt::Arguments<'_>) {
    write_out(format_args!("{line}\n"));
}

/// [`say`] without the line end.
pub fn say_raw(text: std::fmt::Arguments<'_>) {
    write_out(text);
}

fn write_out(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(text).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("shiptoken: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_lifetime_bar_marks_the_rotation_point() {
        let t = |s: i64| Timestamp::from_secs(1_800_000_000 + s);
        assert_eq!(
            lifetime_bar(t(0), Some(t(50)), t(100), t(25), 10),
            "###..|...."
        );
        assert_eq!(
            lifetime_bar(t(0), Some(t(50)), t(100), t(200), 10),
            "#####|####"
        );
    }

    #[test]
    fn the_watch_view_fits_the_terminal_and_has_no_colour_when_asked() {
        let now = Timestamp::from_secs(1_800_000_000);
        let accounts = serde_json::json!({"accounts": [{
            "provider": "shiphero", "account": "acme", "status": "suspended",
            "issued_at": "2027-01-15T08:00:00Z", "expires_at": "2027-01-15T08:01:00Z",
            "refresh_after": "2027-01-15T08:00:30Z", "last_verified_at": null,
            "last_error": "x".repeat(300)
        }]});
        let plain = render_watch(&accounts, now, 80, false);
        assert!(!plain.contains('\x1b'));
        assert!(plain.lines().all(|l| l.chars().count() <= 80), "{plain}");
        assert!(plain.contains("shiphero/acme") && plain.contains("suspended"));
        let colored = render_watch(&accounts, now, 80, true);
        assert!(colored.contains("\x1b[31msuspended"));
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = Timestamp::from_secs(1_800_000_000);
        assert_eq!(
            relative(
                Some(Timestamp::from_secs(1_800_000_000 + 13 * 86_400 + 5)),
                now
            ),
            "in 13 days"
        );
        assert_eq!(
            relative(Some(Timestamp::from_secs(1_800_000_000 - 300)), now),
            "5 minutes ago"
        );
        assert_eq!(relative(None, now), "-");
    }
}
