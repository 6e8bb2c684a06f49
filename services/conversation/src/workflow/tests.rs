//! The turn graph with no server: scripted models (the in-memory model port) and a store on a
//! SQLite file.

use std::sync::Arc;
use std::time::Duration;

use boardroom_migrations::{Migrator, MigratorTrait};
use boardroom_runtime::config::{DatabaseConfig, Secret};
use boardroom_runtime::db::Database;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::scripted::{Reply, ScriptedModels};
use super::tools::Toolbox;
use super::{MODERATOR, Settings, TurnInput, Workflow};
use crate::domain::{Advisor, ConversationState, FailureReason, Role, TurnEvent};
use crate::error::ConversationError;
use crate::ports::ChatRole;
use crate::store::{ConversationStore, StoredTurn, lease_until};
use crate::turnlog::TurnEvents;

struct Bench {
    workflow: Workflow,
    models: ScriptedModels,
    store: ConversationStore,
}

async fn bench(max_tool_rounds: u32) -> Bench {
    let db = boardroom_testkit::sqlite_database();
    let config = DatabaseConfig {
        url: Secret::new(db.url.clone()),
        ..DatabaseConfig::default()
    };
    let database = Database::connect(&config).await.expect("sqlite");
    Migrator::up(database.conn(), None).await.expect("migrated");
    let leases = Database::connect_relaxed(&config).await.expect("sqlite");
    let store = ConversationStore::new(database, leases, 10);
    let models = ScriptedModels::default();
    let workflow = Workflow {
        store: store.clone(),
        models: Arc::new(models.clone()),
        tools: Toolbox::new(store.clone()),
        settings: Arc::new(Settings {
            moderator_model: "moderator-model".into(),
            temperature: 0.0,
            max_answer_tokens: 100,
            max_parallel_advisors: 8,
            advisor_timeout: Duration::from_secs(5),
            max_tool_rounds,
            context_budget_tokens: 2_000,
        }),
    };
    Bench {
        workflow,
        models,
        store,
    }
}

fn advisor(name: &str) -> Advisor {
    Advisor {
        name: name.into(),
        role: format!("the {name}"),
        system_prompt: format!("You are the {name}."),
        model: format!("{name}-model"),
    }
}

impl Bench {
    /// A turn on a new thread whose lease it holds.
    async fn input(&self, advisors: &[&str]) -> TurnInput {
        let (thread_id, turn_id) = (Uuid::now_v7(), Uuid::now_v7());
        self.store
            .acquire_lease(
                thread_id,
                turn_id,
                lease_until(Duration::from_secs(60)),
                None,
            )
            .await
            .expect("lease")
            .expect("free");
        TurnInput {
            turn_id,
            thread_id,
            request_id: None,
            author: "user".into(),
            content: "Should we raise prices?".into(),
            advisors: advisors.iter().map(|a| advisor(a)).collect(),
            state: Arc::new(ConversationState::default()),
            recent: Arc::new(Vec::new()),
            last_seq: 0,
        }
    }

    async fn run(
        &self,
        input: TurnInput,
    ) -> (Result<StoredTurn, ConversationError>, Vec<TurnEvent>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let result = self
            .workflow
            .execute(input, &TurnEvents::detached(tx))
            .await;
        let mut events = Vec::new();
        while let Some((_, e)) = rx.recv().await {
            events.push(e);
        }
        (result, events)
    }
}

fn kinds(events: &[TurnEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            TurnEvent::AdvisorStarted { advisor, .. } => format!("started {advisor}"),
            TurnEvent::AdvisorDelta { advisor, text } => format!("delta {advisor} {text}"),
            TurnEvent::ToolCalled { advisor, name, .. } => format!("tool {advisor} {name}"),
            TurnEvent::ToolResult {
                advisor, content, ..
            } => format!("result {advisor} {content}"),
            TurnEvent::AdvisorFinished { advisor, .. } => format!("finished {advisor}"),
            TurnEvent::AdvisorFailed(f) => format!("failed {} {:?}", f.advisor, f.reason),
            TurnEvent::ModeratorDelta { text } => format!("moderator {text}"),
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn advisors_answer_then_the_moderator_then_the_turn_is_stored() {
    let b = bench(2).await;
    b.models
        .script("cfo-model", [Reply::Text(vec!["Raise", " them"])]);
    b.models.script("cto-model", [Reply::Text(vec!["Hold"])]);
    b.models
        .script("moderator-model", [Reply::Text(vec!["Raise, carefully"])]);
    let input = b.input(&["cfo", "cto"]).await;
    let (result, events) = b.run(input).await;
    let stored = result.expect("stored");

    let kinds = kinds(&events);
    let moderator_at = kinds.iter().position(|k| k.starts_with("moderator"));
    let last_finished = kinds.iter().rposition(|k| k.starts_with("finished"));
    assert!(
        moderator_at > last_finished,
        "the moderator after every advisor: {kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| k.starts_with("started")).count(), 2);
    // The moderator's call is the last and reads both answers.
    let calls = b.models.calls();
    assert_eq!(calls.len(), 3);
    let moderator = calls.last().expect("a call");
    assert_eq!(moderator.model, "moderator-model");
    let brief: String = moderator
        .messages
        .iter()
        .map(|m| m.content.clone())
        .collect();
    assert!(
        brief.contains("Raise them") && brief.contains("Hold"),
        "{brief}"
    );
    // Stored in one go: the user's message, each answer, the synthesis.
    let roles: Vec<(Role, &str)> = stored
        .messages
        .iter()
        .map(|m| (m.role, m.author.as_str()))
        .collect();
    assert_eq!(
        roles,
        [
            (Role::User, "user"),
            (Role::Advisor, "cfo"),
            (Role::Advisor, "cto"),
            (Role::Moderator, MODERATOR)
        ]
    );
    assert_eq!(stored.record.state_version, 1);
}

#[tokio::test]
async fn a_tool_call_runs_and_its_result_feeds_the_next_round_which_offers_no_more_tools() {
    let b = bench(1).await;
    b.models.script(
        "cfo-model",
        [
            Reply::Tool {
                name: "calculator",
                arguments_json: r#"{"expression":"(2+3)*4"}"#,
            },
            Reply::Text(vec!["It is 20"]),
        ],
    );
    let input = b.input(&["cfo"]).await;
    let (result, events) = b.run(input).await;
    let stored = result.expect("stored");
    let kinds = kinds(&events);
    let tool = kinds.iter().position(|k| k == "tool cfo calculator");
    let result_at = kinds.iter().position(|k| k == "result cfo 20");
    let finished = kinds.iter().position(|k| k == "finished cfo");
    assert!(
        tool.is_some() && tool < result_at && result_at < finished,
        "{kinds:?}"
    );
    let calls: Vec<_> = b
        .models
        .calls()
        .into_iter()
        .filter(|c| c.model == "cfo-model")
        .collect();
    assert_eq!(calls.len(), 2);
    assert!(!calls[0].tools.is_empty(), "the first round offers tools");
    assert!(calls[1].tools.is_empty(), "the last round offers none");
    let fed = calls[1]
        .messages
        .iter()
        .find(|m| m.role == ChatRole::Tool)
        .expect("the tool's result is in the second call");
    assert_eq!(fed.content, "20");
    assert!(
        stored
            .messages
            .iter()
            .any(|m| m.role == Role::Tool && m.content.contains("→ 20"))
    );
}

#[tokio::test]
async fn a_failing_advisor_is_reported_and_left_out_and_the_others_are_stored() {
    let b = bench(2).await;
    b.models
        .script("cto-model", [Reply::Fail(FailureReason::Upstream)]);
    let input = b.input(&["cfo", "cto"]).await;
    let (result, events) = b.run(input).await;
    let stored = result.expect("stored");
    assert!(kinds(&events).contains(&"failed cto Upstream".to_owned()));
    assert_eq!(stored.record.outcome.failures.len(), 1);
    assert!(
        stored
            .messages
            .iter()
            .all(|m| !(m.role == Role::Advisor && m.author == "cto"))
    );
    // The moderator sums up the one answer.
    assert_eq!(b.models.calls().len(), 3);
}

#[tokio::test]
async fn when_the_gateway_refuses_every_advisor_the_turn_is_rejected_not_retryable() {
    let b = bench(2).await;
    b.models
        .script("cfo-model", [Reply::Fail(FailureReason::Rejected)]);
    b.models
        .script("cto-model", [Reply::Fail(FailureReason::Rejected)]);
    let input = b.input(&["cfo", "cto"]).await;
    let (result, _) = b.run(input).await;
    assert!(
        matches!(result, Err(ConversationError::Rejected(..))),
        "{result:?}"
    );
    // A mix of refusals and outages stays the retryable NoAnswer.
    b.models
        .script("cfo-model", [Reply::Fail(FailureReason::Rejected)]);
    b.models
        .script("cto-model", [Reply::Fail(FailureReason::Upstream)]);
    let input = b.input(&["cfo", "cto"]).await;
    let (result, _) = b.run(input).await;
    assert!(
        matches!(result, Err(ConversationError::NoAnswer)),
        "{result:?}"
    );
}

#[tokio::test]
async fn cancelling_a_turn_drops_its_model_calls_and_stores_nothing() {
    let b = bench(2).await;
    b.models.script("cfo-model", [Reply::Hang]);
    b.models.script("cto-model", [Reply::Hang]);
    let input = b.input(&["cfo", "cto"]).await;
    let thread_id = input.thread_id;
    let (tx, mut rx) = mpsc::channel(1024);
    let events = TurnEvents::detached(tx);
    // Boxed so that dropping it drops the turn (what the service's cancel does).
    let mut run = Box::pin(b.workflow.execute(input, &events));
    // Both advisors have started (their calls are open), then the turn is dropped.
    let mut started = 0;
    while started < 2 {
        tokio::select! {
            _ = &mut run => panic!("a hanging turn finished"),
            event = rx.recv() => if let Some((_, TurnEvent::AdvisorStarted { .. })) = event { started += 1 },
        }
    }
    tokio::task::yield_now().await;
    let _ = futures::poll!(&mut run);
    assert_eq!(b.models.open_streams(), 2);
    drop(run);
    assert_eq!(b.models.open_streams(), 0, "every call was dropped");
    let head = b
        .store
        .head(thread_id)
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.last_seq, 0, "nothing stored");
}
