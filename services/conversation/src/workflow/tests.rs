//! The turn graph with no server: scripted models (the in-memory model port) and a store on a
//! SQLite file.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::scripted::{Reply, ScriptedModels};
use super::tools::Toolbox;
use super::{MODERATOR, Settings, TurnInput, Workflow};
use crate::domain::{
    Advisor, ConversationState, Deliberation, FailureReason, Mode, Role, RoundKind, TurnEvent,
};
use crate::error::ConversationError;
use crate::ports::ChatRole;
use crate::store::tests::{lease, store_on};
use crate::store::{ConversationStore, StoredTurn};
use crate::turnlog::TurnEvents;

struct Bench {
    workflow: Workflow,
    models: ScriptedModels,
    store: ConversationStore,
}

async fn bench(max_tool_rounds: u32) -> Bench {
    let store = store_on(boardroom_testkit::sqlite_database(), 10).await;
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
            memory_budget_tokens: 300,
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
        let thread_id = Uuid::now_v7();
        let (turn_id, _) = lease(&self.store, thread_id).await;
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
            deliberation: Deliberation::default(),
            recalled: Vec::new(),
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
            TurnEvent::AdvisorDelta { advisor, text, .. } => format!("delta {advisor} {text}"),
            TurnEvent::ToolCalled { advisor, name, .. } => format!("tool {advisor} {name}"),
            TurnEvent::ToolResult {
                advisor, content, ..
            } => format!("result {advisor} {content}"),
            TurnEvent::AdvisorFinished { advisor, .. } => format!("finished {advisor}"),
            TurnEvent::AdvisorFailed(f) => format!("failed {} {:?}", f.advisor, f.reason),
            TurnEvent::ModeratorDelta { text, .. } => format!("moderator {text}"),
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

/// The user-side text of a call (what a reviewer or debater reads besides its own persona).
fn shown(call: &crate::ports::ChatCall) -> String {
    call.messages
        .iter()
        .filter(|m| m.role != ChatRole::System)
        .map(|m| m.content.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_review_ranks_anonymised_answers_and_a_malformed_ranking_fails_only_its_reviewer() {
    let b = bench(0).await;
    for (name, answer) in [("cfo", "Raise"), ("cto", "Hold"), ("coo", "Wait")] {
        b.models
            .script(&format!("{name}-model"), [Reply::Text(vec![answer])]);
    }
    let ranking = r#"{"ranking": ["B", "A"], "reason": "B is concrete"}"#;
    b.models.script("cfo-model", [Reply::Text(vec![ranking])]);
    b.models.script("cto-model", [Reply::Text(vec![ranking])]);
    b.models
        .script("coo-model", [Reply::Text(vec!["I like them all"])]);
    let mut input = b.input(&["cfo", "cto", "coo"]).await;
    input.deliberation = Deliberation {
        mode: Mode::Review,
        debate_rounds: 0,
    };
    let (result, events) = b.run(input).await;
    let stored = result.expect("stored");

    let calls = b.models.calls();
    let answers = [("cfo", "Raise"), ("cto", "Hold"), ("coo", "Wait")];
    let mut reviews = Vec::new();
    for e in &events {
        match e {
            TurnEvent::ReviewRanked { round, review } => {
                assert_eq!(*round, 2);
                reviews.push(review.clone());
            }
            TurnEvent::AdvisorFailed(f) => {
                assert_eq!(
                    (f.advisor.as_str(), f.reason, f.round),
                    ("coo", FailureReason::Malformed, 2)
                );
                assert!(f.message.contains("no JSON object"), "{}", f.message);
                assert!(!f.message.contains("\n"));
            }
            _ => {}
        }
    }
    assert_eq!(reviews.len(), 2, "{events:#?}");
    for review in &reviews {
        // The reviewer's call shows the others under labels, never its own answer or a name.
        let call = calls
            .iter()
            .rfind(|c| c.model == format!("{}-model", review.advisor))
            .expect("its review call");
        let text = shown(call);
        for (name, answer) in answers {
            assert!(!text.contains(name), "{text}");
            assert_eq!(
                text.contains(&format!("] {answer}\n")),
                name != review.advisor,
                "{text}"
            );
        }
        // Its "B" is the advisor whose answer was shown under [B].
        let under_b = answers
            .iter()
            .find(|(_, a)| text.contains(&format!("[B] {a}\n")))
            .expect("B shown");
        assert_eq!(review.ranking[0], under_b.0);
        assert_eq!(review.ranking.len(), 2);
        assert!(!review.ranking.contains(&review.advisor));
        assert_eq!(review.shown[1], under_b.0);
    }
    // The aggregate is the mean rank of the valid rankings, and the moderator reads it.
    let aggregate = crate::workflow::deliberation::aggregate(&reviews);
    assert!(events.iter().any(
        |e| matches!(e, TurnEvent::RankingAggregated { round: 2, ranks } if *ranks == aggregate)
    ));
    let moderator = calls.last().expect("the moderator's call");
    assert_eq!(moderator.model, "moderator-model");
    assert!(shown(moderator).contains("ranked each other's answers blind"));
    // Every answer is stored (the malformed reviewer's too); the rounds go with the turn.
    let authors: Vec<&str> = stored.messages.iter().map(|m| m.author.as_str()).collect();
    assert_eq!(authors, ["user", "cfo", "cto", "coo", MODERATOR]);
    let outcome = &stored.record.outcome;
    let kinds: Vec<RoundKind> = outcome.rounds.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [RoundKind::Answer, RoundKind::Review, RoundKind::Synthesis]
    );
    assert_eq!(outcome.rounds[1].reviews, reviews);
    assert_eq!(outcome.ranking, aggregate);
    assert_eq!(
        outcome.rounds[1].usage.input_tokens, 30,
        "three review calls"
    );
}

#[tokio::test]
async fn a_debate_revises_in_rounds_and_an_advisor_failing_in_round_2_sits_out_with_its_answer() {
    let b = bench(0).await;
    b.models.script(
        "cfo-model",
        [
            Reply::Text(vec!["Raise"]),
            Reply::Text(vec!["Raise a little"]),
            Reply::Text(vec!["Raise 5%"]),
        ],
    );
    b.models.script(
        "cto-model",
        [
            Reply::Text(vec!["Hold"]),
            Reply::Fail(FailureReason::Upstream),
        ],
    );
    let mut input = b.input(&["cfo", "cto"]).await;
    input.deliberation = Deliberation {
        mode: Mode::Debate,
        debate_rounds: 2,
    };
    let (result, events) = b.run(input).await;
    let stored = result.expect("stored");

    let calls = b.models.calls();
    let of = |model: &str| {
        calls
            .iter()
            .filter(|c| c.model == model)
            .collect::<Vec<_>>()
    };
    assert_eq!(of("cfo-model").len(), 3);
    assert_eq!(of("cto-model").len(), 2, "cto sits out round 3");
    // Round 3: cfo revises its round-2 answer, reading cto's last (round 1).
    let third = shown(of("cfo-model")[2]);
    assert!(
        third.contains("Raise a little") && third.contains("[cto] Hold"),
        "{third}"
    );
    let rounds: Vec<(u32, RoundKind)> = events
        .iter()
        .filter_map(|e| match e {
            TurnEvent::RoundStarted { round, kind, .. } => Some((*round, *kind)),
            _ => None,
        })
        .collect();
    assert_eq!(
        rounds,
        [
            (1, RoundKind::Answer),
            (2, RoundKind::Revision),
            (3, RoundKind::Revision),
            (4, RoundKind::Synthesis)
        ]
    );
    assert!(
        events.iter().any(
            |e| matches!(e, TurnEvent::AdvisorFailed(f) if f.advisor == "cto" && f.round == 2)
        )
    );
    assert!(events.iter().any(|e| matches!(e, TurnEvent::AdvisorFinished { advisor, round: 3, content, .. } if advisor == "cfo" && content == "Raise 5%")));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, TurnEvent::ModeratorDelta { round: 4, .. }))
    );
    // The final answers are the messages; the rounds' answers go with the turn.
    let answers: Vec<(&str, &str)> = stored
        .messages
        .iter()
        .filter(|m| m.role == Role::Advisor)
        .map(|m| (m.author.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(answers, [("cfo", "Raise 5%"), ("cto", "Hold")]);
    let outcome = &stored.record.outcome;
    assert_eq!(outcome.rounds.len(), 4);
    assert_eq!(
        outcome.rounds[1].answers,
        [("cfo".to_owned(), "Raise a little".to_owned())],
        "the round's answers: cto gave none"
    );
    assert_eq!(outcome.failures.len(), 1);
    let total: u32 = outcome.rounds.iter().map(|r| r.usage.input_tokens).sum();
    assert_eq!(total, outcome.usage.input_tokens);
}

#[tokio::test]
async fn recalled_facts_reach_every_advisor_within_their_share_and_are_counted() {
    let b = bench(1).await;
    b.models.script("cfo-model", [Reply::Text(vec!["Cut"])]);
    b.models.script("cto-model", [Reply::Text(vec!["Ship"])]);
    b.models
        .script("moderator-model", [Reply::Text(vec!["Both"])]);
    let mut input = b.input(&["cfo", "cto"]).await;
    // Far more facts than the 300 tokens the memory may take.
    input.recalled = (0..200)
        .map(|i| format!("Fact {i}: the company's runway is {i} months."))
        .collect();
    let (result, _) = b.run(input).await;
    let stored = result.expect("stored");
    let recalled = stored.record.outcome.memories_recalled;
    assert!(recalled > 3 && recalled < 200, "{recalled}");
    for call in b
        .models
        .calls()
        .iter()
        .filter(|c| c.model != "moderator-model")
    {
        let memory: Vec<&str> = call
            .messages
            .iter()
            .filter(|m| m.role == ChatRole::System && m.content.contains("remembers"))
            .map(|m| m.content.as_str())
            .collect();
        assert_eq!(memory.len(), 1, "{}: {:?}", call.model, call.messages);
        assert!(memory[0].contains("- Fact 0: "));
        assert_eq!(memory[0].matches("\n- ").count() as u32, recalled);
        assert!(crate::domain::estimate_tokens(memory[0]) <= 300);
    }
}
