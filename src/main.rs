//! The `jobwatch` binary: parse the command line, load settings, start logging,
//! run the chosen command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use jobwatch::app::{cancel_on_signals, Daemon};
use jobwatch::config::Settings;
use jobwatch::simulator::{SimulateArgs, Simulator};
use jobwatch::telemetry;

#[derive(Parser)]
#[command(
    name = "jobwatch",
    version,
    about = "Watches asynchronous jobs on an upstream API and delivers their outcomes as signed webhooks"
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        match cli.command {
            Command::Serve { config } => serve(config).await,
            Command::Simulate(args) => simulate(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
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
