use std::net::SocketAddr;

use boardroom_proto::session::v1 as pb;
use boardroom_proto::session::v1::session_service_client::SessionServiceClient;
use boardroom_runtime::Config;
use boardroom_testkit::{TestDatabase, channel, test_config};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub async fn database(self) -> TestDatabase {
        match self {
            Backend::Postgres => TestDatabase::postgres().await,
            Backend::Sqlite => TestDatabase::sqlite(),
        }
    }
}

/// Runs one test body on both backends.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::helpers::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::helpers::Backend::Sqlite).await
            }
        }
    };
}

pub struct TestApp {
    pub client: SessionServiceClient<Channel>,
    pub cache: Option<boardroom_session::cache::EntityCache>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub db: TestDatabase,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    let db = backend.database().await;
    spawn_app_with(db, |_| {}).await
}

pub async fn spawn_app_with(db: TestDatabase, configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config(&db);
    configure(&mut config);
    let app = boardroom_session::Application::build(&config)
        .await
        .expect("building the session service");
    let addr = app.local_addr().expect("bound");
    let admin = app.admin_addr().expect("bound");
    let cache = app.cache().cloned();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = SessionServiceClient::new(channel(addr).await);
    TestApp {
        client,
        cache,
        addr,
        admin,
        db,
        shutdown,
        task,
    }
}

impl TestApp {
    /// Invalidations applied to this replica's Get cache.
    pub fn cache_events(&self) -> tokio::sync::broadcast::Receiver<boardroom_cache::Invalidation> {
        self.cache
            .as_ref()
            .expect("cache enabled")
            .tiered()
            .invalidations()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("joined").expect("clean shutdown");
    }

    pub async fn boardroom(&mut self, owner: &str) -> pb::Boardroom {
        self.client
            .create_boardroom(pb::CreateBoardroomRequest {
                owner_id: owner.into(),
                name: "Strategy board".into(),
                advisors: vec![advisor("CFO"), advisor("CTO")],
                request_id: String::new(),
                double_text: pb::DoubleTextPolicy::Unspecified as i32,
                ..Default::default()
            })
            .await
            .expect("create boardroom")
            .into_inner()
            .boardroom
            .expect("boardroom")
    }

    pub async fn session(&mut self, boardroom_id: &str, user: &str) -> pb::Session {
        self.client
            .create_session(pb::CreateSessionRequest {
                boardroom_id: boardroom_id.into(),
                user_id: user.into(),
                title: "Q3 plan".into(),
                request_id: String::new(),
            })
            .await
            .expect("create session")
            .into_inner()
            .session
            .expect("session")
    }

    pub async fn thread(&mut self, session_id: &str, thread_type: pb::ThreadType) -> pb::Thread {
        self.client
            .create_thread(pb::CreateThreadRequest {
                session_id: session_id.into(),
                thread_type: thread_type.into(),
                title: "pricing".into(),
                request_id: String::new(),
            })
            .await
            .expect("create thread")
            .into_inner()
            .thread
            .expect("thread")
    }
}

pub fn advisor(name: &str) -> pb::Advisor {
    pb::Advisor {
        name: name.into(),
        role: format!("{name} of the board"),
        system_prompt: "Be brief.".into(),
        model: "mock".into(),
    }
}

/// The fields named by an INVALID_ARGUMENT's BadRequest details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}
