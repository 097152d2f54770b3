//! The one dispatch of the command line: every command and subcommand is matched here, once,
//! and no arm catches "the rest", so a new command makes the compiler name this place. The
//! parts that belong to the whole process (the async runtime, the log subscriber, signals,
//! systemd) stay with the binary, behind [`Process`].
//!
//! A command that asks the daemon and exits runs on the calling thread: no async runtime and
//! no thread start for it, since starting them was more than half of a `get`'s system calls
//! (docs/socket.md). Only `serve`, the commands that keep following the daemon and the ones
//! that work on the state folder start the runtime.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::commands::{self, Failed, exit_with, socket_path};
use super::wait::Waiter;
use super::{
    AccountsCommand, Cli, Command, ConfigCommand, GetArgs, KeyCommand, RegistryCommand, ServeArgs,
    ShippoCommand, exec, follow, offline, show,
};

/// What the commands need from the binary: the parts that belong to the whole process.
pub trait Process {
    /// Runs the daemon (`serve`), with the runtime, log subscriber and signals it owns.
    fn serve(&self, cli: &Cli, args: &ServeArgs) -> ExitCode;

    /// Starts the async runtime and runs the future `work` makes on it. `work` is called on
    /// the runtime's side, so the future is not built in [`run`]'s stack frame, which every
    /// `get` pays for (docs/socket.md: the stack probes of a large frame touch each page).
    fn on_runtime<W, F>(&self, work: W) -> ExitCode
    where
        W: FnOnce() -> F,
        F: Future<Output = ExitCode>;
}

/// Runs the command `cli` names and returns the process's exit code (CONTRACT.md).
pub fn run(cli: &Cli, process: &impl Process) -> ExitCode {
    match &cli.command {
        Command::Serve(_) if cli.globals.socket.is_some() => serve_takes_no_socket(),
        Command::Serve(args) => process.serve(cli, args),
        Command::Get(GetArgs {
            account,
            json,
            watch: false,
        }) => ask(cli, |s| commands::get(s, account, *json)),
        Command::Get(GetArgs {
            account,
            json,
            watch: true,
        }) => process.on_runtime(|| {
            follow_daemon(cli, async |s| {
                follow::get_watch(&s, account, *json).await.map(|()| 0)
            })
        }),
        Command::Exec {
            tokens,
            restart_on_rotate,
            signal_on_rotate,
            command,
        } => {
            let args = exec::ExecArgs {
                tokens,
                restart: *restart_on_rotate,
                signal: signal_on_rotate.as_deref(),
                command,
            };
            process.on_runtime(|| follow_daemon(cli, async |s| exec::exec(&s, args).await))
        }
        Command::Accounts(AccountsCommand::List { json, watch: false }) => {
            ask(cli, |s| commands::list(s, *json))
        }
        // clap refuses --json with --watch.
        Command::Accounts(AccountsCommand::List {
            json: _,
            watch: true,
        }) => process
            .on_runtime(|| follow_daemon(cli, async |s| commands::watch(&s).await.map(|()| 0))),
        Command::Accounts(AccountsCommand::Show { account }) => {
            ask(cli, |s| show::show(s, account))
        }
        Command::Status => ask(cli, show::status),
        Command::Accounts(AccountsCommand::Add(add)) => {
            ask(cli, |s| commands::add_account(s, add, &waiter(cli)))
        }
        Command::Accounts(AccountsCommand::Remove { account }) => {
            ask(cli, |s| commands::remove(s, account))
        }
        Command::Rotate { accounts, all } => ask(cli, |s| {
            commands::rotate_many(s, accounts, *all, &waiter(cli))
        }),
        Command::Verify { account } => {
            ask(cli, |s| commands::act(s, account, "verify", &waiter(cli)))
        }
        Command::Audit {
            account,
            since,
            json,
        } => ask(cli, |s| {
            commands::audit(s, account.as_deref(), since.as_deref(), *json)
        }),
        Command::Shippo(ShippoCommand::Connect { name }) => {
            ask(cli, |s| commands::shippo_connect(s, name))
        }
        Command::Completions { shell } => commands::completions(*shell),
        Command::Man => commands::man(),
        Command::Config(ConfigCommand::Check) => {
            process.on_runtime(|| async { offline::check_config(cli) })
        }
        Command::Backup { file } => process
            .on_runtime(|| async { offline::with_config(cli, |c| crate::backup::backup(c, file)) }),
        Command::Key(KeyCommand::Generate { file }) => commands::generate_key(file),
        Command::Key(KeyCommand::Rotate { new_key_out }) => {
            // A running daemon rotates while it serves; only without one is it done here.
            if new_key_out.is_none() {
                match socket_path(cli).and_then(|s| commands::rotate_key_online(&s)) {
                    Ok(true) => return ExitCode::SUCCESS,
                    Ok(false) => {}
                    Err(e) => return exit_with(Err(e)),
                }
            }
            process.on_runtime(|| async {
                offline::with_config(cli, |c| {
                    crate::backup::rotate_key(c, new_key_out.as_deref())
                })
            })
        }
        Command::Registry(RegistryCommand::Migrate { to, password_file }) => {
            process.on_runtime(|| async {
                offline::with_config(cli, |c| {
                    crate::backup::migrate_registry(c, to, password_file.as_deref())
                })
            })
        }
    }
}

/// `serve --socket`: a usage error, not a flag silently ignored. The daemon listens where
/// its configuration says, so a reload and every client agree on it.
fn serve_takes_no_socket() -> ExitCode {
    eprintln!(
        "shiptoken: serve listens on the configuration's socket.path; set it there (or SHIPTOKEN_SOCKET__PATH). --socket is for client commands"
    );
    ExitCode::from(2)
}

/// A command that asks the daemon (once, or once per account one after another) and exits,
/// on the calling thread.
fn ask(cli: &Cli, command: impl FnOnce(&Path) -> Result<(), Failed>) -> ExitCode {
    exit_with(socket_path(cli).and_then(|socket| command(&socket).map(|()| 0)))
}

/// What a command that waits on a provider says while it waits (on a terminal only).
fn waiter(cli: &Cli) -> Waiter {
    Waiter::new(cli.globals.config.clone())
}

/// A command that keeps following the daemon until it is stopped; `Ok(code)` is its exit code.
async fn follow_daemon(
    cli: &Cli,
    command: impl AsyncFnOnce(PathBuf) -> Result<u8, Failed>,
) -> ExitCode {
    exit_with(match socket_path(cli) {
        Ok(socket) => command(socket).await,
        Err(e) => Err(e),
    })
}
