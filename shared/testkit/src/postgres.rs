//! PostgreSQL and SQLite databases for tests.

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database};
use tokio::sync::OnceCell;

use crate::{Origin, ephemeral, ephemeral_allowed, force_ephemeral, unique_suffix};

const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The database that holds one schema per test.
const TEST_DATABASE: &str = "boardroom_test";

static ADMIN: OnceCell<(String, Origin)> = OnceCell::const_new();

async fn reachable(url: &str) -> bool {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(1)
        .connect_timeout(Duration::from_secs(3))
        .sqlx_logging(false);
    match Database::connect(options).await {
        Ok(conn) => {
            let ok = conn.execute_unprepared("SELECT 1").await.is_ok();
            conn.close().await.ok();
            ok
        }
        Err(_) => false,
    }
}

/// The URL of a PostgreSQL server's `postgres` database that tests may create things in,
/// and where it came from. Panics (never skips) when none can be found or started.
pub async fn postgres_admin_url() -> (String, Origin) {
    ADMIN
        .get_or_init(|| async {
            let mut tried = Vec::new();
            if !force_ephemeral() {
                if let Ok(url) = std::env::var("DATABASE_URL") {
                    if url.starts_with("postgres") && reachable(&url).await {
                        return (url, Origin::Environment);
                    }
                    tried.push(format!("DATABASE_URL={url}: unreachable or not PostgreSQL"));
                }
                if reachable(LOCAL_URL).await {
                    return (LOCAL_URL.to_owned(), Origin::Local);
                }
                tried.push(format!("{LOCAL_URL}: unreachable"));
            }
            if ephemeral_allowed() {
                match tokio::task::spawn_blocking(|| {
                    ephemeral::shared_server("postgres", ephemeral::start_postgres)
                })
                .await
                {
                    Ok(Ok(port)) => {
                        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
                        if reachable(&url).await {
                            return (url, Origin::Ephemeral);
                        }
                        tried.push(format!("ephemeral server on port {port}: unreachable"));
                    }
                    Ok(Err(err)) => tried.push(format!("ephemeral server: {err:#}")),
                    Err(err) => tried.push(format!("ephemeral server: {err}")),
                }
            }
            panic!(
                "no PostgreSQL for the tests (CI={}); tried: {}",
                std::env::var("CI").unwrap_or_default(),
                tried.join("; ")
            )
        })
        .await
        .clone()
}

/// Starts (or reuses) a PostgreSQL server from the installed binaries on a free port, shared
/// by every test process of this machine user; returns its admin URL.
pub async fn ephemeral_postgres_url() -> anyhow::Result<String> {
    let port = tokio::task::spawn_blocking(|| {
        ephemeral::shared_server("postgres", ephemeral::start_postgres)
    })
    .await??;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    anyhow::ensure!(
        reachable(&url).await,
        "ephemeral server on port {port} does not answer"
    );
    Ok(url)
}

/// A database of one test: a fresh PostgreSQL schema or SQLite file.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// The URL to connect with.
    pub url: String,
    /// The PostgreSQL schema to put first on the search path (`None` for SQLite).
    pub schema: Option<String>,
}

impl TestDatabase {
    /// A new, empty schema in the test database of the PostgreSQL server.
    pub async fn postgres() -> Self {
        let (admin_url, _) = postgres_admin_url().await;
        let admin = Database::connect(admin_url.clone())
            .await
            .expect("connecting to PostgreSQL");
        // CREATE DATABASE has no IF NOT EXISTS; a concurrent creator wins and we carry on.
        let exists = admin
            .query_one_raw(sea_orm::Statement::from_string(
                admin.get_database_backend(),
                format!("SELECT 1 FROM pg_database WHERE datname = '{TEST_DATABASE}'"),
            ))
            .await
            .expect("querying pg_database")
            .is_some();
        if !exists {
            let _ = admin
                .execute_unprepared(&format!("CREATE DATABASE {TEST_DATABASE}"))
                .await;
        }
        admin.close().await.ok();
        let url = replace_database(&admin_url, TEST_DATABASE);
        let schema = format!("t_{}", unique_suffix());
        let conn = Database::connect(url.clone())
            .await
            .expect("connecting to the test database");
        conn.execute_unprepared(&format!("CREATE SCHEMA \"{schema}\""))
            .await
            .expect("creating the test schema");
        conn.close().await.ok();
        let separator = if url.contains('?') { '&' } else { '?' };
        // libpq `options` puts the schema first on every pooled connection's search path.
        let url = format!("{url}{separator}options=-c%20search_path%3D{schema}");
        Self {
            url,
            schema: Some(schema),
        }
    }

    /// The `host:port` of the server (PostgreSQL only).
    pub fn server_addr(&self) -> Option<std::net::SocketAddr> {
        let rest = self.url.split_once("@")?.1;
        let hostport = rest.split(['/', '?']).next()?;
        hostport.parse().ok()
    }

    /// The same database reached through `addr` (a proxy).
    pub fn via(&self, addr: std::net::SocketAddr) -> Self {
        let current = self
            .server_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        Self {
            url: self.url.replacen(&current, &addr.to_string(), 1),
            schema: self.schema.clone(),
        }
    }

    /// A new SQLite file in the temp folder.
    pub fn sqlite() -> Self {
        sqlite_database()
    }
}

/// A new SQLite database file in the temp folder.
pub fn sqlite_database() -> TestDatabase {
    let dir = ephemeral::state_dir().join("sqlite");
    std::fs::create_dir_all(&dir).expect("creating the SQLite test folder");
    let path = dir.join(format!("{}.db", unique_suffix()));
    TestDatabase {
        url: format!("sqlite://{}?mode=rwc", path.display()),
        schema: None,
    }
}

fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn an_ephemeral_server_starts_from_the_installed_binaries() {
        let url = ephemeral_postgres_url()
            .await
            .expect("PostgreSQL binaries are installed here");
        assert!(url.starts_with("postgres://postgres@127.0.0.1:"));
        let conn = Database::connect(url.as_str()).await.expect("connects");
        conn.execute_unprepared("SELECT 1").await.expect("answers");
    }

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            replace_database("postgres://u@h:1/postgres", "x"),
            "postgres://u@h:1/x"
        );
        assert_eq!(
            replace_database("postgres://u@h:1/postgres?sslmode=disable", "x"),
            "postgres://u@h:1/x?sslmode=disable"
        );
        assert_eq!(
            replace_database("postgres://u@h:1", "x"),
            "postgres://u@h:1/x"
        );
    }
}
