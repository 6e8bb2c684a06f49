//! The session domain over the database: every operation of the service, with its queries
//! named for the per-query metrics, keyset pagination and idempotent creates.

use std::sync::Arc;

use boardroom_runtime::clock::now;
use boardroom_runtime::db::{Database, is_unique_violation};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveValue::Set, ColumnTrait, DbErr, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

use crate::cache::{Cached, EntityCache, EntityKey, KeyText};
use crate::domain::{
    Advisor, Boardroom, BoardroomUpdate, Deliberation, DoubleText, NewBoardroom, NewSession,
    NewThread, Page, PageRequest, Session, SessionTree, Thread, ThreadFilter, ThreadStatus,
    ThreadType,
};
use crate::entity::{boardroom, session, thread};
use crate::error::SessionError;
use crate::page::{self, Cursor, Fingerprint};
use crate::queries;
use crate::validate::{self, Limits};

/// The session service's domain: storage, rules and the Get cache.
#[derive(Clone, Debug)]
pub struct SessionStore {
    db: Database,
    cache: Option<EntityCache>,
    limits: Arc<Limits>,
}

fn non_empty(text: &Option<String>) -> Option<String> {
    text.as_ref().filter(|t| !t.is_empty()).cloned()
}

impl SessionStore {
    /// A store over `db`; `cache` is `None` when the Get cache is switched off.
    pub fn new(db: Database, cache: Option<EntityCache>, limits: Limits) -> Self {
        Self {
            db,
            cache,
            limits: Arc::new(limits),
        }
    }

    /// The database, for health checks.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// A loader that owns a handle on the store, so that refresh-ahead can run it in the
    /// background.
    fn loader<F, Fut>(&self, load: F) -> impl Fn() -> Fut + Clone + Send + Sync + 'static
    where
        F: Fn(SessionStore) -> Fut + Clone + Send + Sync + 'static,
    {
        let store = self.clone();
        move || load(store.clone())
    }

    /// Reads through the Get cache (L1, then Redis, then `load`; hot entries are refreshed
    /// ahead of expiry in the background); `None` is a NotFound, cached briefly too.
    async fn cached<F, Fut>(&self, key: EntityKey, load: F) -> Result<Option<Cached>, SessionError>
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Cached>, SessionError>> + Send + 'static,
    {
        match &self.cache {
            Some(cache) => cache
                .tiered()
                .get_or_load_refreshing(KeyText::new(key).as_str(), cache.ttl(), load)
                .await
                .map_err(|shared| (*shared).clone()),
            None => Box::pin(load()).await,
        }
    }

    /// Forgets `key` in every replica's cache after a write changed it.
    async fn invalidate(&self, key: EntityKey) {
        if let Some(cache) = &self.cache {
            cache.tiered().delete(KeyText::new(key).as_str()).await;
        }
    }

    /// Runs `insert`. When it hits the `(owner, request_id)` unique key of an earlier create,
    /// returns the row that create made instead: a retried create is answered, not repeated.
    async fn insert_once<M, Fut>(
        &self,
        (insert_name, lookup_name): (&'static str, &'static str),
        insert: impl Future<Output = Result<M, DbErr>>,
        request_id: Option<String>,
        lookup: impl FnOnce(String) -> Fut,
    ) -> Result<M, SessionError>
    where
        Fut: Future<Output = Result<Option<M>, DbErr>>,
    {
        match self.db.timed(insert_name, insert).await {
            Ok(row) => Ok(row),
            Err(err) if is_unique_violation(&err) => {
                let Some(request_id) = request_id else {
                    return Err(err.into());
                };
                self.db
                    .timed(lookup_name, lookup(request_id))
                    .await?
                    .ok_or_else(|| {
                        SessionError::Internal("an idempotent create lost its row".into())
                    })
            }
            Err(err) => Err(err.into()),
        }
    }

    // ---- boardrooms ----

    /// Creates a boardroom, or returns the one an earlier call with the same request id made.
    pub async fn create_boardroom(&self, input: NewBoardroom) -> Result<Boardroom, SessionError> {
        input.validate(&self.limits)?;
        let request_id = non_empty(&input.request_id);
        let at = now();
        let model = boardroom::ActiveModel {
            id: Set(Uuid::now_v7()),
            owner_id: Set(input.owner_id.clone()),
            name: Set(input.name.trim().to_owned()),
            advisors: Set(advisors_json(&input.advisors)?),
            double_text: Set(input.double_text.as_str().map(str::to_owned)),
            deliberation: Set(input.deliberation.as_str().map(str::to_owned)),
            debate_rounds: Set(stored_rounds(input.debate_rounds)),
            version: Set(1),
            request_id: Set(request_id.clone()),
            created_at: Set(at),
            updated_at: Set(at),
        };
        let owner_id = input.owner_id.as_str();
        let row = self
            .insert_once(
                ("boardroom.insert", "boardroom.by_request_id"),
                boardroom::Entity::insert(model).exec_with_returning(self.db.conn()),
                request_id.clone(),
                |request_id| {
                    boardroom::Entity::find()
                        .filter(boardroom::Column::OwnerId.eq(owner_id))
                        .filter(boardroom::Column::RequestId.eq(request_id))
                        .one(self.db.conn())
                },
            )
            .await?;
        self.invalidate(EntityKey::Boardroom(row.id)).await;
        boardroom_from(row)
    }

    /// One boardroom by id.
    pub async fn get_boardroom(&self, id: Uuid) -> Result<Arc<Boardroom>, SessionError> {
        let found = self
            .cached(
                EntityKey::Boardroom(id),
                self.loader(move |store| async move {
                    let row = store
                        .db
                        .timed(
                            "boardroom.get",
                            boardroom::Entity::find_by_id(id).one(store.db.conn()),
                        )
                        .await?;
                    Ok(match row {
                        Some(row) => Some(Cached::Boardroom(Arc::new(boardroom_from(row)?))),
                        None => None,
                    })
                }),
            )
            .await?;
        match found {
            Some(Cached::Boardroom(b)) => Ok(b),
            _ => Err(SessionError::NotFound {
                kind: "boardroom",
                id: id.to_string(),
            }),
        }
    }

    /// An owner's boardrooms, newest first.
    pub async fn list_boardrooms(
        &self,
        owner_id: &str,
        page: PageRequest,
    ) -> Result<Page<Boardroom>, SessionError> {
        validate::list_key("owner_id", owner_id)?;
        let fp = Fingerprint::of(&[b"boardrooms", owner_id.as_bytes()]);
        let cursor = page::decode(page.token.as_deref(), fp)?;
        let query = queries::boardrooms_by_owner(owner_id, cursor, u64::from(page.size) + 1);
        let rows = self
            .db
            .read("boardroom.list_by_owner", |c| {
                Box::pin(query.clone().all(c))
            })
            .await?;
        let items = rows
            .into_iter()
            .map(boardroom_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, page.size, fp, |b| Cursor {
            created_at: b.created_at,
            id: b.id,
        }))
    }

    /// Applies `update` and returns the new boardroom.
    pub async fn update_boardroom(
        &self,
        update: BoardroomUpdate,
    ) -> Result<Boardroom, SessionError> {
        update.validate(&self.limits)?;
        let mut query = boardroom::Entity::update_many()
            .col_expr(
                boardroom::Column::Version,
                Expr::col(boardroom::Column::Version).add(1),
            )
            .col_expr(boardroom::Column::UpdatedAt, Expr::val(now()))
            .filter(boardroom::Column::Id.eq(update.id));
        if let Some(name) = &update.name {
            query = query.col_expr(boardroom::Column::Name, Expr::val(name.trim()));
        }
        if let Some(advisors) = &update.advisors {
            query = query.col_expr(
                boardroom::Column::Advisors,
                Expr::val(advisors_json(advisors)?),
            );
        }
        if let Some(policy) = update.double_text {
            query = query.col_expr(
                boardroom::Column::DoubleText,
                Expr::val(policy.as_str().map(str::to_owned)),
            );
        }
        if let Some(mode) = update.deliberation {
            query = query.col_expr(
                boardroom::Column::Deliberation,
                Expr::val(mode.as_str().map(str::to_owned)),
            );
        }
        if let Some(rounds) = update.debate_rounds {
            query = query.col_expr(
                boardroom::Column::DebateRounds,
                Expr::val(stored_rounds(rounds)),
            );
        }
        if let Some(expected) = update.expected_version {
            query = query.filter(boardroom::Column::Version.eq(expected));
        }
        let result = self
            .db
            .timed("boardroom.update", query.exec(self.db.conn()))
            .await?;
        self.invalidate(EntityKey::Boardroom(update.id)).await;
        let current = self
            .db
            .timed(
                "boardroom.get",
                boardroom::Entity::find_by_id(update.id).one(self.db.conn()),
            )
            .await?;
        let current = current.ok_or_else(|| SessionError::NotFound {
            kind: "boardroom",
            id: update.id.to_string(),
        })?;
        if result.rows_affected == 0
            && let Some(expected) = update.expected_version
        {
            return Err(SessionError::VersionMismatch {
                expected,
                actual: current.version,
            });
        }
        boardroom_from(current)
    }

    // ---- sessions ----

    /// Opens a session in an existing boardroom (idempotent by request id).
    pub async fn create_session(&self, input: NewSession) -> Result<Session, SessionError> {
        input.validate()?;
        // NotFound for an unknown boardroom, answered from cache when warm.
        self.get_boardroom(input.boardroom_id).await?;
        let request_id = non_empty(&input.request_id);
        let model = session::ActiveModel {
            id: Set(Uuid::now_v7()),
            boardroom_id: Set(input.boardroom_id),
            user_id: Set(input.user_id.clone()),
            title: Set(input.title.trim().to_owned()),
            is_active: Set(true),
            request_id: Set(request_id.clone()),
            created_at: Set(now()),
            ended_at: Set(None),
        };
        let user_id = input.user_id.as_str();
        let row = self
            .insert_once(
                ("session.insert", "session.by_request_id"),
                session::Entity::insert(model).exec_with_returning(self.db.conn()),
                request_id,
                |request_id| {
                    session::Entity::find()
                        .filter(session::Column::UserId.eq(user_id))
                        .filter(session::Column::RequestId.eq(request_id))
                        .one(self.db.conn())
                },
            )
            .await?;
        self.invalidate(EntityKey::Session(row.id)).await;
        Ok(session_from_model(row))
    }

    /// One session by id.
    pub async fn get_session(&self, id: Uuid) -> Result<Arc<Session>, SessionError> {
        let found = self
            .cached(
                EntityKey::Session(id),
                self.loader(move |store| async move {
                    let row = store
                        .db
                        .timed(
                            "session.get",
                            session::Entity::find_by_id(id)
                                .select_only()
                                .columns(session::ROW_COLUMNS)
                                .into_model::<session::Row>()
                                .one(store.db.conn()),
                        )
                        .await?;
                    Ok(row.map(|r| Cached::Session(Arc::new(session_from(r)))))
                }),
            )
            .await?;
        match found {
            Some(Cached::Session(s)) => Ok(s),
            _ => Err(SessionError::NotFound {
                kind: "session",
                id: id.to_string(),
            }),
        }
    }

    /// A user's sessions, newest first.
    pub async fn list_sessions(
        &self,
        user_id: &str,
        active_only: bool,
        page: PageRequest,
    ) -> Result<Page<Session>, SessionError> {
        validate::list_key("user_id", user_id)?;
        let fp = Fingerprint::of(&[
            b"sessions.user",
            user_id.as_bytes(),
            &[u8::from(active_only)],
        ]);
        let cursor = page::decode(page.token.as_deref(), fp)?;
        let query =
            queries::sessions_by_user(user_id, active_only, cursor, u64::from(page.size) + 1);
        let name = if active_only {
            "session.list_by_user_active"
        } else {
            "session.list_by_user"
        };
        self.session_page(name, query, fp, page.size).await
    }

    /// A boardroom's active sessions, newest first.
    pub async fn list_active_sessions(
        &self,
        boardroom_id: Uuid,
        page: PageRequest,
    ) -> Result<Page<Session>, SessionError> {
        let fp = Fingerprint::of(&[b"sessions.active", boardroom_id.as_bytes()]);
        let cursor = page::decode(page.token.as_deref(), fp)?;
        let query =
            queries::active_sessions_by_boardroom(boardroom_id, cursor, u64::from(page.size) + 1);
        self.session_page("session.list_active_by_boardroom", query, fp, page.size)
            .await
    }

    async fn session_page(
        &self,
        name: &'static str,
        query: sea_orm::Select<session::Entity>,
        fp: Fingerprint,
        size: u32,
    ) -> Result<Page<Session>, SessionError> {
        let rows = self
            .db
            .read(name, |c| {
                Box::pin(query.clone().into_model::<session::Row>().all(c))
            })
            .await?;
        let items = rows.into_iter().map(session_from).collect();
        Ok(paginate(items, size, fp, |s| Cursor {
            created_at: s.created_at,
            id: s.id,
        }))
    }

    /// Ends a session; ending an ended session returns it unchanged.
    pub async fn end_session(&self, id: Uuid) -> Result<Session, SessionError> {
        self.db
            .timed(
                "session.end",
                session::Entity::update_many()
                    .col_expr(session::Column::IsActive, Expr::val(false))
                    .col_expr(session::Column::EndedAt, Expr::val(now()))
                    .filter(session::Column::Id.eq(id))
                    .filter(session::Column::IsActive.eq(true))
                    .exec(self.db.conn()),
            )
            .await?;
        self.invalidate(EntityKey::Session(id)).await;
        let row = self
            .db
            .timed(
                "session.get",
                session::Entity::find_by_id(id).one(self.db.conn()),
            )
            .await?;
        row.map(session_from_model)
            .ok_or_else(|| SessionError::NotFound {
                kind: "session",
                id: id.to_string(),
            })
    }

    // ---- threads ----

    /// Creates a thread in an active session (idempotent by request id).
    pub async fn create_thread(&self, input: NewThread) -> Result<Thread, SessionError> {
        input.validate()?;
        let owner = self.get_session(input.session_id).await?;
        let request_id = non_empty(&input.request_id);
        if !owner.active {
            // A retry of a create that succeeded before the session ended still gets its thread.
            if let Some(request_id) = request_id.clone()
                && let Some(existing) = self
                    .db
                    .timed(
                        "thread.by_request_id",
                        self.thread_row_by_request_id(input.session_id, request_id),
                    )
                    .await?
            {
                return thread_from_model(existing);
            }
            return Err(SessionError::FailedPrecondition(format!(
                "session {} has ended",
                input.session_id
            )));
        }
        let at = now();
        let model = thread::ActiveModel {
            id: Set(Uuid::now_v7()),
            session_id: Set(input.session_id),
            thread_type: Set(input.thread_type.as_str().to_owned()),
            status: Set(ThreadStatus::Open.as_str().to_owned()),
            title: Set(input.title.trim().to_owned()),
            request_id: Set(request_id.clone()),
            created_at: Set(at),
            updated_at: Set(at),
        };
        let session_id = input.session_id;
        let row = self
            .insert_once(
                ("thread.insert", "thread.by_request_id"),
                thread::Entity::insert(model).exec_with_returning(self.db.conn()),
                request_id,
                |request_id| self.thread_row_by_request_id(session_id, request_id),
            )
            .await?;
        self.invalidate(EntityKey::Thread(row.id)).await;
        thread_from_model(row)
    }

    fn thread_row_by_request_id(
        &self,
        session_id: Uuid,
        request_id: String,
    ) -> impl Future<Output = Result<Option<thread::Model>, DbErr>> + '_ {
        thread::Entity::find()
            .filter(thread::Column::SessionId.eq(session_id))
            .filter(thread::Column::RequestId.eq(request_id))
            .one(self.db.conn())
    }

    /// One thread by id.
    pub async fn get_thread(&self, id: Uuid) -> Result<Arc<Thread>, SessionError> {
        let found = self
            .cached(
                EntityKey::Thread(id),
                self.loader(move |store| async move {
                    let row = store
                        .db
                        .timed(
                            "thread.get",
                            thread::Entity::find_by_id(id)
                                .select_only()
                                .columns(thread::ROW_COLUMNS)
                                .into_model::<thread::Row>()
                                .one(store.db.conn()),
                        )
                        .await?;
                    Ok(match row {
                        Some(r) => Some(Cached::Thread(Arc::new(thread_from(r)?))),
                        None => None,
                    })
                }),
            )
            .await?;
        match found {
            Some(Cached::Thread(t)) => Ok(t),
            _ => Err(SessionError::NotFound {
                kind: "thread",
                id: id.to_string(),
            }),
        }
    }

    /// A session's threads, oldest first, filtered.
    pub async fn list_threads(
        &self,
        filter: ThreadFilter,
        page: PageRequest,
    ) -> Result<Page<Thread>, SessionError> {
        let type_tag = filter.thread_type.map_or("", ThreadType::as_str);
        let status_tag = filter.status.map_or("", ThreadStatus::as_str);
        let fp = Fingerprint::of(&[
            b"threads",
            filter.session_id.as_bytes(),
            type_tag.as_bytes(),
            status_tag.as_bytes(),
        ]);
        let cursor = page::decode(page.token.as_deref(), fp)?;
        let name = match (filter.thread_type, filter.status) {
            (None, None) => "thread.list_by_session",
            (None, Some(ThreadStatus::Open)) => "thread.list_open_by_session",
            _ => "thread.list_by_session_filtered",
        };
        let query = queries::threads_by_session(&filter, cursor, Some(u64::from(page.size) + 1));
        let rows = self
            .db
            .read(name, |c| {
                Box::pin(query.clone().into_model::<thread::Row>().all(c))
            })
            .await?;
        let items = rows
            .into_iter()
            .map(thread_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, page.size, fp, |t| Cursor {
            created_at: t.created_at,
            id: t.id,
        }))
    }

    /// Sets a thread's status.
    pub async fn update_thread_status(
        &self,
        id: Uuid,
        status: ThreadStatus,
    ) -> Result<Thread, SessionError> {
        self.db
            .timed(
                "thread.update_status",
                thread::Entity::update_many()
                    .col_expr(thread::Column::Status, Expr::val(status.as_str()))
                    .col_expr(thread::Column::UpdatedAt, Expr::val(now()))
                    .filter(thread::Column::Id.eq(id))
                    .exec(self.db.conn()),
            )
            .await?;
        self.invalidate(EntityKey::Thread(id)).await;
        let row = self
            .db
            .timed(
                "thread.get",
                thread::Entity::find_by_id(id).one(self.db.conn()),
            )
            .await?;
        row.map(thread_from_model)
            .transpose()?
            .ok_or_else(|| SessionError::NotFound {
                kind: "thread",
                id: id.to_string(),
            })
    }

    /// A session, its boardroom and all its threads: at most three queries whatever the
    /// number of threads (none for the session and boardroom when cached).
    pub async fn get_session_tree(&self, session_id: Uuid) -> Result<SessionTree, SessionError> {
        let session = self.get_session(session_id).await?;
        let all = ThreadFilter {
            session_id,
            thread_type: None,
            status: None,
        };
        let (boardroom, rows) =
            tokio::try_join!(self.get_boardroom(session.boardroom_id), async {
                let query = queries::threads_by_session(&all, None, None);
                self.db
                    .read("thread.tree_by_session", |c| {
                        Box::pin(query.clone().into_model::<thread::Row>().all(c))
                    })
                    .await
                    .map_err(SessionError::from)
            })?;
        let threads = rows
            .into_iter()
            .map(thread_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SessionTree {
            session: (*session).clone(),
            boardroom: (*boardroom).clone(),
            threads,
        })
    }
}

/// Cuts the extra row fetched to learn whether another page exists.
fn paginate<T>(
    mut items: Vec<T>,
    size: u32,
    fp: Fingerprint,
    cursor: impl Fn(&T) -> Cursor,
) -> Page<T> {
    let size = size as usize;
    let next_page_token = if items.len() > size {
        items.truncate(size);
        items.last().map(|last| page::encode(fp, cursor(last)))
    } else {
        None
    };
    Page {
        items,
        next_page_token,
    }
}

/// DEBATE's rounds as stored: `None` for the default (0).
fn stored_rounds(rounds: u32) -> Option<i16> {
    i16::try_from(rounds).ok().filter(|r| *r > 0)
}

fn advisors_json(advisors: &[Advisor]) -> Result<serde_json::Value, SessionError> {
    serde_json::to_value(advisors)
        .map_err(|e| SessionError::Internal(format!("encoding advisors: {e}")))
}

fn boardroom_from(row: boardroom::Model) -> Result<Boardroom, SessionError> {
    let advisors: Vec<Advisor> = serde_json::from_value(row.advisors).map_err(|e| {
        SessionError::Internal(format!("boardroom {} has corrupt advisors: {e}", row.id))
    })?;
    Ok(Boardroom {
        id: row.id,
        owner_id: row.owner_id,
        name: row.name,
        advisors,
        double_text: DoubleText::parse(row.double_text.as_deref()),
        deliberation: Deliberation::parse(row.deliberation.as_deref()),
        debate_rounds: row
            .debate_rounds
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0),
        version: row.version,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn session_from(r: session::Row) -> Session {
    Session {
        id: r.id,
        boardroom_id: r.boardroom_id,
        user_id: r.user_id,
        title: r.title,
        active: r.is_active,
        created_at: r.created_at,
        ended_at: r.ended_at,
    }
}

fn session_from_model(m: session::Model) -> Session {
    Session {
        id: m.id,
        boardroom_id: m.boardroom_id,
        user_id: m.user_id,
        title: m.title,
        active: m.is_active,
        created_at: m.created_at,
        ended_at: m.ended_at,
    }
}

fn thread_from(r: thread::Row) -> Result<Thread, SessionError> {
    let thread_type = ThreadType::parse(&r.thread_type).ok_or_else(|| {
        SessionError::Internal(format!(
            "thread {} has unknown type {:?}",
            r.id, r.thread_type
        ))
    })?;
    let status = ThreadStatus::parse(&r.status).ok_or_else(|| {
        SessionError::Internal(format!("thread {} has unknown status {:?}", r.id, r.status))
    })?;
    Ok(Thread {
        id: r.id,
        session_id: r.session_id,
        thread_type,
        status,
        title: r.title,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

fn thread_from_model(m: thread::Model) -> Result<Thread, SessionError> {
    thread_from(thread::Row {
        id: m.id,
        session_id: m.session_id,
        thread_type: m.thread_type,
        status: m.status,
        title: m.title,
        created_at: m.created_at,
        updated_at: m.updated_at,
    })
}
