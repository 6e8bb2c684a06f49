//! The gRPC skin of the session service: validate, convert, call the store.

use boardroom_proto::session::v1 as pb;
use boardroom_proto::session::v1::session_service_server::SessionService;
use boardroom_runtime::admission::RateGate;
use tonic::{Request, Response, Status};

use crate::conversions::{self as conv, boardroom_to, page_request, session_to, thread_to};
use crate::domain::Page;
use crate::store::SessionStore;

/// Implements `boardroom.session.v1.SessionService`.
#[derive(Debug, Clone)]
pub struct SessionGrpc {
    store: SessionStore,
    default_page_size: u32,
    max_page_size: u32,
    /// Admits CreateSession and CreateThread while the runtime keeps up (none: all).
    starts: Option<RateGate>,
}

impl SessionGrpc {
    /// Serves `store` with the given page-size bounds.
    pub fn new(store: SessionStore, default_page_size: u32, max_page_size: u32) -> Self {
        Self {
            store,
            default_page_size,
            max_page_size,
            starts: None,
        }
    }

    /// Refuses CreateSession and CreateThread past `gate`'s rate (UNAVAILABLE with
    /// `retry-after`), after their validation and before any work.
    pub fn with_start_gate(mut self, gate: RateGate) -> Self {
        self.starts = Some(gate);
        self
    }

    /// A call that starts a user's work, admitted or refused by the start gate.
    fn admit_start(&self) -> Result<(), Status> {
        match self.starts.as_ref().map(RateGate::try_enter) {
            Some(Err(retry_after_secs)) => Err(boardroom_runtime::status::unavailable(
                "server overloaded: new sessions and threads are refused for now",
                u32::try_from(retry_after_secs).unwrap_or(u32::MAX),
            )),
            _ => Ok(()),
        }
    }

    fn page(&self, size: i32, token: String) -> Result<crate::domain::PageRequest, Status> {
        Ok(page_request(
            size,
            token,
            self.default_page_size,
            self.max_page_size,
        )?)
    }
}

fn token(page: &Page<impl Sized>) -> String {
    page.next_page_token.clone().unwrap_or_default()
}

#[tonic::async_trait]
impl SessionService for SessionGrpc {
    async fn create_boardroom(
        &self,
        request: Request<pb::CreateBoardroomRequest>,
    ) -> Result<Response<pb::CreateBoardroomResponse>, Status> {
        let created = self
            .store
            .create_boardroom(conv::new_boardroom(request.into_inner())?)
            .await?;
        Ok(Response::new(pb::CreateBoardroomResponse {
            boardroom: Some(boardroom_to(&created)),
        }))
    }

    async fn get_boardroom(
        &self,
        request: Request<pb::GetBoardroomRequest>,
    ) -> Result<Response<pb::GetBoardroomResponse>, Status> {
        let id = conv::id("id", &request.get_ref().id)?;
        let found = self.store.get_boardroom(id).await?;
        Ok(Response::new(pb::GetBoardroomResponse {
            boardroom: Some(boardroom_to(&found)),
        }))
    }

    async fn list_boardrooms(
        &self,
        request: Request<pb::ListBoardroomsRequest>,
    ) -> Result<Response<pb::ListBoardroomsResponse>, Status> {
        let r = request.into_inner();
        let page = self
            .store
            .list_boardrooms(&r.owner_id, self.page(r.page_size, r.page_token)?)
            .await?;
        Ok(Response::new(pb::ListBoardroomsResponse {
            next_page_token: token(&page),
            boardrooms: page.items.iter().map(boardroom_to).collect(),
        }))
    }

    async fn update_boardroom(
        &self,
        request: Request<pb::UpdateBoardroomRequest>,
    ) -> Result<Response<pb::UpdateBoardroomResponse>, Status> {
        let update = conv::boardroom_update(request.into_inner())?;
        let updated = self.store.update_boardroom(update).await?;
        Ok(Response::new(pb::UpdateBoardroomResponse {
            boardroom: Some(boardroom_to(&updated)),
        }))
    }

    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let new = conv::new_session(request.into_inner())?;
        self.admit_start()?;
        let created = self.store.create_session(new).await?;
        Ok(Response::new(pb::CreateSessionResponse {
            session: Some(session_to(&created)),
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let id = conv::id("id", &request.get_ref().id)?;
        let found = self.store.get_session(id).await?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(session_to(&found)),
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let r = request.into_inner();
        let page = self
            .store
            .list_sessions(
                &r.user_id,
                r.active_only,
                self.page(r.page_size, r.page_token)?,
            )
            .await?;
        Ok(Response::new(pb::ListSessionsResponse {
            next_page_token: token(&page),
            sessions: page.items.iter().map(session_to).collect(),
        }))
    }

    async fn list_active_sessions(
        &self,
        request: Request<pb::ListActiveSessionsRequest>,
    ) -> Result<Response<pb::ListActiveSessionsResponse>, Status> {
        let r = request.into_inner();
        let boardroom_id = conv::id("boardroom_id", &r.boardroom_id)?;
        let page = self
            .store
            .list_active_sessions(boardroom_id, self.page(r.page_size, r.page_token)?)
            .await?;
        Ok(Response::new(pb::ListActiveSessionsResponse {
            next_page_token: token(&page),
            sessions: page.items.iter().map(session_to).collect(),
        }))
    }

    async fn end_session(
        &self,
        request: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let id = conv::id("id", &request.get_ref().id)?;
        let ended = self.store.end_session(id).await?;
        Ok(Response::new(pb::EndSessionResponse {
            session: Some(session_to(&ended)),
        }))
    }

    async fn create_thread(
        &self,
        request: Request<pb::CreateThreadRequest>,
    ) -> Result<Response<pb::CreateThreadResponse>, Status> {
        let new = conv::new_thread(request.into_inner())?;
        self.admit_start()?;
        let created = self.store.create_thread(new).await?;
        Ok(Response::new(pb::CreateThreadResponse {
            thread: Some(thread_to(&created)),
        }))
    }

    async fn get_thread(
        &self,
        request: Request<pb::GetThreadRequest>,
    ) -> Result<Response<pb::GetThreadResponse>, Status> {
        let id = conv::id("id", &request.get_ref().id)?;
        let found = self.store.get_thread(id).await?;
        Ok(Response::new(pb::GetThreadResponse {
            thread: Some(thread_to(&found)),
        }))
    }

    async fn list_threads(
        &self,
        request: Request<pb::ListThreadsRequest>,
    ) -> Result<Response<pb::ListThreadsResponse>, Status> {
        let r = request.into_inner();
        let filter = conv::thread_filter(&r)?;
        let page = self
            .store
            .list_threads(filter, self.page(r.page_size, r.page_token)?)
            .await?;
        Ok(Response::new(pb::ListThreadsResponse {
            next_page_token: token(&page),
            threads: page.items.iter().map(thread_to).collect(),
        }))
    }

    async fn update_thread_status(
        &self,
        request: Request<pb::UpdateThreadStatusRequest>,
    ) -> Result<Response<pb::UpdateThreadStatusResponse>, Status> {
        let r = request.into_inner();
        let mut v = boardroom_runtime::status::Violations::default();
        let id = conv::parse_id(&mut v, "id", &r.id);
        let status = conv::required_status(r.status);
        if let Err(crate::SessionError::Invalid(more)) = &status {
            v.extend(more.clone());
        }
        crate::validate::Verdict::into_result(v)?;
        let updated = self.store.update_thread_status(id, status?).await?;
        Ok(Response::new(pb::UpdateThreadStatusResponse {
            thread: Some(thread_to(&updated)),
        }))
    }

    async fn get_session_tree(
        &self,
        request: Request<pb::GetSessionTreeRequest>,
    ) -> Result<Response<pb::GetSessionTreeResponse>, Status> {
        let id = conv::id("session_id", &request.get_ref().session_id)?;
        let tree = self.store.get_session_tree(id).await?;
        Ok(Response::new(pb::GetSessionTreeResponse {
            session: Some(session_to(&tree.session)),
            boardroom: Some(boardroom_to(&tree.boardroom)),
            threads: tree.threads.iter().map(thread_to).collect(),
        }))
    }
}
