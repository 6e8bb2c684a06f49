//! REVIEW and DEBATE through the real servers: the mock provider ranks and revises
//! deterministically; a fake OpenAI-compatible upstream answers what a test needs it to
//! (a reply that is no ranking, a failure from round 2 on).

use std::collections::BTreeMap;

use boardroom_proto::conversation::v1 as pb;
use boardroom_proto::conversation::v1::run_turn_response::Event;
use boardroom_proto::session::v1 as spb;
use boardroom_testkit::{Behavior, FakeOpenAi};
use futures::StreamExt;

use crate::helpers::*;

fn events_of(responses: &[pb::RunTurnResponse]) -> Vec<Event> {
    responses
        .iter()
        .map(|r| r.event.clone().expect("an event"))
        .collect()
}

fn rounds_started(events: &[Event]) -> Vec<(u32, i32, Vec<String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RoundStarted(r) => Some((r.round, r.kind, r.advisors.clone())),
            _ => None,
        })
        .collect()
}

fn reviews(events: &[Event]) -> Vec<pb::ReviewRanked> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ReviewRanked(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn failures(events: &[Event]) -> Vec<pb::AdvisorFailed> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::AdvisorFailed(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

const ADVISORS: [(&str, &str); 3] = [("cfo", "mock"), ("cto", "mock"), ("coo", "mock")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_ranks_blind_streams_the_aggregate_stores_it_with_the_turn_and_replays_it() {
    let suite = suite(|_| {}).await;
    let thread = suite
        .thread_deliberating(&ADVISORS, spb::DeliberationMode::Review, 0)
        .await;
    let responses = run_rounds(
        &suite.client,
        turn(&thread, "Should we expand to Spain?", "r1"),
    )
    .await
    .expect("RunTurn");
    let events = events_of(&responses);
    let Some(Event::TurnStarted(started)) = events.first() else {
        panic!("{events:#?}");
    };
    assert_eq!(started.deliberation, pb::DeliberationMode::Review as i32);
    assert_eq!(started.rounds, 3);
    let names: Vec<String> = ADVISORS.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(
        rounds_started(&events),
        [
            (1, pb::RoundKind::Answer as i32, names.clone()),
            (2, pb::RoundKind::Review as i32, names.clone()),
            (
                3,
                pb::RoundKind::Synthesis as i32,
                vec!["moderator".to_owned()]
            ),
        ]
    );
    // Every event carries its round.
    for r in &responses {
        let expected = match r.event.as_ref().expect("event") {
            Event::TurnStarted(_) | Event::TurnCompleted(_) => 0,
            Event::AdvisorStarted(_) | Event::AdvisorDelta(_) | Event::AdvisorFinished(_) => 1,
            Event::ReviewRanked(_) | Event::RankingAggregated(_) => 2,
            Event::ModeratorDelta(_) => 3,
            Event::RoundStarted(s) => s.round,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(r.round, expected, "{r:?}");
    }
    // Each advisor ranked the two others, never itself; the mock ranks the same answers in
    // the same order whoever reviews, so the aggregate is fixed by the answers.
    let ranked = reviews(&events);
    assert_eq!(ranked.len(), 3, "{events:#?}");
    let mut places: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for review in &ranked {
        assert_eq!(review.ranking.len(), 2);
        assert!(!review.ranking.contains(&review.advisor));
        assert!(!review.reason.is_empty());
        // What it saw under A and B: the two others, whose order it ranked.
        let mut shown = review.shown.clone();
        shown.sort();
        let mut others = review.ranking.clone();
        others.sort();
        assert_eq!(shown, others);
        for (i, advisor) in review.ranking.iter().enumerate() {
            places
                .entry(advisor.clone())
                .or_default()
                .push(i as f64 + 1.0);
        }
    }
    let aggregate = events
        .iter()
        .find_map(|e| match e {
            Event::RankingAggregated(a) => Some(a.ranks.clone()),
            _ => None,
        })
        .expect("the aggregate");
    assert_eq!(aggregate.len(), 3);
    for rank in &aggregate {
        let votes = &places[&rank.advisor];
        assert_eq!(rank.votes as usize, votes.len());
        let mean = votes.iter().sum::<f64>() / votes.len() as f64;
        assert!(
            (rank.mean_rank - mean).abs() < 1e-9,
            "{rank:?} vs {votes:?}"
        );
    }
    assert!(
        aggregate
            .windows(2)
            .all(|w| w[0].mean_rank <= w[1].mean_rank)
    );
    let done = completed(&events);
    assert_eq!(done.ranking, aggregate);
    assert_eq!(done.deliberation, pb::DeliberationMode::Review as i32);
    let kinds: Vec<i32> = done.rounds.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            pb::RoundKind::Answer as i32,
            pb::RoundKind::Review as i32,
            pb::RoundKind::Synthesis as i32
        ]
    );
    let per_round: u32 = done
        .rounds
        .iter()
        .map(|r| r.usage.expect("usage").input_tokens)
        .sum();
    assert_eq!(per_round, done.usage.expect("usage").input_tokens);
    assert!(done.rounds[1].usage.expect("usage").input_tokens > 0);
    // The reviews do not flood the thread: user, three answers, the synthesis.
    let authors: Vec<String> = suite
        .messages(&thread)
        .await
        .into_iter()
        .map(|m| m.author)
        .collect();
    assert_eq!(authors, ["user", "cfo", "cto", "coo", "moderator"]);

    // The retry replays the recorded outcome: the same reviews and ranking, no new calls.
    let replay = events_of(
        &run_rounds(
            &suite.client,
            turn(&thread, "Should we expand to Spain?", "r1"),
        )
        .await
        .expect("replay"),
    );
    let again = completed(&replay);
    assert!(again.replayed);
    assert_eq!(again.ranking, aggregate);
    assert_eq!(again.rounds, done.rounds);
    let by_reviewer = |mut r: Vec<pb::ReviewRanked>| {
        r.sort_by(|a, b| a.advisor.cmp(&b.advisor));
        r
    };
    assert_eq!(by_reviewer(reviews(&replay)), by_reviewer(ranked.clone()));
    assert_eq!(rounds_started(&replay), rounds_started(&events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_is_no_ranking_is_that_reviewers_failure_not_the_turns() {
    let echo = FakeOpenAi::start().await;
    let suite = suite(|c| upstream_alias(c, "echo", &echo.base_url())).await;
    // A PANEL boardroom; the turn asks for REVIEW.
    let thread = suite
        .thread_with(&[("cfo", "mock"), ("cto", "echo"), ("coo", "mock")])
        .await;
    let request = pb::RunTurnRequest {
        deliberation: pb::DeliberationMode::Review as i32,
        ..turn(&thread, "Cut costs?", "")
    };
    let events = events_of(&run_rounds(&suite.client, request).await.expect("RunTurn"));
    let failed = failures(&events);
    assert_eq!(failed.len(), 1, "{events:#?}");
    assert_eq!(failed[0].advisor, "cto");
    assert_eq!(failed[0].reason, pb::FailureReason::Malformed as i32);
    assert!(
        failed[0].message.contains("the ranking could not be used"),
        "{}",
        failed[0].message
    );
    // The echo really was asked to rank labelled answers, and never saw a name.
    let body = echo.last_body().expect("a request").to_string();
    assert!(body.contains("Labels: A, B."), "{body}");
    assert!(!body.contains("[cfo]") && !body.contains("[coo]"), "{body}");
    let ranked = reviews(&events);
    assert_eq!(ranked.len(), 2);
    let done = completed(&events);
    // cto's review is left out of the aggregate; its answer is ranked by the others.
    let votes: BTreeMap<String, u32> = done
        .ranking
        .iter()
        .map(|r| (r.advisor.clone(), r.votes))
        .collect();
    assert_eq!(votes.values().sum::<u32>(), 4);
    assert_eq!(votes["cto"], 2);
    assert_eq!(
        done.last_seq - done.first_seq + 1,
        5,
        "every answer is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debate_goes_on_without_an_advisor_that_fails_in_round_2_which_keeps_its_answer() {
    let flaky = FakeOpenAi::start().await;
    flaky.script(
        std::iter::once(Behavior::Answer)
            .chain(std::iter::repeat_n(Behavior::Status(500, None), 60)),
    );
    let suite = suite(|c| upstream_alias(c, "flaky", &flaky.base_url())).await;
    let thread = suite
        .thread_deliberating(
            &[("cfo", "mock"), ("cto", "flaky"), ("coo", "mock")],
            spb::DeliberationMode::Debate,
            2,
        )
        .await;
    let responses = run_rounds(&suite.client, turn(&thread, "Hire or wait?", "d1"))
        .await
        .expect("RunTurn");
    let events = events_of(&responses);
    let started = rounds_started(&events);
    let everyone: Vec<String> = ["cfo", "cto", "coo"].map(String::from).to_vec();
    let still_in: Vec<String> = ["cfo", "coo"].map(String::from).to_vec();
    assert_eq!(
        started,
        [
            (1, pb::RoundKind::Answer as i32, everyone.clone()),
            (2, pb::RoundKind::Revision as i32, everyone),
            (3, pb::RoundKind::Revision as i32, still_in),
            (
                4,
                pb::RoundKind::Synthesis as i32,
                vec!["moderator".to_owned()]
            ),
        ]
    );
    let failed: Vec<(String, u32)> = responses
        .iter()
        .filter_map(|r| match &r.event {
            Some(Event::AdvisorFailed(f)) => Some((f.advisor.clone(), r.round)),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [("cto".to_owned(), 2)]);
    // Revisions stream in their rounds; cto has nothing in round 3.
    let finished: Vec<(String, u32)> = responses
        .iter()
        .filter_map(|r| match &r.event {
            Some(Event::AdvisorFinished(f)) => Some((f.advisor.clone(), r.round)),
            _ => None,
        })
        .collect();
    assert_eq!(finished.iter().filter(|(a, _)| a == "cto").count(), 1);
    assert!(finished.contains(&("coo".to_owned(), 3)));
    let done = completed(&events);
    assert_eq!(done.rounds.len(), 4);
    // Stored: each advisor's latest answer (cto's from round 1), the synthesis.
    let messages = suite.messages(&thread).await;
    let cto = messages
        .iter()
        .find(|m| m.author == "cto")
        .expect("cto's answer");
    assert!(cto.content.starts_with("echo:"), "{}", cto.content);
    let coo_last = responses
        .iter()
        .rev()
        .find_map(|r| match &r.event {
            Some(Event::AdvisorFinished(f)) if f.advisor == "coo" => Some(f.content.clone()),
            _ => None,
        })
        .expect("coo finished");
    let coo = messages.iter().find(|m| m.author == "coo").expect("coo");
    assert_eq!(coo.content, coo_last);
    assert_eq!(messages.len(), 5);
    // The replay gives every round's answers back, each in its round.
    let replay = run_rounds(&suite.client, turn(&thread, "Hire or wait?", "d1"))
        .await
        .expect("replay");
    let replayed: Vec<(String, u32)> = replay
        .iter()
        .filter_map(|r| match &r.event {
            Some(Event::AdvisorFinished(f)) => Some((f.advisor.clone(), r.round)),
            _ => None,
        })
        .collect();
    let mut live = finished.clone();
    live.sort();
    let mut again = replayed.clone();
    again.sort();
    assert_eq!(again, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debate_cancelled_mid_round_stores_nothing_and_joining_follows_every_round() {
    let suite = suite(|c| mock_latency(c, 100)).await;
    let thread = suite
        .thread_deliberating(&ADVISORS, spb::DeliberationMode::Debate, 2)
        .await;
    // Joined while it runs: the joiner sees what the caller sees, rounds included.
    let mut stream = suite
        .client
        .clone()
        .run_turn(turn(&thread, "Raise prices?", ""))
        .await
        .expect("RunTurn")
        .into_inner();
    let first = stream.next().await.expect("an event").expect("ok");
    let Some(Event::TurnStarted(started)) = first.event.clone() else {
        panic!("{first:?}");
    };
    let joined = suite
        .client
        .clone()
        .join_turn(pb::JoinTurnRequest {
            thread_id: thread.clone(),
            turn_id: started.turn_id.clone(),
            after_event: 0,
        })
        .await
        .expect("JoinTurn")
        .into_inner();
    let mut live = vec![first];
    while let Some(item) = stream.next().await {
        live.push(item.expect("event"));
    }
    let followed: Vec<pb::RunTurnResponse> = joined
        .map(|r| r.expect("joined event").event.expect("event"))
        .collect()
        .await;
    assert_eq!(followed, live);
    assert!(matches!(
        live.last().and_then(|r| r.event.clone()),
        Some(Event::TurnCompleted(_))
    ));

    // Cancelled once round 2 has started: nothing of it is written.
    let before = suite.messages(&thread).await.len();
    let mut stream = suite
        .client
        .clone()
        .run_turn(turn(&thread, "And now?", ""))
        .await
        .expect("RunTurn")
        .into_inner();
    let mut turn_id = String::new();
    while let Some(item) = stream.next().await {
        match item.expect("event").event {
            Some(Event::TurnStarted(s)) => turn_id = s.turn_id,
            Some(Event::RoundStarted(r)) if r.round == 2 => break,
            _ => {}
        }
    }
    assert!(cancel(&suite.client, &thread, &turn_id).await);
    match last_event(&mut stream).await {
        Some(Event::TurnFailed(f)) => assert_eq!(f.reason, pb::FailureReason::Cancelled as i32),
        other => panic!("{other:?}"),
    }
    assert_eq!(suite.messages(&thread).await.len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_message_during_a_debate_waits_its_turn_and_rounds_are_bounded() {
    let suite = suite(|c| {
        mock_latency(c, 30);
        c.conversation.max_debate_rounds = 3;
    })
    .await;
    let thread = suite
        .thread_deliberating(&ADVISORS[..2], spb::DeliberationMode::Debate, 4)
        .await;
    // The boardroom asks for 4 rounds; this service runs at most 3.
    let mut first = suite
        .client
        .clone()
        .run_turn(turn(&thread, "One?", ""))
        .await
        .expect("RunTurn")
        .into_inner();
    let Some(Event::TurnStarted(started)) =
        first.next().await.and_then(|r| r.expect("event").event)
    else {
        panic!("no start");
    };
    assert_eq!(started.rounds, 2 + 3);
    let second = pb::RunTurnRequest {
        double_text: pb::DoubleTextPolicy::Enqueue as i32,
        ..turn(&thread, "Two?", "")
    };
    let waiting = tokio::spawn({
        let client = suite.client.clone();
        async move { run_rounds(&client, second).await }
    });
    assert!(matches!(
        last_event(&mut first).await,
        Some(Event::TurnCompleted(_))
    ));
    let second = events_of(&waiting.await.expect("joined").expect("RunTurn"));
    completed(&second);
    assert_eq!(user_messages(&suite, &thread).await, ["One?", "Two?"]);

    // A turn may not ask for more than the bound; a mode that does not exist is refused.
    for (request, field) in [
        (
            pb::RunTurnRequest {
                deliberation: pb::DeliberationMode::Debate as i32,
                debate_rounds: 4,
                ..turn(&thread, "Three?", "")
            },
            "debate_rounds",
        ),
        (
            pb::RunTurnRequest {
                deliberation: 42,
                ..turn(&thread, "Three?", "")
            },
            "deliberation",
        ),
    ] {
        let refused = run_rounds(&suite.client, request)
            .await
            .expect_err("refused");
        assert_eq!(violated_fields(&refused), [field]);
    }
    assert_eq!(user_messages(&suite, &thread).await.len(), 2);
}
