//! `boardroom serve` and `boardroom migrate`.

use std::path::PathBuf;
use std::sync::Arc;

use boardroom_migrations::{Migrator, MigratorTrait};
use boardroom_runtime::Config;
use boardroom_runtime::db::Database;
use boardroom_runtime::telemetry::{Telemetry, init_telemetry};
use clap::{Args, ValueEnum};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
    /// Every service in one process.
    All,
    /// The session service.
    Session,
    /// The cache service.
    Cache,
    /// The LLM gateway.
    LlmGateway,
    /// The session service's benchmark baseline (same stack, constant answers).
    SessionEcho,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML config file; `BOARDROOM_*` environment variables override it.
    #[arg(long, env = "BOARDROOM_CONFIG")]
    config: Option<PathBuf>,
    /// Which service to run.
    #[arg(long, value_enum, default_value_t = Service::All)]
    service: Service,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    /// Apply every pending migration.
    Up,
    /// Roll back every applied migration.
    Down,
    /// List applied and pending migrations.
    Status,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// A TOML config file; `BOARDROOM_*` environment variables override it.
    #[arg(long, env = "BOARDROOM_CONFIG")]
    config: Option<PathBuf>,
    #[arg(value_enum, default_value_t = Direction::Up)]
    direction: Direction,
}

fn load_config(file: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let config = Config::load(file)?;
    config.validate()?;
    Ok(config)
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = args.config.clone();
    let config = load_config(file.as_deref())?;
    let service_name = match args.service {
        Service::All => "boardroom",
        Service::Session => "boardroom-session",
        Service::Cache => "boardroom-cache",
        Service::LlmGateway => "boardroom-llm-gateway",
        Service::SessionEcho => "boardroom-session-echo",
    };
    let telemetry = init_telemetry(service_name, &config.telemetry)?;
    let shutdown = CancellationToken::new();
    let reloads = boardroom_runtime::signals::watch_signals(shutdown.clone())?;
    let (live_tx, live_rx) = watch::channel(Arc::new(config.clone()));
    let reloader = reload_on_sighup(file, reloads, live_tx, &telemetry, shutdown.clone());

    let session = || async {
        let app = boardroom_session::Application::build(&config)
            .await?
            .with_live_config(live_rx.clone());
        tracing::info!(grpc = %app.local_addr()?, admin = %app.admin_addr()?, "session service listening");
        app.run_until_stopped(shutdown.clone()).await
    };
    let cache = || async {
        let app = boardroom_cache_service::Application::build(&config).await?;
        tracing::info!(grpc = %app.local_addr()?, admin = %app.admin_addr()?, l2 = !config.redis.url.is_empty(), "cache service listening");
        app.run_until_stopped(shutdown.clone()).await
    };
    let llm = || async {
        let app = boardroom_llm_gateway::Application::build(&config).await?;
        tracing::info!(grpc = %app.local_addr()?, admin = %app.admin_addr()?, models = config.llm.models.len(), "llm-gateway service listening");
        app.run_until_stopped(shutdown.clone()).await
    };
    // A service that fails stops the others too.
    let stopping_all = |result: anyhow::Result<()>| {
        shutdown.cancel();
        result
    };
    let services = async {
        match args.service {
            Service::All => {
                let (session, cache, llm) = tokio::join!(
                    async { stopping_all(session().await) },
                    async { stopping_all(cache().await) },
                    async { stopping_all(llm().await) },
                );
                session.and(cache).and(llm)
            }
            Service::Session => stopping_all(session().await),
            Service::Cache => stopping_all(cache().await),
            Service::LlmGateway => stopping_all(llm().await),
            Service::SessionEcho => {
                let result = async {
                    let server = boardroom_session::echo::bind(&config).await?;
                    tracing::info!(grpc = %server.local_addr()?, "session echo baseline listening");
                    server.run(shutdown.clone()).await
                }
                .await;
                stopping_all(result)
            }
        }
    };
    let (result, ()) = tokio::join!(services, reloader);
    telemetry.shutdown();
    result
}

/// Applies a reloaded config on every SIGHUP: the log level and the settings the services
/// follow live (cache TTLs); says which changed settings need a restart.
async fn reload_on_sighup(
    file: Option<PathBuf>,
    mut reloads: tokio::sync::mpsc::Receiver<()>,
    live: watch::Sender<Arc<Config>>,
    telemetry: &Telemetry,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            received = reloads.recv() => {
                if received.is_none() { return; }
                match load_config(file.as_deref()) {
                    Ok(new) => {
                        let old = live.borrow().clone();
                        if let Err(err) = telemetry.set_log_level(&new.telemetry.log_level) {
                            tracing::warn!(error = %err, "log level not reloaded");
                        }
                        let needs_restart = old.restart_required_changes(&new);
                        if !needs_restart.is_empty() {
                            tracing::warn!(sections = ?needs_restart, "changed settings take effect after a restart");
                        }
                        live.send_replace(Arc::new(new));
                        tracing::info!("configuration reloaded");
                    }
                    Err(err) => tracing::error!(error = %err, "configuration reload refused; keeping the running one"),
                }
            }
        }
    }
}

pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let file = args.config.clone();
    let config = load_config(file.as_deref())?;
    let _telemetry = init_telemetry("boardroom-migrate", &config.telemetry)?;
    let db = Database::connect(&config.database).await?;
    match args.direction {
        Direction::Up => Migrator::up(db.conn(), None).await?,
        Direction::Down => Migrator::down(db.conn(), None).await?,
        Direction::Status => {
            for m in Migrator::get_applied_migrations(db.conn()).await? {
                println!("applied  {}", m.name());
            }
            for m in Migrator::get_pending_migrations(db.conn()).await? {
                println!("pending  {}", m.name());
            }
        }
    }
    Ok(())
}
