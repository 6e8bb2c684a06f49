//! The boardroom memory's domain, free of I/O: what is remembered, how a turn's recall
//! searches it, how a new fact is merged into what is kept, how the distiller is asked and
//! its reply read, and how recalled facts enter an advisor's context.
//!
//! A memory belongs to a user in a boardroom (`owner_id` is the session's user: two users of
//! one boardroom never see each other's facts). Its facts are searched in the process: a
//! recall loads the memory's facts once (cached, coherent across replicas through the tiered
//! cache) as one block of unit vectors and scores them with dot products.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::estimate_tokens;
use crate::ports::{ChatMessage, ChatRole};

/// Kept facts a new fact is compared with (the most similar at or above the merge threshold).
const MERGE_CANDIDATES: usize = 3;

/// The last line of the distiller's request (the mock provider answers it in kind).
pub const DISTIL_MARK: &str = "Facts: JSON.";

/// One remembered fact, as ListMemories shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    pub id: Uuid,
    pub owner_id: String,
    pub boardroom_id: Uuid,
    pub fact: String,
    pub thread_id: Uuid,
    pub turn_id: Uuid,
    pub uses: u64,
    pub used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Whose memory: a user in a boardroom.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemoryKey {
    pub owner_id: String,
    pub boardroom_id: Uuid,
}

impl MemoryKey {
    /// The memory's key in the tiered cache.
    pub fn cache_key(&self) -> String {
        format!("{}:{}", self.boardroom_id, self.owner_id)
    }
}

/// A memory's facts as a recall reads them: texts and ids, and their embeddings as unit
/// vectors in one contiguous block (`dims` floats each), with the generation they were read
/// at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FactSet {
    pub generation: i64,
    pub ids: Vec<Uuid>,
    pub facts: Vec<String>,
    pub dims: usize,
    pub vectors: Vec<f32>,
}

/// `v` scaled to length 1 (a zero vector stays zero).
pub fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// A vector as stored: little-endian f32s.
pub fn vector_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// A stored vector; `None` when the bytes are not whole f32s.
pub fn vector_from(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

impl FactSet {
    /// An empty memory at `generation`.
    pub fn empty(generation: i64) -> Self {
        Self {
            generation,
            ..Self::default()
        }
    }

    /// Adds a fact (its vector made unit). A vector of other dimensions than the set's (the
    /// embedding model changed) is left out: it cannot be compared.
    pub fn push(&mut self, id: Uuid, fact: String, vector: Vec<f32>) -> bool {
        if self.ids.is_empty() {
            self.dims = vector.len();
        }
        if vector.len() != self.dims || self.dims == 0 {
            return false;
        }
        self.ids.push(id);
        self.facts.push(fact);
        self.vectors.extend(unit(vector));
        true
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dims..(i + 1) * self.dims]
    }

    /// The `k` facts most similar to `query` (a unit vector) with at least `min` cosine
    /// similarity, best first: `(index, similarity)`.
    pub fn search(&self, query: &[f32], k: usize, min: f32) -> Vec<(usize, f32)> {
        if query.len() != self.dims || k == 0 {
            return Vec::new();
        }
        // A small sorted list: k is a handful, so insertion beats a heap.
        let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
        for i in 0..self.len() {
            let score = dot(self.vector(i), query);
            if score < min || (best.len() == k && best[k - 1].1 >= score) {
                continue;
            }
            let at = best.partition_point(|(_, s)| *s >= score);
            best.insert(at, (i, score));
            best.truncate(k);
        }
        best
    }

    /// Approximate bytes held, for the cache's bound.
    pub fn weight(&self) -> usize {
        64 + self.vectors.len() * 4 + self.facts.iter().map(|f| f.len() + 40).sum::<usize>()
    }

    /// Bytes for Redis: generation, count, dims, then per fact its id and text, then the
    /// vectors.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.weight());
        out.put_u8(1);
        out.put_i64(self.generation);
        out.put_u32(self.len() as u32);
        out.put_u32(self.dims as u32);
        for (id, fact) in self.ids.iter().zip(&self.facts) {
            out.put_slice(id.as_bytes());
            out.put_u32(fact.len() as u32);
            out.put_slice(fact.as_bytes());
        }
        for x in &self.vectors {
            out.put_f32_le(*x);
        }
        out.freeze()
    }

    /// From Redis; `None` for bytes that are not a set.
    pub fn decode(mut bytes: Bytes) -> Option<Self> {
        if bytes.remaining() < 17 || bytes.get_u8() != 1 {
            return None;
        }
        let generation = bytes.get_i64();
        let n = bytes.get_u32() as usize;
        let dims = bytes.get_u32() as usize;
        // The count is only trusted as far as the bytes can hold it (20 bytes a fact at least).
        let room = n.min(bytes.remaining() / 20);
        let mut set = FactSet {
            generation,
            dims,
            ids: Vec::with_capacity(room),
            facts: Vec::with_capacity(room),
            vectors: Vec::new(),
        };
        for _ in 0..n {
            if bytes.remaining() < 20 {
                return None;
            }
            let mut id = [0u8; 16];
            bytes.copy_to_slice(&mut id);
            let len = bytes.get_u32() as usize;
            if bytes.remaining() < len {
                return None;
            }
            let text = String::from_utf8(bytes.split_to(len).to_vec()).ok()?;
            set.ids.push(Uuid::from_bytes(id));
            set.facts.push(text);
        }
        if bytes.remaining() != n.checked_mul(dims)?.checked_mul(4)? {
            return None;
        }
        set.vectors = (0..n * dims).map(|_| bytes.get_f32_le()).collect();
        Some(set)
    }
}

/// The dot product, in eight independent sums so that the compiler can keep them in vector
/// registers (one running sum must add in order: it cannot be vectorised).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut sums = [0f32; LANES];
    let mut chunks_a = a.chunks_exact(LANES);
    let mut chunks_b = b.chunks_exact(LANES);
    for (x, y) in chunks_a.by_ref().zip(chunks_b.by_ref()) {
        for lane in 0..LANES {
            sums[lane] += x[lane] * y[lane];
        }
    }
    let rest: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    sums.iter().sum::<f32>() + rest
}

/// The tiered cache's codec of a memory's facts.
#[derive(Debug, Clone, Copy)]
pub struct FactCodec;

impl boardroom_cache::Codec for FactCodec {
    type Value = std::sync::Arc<FactSet>;

    fn encode(value: &Self::Value) -> Bytes {
        value.encode()
    }

    fn decode(bytes: Bytes) -> Option<Self::Value> {
        FactSet::decode(bytes).map(std::sync::Arc::new)
    }

    fn weight(value: &Self::Value) -> usize {
        value.weight()
    }
}

/// What storing a distilled fact does to the memory.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A fact the memory did not hold.
    Add { fact: String, vector: Vec<f32> },
    /// A fact that restates (`restated`) or updates a kept one (the set's `index`): the new
    /// text replaces the old, the id stays.
    Replace {
        index: usize,
        fact: String,
        vector: Vec<f32>,
        restated: bool,
    },
}

/// How new facts (with their embeddings) change `set`: each is compared with the most
/// similar facts kept (and with those added before it); at `merge_similarity` or above, a fact
/// that speaks of the same thing (the same content words, up to word forms and synonyms:
/// `boardroom_semantic::guard::topic_differs`) replaces it, as a restatement when nothing
/// else differs either, as an update when a value does ("runway is 12 months" after
/// "runway is 14 months"). Anything else is added. Two new facts that restate each other
/// become one.
pub fn plan(set: &FactSet, new: Vec<(String, Vec<f32>)>, merge_similarity: f32) -> Vec<Change> {
    /// What a new fact is compared with: a kept fact (by index) or one added before it.
    enum Near {
        Kept(usize),
        Added(usize),
    }
    let mut changes: Vec<Change> = Vec::new();
    for (fact, vector) in new {
        let vector = unit(vector);
        if vector.len() != set.dims && !set.is_empty() {
            continue;
        }
        // The closest kept facts (a few: the nearest may speak of another thing than the
        // second) and the facts added before it in this batch, most similar first.
        let mut near: Vec<(Near, f32)> = set
            .search(&vector, MERGE_CANDIDATES, merge_similarity)
            .into_iter()
            .map(|(i, s)| (Near::Kept(i), s))
            .collect();
        for (at, change) in changes.iter().enumerate() {
            if let Change::Add { vector: v, .. } = change {
                let s = dot(v, &vector);
                if s >= merge_similarity {
                    near.push((Near::Added(at), s));
                }
            }
        }
        near.sort_by(|a, b| b.1.total_cmp(&a.1));
        // The text it is compared with: a kept fact as this batch left it.
        let replaced = |i: usize| {
            changes
                .iter()
                .position(|c| matches!(c, Change::Replace { index, .. } if *index == i))
        };
        let current = |near: &Near| match near {
            Near::Kept(i) => match replaced(*i).map(|at| &changes[at]) {
                Some(Change::Replace { fact, .. }) => fact.clone(),
                _ => set.facts[*i].clone(),
            },
            Near::Added(at) => match &changes[*at] {
                Change::Add { fact, .. } | Change::Replace { fact, .. } => fact.clone(),
            },
        };
        let same_topic = near.into_iter().find_map(|(n, _)| {
            let old = current(&n);
            boardroom_semantic::guard::topic_differs(&fact, &old)
                .is_none()
                .then_some((n, old))
        });
        match same_topic {
            None => changes.push(Change::Add { fact, vector }),
            Some((Near::Added(at), _)) => changes[at] = Change::Add { fact, vector },
            Some((Near::Kept(index), old)) => {
                let change = Change::Replace {
                    index,
                    restated: boardroom_semantic::guard::meaning_differs(&fact, &old).is_none(),
                    fact,
                    vector,
                };
                match replaced(index) {
                    Some(at) => changes[at] = change,
                    None => changes.push(change),
                }
            }
        }
    }
    changes
}

/// The distiller's call: the turn's message and the board's conclusion; the reply is JSON.
pub fn distil_context(user_message: &str, synthesis: &str, max_facts: u32) -> Vec<ChatMessage> {
    let system = format!(
        "You keep the long-term memory of an advisory board. From the exchange below, list the \
         durable facts about the user and their company that will still matter in later \
         conversations: figures, decisions, constraints, goals, context. Not advice, not \
         opinions, not the question itself. Each fact one short, self-contained sentence. \
         Reply with JSON only: {{\"facts\": [\"...\"]}}, at most {max_facts} facts, \
         {{\"facts\": []}} when there are none."
    );
    let mut prompt = String::with_capacity(user_message.len() + synthesis.len() + 64);
    prompt.push_str("[user] ");
    prompt.push_str(&user_message.replace('\n', " "));
    if !synthesis.is_empty() {
        prompt.push_str("\n[moderator] ");
        prompt.push_str(&synthesis.replace('\n', " "));
    }
    prompt.push_str("\n\n");
    prompt.push_str(DISTIL_MARK);
    vec![
        ChatMessage::text(ChatRole::System, system),
        ChatMessage::text(ChatRole::User, prompt),
    ]
}

/// The facts of the distiller's reply: `{"facts": [...]}` (in a code fence or not), each
/// trimmed, empty and over-long ones dropped, at most `max_facts`, no exact repeats. An
/// error says why a reply is not such an object.
pub fn parse_facts(reply: &str, max_facts: usize, max_bytes: usize) -> Result<Vec<String>, String> {
    let text = reply.trim();
    let text = text
        .strip_prefix("```json")
        .or_else(|| text.strip_prefix("```"))
        .and_then(|t| t.strip_suffix("```"))
        .unwrap_or(text)
        .trim();
    #[derive(serde::Deserialize)]
    struct Reply {
        facts: Vec<String>,
    }
    let parsed: Reply =
        serde_json::from_str(text).map_err(|e| format!("not {{\"facts\": [...]}}: {e}"))?;
    let mut facts: Vec<String> = Vec::new();
    for fact in parsed.facts {
        let fact = fact.split_whitespace().collect::<Vec<_>>().join(" ");
        if fact.is_empty() || fact.len() > max_bytes || facts.contains(&fact) {
            continue;
        }
        facts.push(fact);
        if facts.len() == max_facts {
            break;
        }
    }
    Ok(facts)
}

/// The recalled facts as one system message, best first, as many as fit `budget_tokens`,
/// with how many did (`None` when none fits).
pub fn recall_block(facts: &[String], budget_tokens: u32) -> Option<(String, u32)> {
    const HEAD: &str = "What the board remembers about the user and their company from earlier \
                        conversations (it may be out of date; the user's latest word wins):";
    let mut block = String::from(HEAD);
    let mut used = estimate_tokens(HEAD);
    let mut count = 0;
    for fact in facts {
        let cost = estimate_tokens(fact) + 1;
        if used + cost > budget_tokens {
            break;
        }
        used += cost;
        block.push_str("\n- ");
        block.push_str(fact);
        count += 1;
    }
    (count > 0).then_some((block, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words hashed into 64 dimensions, like the mock provider's embeddings.
    fn embed(text: &str) -> Vec<f32> {
        let mut v = vec![0f32; 64];
        for w in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let h = w
                .to_lowercase()
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            v[(h % 64) as usize] += 1.0;
        }
        unit(v)
    }

    fn set(facts: &[&str]) -> FactSet {
        let mut set = FactSet::empty(3);
        for f in facts {
            set.push(Uuid::now_v7(), (*f).to_owned(), embed(f));
        }
        set
    }

    #[test]
    fn the_dot_product_of_any_length_matches_the_plain_sum() {
        for n in [0, 1, 7, 8, 9, 64, 385] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-4, "{n}");
        }
    }

    #[test]
    fn search_returns_the_nearest_facts_best_first_above_the_floor() {
        let s = set(&[
            "Our runway is 14 months.",
            "We sell to mid-market companies.",
            "The team is 40 people.",
            "Pricing is per seat.",
        ]);
        let hits = s.search(&embed("how long is our runway in months"), 2, 0.1);
        assert_eq!(hits.first().map(|h| h.0), Some(0), "{hits:?}");
        assert!(hits.len() <= 2);
        assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(s.search(&embed("zebra"), 3, 0.9).is_empty());
        // Another model's dimensions cannot be compared.
        assert!(s.search(&[1.0, 0.0], 3, 0.0).is_empty());
    }

    #[test]
    fn a_set_round_trips_through_its_bytes_and_garbage_is_refused() {
        let s = set(&[
            "Our runway is 14 months.",
            "Über-expansion is planned for 2027.",
        ]);
        let back = FactSet::decode(s.encode()).expect("decodes");
        assert_eq!(back, s);
        assert_eq!(FactSet::decode(Bytes::from_static(b"nope")), None);
        // A count no bytes back up is refused, not allocated.
        let mut huge = BytesMut::new();
        huge.put_u8(1);
        huge.put_i64(1);
        huge.put_u32(u32::MAX);
        huge.put_u32(u32::MAX);
        assert_eq!(FactSet::decode(huge.freeze()), None);
        let mut cut = s.encode().to_vec();
        cut.pop();
        assert_eq!(FactSet::decode(Bytes::from(cut)), None);
        assert_eq!(
            vector_from(&vector_bytes(&[1.5, -2.0])),
            Some(vec![1.5, -2.0])
        );
        assert_eq!(vector_from(&[1, 2, 3]), None);
    }

    #[test]
    fn restatements_and_updates_replace_a_kept_fact_and_other_topics_are_added() {
        let s = set(&[
            "Our runway is 14 months.",
            "Churn among small business customers is 5%.",
        ]);
        let new = |f: &str| (f.to_owned(), embed(f));
        let changes = plan(
            &s,
            vec![
                new("Our runway is 14 months"),
                new("Churn among enterprise customers is 5%."),
                new("The company sells to mid-market buyers."),
                new("The company sells to mid-market buyers!"),
            ],
            0.6,
        );
        assert!(
            matches!(
                &changes[0],
                Change::Replace {
                    index: 0,
                    restated: true,
                    ..
                }
            ),
            "{changes:?}"
        );
        assert!(matches!(&changes[1], Change::Add { fact, .. } if fact.contains("enterprise")));
        // The batch's own restatement folds into one addition.
        assert_eq!(changes.len(), 3, "{changes:?}");
        let update = plan(&s, vec![new("Our runway is 12 months.")], 0.6);
        assert!(
            matches!(
                &update[0],
                Change::Replace {
                    index: 0,
                    restated: false,
                    ..
                }
            ),
            "{update:?}"
        );
        // Among close facts of two segments, the one of the same segment is updated.
        let two = set(&[
            "Churn among enterprise customers is 5%.",
            "Churn among small business customers is 5%.",
        ]);
        let update = plan(
            &two,
            vec![new("Churn among small business customers is 7%.")],
            0.5,
        );
        assert!(
            matches!(
                &update[0],
                Change::Replace {
                    index: 1,
                    restated: false,
                    ..
                }
            ),
            "{update:?}"
        );
        // Below the similarity floor nothing merges, whatever the words.
        let strict = plan(&s, vec![new("Runway: 12 months, as of today.")], 0.99);
        assert!(matches!(&strict[0], Change::Add { .. }), "{strict:?}");
    }

    #[test]
    fn the_distiller_s_reply_is_read_strictly_and_bounded() {
        let reply = "```json\n{\"facts\": [\" Our runway is 14   months. \", \"\", \"Our runway is 14 months.\", \"x\", \"y\"]}\n```";
        assert_eq!(
            parse_facts(reply, 2, 100).ok(),
            Some(vec!["Our runway is 14 months.".to_owned(), "x".to_owned()])
        );
        assert_eq!(
            parse_facts("{\"facts\": [\"a very long fact indeed\"]}", 5, 10).ok(),
            Some(Vec::new())
        );
        assert!(parse_facts("Sure! Here are the facts: runway 14", 5, 100).is_err());
        assert!(parse_facts("{\"facts\": \"runway\"}", 5, 100).is_err());
        let context = distil_context("We have 14 months\nof runway.", "Cut costs.", 5);
        let last = &context[1].content;
        assert!(
            last.contains("[user] We have 14 months of runway."),
            "{last}"
        );
        assert!(last.ends_with(DISTIL_MARK));
    }

    #[test]
    fn the_recall_block_holds_its_budget_best_first() {
        let facts: Vec<String> = (0..50)
            .map(|i| format!("Fact number {i} about the company's plans."))
            .collect();
        let (block, count) = recall_block(&facts, 120).expect("some fit");
        assert!(estimate_tokens(&block) <= 120 + 5, "{block}");
        assert_eq!(block.matches("\n- ").count() as u32, count);
        assert!(block.contains("Fact number 0 "));
        assert!(!block.contains("Fact number 49 "));
        assert_eq!(recall_block(&facts, 10), None);
        assert_eq!(recall_block(&[], 1000), None);
    }
}
