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
    /// Refresh the access token now, then check it.
    Rotate {
        /// PROVIDER/ACCOUNT.
        account: String,
    },
    /// Check the current token against the provider's API now.
    Verify {
        /// PROVIDER/ACCOUNT.
        account: String,
    },
    /// Shippo OAuth.
    #[command(subcommand)]
    Shippo(ShippoCommand),
}

/// Options of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A complete local demo: temporary state, simulated ShipHero and Shippo, demo accounts.
    #[arg(long)]
    pub dev: bool,
    /// With --dev: keep the temporary state folder on exit.
    #[arg(long, requires = "dev")]
    pub keep: bool,
    /// Testing aid: allow POST /v1/debug/clock to move the daemon's clock forward.
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
        #[arg(long)]
        json: bool,
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
    let result = async {
        let socket = socket_path(cli)?;
        match &cli.command {
            Command::Get { account, json } => get(&socket, account, *json).await,
            Command::Accounts(AccountsCommand::List { json }) => list(&socket, *json).await,
            Command::Accounts(AccountsCommand::Add(add)) => add_account(&socket, add).await,
            Command::Accounts(AccountsCommand::Remove { account }) => {
                let reply = client::call(&socket, "DELETE", &account_path(account)?, None).await?;
                expect_ok(&reply)?;
                println!("removed {account}");
                Ok(())
            }
            Command::Rotate { account } => act(&socket, account, "rotate").await,
            Command::Verify { account } => act(&socket, account, "verify").await,
            Command::Shippo(ShippoCommand::Connect { name }) => {
                let reply = client::call(&socket, "POST", "/v1/shippo/connect", Some(&json!({ "account": name }))).await?;
                expect_ok(&reply)?;
                let url = reply.body.get("authorize_url").and_then(Value::as_str).unwrap_or_default();
                println!("Open this URL to connect the Shippo account {name}:\n\n  {url}\n");
                println!("The daemon finishes the flow at its callback; then `shiptoken get shippo/{name}` works.");
                Ok(())
            }
            Command::Serve(_) | Command::Config(_) => Err(fail("not a client command")),
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
        println!(
            "{}",
            serde_json::to_string_pretty(&reply.body).unwrap_or_default()
        );
    } else {
        let token = reply
            .body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("answer has no access_token"))?;
        println!("{token}");
    }
    Ok(())
}

async fn act(socket: &Path, account: &str, action: &str) -> Result<(), Failed> {
    let path = format!("{}/{action}", account_path(account)?);
    let reply = client::call(socket, "POST", &path, None).await?;
    expect_ok(&reply)?;
    let b = &reply.body;
    let s = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    println!(
        "{account}: {} (expires {}, last check {})",
        s("status"),
        s("expires_at"),
        s("last_verified_at")
    );
    Ok(())
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
    println!("added {}/{}: {}", s("provider"), s("account"), s("status"));
    if let Some(e) = b.get("last_error").and_then(Value::as_str) {
        println!("last error: {e}");
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
        println!(
            "{}",
            serde_json::to_string_pretty(&reply.body).unwrap_or_default()
        );
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
        println!("{}", line.trim_end());
    }
    Ok(())
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
