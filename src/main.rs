//! The `shiptoken` binary: parses the command line and hands it to the library's one dispatch
//! (`cli::run`). It owns the process-wide parts that dispatch asks for: the async runtime,
//! the log subscriber, the signals and systemd's environment.

use std::process::ExitCode;

use anyhow::Context;
use futures_util::StreamExt;
use shiptoken::cli::{Cli, Process, ServeArgs};
use shiptoken::config::Config;
use shiptoken::{daemon, logging};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

/// `pow` for the whole process, so the dynamic loader never loads libm: tokio's worker
/// statistics (an average of poll times) were the binary's only call into libm, and loading
/// it (its mappings, relocations and IFUNC resolvers) cost every process about 10 page faults,
/// a tenth of a `get`'s CPU time and 0.5 MB of the daemon's idle memory (docs/socket.md). The
/// executable's definition takes the place of libm's, and `--as-needed` then drops libm;
/// `.ci/checks/binary-libraries.sh` fails if libm comes back. `libm` is rust-lang's port of
/// musl's libm (within 1 ULP).
#[unsafe(no_mangle)]
pub extern "C" fn pow(base: f64, exponent: f64) -> f64 {
    libm::pow(base, exponent)
}

fn main() -> ExitCode {
    let cli = shiptoken::cli::parse();
    shiptoken::cli::run(&cli, &Binary)
}

/// The process-wide parts the commands ask for: the async runtime, the log subscriber, the
/// signals and systemd's environment.
struct Binary;

impl Process for Binary {
    // Neither is inlined into `cli::run`, so that its stack frame (which a `get` pays for)
    // stays small: inlined, the daemon's futures made `main`'s 48 KiB, and the stack probes
    // of its prologue touched each of those pages before a `get` could start.
    #[inline(never)]
    fn serve(&self, cli: &Cli, args: &ServeArgs) -> ExitCode {
        forbid_core_dumps();
        limit_malloc_arenas();
        let systemd = systemd_from_env();
        with_runtime(|| serve(cli, args, systemd))
    }

    #[inline(never)]
    fn on_runtime<W, F>(&self, work: W) -> ExitCode
    where
        W: FnOnce() -> F,
        F: Future<Output = ExitCode>,
    {
        // Read (and cleared) before any thread exists even when only `exec`'s program would
        // have inherited it.
        let _ = systemd_from_env();
        with_runtime(work)
    }
}

/// Takes what systemd passed in the environment, clearing it.
fn systemd_from_env() -> shiptoken::systemd::Systemd {
    // SAFETY: no other thread exists yet; the async runtime starts after this. No crate can
    // make this safe: since Rust 2024 changing the environment is unsafe because other
    // threads may read it, and only the caller knows there are none.
    unsafe { shiptoken::systemd::Systemd::from_env() }
}

/// Starts the multi-thread async runtime and runs the future `work` makes on it.
fn with_runtime<F: Future<Output = ExitCode>>(work: impl FnOnce() -> F) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work()),
        Err(e) => {
            eprintln!("shiptoken: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: &Cli, args: &ServeArgs, systemd: shiptoken::systemd::Systemd) -> ExitCode {
    if args.dev {
        return serve_dev(args, systemd).await;
    }
    let config = match Config::load(cli.globals.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shiptoken: invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let log = logging::init(&config.log_level, config.log_format);
    let logged = log.reaches_stderr();
    let options = daemon::ServeOptions {
        #[cfg(feature = "dev")]
        movable_clock: args.movable_clock,
        systemd,
        log: Some(log),
        ..Default::default()
    };
    exit_code(run_daemon(config, options, |_| {}).await, logged)
}

/// Starts the daemon and runs it until SIGTERM or SIGINT; SIGHUP reloads its configuration.
/// `on_start` sees where it listens before it tells systemd it is ready.
async fn run_daemon(
    config: Config,
    options: daemon::ServeOptions,
    on_start: impl FnOnce(&daemon::Ready),
) -> anyhow::Result<()> {
    let running = daemon::start(config, options).await?;
    on_start(running.ready());
    let signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")?;
    let handle = signals.handle();
    let reloader = running.reloader();
    let result = running.run(until_stopped(signals, reloader)).await;
    handle.close();
    result
}

/// Resolves on SIGTERM or SIGINT; reloads the configuration on each SIGHUP meanwhile.
async fn until_stopped(mut signals: Signals, reloader: daemon::Reloader) {
    while let Some(signal) = signals.next().await {
        if signal == SIGHUP {
            reloader.reload().await;
        } else {
            tracing::info!(signal, "stopping");
            return;
        }
    }
}

/// `serve --dev`: the daemon against the simulators, on a temporary state folder.
#[cfg(feature = "dev")]
async fn serve_dev(args: &ServeArgs, systemd: shiptoken::systemd::Systemd) -> ExitCode {
    use std::io::Write;
    let log = logging::init("info", shiptoken::config::LogFormat::Text);
    let logged = log.reaches_stderr();
    let env = match shiptoken::dev::prepare(args.keep).await {
        Ok(env) => env,
        Err(e) => {
            eprintln!("shiptoken: cannot start dev mode: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let options = daemon::ServeOptions {
        movable_clock: true,
        systemd,
        log: Some(log),
        ..Default::default()
    };
    let result = run_daemon(env.config.clone(), options, |ready| {
        // The daemon keeps running if nobody reads its standard output any more.
        let text = shiptoken::dev::instructions(&ready.socket, ready.metrics);
        let _ = writeln!(std::io::stdout(), "{text}");
    })
    .await;
    env.finish();
    exit_code(result, logged)
}

/// `serve --dev` in a build without the simulators (the .deb): a usage error that says
/// where dev mode is.
#[cfg(not(feature = "dev"))]
async fn serve_dev(_args: &ServeArgs, _systemd: shiptoken::systemd::Systemd) -> ExitCode {
    eprintln!(
        "shiptoken: this build has no dev mode: it was built without the `dev` feature, as \
         the .deb is. From a source checkout, `cargo run -- serve --dev` has it (a default \
         feature), and so does `cargo run --features dev -- serve --dev`."
    );
    ExitCode::from(2)
}

/// Exit 0, or 1 with the error logged, and printed on stderr too unless the log line already
/// went there (`logged`, and the filter lets errors through): once, not twice.
fn exit_code(result: anyhow::Result<()>, logged: bool) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            if !(logged && tracing::enabled!(tracing::Level::ERROR)) {
                eprintln!("shiptoken: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Makes sure no core dump of the daemon is ever written, before it reads any secret: a
/// core holds every token, refresh token and client secret in clear (issue 28: a 10 MB core
/// had 7 copies of one access token). `RLIMIT_CORE` 0 stops the kernel writing a core file,
/// and `PR_SET_DUMPABLE` 0 also stops a core handler (systemd-coredump, apport) that a pipe in
/// `core_pattern` would run whatever the limit, and `ptrace` or `/proc/<pid>/mem` by other
/// processes of the same user. Through rustix (already a dependency), which wraps both calls
/// safely. A failure is reported but does not stop the daemon: the unit's `LimitCORE=0`
/// covers the limit, and a daemon that cannot lower its own limits has a stranger problem.
fn forbid_core_dumps() {
    use rustix::process::{
        DumpableBehavior, Resource, Rlimit, getrlimit, set_dumpable_behavior, setrlimit,
    };
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if getrlimit(Resource::Core) == none {
        // Already so (the unit's LimitCORE=0): nothing to ask of a sandbox that may filter it.
    } else if let Err(e) = setrlimit(Resource::Core, none) {
        eprintln!("shiptoken: cannot set RLIMIT_CORE to 0: {e}");
    }
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        eprintln!("shiptoken: cannot set PR_SET_DUMPABLE to 0: {e}");
    }
}

/// Caps glibc's malloc arenas at two before any thread starts. By default every thread that
/// allocates may get an arena of its own (up to 8 per core); the daemon's work is small and
/// I/O-bound, and each idle arena keeps freed memory resident. Measured with 10,000 accounts
/// (docs/scale.md): idle RSS drops by about 2 MB, throughput is unchanged.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; no other thread exists yet. A glibc
    // extension: neither std nor rustix wraps it, and libc's binding is the only one.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
