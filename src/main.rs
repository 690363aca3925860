//! The `jobwatch` binary: parse the command line, load settings, start logging,
//! run the chosen command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use jobwatch::app::{cancel_on_signals, Daemon};
use jobwatch::cli::{self, CliError};
use jobwatch::config::Settings;
use jobwatch::simulator::{SimulateArgs, Simulator};
use jobwatch::telemetry;

#[derive(Parser)]
#[command(
    name = "jobwatch",
    version,
    about = "Watches asynchronous jobs on an upstream API and delivers their outcomes as signed webhooks",
    after_help = "Start with `jobwatch demo`: the simulator, the daemon and a webhook receiver in one command."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// A TOML file layered on the embedded defaults (environment variables win over both).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run a local stand-in for the upstream (Vector API v2).
    Simulate(SimulateArgs),
    /// The one-command tour: simulator, daemon and a verifying webhook receiver, a few
    /// hundred sample jobs, live progress; the API stays up until Ctrl-C.
    #[command(after_help = cli::demo::DEMO_HELP)]
    Demo(cli::DemoArgs),
    /// Start watching jobs on a running daemon (POST /v1/jobs).
    #[command(after_help = cli::REQUEST_EXIT_CODES_HELP)]
    Watch(cli::WatchArgs),
    /// Wait until jobs end, like `wait_for_completion`; the exit code says how they ended.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Wait(cli::WaitArgs),
    /// The daemon's aggregated status as a table (GET /v1/status); --json for scripts.
    #[command(after_help = cli::REQUEST_EXIT_CODES_HELP)]
    Status(cli::StatusArgs),
    /// Exit 0 when the daemon answers GET /healthz (or /readyz with --ready), 1 otherwise:
    /// for container health checks.
    Healthcheck(cli::HealthcheckArgs),
    /// Measure jobwatch against this machine's limits: the simulator, the daemon as a
    /// separate process and a webhook receiver; see BENCHMARKS.md.
    Bench(jobwatch::bench::BenchArgs),
    /// The bench's minimal client in a process of its own (started by `bench`).
    #[command(hide = true)]
    BenchCeiling(jobwatch::bench::load::CeilingArgs),
}

/// The runtime's worker threads: `TOKIO_WORKER_THREADS` when it is set, else one
/// fewer than the machine has cores, at least one: the SQLite connections'
/// threads and the kernel's loopback and TCP work take the last. Polls wait on
/// the network, not on a core; on two cores a second worker cost more in
/// hand-overs between the two (a wake-up, a context switch per answer) than it
/// gave: one worker polled as fast at saturation and spent 14 to 23% less CPU per
/// poll at 400 and 4,000 polls/s (BENCHMARKS.md, session 14).
fn worker_threads() -> Result<usize, String> {
    const VAR: &str = "TOKIO_WORKER_THREADS";
    match std::env::var_os(VAR) {
        None => Ok(
            std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
        ),
        Some(v) => match v.to_str().map(|s| s.trim().parse::<usize>()) {
            Some(Ok(n)) if n > 0 => Ok(n),
            _ => Err(format!(
                "{VAR}={v:?} is not a number of threads (a whole number above 0)"
            )),
        },
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap exits 2 on a usage error, which `wait` uses for "timed out": usage
            // errors are 64 (EX_USAGE) instead, for every command.
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(cli::code::USAGE),
            };
        }
    };
    let workers = match worker_threads() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("jobwatch: {e}");
            return ExitCode::from(cli::code::USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("jobwatch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let client = match cli.command {
            Command::Serve { config } => return serve(config).await.map(|()| 0),
            Command::Simulate(args) => return simulate(args).await.map(|()| 0),
            Command::Demo(args) => return cli::demo::demo(args).await,
            Command::Bench(args) => return jobwatch::bench::run(args).await,
            Command::BenchCeiling(args) => {
                return jobwatch::bench::load::ceiling_client(args).await
            }
            Command::Watch(args) => cli::watch(args).await,
            Command::Wait(args) => cli::wait(args).await,
            Command::Status(args) => cli::status(args).await,
            Command::Healthcheck(args) => cli::healthcheck(args).await,
        };
        Ok(client.unwrap_or_else(|e: CliError| {
            eprintln!("jobwatch: {e}");
            e.exit_code()
        }))
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("jobwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref())?;
    telemetry::init(&settings.log);
    let daemon = Daemon::build(settings).await?;
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    daemon.run(shutdown).await
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    telemetry::init(&Settings::load_with(None, &[])?.log);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "simulator listening");
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    Simulator::new(args).serve(listener, shutdown).await?;
    Ok(())
}
