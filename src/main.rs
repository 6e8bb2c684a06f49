//! `boardroom`: runs the suite (`serve`), its migrations (`migrate`) and its load generator
//! (`load`).

mod load;
mod report;
mod scenario;
mod serve;

use clap::{Parser, Subcommand};

/// jemalloc rather than glibc's malloc: see README, "Memory over hours".
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "boardroom",
    version,
    about = "Boardroom: AI boardroom backend as a suite of gRPC services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs services: all of them in one process (the default), or one.
    Serve(serve::ServeArgs),
    /// Applies (or rolls back) database migrations.
    Migrate(serve::MigrateArgs),
    /// A ghz-compatible gRPC load generator over any Boardroom RPC.
    Load(Box<load::LoadArgs>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One rustls crypto provider for every TLS user in the process (tonic, sqlx).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await,
            Command::Migrate(args) => serve::migrate(args).await,
            Command::Load(args) => load::run(*args).await,
        }
    })
}
