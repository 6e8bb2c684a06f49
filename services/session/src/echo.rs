//! The benchmark baseline: a SessionService that answers GetSession with a constant session
//! and touches no database or cache, served by the same server stack as the real service.
//! `boardroom load` against it measures the floor our stack imposes; the ratio to the real
//! service measures what storage and caching cost on top.

use boardroom_proto::session::v1 as pb;
use boardroom_proto::session::v1::session_service_server::{SessionService, SessionServiceServer};
use boardroom_runtime::Config;
use boardroom_runtime::server::GrpcServer;
use tonic::{Request, Response, Status};

/// The echo baseline service.
#[derive(Debug, Clone, Default)]
pub struct EchoSessions;

fn only_get_session<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the echo baseline only answers GetSession",
    ))
}

#[tonic::async_trait]
impl SessionService for EchoSessions {
    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(pb::Session {
                id,
                boardroom_id: "01900000-0000-7000-8000-000000000000".into(),
                user_id: "echo-user".into(),
                title: "echo".into(),
                active: true,
                create_time: Some(prost_types::Timestamp {
                    seconds: 1_790_000_000,
                    nanos: 0,
                }),
                end_time: None,
            }),
        }))
    }

    async fn create_boardroom(
        &self,
        _request: Request<pb::CreateBoardroomRequest>,
    ) -> Result<Response<pb::CreateBoardroomResponse>, Status> {
        only_get_session()
    }

    async fn get_boardroom(
        &self,
        _request: Request<pb::GetBoardroomRequest>,
    ) -> Result<Response<pb::GetBoardroomResponse>, Status> {
        only_get_session()
    }

    async fn list_boardrooms(
        &self,
        _request: Request<pb::ListBoardroomsRequest>,
    ) -> Result<Response<pb::ListBoardroomsResponse>, Status> {
        only_get_session()
    }

    async fn update_boardroom(
        &self,
        _request: Request<pb::UpdateBoardroomRequest>,
    ) -> Result<Response<pb::UpdateBoardroomResponse>, Status> {
        only_get_session()
    }

    async fn create_session(
        &self,
        _request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        only_get_session()
    }

    async fn list_sessions(
        &self,
        _request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        only_get_session()
    }

    async fn list_active_sessions(
        &self,
        _request: Request<pb::ListActiveSessionsRequest>,
    ) -> Result<Response<pb::ListActiveSessionsResponse>, Status> {
        only_get_session()
    }

    async fn end_session(
        &self,
        _request: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        only_get_session()
    }

    async fn create_thread(
        &self,
        _request: Request<pb::CreateThreadRequest>,
    ) -> Result<Response<pb::CreateThreadResponse>, Status> {
        only_get_session()
    }

    async fn get_thread(
        &self,
        _request: Request<pb::GetThreadRequest>,
    ) -> Result<Response<pb::GetThreadResponse>, Status> {
        only_get_session()
    }

    async fn list_threads(
        &self,
        _request: Request<pb::ListThreadsRequest>,
    ) -> Result<Response<pb::ListThreadsResponse>, Status> {
        only_get_session()
    }

    async fn update_thread_status(
        &self,
        _request: Request<pb::UpdateThreadStatusRequest>,
    ) -> Result<Response<pb::UpdateThreadStatusResponse>, Status> {
        only_get_session()
    }

    async fn get_session_tree(
        &self,
        _request: Request<pb::GetSessionTreeRequest>,
    ) -> Result<Response<pb::GetSessionTreeResponse>, Status> {
        only_get_session()
    }
}

/// Binds the echo baseline on the session service's configured addresses.
#[inline(never)]
pub fn bind(config: &Config) -> boardroom_runtime::BoxFuture<'_, anyhow::Result<GrpcServer>> {
    Box::pin(bind_inner(config))
}

async fn bind_inner(config: &Config) -> anyhow::Result<GrpcServer> {
    Ok(GrpcServer::bind(
        "session-echo",
        &config.session.listen,
        &config.server,
        &config.auth,
    )
    .await?
    .add_service(SessionServiceServer::new(EchoSessions)))
}
