//! The `projector` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use projector::server::{self, ServeConfig};

#[derive(Parser)]
#[command(
    name = "projector",
    version,
    about = "A WebAssembly-pluggable projection engine over a durable event log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: the event log, projections and the HTTP API.
    Serve {
        /// Directory for the log and the views.
        #[arg(long, env = "PROJECTOR_DATA", default_value = "data")]
        data: PathBuf,
        /// Folder watched for projection `.wasm` files.
        #[arg(long, env = "PROJECTOR_PROJECTIONS", default_value = "deploy")]
        projections: PathBuf,
        /// Address to listen on; port 0 picks a free one (the bound address is printed).
        #[arg(long, env = "PROJECTOR_LISTEN", default_value = "127.0.0.1:4600")]
        listen: SocketAddr,
        /// Seconds between keep-alive comments on idle live (SSE) subscriptions.
        #[arg(long, env = "PROJECTOR_SSE_KEEP_ALIVE", default_value_t = 15)]
        sse_keep_alive: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            data,
            projections,
            listen,
            sse_keep_alive,
        } => {
            let config = ServeConfig {
                data,
                projections,
                listen,
                sse_keep_alive: Duration::from_secs(sse_keep_alive.max(1)),
            };
            server::serve(config, server::shutdown_signal())
                .await
                .context("projector serve")?;
        }
    }
    Ok(())
}
