//! The commands that work on the configuration or the state folder itself, without the
//! daemon: `config check`, `backup`, `key rotate` and `registry migrate`.

use std::process::ExitCode;

use super::Cli;
use crate::config::Config;

/// `config check`: prints the effective configuration, then says whether `serve` would start.
pub(super) fn check_config(cli: &Cli) -> ExitCode {
    match Config::load(cli.globals.config.as_deref()) {
        Ok(c) => {
            super::say_raw(format_args!("{}", c.to_toml()));
            for var in Config::unknown_env_vars() {
                eprintln!("warning: environment variable {var} names no configuration key");
            }
            // serve refuses to start without a readable secret; check says so first.
            if let Err(e) = c.shippo.client_secret() {
                eprintln!("shiptoken: invalid configuration: {e}");
                return ExitCode::FAILURE;
            }
            eprintln!("configuration is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shiptoken: invalid configuration: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command that works on the state folder (backup, key rotation, migration) with the
/// configuration loaded.
pub(super) fn with_config(cli: &Cli, run: impl FnOnce(&Config) -> anyhow::Result<()>) -> ExitCode {
    let config = match Config::load(cli.globals.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shiptoken: invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shiptoken: {e:#}");
            ExitCode::FAILURE
        }
    }
}
