//! The command line: the clap definitions here, the client commands that talk to the daemon
//! in [`commands`], and how their answers look on a terminal in [`render`].
//!
//! Exit codes (CONTRACT.md): 0 success, 1 failure, 2 usage error (clap), 3 the account
//! exists but has no usable token, 4 the daemon is not reachable.

mod commands;
mod exec;
mod follow;
mod render;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use commands::{run_client, run_one_shot};
pub use render::{lifetime_bar, relative, render_watch, say, say_raw};

/// Reads the command line. `get` in the shape scripts use (`[--socket PATH] get
/// PROVIDER/ACCOUNT [--json]`, in any order clap accepts) is read by hand; everything else,
/// errors and help included, by clap. Building clap's whole command tree, every subcommand
/// and its help, cost a `get` about 50 page faults and 5-8% of its CPU time
/// (docs/socket.md); a test checks that clap reads every accepted line the same way.
pub fn parse() -> Cli {
    quick_get(std::env::args_os().skip(1)).unwrap_or_else(Cli::parse)
}

/// `get`'s common shape, or `None` for anything else (which clap then reads). Only lines
/// clap would read the same are accepted: each option once, values not looking like options.
fn quick_get(mut args: impl Iterator<Item = OsString>) -> Option<Cli> {
    let mut socket = None;
    let mut get = false;
    let mut account = None;
    let mut json = false;
    let plain = |value: &OsString| !value.is_empty() && !value.as_encoded_bytes().starts_with(b"-");
    while let Some(arg) = args.next() {
        match arg.to_str()? {
            "--socket" if socket.is_none() => socket = Some(args.next().filter(plain)?),
            "get" if !get => get = true,
            "--json" if get && !json => json = true,
            a if get && account.is_none() && !a.starts_with('-') => account = Some(a.to_string()),
            _ => return None,
        }
    }
    get.then_some(())?;
    Some(Cli {
        socket: socket.map(PathBuf::from),
        config: None,
        command: Command::Get {
            account: account?,
            json,
            watch: false,
        },
    })
}

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
        /// Keep running and print each new token (or JSON answer, one line) once, as the
        /// daemon starts serving it; ends on SIGINT, SIGTERM or a closed pipe.
        #[arg(long)]
        watch: bool,
    },
    /// Run a program with tokens in its environment, e.g.
    /// `shiptoken exec --token shiphero/acme -- php sync.php`.
    ///
    /// Each token goes in SHIPHERO_ACCESS_TOKEN or SHIPPO_ACCESS_TOKEN (plus
    /// SHIPPO_API_VERSION for Shippo) unless named with =ENV_NAME. SIGTERM, SIGINT and SIGHUP
    /// are passed on; the exit status is the program's (128+N when signal N ended it; 127 or
    /// 126 when it could not be started). It is not started when an account has no usable
    /// token (exit 3) or the daemon is not reachable (exit 4).
    Exec {
        /// PROVIDER/ACCOUNT[=ENV_NAME], one or more; two accounts of one provider need names.
        #[arg(
            long = "token",
            value_name = "PROVIDER/ACCOUNT[=ENV_NAME]",
            required = true
        )]
        tokens: Vec<String>,
        /// Restart the program (SIGTERM, SIGKILL after 10 s) with the new token when one changes.
        #[arg(long, conflicts_with = "signal_on_rotate")]
        restart_on_rotate: bool,
        /// Send the program this signal (HUP, USR1, ...) when a token changes; it must re-read
        /// the token itself (from a sink or the socket), since its environment cannot change.
        #[arg(long, value_name = "SIGNAL")]
        signal_on_rotate: Option<String>,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<std::ffi::OsString>,
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
    /// Work on the registry itself.
    #[command(subcommand)]
    Registry(RegistryCommand),
}

/// `registry` subcommands.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Copy the configured registry (SQLite in state_dir, or [registry] url) into another
    /// that holds no account yet: a PostgreSQL database to share it between daemons, or a
    /// new SQLite state folder to go back. Tokens stay sealed with the same key. Run it
    /// with the daemons stopped, then point [registry] url at the target.
    Migrate {
        /// postgres://USER@HOST:PORT/DATABASE, or the absolute path of a new state folder
        /// for a SQLite registry.
        #[arg(long, value_name = "TARGET")]
        to: String,
        /// A file holding the target database's password (instead of one in the URL).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

impl Command {
    /// Whether the command asks the daemon once (or once per account, one after another) and
    /// exits, or answers without it: [`run_one_shot`] runs it before any async runtime or
    /// thread exists, and before the systemd environment is read (which only `serve`, and
    /// `exec` for what its program inherits, care about). Starting the runtime was most of a
    /// `get`'s time (docs/socket.md).
    pub fn is_one_shot(&self) -> bool {
        matches!(
            self,
            Command::Get { watch: false, .. }
                | Command::Accounts(
                    AccountsCommand::List { watch: false, .. }
                        | AccountsCommand::Add(_)
                        | AccountsCommand::Remove { .. }
                )
                | Command::Rotate { .. }
                | Command::Verify { .. }
                | Command::Audit { .. }
                | Command::Shippo(_)
                | Command::Completions { .. }
                | Command::Man
        )
    }
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

/// `accounts add` subcommands: one per provider, each with the arguments its folder defines
/// (`providers::<name>::account::AddArgs`).
#[derive(Debug, Subcommand)]
pub enum AddCommand {
    /// Register a ShipHero developer user (secrets are read from files, never arguments).
    Shiphero(crate::providers::shiphero::account::AddArgs),
    /// Register a Shippo OAuth token obtained elsewhere.
    Shippo(crate::providers::shippo::account::AddArgs),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every line the hand-read path accepts, clap reads to the same command; the lines it
    /// refuses are left to clap. Built from the words such lines are made of, in every order.
    #[test]
    fn get_read_by_hand_is_read_as_clap_reads_it() {
        let words = [
            "get",
            "shiphero/acme",
            "--json",
            "--socket",
            "/run/s.sock",
            "-x",
            "",
        ];
        let mut lines: Vec<Vec<&str>> = vec![vec![]];
        for length in 1..=5 {
            let shorter: Vec<Vec<&str>> = lines
                .iter()
                .filter(|l| l.len() == length - 1)
                .cloned()
                .collect();
            for line in shorter {
                for w in words {
                    let mut l = line.clone();
                    l.push(w);
                    lines.push(l);
                }
            }
        }
        for odd in ["--socket=/x", "--watch", "--", "--config", "--help", "-"] {
            lines.push(vec!["get", "shiphero/acme", odd]);
            lines.push(vec![odd, "get", "shiphero/acme"]);
        }
        let mut accepted = 0;
        for line in &lines {
            if let Some(cli) = quick_get(line.iter().map(OsString::from)) {
                accepted += 1;
                let clap =
                    Cli::try_parse_from(std::iter::once("shiptoken").chain(line.iter().copied()))
                        .unwrap_or_else(|e| panic!("{line:?}: clap refuses it: {e}"));
                assert_eq!(format!("{cli:?}"), format!("{clap:?}"), "{line:?}");
            }
        }
        assert!(accepted > 20, "only {accepted} lines read by hand");
    }
}
