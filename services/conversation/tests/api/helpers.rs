use std::net::SocketAddr;
use std::time::Duration;

use boardroom_llm_gateway::settings::{MockConfig, OpenAiConfig, ProviderSettings};
use boardroom_proto::conversation::v1 as pb;
use boardroom_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use boardroom_proto::conversation::v1::run_turn_response::Event;
use boardroom_proto::session::v1 as spb;
use boardroom_proto::session::v1::session_service_client::SessionServiceClient;
use boardroom_runtime::Config;
use boardroom_runtime::config::{ModelAlias, Secret};
use boardroom_testkit::{TestDatabase, channel, redis_url, test_config};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_types::StatusExt;

pub type Client = ConversationServiceClient<Channel>;

/// The session service, the gateway (mock provider) and the conversation service, real
/// servers on free ports over one PostgreSQL database and the real Redis.
pub struct Suite {
    pub client: Client,
    pub sessions: SessionServiceClient<Channel>,
    pub admin: SocketAddr,
    pub gateway_admin: SocketAddr,
    #[allow(dead_code)] // the benches call the gateway directly
    pub gateway_addr: SocketAddr,
    pub config: Config,
    /// Kept alive for the test (it drops its schema).
    _db: TestDatabase,
    conversation: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    /// The running conversation service's domain, to look inside.
    domain: Option<boardroom_conversation::Conversations>,
    others: CancellationToken,
}

impl Drop for Suite {
    fn drop(&mut self) {
        self.others.cancel();
        if let Some((stop, _)) = &self.conversation {
            stop.cancel();
        }
    }
}

/// A second conversation instance; stopped when dropped.
pub struct Replica {
    pub client: Client,
    stop: CancellationToken,
    _task: JoinHandle<anyhow::Result<()>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A model alias on an OpenAI-compatible upstream (a fake, in tests).
pub fn upstream_alias(config: &mut Config, alias: &str, base_url: &str) {
    config.llm.deployments.insert(
        alias.to_owned(),
        ProviderSettings::Openai(OpenAiConfig {
            model: "gpt-fake".into(),
            base_url: base_url.to_owned(),
            ..OpenAiConfig::default()
        })
        .into(),
    );
    config.llm.models.insert(
        alias.to_owned(),
        ModelAlias {
            deployments: vec![alias.to_owned()],
            fallbacks: vec![],
            semantic_cache: false,
        },
    );
    config.llm.retry.base_backoff_ms = 5;
}

/// The mock model's latency (unary) and time to first token (streams).
pub fn mock_latency(config: &mut Config, latency_ms: u64) {
    config.llm.deployments.insert(
        "mock".into(),
        ProviderSettings::Mock(MockConfig {
            latency_ms,
            ttft_ms: latency_ms,
            ..MockConfig::default()
        })
        .into(),
    );
}

pub async fn suite(configure: impl FnOnce(&mut Config)) -> Suite {
    suite_on(TestDatabase::postgres().await, configure).await
}

/// The suite over `db` (PostgreSQL or SQLite).
pub async fn suite_on(db: TestDatabase, configure: impl FnOnce(&mut Config)) -> Suite {
    let mut config = test_config(&db);
    config.redis.url = Secret::new(redis_url().await.0);
    mock_latency(&mut config, 0);
    configure(&mut config);
    let others = CancellationToken::new();
    let gateway = boardroom_llm_gateway::Application::build(&config)
        .await
        .expect("building the gateway");
    let gateway_addr = gateway.local_addr().expect("bound");
    let gateway_admin = gateway.admin_addr().expect("bound");
    tokio::spawn(gateway.run_until_stopped(others.clone()));
    let session = boardroom_session::Application::build(&config)
        .await
        .expect("building the session service");
    let session_addr = session.local_addr().expect("bound");
    tokio::spawn(session.run_until_stopped(others.clone()));
    config.conversation.session_addresses = vec![format!("http://{session_addr}")];
    config.conversation.llm_addresses = vec![format!("http://{gateway_addr}")];
    let mut suite = Suite {
        client: ConversationServiceClient::new(channel(session_addr).await),
        sessions: SessionServiceClient::new(channel(session_addr).await),
        admin: session_addr,
        gateway_admin,
        gateway_addr,
        config,
        _db: db,
        conversation: None,
        domain: None,
        others,
    };
    suite.start_conversation().await;
    suite
}

impl Suite {
    /// (Re)starts the conversation service with `self.config`.
    pub async fn start_conversation(&mut self) {
        let app = boardroom_conversation::Application::build(&self.config)
            .await
            .expect("building the conversation service");
        let addr = app.local_addr().expect("bound");
        self.admin = app.admin_addr().expect("bound");
        self.domain = Some(app.domain().clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        self.client = ConversationServiceClient::new(channel(addr).await);
        self.conversation = Some((stop, task));
    }

    /// What the running conversation service keeps in memory now.
    #[allow(dead_code)] // not every test binary looks
    pub async fn resident(&self) -> boardroom_conversation::Resident {
        self.domain.as_ref().expect("started").resident().await
    }

    /// Another conversation instance on the same database and Redis (a replica), with
    /// `configure` applied to a copy of `self.config`.
    pub async fn replica(&self, configure: impl FnOnce(&mut Config)) -> Replica {
        let mut config = self.config.clone();
        configure(&mut config);
        let app = boardroom_conversation::Application::build(&config)
            .await
            .expect("building a replica");
        let addr = app.local_addr().expect("bound");
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        Replica {
            client: ConversationServiceClient::new(channel(addr).await),
            stop,
            _task: task,
        }
    }

    /// Stops the conversation service and waits until it has.
    pub async fn stop_conversation(&mut self) {
        if let Some((stop, task)) = self.conversation.take() {
            stop.cancel();
            task.await.expect("joined").expect("stopped cleanly");
        }
    }

    /// A boardroom with these advisors (name, model alias), a session and a thread in it.
    pub async fn thread_with(&self, advisors: &[(&str, &str)]) -> String {
        self.thread_with_policy(advisors, spb::DoubleTextPolicy::Unspecified)
            .await
    }

    /// [`Suite::thread_with`], the boardroom with this double-text policy.
    pub async fn thread_with_policy(
        &self,
        advisors: &[(&str, &str)],
        double_text: spb::DoubleTextPolicy,
    ) -> String {
        self.thread_in(
            advisors,
            spb::CreateBoardroomRequest {
                double_text: double_text as i32,
                ..Default::default()
            },
        )
        .await
    }

    /// [`Suite::thread_with`], the boardroom deliberating in `mode` (`rounds` for DEBATE).
    pub async fn thread_deliberating(
        &self,
        advisors: &[(&str, &str)],
        mode: spb::DeliberationMode,
        rounds: u32,
    ) -> String {
        self.thread_in(
            advisors,
            spb::CreateBoardroomRequest {
                deliberation: mode as i32,
                debate_rounds: rounds,
                ..Default::default()
            },
        )
        .await
    }

    /// A thread in a new boardroom of `advisors` with the policies of `boardroom`.
    pub async fn thread_in(
        &self,
        advisors: &[(&str, &str)],
        boardroom: spb::CreateBoardroomRequest,
    ) -> String {
        let boardroom_id = self.boardroom_in(advisors, boardroom).await;
        boardroom_testkit::main_thread(&mut self.sessions.clone(), boardroom_id).await
    }

    /// A new boardroom of `advisors` (name, model alias) with the policies of `boardroom`:
    /// its id.
    pub async fn boardroom_in(
        &self,
        advisors: &[(&str, &str)],
        boardroom: spb::CreateBoardroomRequest,
    ) -> String {
        self.sessions
            .clone()
            .create_boardroom(spb::CreateBoardroomRequest {
                owner_id: "owner".into(),
                name: "board".into(),
                advisors: advisors
                    .iter()
                    .map(|(name, model)| spb::Advisor {
                        name: (*name).into(),
                        role: format!("the {name}"),
                        system_prompt: format!("You are the {name}."),
                        model: (*model).into(),
                    })
                    .collect(),
                request_id: String::new(),
                ..boardroom
            })
            .await
            .expect("boardroom")
            .into_inner()
            .boardroom
            .expect("boardroom")
            .id
    }

    /// A new session of `user` in `boardroom_id` and its main thread.
    pub async fn thread_of(&self, boardroom_id: &str, user: &str) -> String {
        boardroom_testkit::user_thread(&mut self.sessions.clone(), boardroom_id.into(), user).await
    }

    /// A thread whose boardroom has `n` advisors on the mock model.
    pub async fn thread(&self, n: usize) -> String {
        let names: Vec<String> = (0..n).map(|i| format!("advisor{i}")).collect();
        let advisors: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "mock")).collect();
        self.thread_with(&advisors).await
    }

    pub async fn state(&self, thread: &str) -> pb::GetStateResponse {
        self.client
            .clone()
            .get_state(pb::GetStateRequest {
                thread_id: thread.into(),
            })
            .await
            .expect("GetState")
            .into_inner()
    }

    /// Every message of a thread, oldest first.
    pub async fn messages(&self, thread: &str) -> Vec<pb::Message> {
        let (mut all, mut token) = (Vec::new(), String::new());
        loop {
            let page = self
                .client
                .clone()
                .list_messages(pb::ListMessagesRequest {
                    thread_id: thread.into(),
                    direction: pb::Direction::Forward as i32,
                    page_size: 1000,
                    page_token: token,
                })
                .await
                .expect("ListMessages")
                .into_inner();
            all.extend(page.messages);
            if page.next_page_token.is_empty() {
                return all;
            }
            token = page.next_page_token;
        }
    }
}

pub fn turn(thread: &str, content: &str, request_id: &str) -> pb::RunTurnRequest {
    pb::RunTurnRequest {
        thread_id: thread.into(),
        content: content.into(),
        author: "user".into(),
        request_id: request_id.into(),
        ..pb::RunTurnRequest::default()
    }
}

/// Runs a turn to its end: every event, or the status it was refused with.
pub async fn run(
    client: &Client,
    request: pb::RunTurnRequest,
) -> Result<Vec<Event>, tonic::Status> {
    let mut stream = client.clone().run_turn(request).await?.into_inner();
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        events.push(item?.event.expect("an event"));
    }
    Ok(events)
}

/// The TurnCompleted of a turn's events (panics with the events otherwise).
pub fn completed(events: &[Event]) -> pb::TurnCompleted {
    match events.last() {
        Some(Event::TurnCompleted(done)) => done.clone(),
        other => panic!("the turn did not complete: {other:?} in {events:#?}"),
    }
}

/// Runs a turn that must complete.
pub async fn complete_turn(client: &Client, thread: &str, content: &str) -> pb::TurnCompleted {
    let events = run(client, turn(thread, content, ""))
        .await
        .expect("RunTurn");
    completed(&events)
}

/// The fields an INVALID_ARGUMENT names.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// Polls `check` until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a turn through `client` (on a model that takes its time) and returns its id and
/// stream once its first advisor has started.
pub async fn started_turn(
    client: &Client,
    thread: &str,
    request_id: &str,
) -> (String, tonic::Streaming<pb::RunTurnResponse>) {
    let mut stream = client
        .clone()
        .run_turn(turn(thread, "Think hard", request_id))
        .await
        .expect("RunTurn")
        .into_inner();
    let mut turn_id = String::new();
    while let Some(event) = stream.next().await {
        match event.expect("event").event {
            Some(Event::TurnStarted(s)) => turn_id = s.turn_id,
            Some(Event::AdvisorStarted(_)) => break,
            other => panic!("{other:?}"),
        }
    }
    (turn_id, stream)
}

/// CancelTurn through `client`: whether a running turn was cancelled.
pub async fn cancel(client: &Client, thread: &str, turn_id: &str) -> bool {
    client
        .clone()
        .cancel_turn(pb::CancelTurnRequest {
            thread_id: thread.into(),
            turn_id: turn_id.into(),
        })
        .await
        .expect("CancelTurn")
        .into_inner()
        .cancelled
}

/// The user messages of a thread, oldest first.
pub async fn user_messages(suite: &Suite, thread: &str) -> Vec<String> {
    suite
        .messages(thread)
        .await
        .into_iter()
        .filter(|m| m.role == pb::Role::User as i32)
        .map(|m| m.content)
        .collect()
}

/// Reads a turn's stream to its end: its last event.
pub async fn last_event(stream: &mut tonic::Streaming<pb::RunTurnResponse>) -> Option<Event> {
    let mut last = None;
    while let Some(event) = stream.next().await {
        last = event.expect("event").event;
    }
    last
}

/// Runs a turn to its end: every response (event, index and round), or the refusal.
pub async fn run_rounds(
    client: &Client,
    request: pb::RunTurnRequest,
) -> Result<Vec<pb::RunTurnResponse>, tonic::Status> {
    let mut stream = client.clone().run_turn(request).await?.into_inner();
    let mut responses = Vec::new();
    while let Some(item) = stream.next().await {
        responses.push(item?);
    }
    Ok(responses)
}
