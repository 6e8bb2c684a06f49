//! The rounds after the first answers: REVIEW's anonymised rankings and DEBATE's revisions.
//! Their contexts (within the advisor's token budget: the others' answers are cut to fit,
//! never the system prompt), the parsing and validation of a ranking, and the aggregate.

use serde::Deserialize;
use uuid::Uuid;

use crate::domain::{Advisor, AdvisorRank, Review, estimate_tokens, truncated};
use crate::ports::{ChatMessage, ChatRole};

/// Longest reason kept of a review.
pub const MAX_REASON_BYTES: usize = 500;

/// The label of the `i`-th answer a reviewer sees: A, B, … Z, then A2, B2, ….
pub fn label(i: usize) -> String {
    let letter = char::from(b'A' + u8::try_from(i % 26).unwrap_or(0));
    match i / 26 {
        0 => letter.to_string(),
        n => format!("{letter}{}", n + 1),
    }
}

/// A per-turn shuffle of `0..n` (Fisher–Yates on the random bits of the turn's UUIDv7): the
/// order in which reviewers see the answers. Random across turns, the same for one turn.
pub fn shuffled(turn_id: Uuid, n: usize) -> Vec<usize> {
    let mut state = (turn_id.as_u128() as u64) ^ ((turn_id.as_u128() >> 64) as u64) | 1;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = usize::try_from(next() % (i as u64 + 1)).unwrap_or(0);
        order.swap(i, j);
    }
    order
}

/// Caps (in bytes) for texts of these sizes so that together they fit `budget` bytes, each
/// getting an equal share and the shares of short texts going to the longer ones.
pub fn fair_shares(sizes: &[usize], budget: usize) -> Vec<usize> {
    let mut caps = vec![0; sizes.len()];
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| sizes[i]);
    let mut left = budget;
    for (k, &i) in order.iter().enumerate() {
        let share = left / (sizes.len() - k);
        caps[i] = sizes[i].min(share);
        left -= caps[i];
    }
    caps
}

/// Bytes a budget of tokens holds (the estimate's 4 bytes a token).
fn bytes_of(tokens: u32) -> usize {
    usize::try_from(tokens)
        .unwrap_or(usize::MAX)
        .saturating_mul(4)
}

/// `texts` cut to fit together within what `budget_tokens` leaves after `fixed`.
fn fitted<'a>(texts: &[&'a str], fixed: &[&str], budget_tokens: u32) -> Vec<&'a str> {
    let used: u32 = fixed.iter().map(|t| estimate_tokens(t)).sum();
    // One token of slack per text for the estimate's rounding up.
    let slack = u32::try_from(texts.len()).unwrap_or(u32::MAX);
    let room = bytes_of(budget_tokens.saturating_sub(used).saturating_sub(slack));
    let sizes: Vec<usize> = texts.iter().map(|t| t.len()).collect();
    texts
        .iter()
        .zip(fair_shares(&sizes, room))
        .map(|(text, cap)| truncated(text, cap))
        .collect()
}

fn persona(advisor: &Advisor) -> String {
    format!(
        "{}\n\nYou are {}, {} on this board.",
        advisor.system_prompt, advisor.name, advisor.role
    )
}

/// The instruction that ends a review's prompt; the labels are listed on its last line
/// (`Labels: A, B, C.`), which is how the mock provider knows to answer with a ranking.
fn ranking_instruction(labels: &[String]) -> String {
    // The template is not itself a valid ranking: a model that parrots it fails.
    format!(
        "Rank these answers from best to worst for the user. Reply with only a JSON object, \
         no other text, of the form {{\"ranking\": [\"<best label>\", ..., \"<worst label>\"], \
         \"reason\": \"<one or two sentences>\"}}, naming every label exactly once.\nLabels: {}.",
        labels.join(", ")
    )
}

/// A reviewer's call: the question and the others' answers under labels, never by name.
pub fn review_context(
    advisor: &Advisor,
    question: &str,
    answers: &[(String, &str)],
    budget_tokens: u32,
) -> Vec<ChatMessage> {
    let system = format!(
        "{} The board's answers to the user are shown to you anonymised. Judge them on \
         correctness, usefulness and insight, not on style.",
        persona(advisor)
    );
    let labels: Vec<String> = answers.iter().map(|(l, _)| l.clone()).collect();
    let head = format!("The user asked: {question}\n\nThe answers:\n");
    let instruction = ranking_instruction(&labels);
    let texts: Vec<&str> = answers.iter().map(|(_, a)| *a).collect();
    // Each answer's frame: "\n[A] " and a newline.
    let frames = " ".repeat(answers.len() * 8);
    let fitted = fitted(
        &texts,
        &[&system, &head, &instruction, &frames],
        budget_tokens,
    );
    let mut prompt = head;
    for ((label, _), text) in answers.iter().zip(fitted) {
        prompt.push_str(&format!("\n[{label}] {text}\n"));
    }
    prompt.push('\n');
    prompt.push_str(&instruction);
    vec![
        ChatMessage::text(ChatRole::System, system),
        ChatMessage::text(ChatRole::User, prompt),
    ]
}

/// A debater's call: its own latest answer (as the assistant's), then the others' latest
/// answers by name and the request to revise.
pub fn revision_context(
    advisor: &Advisor,
    question: &str,
    own: &str,
    others: &[(&str, &str)],
    budget_tokens: u32,
) -> Vec<ChatMessage> {
    let system = format!(
        "{} Answer the user's message from your role.",
        persona(advisor)
    );
    let instruction = "Those are the other advisors' latest answers. Taking them into account, \
                       give your updated answer: keep what still holds, change what they \
                       convinced you of, and say where you still disagree. Answer with your \
                       full answer only.";
    let mut texts: Vec<&str> = vec![own];
    texts.extend(others.iter().map(|(_, a)| *a));
    let frames: String = others
        .iter()
        .map(|(name, _)| format!("\n[{name}] \n"))
        .collect();
    let fitted = fitted(
        &texts,
        &[
            &system,
            question,
            instruction,
            "The other advisors answered:\n",
            &frames,
        ],
        budget_tokens,
    );
    let mut prompt = String::from("The other advisors answered:\n");
    for ((name, _), text) in others.iter().zip(&fitted[1..]) {
        prompt.push_str(&format!("\n[{name}] {text}\n"));
    }
    prompt.push('\n');
    prompt.push_str(instruction);
    vec![
        ChatMessage::text(ChatRole::System, system),
        ChatMessage::text(ChatRole::User, question),
        ChatMessage::text(ChatRole::Assistant, fitted[0]),
        ChatMessage::text(ChatRole::User, prompt),
    ]
}

#[derive(Deserialize)]
struct RawRanking {
    ranking: Vec<String>,
    reason: String,
}

/// A reviewer's reply, validated against the `labels` it was shown: their positions in
/// `labels`, best first, and the reason. The error says what is wrong with it.
pub fn parse_ranking(reply: &str, labels: &[String]) -> Result<(Vec<usize>, String), String> {
    let (Some(start), Some(end)) = (reply.find('{'), reply.rfind('}')) else {
        return Err("the reply holds no JSON object".into());
    };
    if end < start {
        return Err("the reply holds no JSON object".into());
    }
    let raw: RawRanking = serde_json::from_str(&reply[start..=end]).map_err(|e| {
        format!("the reply's JSON is not {{\"ranking\": [...], \"reason\": \"...\"}}: {e}")
    })?;
    let mut positions = Vec::with_capacity(labels.len());
    for given in &raw.ranking {
        let given = given
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim();
        let Some(i) = labels.iter().position(|l| l.eq_ignore_ascii_case(given)) else {
            return Err(format!(
                "the ranking names {given:?}, which is not a label shown"
            ));
        };
        if positions.contains(&i) {
            return Err(format!("the ranking names {} twice", labels[i]));
        }
        positions.push(i);
    }
    if let Some(missing) = (0..labels.len()).find(|i| !positions.contains(i)) {
        return Err(format!("the ranking leaves out {}", labels[missing]));
    }
    let reason = raw.reason.trim();
    if reason.is_empty() {
        return Err("the ranking gives no reason".into());
    }
    Ok((positions, truncated(reason, MAX_REASON_BYTES).to_owned()))
}

/// The mean rank of every advisor over the reviews that placed it, best first (ties: more
/// votes first, then by name).
pub fn aggregate(reviews: &[Review]) -> Vec<AdvisorRank> {
    let mut totals: Vec<(String, usize, u32)> = Vec::new();
    for review in reviews {
        for (place, advisor) in review.ranking.iter().enumerate() {
            match totals.iter_mut().find(|(a, _, _)| a == advisor) {
                Some((_, sum, votes)) => {
                    *sum += place + 1;
                    *votes += 1;
                }
                None => totals.push((advisor.clone(), place + 1, 1)),
            }
        }
    }
    let mut ranks: Vec<AdvisorRank> = totals
        .into_iter()
        .map(|(advisor, sum, votes)| AdvisorRank {
            advisor,
            mean_rank: sum as f64 / f64::from(votes),
            votes,
        })
        .collect();
    ranks.sort_by(|a, b| {
        a.mean_rank
            .total_cmp(&b.mean_rank)
            .then(b.votes.cmp(&a.votes))
            .then_with(|| a.advisor.cmp(&b.advisor))
    });
    ranks
}

/// The aggregate as the moderator reads it.
pub fn ranking_note(ranks: &[AdvisorRank]) -> String {
    let mut note =
        String::from("The advisors ranked each other's answers blind (mean rank, 1 = best):");
    for r in ranks {
        note.push_str(&format!(
            "\n- {}: {:.2} ({} rankings)",
            r.advisor, r.mean_rank, r.votes
        ));
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(label).collect()
    }

    fn advisor(name: &str) -> Advisor {
        Advisor {
            name: name.into(),
            role: "finance".into(),
            system_prompt: "Be careful with money.".into(),
            model: "m".into(),
        }
    }

    #[test]
    fn a_ranking_parses_from_json_in_any_wrapping_and_is_validated() {
        let shown = labels(3);
        let (order, reason) = parse_ranking(
            "Sure:\n```json\n{\"ranking\": [\"B\", \"[a]\", \"C\"], \"reason\": \" B is concrete. \"}\n```",
            &shown,
        )
        .expect("valid");
        assert_eq!(order, [1, 0, 2]);
        assert_eq!(reason, "B is concrete.");
        for (reply, says) in [
            ("I like B best", "no JSON object"),
            (
                "{\"ranking\": [\"A\", \"B\"], \"reason\": \"x\"}",
                "leaves out C",
            ),
            (
                "{\"ranking\": [\"A\", \"A\", \"B\"], \"reason\": \"x\"}",
                "names A twice",
            ),
            (
                "{\"ranking\": [\"A\", \"D\", \"B\"], \"reason\": \"x\"}",
                "\"D\"",
            ),
            (
                "{\"ranking\": [\"A\", \"B\", \"C\"], \"reason\": \" \"}",
                "no reason",
            ),
            ("{\"ranking\": \"A B C\", \"reason\": \"x\"}", "JSON is not"),
            ("} nothing {", "no JSON object"),
        ] {
            let err = parse_ranking(reply, &shown).expect_err(reply);
            assert!(err.contains(says), "{reply}: {err}");
        }
    }

    #[test]
    fn the_aggregate_is_the_mean_rank_best_first() {
        let review = |by: &str, ranking: &[&str]| Review {
            advisor: by.into(),
            ranking: ranking.iter().map(|s| (*s).to_owned()).collect(),
            reason: "r".into(),
            shown: Vec::new(),
        };
        let ranks = aggregate(&[
            review("a", &["b", "c"]),
            review("b", &["c", "a"]),
            review("c", &["b", "a"]),
        ]);
        let got: Vec<(&str, f64, u32)> = ranks
            .iter()
            .map(|r| (r.advisor.as_str(), r.mean_rank, r.votes))
            .collect();
        assert_eq!(got, [("b", 1.0, 2), ("c", 1.5, 2), ("a", 2.0, 2)]);
    }

    #[test]
    fn the_shuffle_is_a_permutation_fixed_per_turn_and_varies_across_turns() {
        let turn = Uuid::now_v7();
        let order = shuffled(turn, 5);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3, 4]);
        assert_eq!(shuffled(turn, 5), order);
        let distinct: std::collections::HashSet<Vec<usize>> =
            (0..50).map(|_| shuffled(Uuid::now_v7(), 5)).collect();
        assert!(distinct.len() > 10, "{} orders in 50 turns", distinct.len());
        assert_eq!(label(0), "A");
        assert_eq!(label(27), "B2");
    }

    #[test]
    fn shares_fill_the_budget_and_give_short_texts_all_they_need() {
        assert_eq!(fair_shares(&[10, 1000, 1000], 610), [10, 300, 300]);
        assert_eq!(fair_shares(&[10, 20], 1000), [10, 20]);
        assert_eq!(fair_shares(&[], 10), Vec::<usize>::new());
    }

    #[test]
    fn round_contexts_hold_the_budget_by_cutting_answers_never_the_system_prompt() {
        let me = advisor("cfo");
        let long = "word ".repeat(2_000);
        for budget in [300, 1_000, 3_000] {
            let answers: Vec<(String, &str)> = (0..4).map(|i| (label(i), long.as_str())).collect();
            let review = review_context(&me, "Raise prices?", &answers, budget);
            let others = [("cto", long.as_str()), ("coo", "short")];
            let revision = revision_context(&me, "Raise prices?", &long, &others, budget);
            for context in [&review, &revision] {
                let total: u32 = context.iter().map(|m| estimate_tokens(&m.content)).sum();
                assert!(total <= budget, "{total} > {budget}");
                assert!(context[0].content.starts_with("Be careful with money."));
            }
            assert!(review[1].content.ends_with("Labels: A, B, C, D."));
            assert!(!review[1].content.contains("cfo") && !review[1].content.contains("cto"));
            // The short answer is whole; the long ones share what is left.
            assert!(revision[3].content.contains("[coo] short\n"));
        }
    }
}
