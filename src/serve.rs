//! `boardroom serve` and `boardroom migrate`.

use std::path::PathBuf;
use std::sync::Arc;

use boardroom_runtime::Config;
use boardroom_runtime::db::Database;
use boardroom_runtime::telemetry::{ServiceRoute, Telemetry, init_telemetry};
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
    /// The conversation service.
    Conversation,
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
    let mut config = load_config(file.as_deref())?;
    let service_name = match args.service {
        Service::All => "boardroom",
        Service::Session => "boardroom-session",
        Service::Cache => "boardroom-cache",
        Service::LlmGateway => "boardroom-llm-gateway",
        Service::Conversation => "boardroom-conversation",
        Service::SessionEcho => "boardroom-session-echo",
    };
    // In one process, each service still reports its own spans under its own name.
    let routes: &[ServiceRoute] = if args.service == Service::All {
        &ROUTES
    } else {
        &[]
    };
    let telemetry = init_telemetry(service_name, routes, &config.telemetry)?;
    // Two services of one process must not race to migrate one database: migrate once here.
    if config.database.migrate_on_start
        && matches!(
            args.service,
            Service::All | Service::Session | Service::Conversation
        )
    {
        let db = Database::connect(&config.database).await?;
        boardroom_migrations::up(db.conn()).await?;
        config.database.migrate_on_start = false;
    }
    let shutdown = CancellationToken::new();
    let reloads = boardroom_runtime::signals::watch_signals(shutdown.clone())?;
    let (live_tx, live_rx) = watch::channel(Arc::new(config.clone()));
    let reloader = reload_on_sighup(file, reloads, live_tx, &telemetry, shutdown.clone());

    // A service that fails stops the others too.
    let stopping_all = |result: anyhow::Result<()>| {
        shutdown.cancel();
        result
    };
    let run = |app: Built| {
        let shutdown = shutdown.clone();
        async move { stopping_all(app.run(shutdown).await) }
    };
    let services = async {
        match args.service {
            Service::All => {
                let built = async {
                    let session = Built::session(&config, &live_rx).await?;
                    let cache = Built::cache(&config).await?;
                    let llm = Built::llm(&config).await?;
                    // In one process the conversation service calls its neighbours: without a
                    // socket while `client.in_process` is on, else over loopback.
                    let mut peers = config.clone();
                    for (neighbour, addresses) in [
                        (&session, &mut peers.conversation.session_addresses),
                        (&llm, &mut peers.conversation.llm_addresses),
                    ] {
                        let url = loopback_url(neighbour.addr);
                        if let Some(local) = &neighbour.in_process {
                            boardroom_runtime::client::serve_in_process(&url, local.clone());
                        }
                        *addresses = vec![url];
                    }
                    let conversation = Built::conversation(&peers).await?;
                    anyhow::Ok((session, cache, llm, conversation))
                }
                .await;
                match built {
                    Ok((session, cache, llm, conversation)) => {
                        let (session, cache, llm, conversation) =
                            tokio::join!(run(session), run(cache), run(llm), run(conversation));
                        session.and(cache).and(llm).and(conversation)
                    }
                    Err(err) => stopping_all(Err(err)),
                }
            }
            Service::Session => match Built::session(&config, &live_rx).await {
                Ok(app) => run(app).await,
                Err(err) => stopping_all(Err(err)),
            },
            Service::Cache => match Built::cache(&config).await {
                Ok(app) => run(app).await,
                Err(err) => stopping_all(Err(err)),
            },
            Service::LlmGateway => match Built::llm(&config).await {
                Ok(app) => run(app).await,
                Err(err) => stopping_all(Err(err)),
            },
            Service::Conversation => match Built::conversation(&config).await {
                Ok(app) => run(app).await,
                Err(err) => stopping_all(Err(err)),
            },
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

/// The services of `serve --service all`: their gRPC packages and `service.name`s.
const ROUTES: [ServiceRoute; 4] = [
    ServiceRoute {
        rpc_prefix: "boardroom.session.",
        name: "boardroom-session",
    },
    ServiceRoute {
        rpc_prefix: "boardroom.cache.",
        name: "boardroom-cache",
    },
    ServiceRoute {
        rpc_prefix: "boardroom.llm.",
        name: "boardroom-llm-gateway",
    },
    ServiceRoute {
        rpc_prefix: "boardroom.conversation.",
        name: "boardroom-conversation",
    },
];

/// `http://` + an address to reach a bound listener at (loopback for an unspecified IP).
fn loopback_url(addr: std::net::SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    format!("http://{}", std::net::SocketAddr::new(ip, addr.port()))
}

/// A service built (listeners bound, dependencies connected), ready to run.
struct Built {
    addr: std::net::SocketAddr,
    /// The service as its neighbours in this process call it (the services they call).
    in_process: Option<boardroom_runtime::client::LocalService>,
    run: Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, anyhow::Result<()>> + Send>,
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Built {
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        (self.run)(shutdown).await
    }

    async fn session(config: &Config, live: &watch::Receiver<Arc<Config>>) -> anyhow::Result<Self> {
        let mut app = boardroom_session::Application::build(config)
            .await?
            .with_live_config(live.clone());
        let addr = app.local_addr()?;
        let in_process = Some(app.in_process());
        tracing::info!(grpc = %addr, admin = %app.admin_addr()?, "session service listening");
        Ok(Self {
            addr,
            in_process,
            run: Box::new(|stop| Box::pin(app.run_until_stopped(stop))),
        })
    }

    async fn cache(config: &Config) -> anyhow::Result<Self> {
        let app = boardroom_cache_service::Application::build(config).await?;
        let addr = app.local_addr()?;
        tracing::info!(grpc = %addr, admin = %app.admin_addr()?, l2 = !config.redis.url.is_empty(), "cache service listening");
        Ok(Self {
            addr,
            in_process: None,
            run: Box::new(|stop| Box::pin(app.run_until_stopped(stop))),
        })
    }

    async fn llm(config: &Config) -> anyhow::Result<Self> {
        let mut app = boardroom_llm_gateway::Application::build(config).await?;
        let addr = app.local_addr()?;
        let in_process = Some(app.in_process());
        let openai = app.openai_addr().map(|a| format!("http://{a}/v1"));
        tracing::info!(grpc = %addr, admin = %app.admin_addr()?, openai_api = openai.as_deref().unwrap_or("off"), models = config.llm.models.len(), "llm-gateway service listening");
        Ok(Self {
            addr,
            in_process,
            run: Box::new(|stop| Box::pin(app.run_until_stopped(stop))),
        })
    }

    async fn conversation(config: &Config) -> anyhow::Result<Self> {
        let app = boardroom_conversation::Application::build(config).await?;
        let addr = app.local_addr()?;
        tracing::info!(grpc = %addr, admin = %app.admin_addr()?, "conversation service listening");
        Ok(Self {
            addr,
            in_process: None,
            run: Box::new(|stop| Box::pin(app.run_until_stopped(stop))),
        })
    }
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
    let _telemetry = init_telemetry("boardroom-migrate", &[], &config.telemetry)?;
    let db = Database::connect(&config.database).await?;
    match args.direction {
        Direction::Up => boardroom_migrations::up(db.conn()).await?,
        Direction::Down => boardroom_migrations::down(db.conn()).await?,
        Direction::Status => {
            let migrations = boardroom_migrations::status(db.conn()).await?;
            for applied in [true, false] {
                let label = if applied { "applied" } else { "pending" };
                for (name, _) in migrations.iter().filter(|(_, a)| *a == applied) {
                    println!("{label:<8} {name}");
                }
            }
        }
    }
    Ok(())
}
