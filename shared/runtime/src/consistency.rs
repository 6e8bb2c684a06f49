//! Read-your-writes over PostgreSQL replicas: a consistency token in gRPC metadata.
//!
//! A call that used the primary (a write) answers with the primary's WAL position after it,
//! `x-boardroom-lsn: 16/B374D848`, in its response headers. A call that sends that header back
//! reads only from a replica that has replayed past it (waiting `database.replica_wait_ms` at
//! most), else from the primary; without the header it gets a replica's view. Within one call,
//! reads after the call's own writes go to the primary, and outgoing calls to other services
//! carry the token the call came with (so a turn's session lookups see what its caller wrote).
//!
//! Nothing here runs unless a database with replicas is configured in the process (or the
//! caller sent a token): the token lives in a task-local scope set by the inbound layer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, Statement};

/// The metadata key of the token.
pub const HEADER: &str = "x-boardroom-lsn";

/// A PostgreSQL WAL position (`pg_lsn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `16/B374D848` (PostgreSQL's text form: two hexadecimal halves).
    pub fn parse(text: &str) -> Option<Self> {
        let (high, low) = text.trim().split_once('/')?;
        let high = u64::from_str_radix(high, 16).ok()?;
        let low = u64::from_str_radix(low, 16).ok()?;
        (high <= u64::from(u32::MAX) && low <= u64::from(u32::MAX))
            .then_some(Self((high << 32) | low))
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether a database with replicas was opened in this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The consistency state of one call.
#[derive(Debug, Default)]
pub struct Token {
    /// What reads must have replayed (0: nothing).
    required: AtomicU64,
    /// The primary, once the call used it (its writes are there).
    primary: Mutex<Option<DatabaseConnection>>,
}

tokio::task_local! {
    static TOKEN: Arc<Token>;
}

impl Token {
    /// A call's token, requiring `required` of its reads.
    pub fn new(required: Option<Lsn>) -> Arc<Self> {
        Arc::new(Self {
            required: AtomicU64::new(required.map_or(0, |l| l.0)),
            primary: Mutex::new(None),
        })
    }

    /// What reads must have replayed.
    pub fn required(&self) -> Option<Lsn> {
        match self.required.load(Ordering::Acquire) {
            0 => None,
            lsn => Some(Lsn(lsn)),
        }
    }

    /// Raises what reads must have replayed to at least `lsn`.
    pub fn require(&self, lsn: Lsn) {
        self.required.fetch_max(lsn.0, Ordering::AcqRel);
    }

    pub(crate) fn touch_primary(&self, conn: &DatabaseConnection) {
        let mut primary = self.primary.lock().unwrap_or_else(|e| e.into_inner());
        if primary.is_none() {
            *primary = Some(conn.clone());
        }
    }

    /// Whether the call used the primary (its reads stay there from then on).
    pub fn touched_primary(&self) -> bool {
        self.primary.lock().map(|p| p.is_some()).unwrap_or(true)
    }

    /// The primary's WAL position now, if the call used the primary: its writes are at or
    /// before it. One statement; `None` on error (the caller then reads a replica's view).
    pub async fn commit_position(&self) -> Option<Lsn> {
        let primary = self
            .primary
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let lsn = primary_position(&primary).await?;
        self.require(lsn);
        Some(lsn)
    }
}

/// The token of the call this task serves, if any.
pub fn current() -> Option<Arc<Token>> {
    TOKEN.try_with(Arc::clone).ok()
}

/// Runs `fut` as a call with `token`.
pub async fn scope<F: Future>(token: Arc<Token>, fut: F) -> F::Output {
    TOKEN.scope(token, fut).await
}

/// `fut` with the current call's token (taken now): spawned work of a call keeps its
/// consistency.
pub fn carry<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    let token = current();
    async move {
        match token {
            Some(token) => TOKEN.scope(token, fut).await,
            None => fut.await,
        }
    }
}

/// The token a request carries.
pub fn from_headers(headers: &http::HeaderMap) -> Option<Lsn> {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(Lsn::parse)
}

/// The primary's WAL position now (`pg_current_wal_lsn()`).
pub(crate) async fn primary_position(primary: &DatabaseConnection) -> Option<Lsn> {
    wal_position(primary, "SELECT pg_current_wal_lsn()::text AS lsn").await
}

/// What a replica has replayed (`pg_last_wal_replay_lsn()`).
pub(crate) async fn replayed_position(replica: &DatabaseConnection) -> Option<Lsn> {
    wal_position(replica, "SELECT pg_last_wal_replay_lsn()::text AS lsn").await
}

/// Runs `sql` (one row, a `pg_lsn` as text named `lsn`).
async fn wal_position(conn: &DatabaseConnection, sql: &str) -> Option<Lsn> {
    let row = conn
        .query_one_raw(Statement::from_string(DatabaseBackend::Postgres, sql))
        .await
        .ok()??;
    let text: Option<String> = row.try_get("", "lsn").ok()?;
    Lsn::parse(&text?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_print_and_order_as_postgresql_does() {
        let a = Lsn::parse("16/B374D848").expect("parses");
        assert_eq!(a.0, (0x16 << 32) | 0xB374_D848);
        assert_eq!(a.to_string(), "16/B374D848");
        assert!(Lsn::parse("0/FFFFFFFF") < Lsn::parse("1/0"));
        for bad in ["", "16", "x/1", "1/100000000", "/"] {
            assert_eq!(Lsn::parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // the spawned tasks end within the test
    async fn a_token_is_scoped_to_its_call_and_carried_into_spawned_work() {
        assert!(current().is_none());
        let token = Token::new(Lsn::parse("1/10"));
        scope(token.clone(), async {
            let seen = current().expect("in scope");
            seen.require(Lsn(5)); // lower: no change
            assert_eq!(seen.required(), Lsn::parse("1/10"));
            let carried = tokio::spawn(carry(async { current().and_then(|t| t.required()) }));
            assert_eq!(carried.await.expect("joined"), Lsn::parse("1/10"));
            let bare = tokio::spawn(async { current().is_some() });
            assert!(!bare.await.expect("joined"), "not inherited without carry");
        })
        .await;
        assert!(!token.touched_primary());
    }
}
