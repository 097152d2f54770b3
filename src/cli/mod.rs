//! The command line: the clap definitions here, the client commands that talk to the daemon
//! in [`commands`], and how their answers look on a terminal in [`render`].
//!
//! Exit codes (CONTRACT.md): 0 success, 1 failure, 2 usage error (clap), 3 the account
//! exists but has no usable token, 4 the daemon is not reachable.

mod commands;
mod exec;
mod follow;
mod manpage;
mod offline;
mod render;
mod run;
mod show;
mod wait;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub(crate) use commands::say_old_key;
pub use render::{Screen, lifetime_bar, relative, render_watch, say, say_raw};
pub use run::{Process, run};

/// Reads the command line. A `get` line is read by a parser that clap builds from the same
/// definitions as [`Cli`]'s but without the other subcommands; any line it does not accept
/// (another command, an error, `--help`) is read again by the whole [`Cli`]. Building clap's
/// whole command tree, every subcommand and its help, cost a `get` about 50 page faults and
/// 5-8% of its CPU time; this parser costs it about 15 page faults and 2-3% of its time
/// more than the hand-written reader it replaced, which was a second definition of the line
/// (docs/socket.md).
pub fn parse() -> Cli {
    get_line(std::env::args_os()).unwrap_or_else(Cli::parse)
}

/// The command line as [`GetLine`] reads it, or `None` when it is not a `get` line that
/// parser accepts. `args` starts with the program's name, as `std::env::args_os` does.
fn get_line(args: impl IntoIterator<Item = std::ffi::OsString>) -> Option<Cli> {
    let line = GetLine::try_parse_from(args).ok()?;
    let GetOnly::Get(get) = line.command;
    Some(Cli {
        globals: line.globals,
        command: Command::Get(get),
    })
}

/// The command line of `get` alone: [`Cli`]'s global options and [`Command::Get`]'s
/// arguments, the same definitions, so the two cannot read a `get` line differently (a test
/// checks that they do not). It has no help flag or subcommand: building them cost a `get`
/// about 5 page faults, and a line asking for help is left to the whole [`Cli`] anyway.
#[derive(Debug, Parser)]
#[command(
    name = "shiptoken",
    disable_help_flag = true,
    disable_help_subcommand = true
)]
struct GetLine {
    #[command(flatten)]
    globals: GlobalArgs,
    #[command(subcommand)]
    command: GetOnly,
}

/// The one subcommand [`GetLine`] knows.
#[derive(Debug, Subcommand)]
enum GetOnly {
    #[command(disable_help_flag = true)]
    Get(GetArgs),
}

/// Keeps ShipHero and Shippo API tokens alive and serves them over a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "shiptoken", version, about, propagate_version = true)]
pub struct Cli {
    /// The options every command takes.
    #[command(flatten)]
    pub globals: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The options every command takes (`global`: before or after the subcommand).
#[derive(Debug, Args)]
#[group(skip)]
pub struct GlobalArgs {
    /// The daemon's Unix socket (client commands); default: the config's socket.path.
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Configuration file [default: /etc/shiptoken/shiptoken.toml].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
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
    Get(GetArgs),
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
    #[command(group(clap::ArgGroup::new("which").required(true).args(["accounts", "all"])))]
    Rotate {
        /// PROVIDER/ACCOUNT, one or more.
        #[arg(value_name = "PROVIDER/ACCOUNT")]
        accounts: Vec<String>,
        /// Every registered account.
        #[arg(long, conflicts_with = "accounts")]
        all: bool,
    },
    /// The daemon at a glance: accounts by status and provider, incidents in progress,
    /// registry health and each provider's queue of due work.
    Status,
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

/// Arguments of `get`.
#[derive(Debug, Args)]
#[group(skip)]
pub struct GetArgs {
    /// PROVIDER/ACCOUNT, e.g. shiphero/acme.
    pub account: String,
    /// Print the daemon's whole JSON answer (token, expiry, headers to send).
    #[arg(long)]
    pub json: bool,
    /// Keep running and print each new token (or JSON answer, one line) once, as the
    /// daemon starts serving it; ends on SIGINT, SIGTERM or a closed pipe.
    #[arg(long)]
    pub watch: bool,
}

/// `key` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write a new random key to FILE (mode 0600; never over an existing file): the one key
    /// every daemon sharing a PostgreSQL registry needs (docs/deployment.md).
    Generate {
        /// The file to create.
        file: PathBuf,
    },
    /// Re-seal every token with a new key, in one transaction: a running daemon does it while
    /// it serves; the old key is kept as `<key file>.before-<UTC time>` for older backups.
    Rotate {
        /// With the daemon stopped: write the new key here instead of replacing the key file
        /// (required when the key is the systemd credential shiptoken.key).
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
    /// Everything about one account: status and since when, the full last error, evidence
    /// held and when it is confirmed, next check and refresh, the pinned identity, recent
    /// events, and which sinks and socket rules use it.
    Show {
        /// PROVIDER/ACCOUNT.
        account: String,
    },
    /// Register an account.
    Add(AddArgs),
    /// Remove an account and its tokens.
    Remove {
        /// PROVIDER/ACCOUNT.
        account: String,
    },
}

/// `accounts add`: whether to wait for the first check, and the provider's arguments.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Wait for the first check even when the provider's pacing holds it. By
    /// default such an account is answered `pending` at once, and checked first in its
    /// provider's queue.
    #[arg(long, global = true)]
    pub wait: bool,
    /// The provider and its arguments.
    #[command(subcommand)]
    pub provider: AddCommand,
}

/// `accounts add` subcommands: one per provider, each with the arguments its folder defines
/// (`providers::<name>::account::AddArgs`).
#[derive(Debug, Subcommand)]
pub enum AddCommand {
    /// Register a ShipHero developer user (secrets are read from files, never arguments).
    Shiphero(crate::providers::shiphero::account::AddArgs),
    /// Register a Shippo OAuth token obtained elsewhere.
    Shippo(crate::providers::shippo::account::AddArgs),
    /// Register a carrier account over OAuth 2.0 (UPS, FedEx, any RFC 6749 token endpoint).
    Oauth2(Box<crate::providers::oauth2::account::AddArgs>),
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

    /// Every line the fast path of `get` accepts, the whole [`Cli`] reads to the same command;
    /// the lines it refuses are left to the whole [`Cli`]. Built from the words such lines are
    /// made of, in every order: options of `get`, of other commands, values, and words that
    /// are no option at all.
    #[test]
    fn get_fast_path_reads_lines_as_the_whole_cli_reads_them() {
        let words = [
            "get",
            "shiphero/acme",
            "--json",
            "--socket",
            "/run/s.sock",
            "--watch",
            "--config",
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
        for odd in [
            "--socket=/x",
            "--",
            "--help",
            "-h",
            "--version",
            "-V",
            "-",
            "help",
            "accounts",
        ] {
            lines.push(vec!["get", "shiphero/acme", odd]);
            lines.push(vec![odd, "get", "shiphero/acme"]);
        }
        let mut accepted = 0;
        for line in &lines {
            let with_name = || std::iter::once("shiptoken").chain(line.iter().copied());
            if let Some(cli) = get_line(with_name().map(std::ffi::OsString::from)) {
                accepted += 1;
                let whole = Cli::try_parse_from(with_name())
                    .unwrap_or_else(|e| panic!("{line:?}: the whole Cli refuses it: {e}"));
                assert_eq!(format!("{cli:?}"), format!("{whole:?}"), "{line:?}");
            }
        }
        assert!(
            accepted > 100,
            "only {accepted} lines read by the fast path"
        );
    }
}
