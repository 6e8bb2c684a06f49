//! The semantic cache's guard. Cosine similarity of sentence embeddings cannot tell "the same
//! question in other words" from "a look-alike that needs another answer": with
//! all-MiniLM-L6-v2, "enable 2FA for all admins" and "disable 2FA for all admins" score 0.92,
//! above most true paraphrases. So a semantic hit needs the similarity AND this guard, which
//! looks for a meaning-changing difference between the two prompts and rejects the hit when it
//! finds one:
//!
//! - **negation**: the negations present differ (`not`, `never`, `without`, `n't`, ...);
//! - **polarity**: a pair of opposites is used on different sides (enable/disable,
//!   increase/decrease, buy/sell, before/after, ...);
//! - **numbers**: the numbers differ (digits, amounts, percentages, number words);
//! - **time**: the time references differ (today/tomorrow, next/last, weekdays, months,
//!   quarters);
//! - **comparison**: the comparatives or superlatives differ (more/less, faster, cheapest,
//!   `-er than`);
//! - **entities**: the names differ (capitalised words, acronyms, words with digits), or the
//!   same names appear in another order (swapped roles: "from AWS to GCP" / "from GCP to AWS").
//!
//! It errs on the side of a miss: a paraphrase that reorders names or changes "next week" to
//! "in 7 days" is not served from the cache (a miss costs one upstream call; a false hit
//! serves a wrong answer). Measured on an adversarial set in `benches/semantic.rs`.

use std::collections::{BTreeMap, BTreeSet};

/// Cosine similarity of two vectors (of any norm).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot",
    "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont", "shouldnt",
    "wouldnt", "couldnt", "mustnt", "hasnt", "havent", "hadnt", "avoid", "stop", "prevent",
];

/// Groups of opposites; a prompt's side in each group must match the other prompt's.
const OPPOSITES: &[(&[&str], &[&str])] = &[
    (
        &[
            "enable",
            "enabled",
            "enabling",
            "activate",
            "turn on",
            "switch on",
        ],
        &[
            "disable",
            "disabled",
            "disabling",
            "deactivate",
            "turn off",
            "switch off",
        ],
    ),
    (
        &["allow", "allowed", "permit", "grant"],
        &["deny", "denied", "block", "blocked", "forbid", "revoke"],
    ),
    (
        &["add", "adding", "insert", "include"],
        &["remove", "removing", "delete", "exclude", "drop"],
    ),
    (
        &[
            "increase",
            "increasing",
            "raise",
            "raising",
            "grow",
            "boost",
            "expand",
        ],
        &[
            "decrease",
            "decreasing",
            "reduce",
            "reducing",
            "lower",
            "lowering",
            "cut",
            "cutting",
            "shrink",
        ],
    ),
    (
        &["start", "starting", "begin", "launch", "open"],
        &["end", "ending", "finish", "shut", "close", "closing"],
    ),
    (
        &["buy", "buying", "purchase", "acquire"],
        &["sell", "selling", "divest"],
    ),
    (
        &["hire", "hiring", "recruit"],
        &["fire", "firing", "lay off", "layoff", "layoffs"],
    ),
    (
        &["accept", "approve", "approved"],
        &["reject", "rejected", "decline", "declined"],
    ),
    (&["import", "importing"], &["export", "exporting"]),
    (&["upgrade", "upgrading"], &["downgrade", "downgrading"]),
    (&["encrypt", "encrypted"], &["decrypt", "decrypted"]),
    (&["lock", "locked"], &["unlock", "unlocked"]),
    (&["install", "installed"], &["uninstall", "uninstalled"]),
    (&["before", "prior to", "ahead of"], &["after", "following"]),
    (&["above", "exceed", "exceeds"], &["below", "under"]),
    (
        &["maximum", "max", "maximize", "maximise"],
        &["minimum", "min", "minimize", "minimise"],
    ),
    (&["profit", "profits", "gain", "gains"], &["loss", "losses"]),
    (&["win", "winning", "won"], &["lose", "losing", "lost"]),
    (&["long"], &["short"]),
    (
        &["input", "inbound", "incoming"],
        &["output", "outbound", "outgoing"],
    ),
    (
        &["success", "succeeded", "successful"],
        &["failure", "failed", "unsuccessful"],
    ),
    (&["online"], &["offline"]),
    (&["public"], &["private"]),
];

const TIME: &[&str] = &[
    "today",
    "tonight",
    "tomorrow",
    "yesterday",
    "later",
    "soon",
    "next",
    "last",
    "previous",
    "past",
    "future",
    "upcoming",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "weekend",
    "january",
    "february",
    "march",
    "april",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "q1",
    "q2",
    "q3",
    "q4",
    "h1",
    "h2",
    "morning",
    "afternoon",
    "evening",
    "night",
    "daily",
    "weekly",
    "monthly",
    "quarterly",
    "yearly",
    "annual",
    "annually",
    "day",
    "days",
    "week",
    "weeks",
    "month",
    "months",
    "quarter",
    "quarters",
    "year",
    "years",
    "hour",
    "hours",
    "minute",
    "minutes",
];

const COMPARATIVES: &[&str] = &[
    "more",
    "less",
    "fewer",
    "most",
    "least",
    "better",
    "worse",
    "best",
    "worst",
    "higher",
    "lower",
    "highest",
    "lowest",
    "bigger",
    "smaller",
    "biggest",
    "smallest",
    "larger",
    "largest",
    "faster",
    "slower",
    "fastest",
    "slowest",
    "cheaper",
    "cheapest",
    "costlier",
    "earlier",
    "earliest",
    "greater",
    "greatest",
    "newer",
    "newest",
    "older",
    "oldest",
    "safer",
    "safest",
    "riskier",
    "riskiest",
    "easier",
    "easiest",
    "harder",
    "hardest",
    "stronger",
    "weaker",
    "longer",
    "shorter",
    "prefer",
    "preferred",
];

const NUMBER_WORDS: &[(&str, &str)] = &[
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("fifteen", "15"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("fifty", "50"),
    ("hundred", "100"),
    ("thousand", "1000"),
    ("million", "1000000"),
    ("billion", "1000000000"),
    ("half", "0.5"),
    ("double", "x2"),
    ("twice", "x2"),
    ("triple", "x3"),
    ("dozen", "12"),
    ("single", "1"),
    ("pair", "2"),
    ("couple", "2"),
];

/// A prompt taken apart for the guard.
struct Parsed {
    /// Lowercased words, apostrophes dropped ("don't" → "dont").
    words: Vec<String>,
    /// Names in order of appearance (capitalised words not starting a sentence, acronyms,
    /// words mixing letters and digits).
    entities: Vec<String>,
    /// Numbers, normalised.
    numbers: BTreeMap<String, usize>,
}

fn parse(text: &str) -> Parsed {
    let mut words = Vec::new();
    let mut entities = Vec::new();
    let mut numbers = BTreeMap::new();
    let mut sentence_start = true;
    for raw in text.split_whitespace() {
        let ends_sentence = raw.ends_with(['.', '?', '!', ':', ';']);
        let trimmed: String = raw
            .trim_matches(|c: char| !c.is_alphanumeric() && c != '$' && c != '%')
            .chars()
            .filter(|c| *c != '\'' && *c != '’')
            .collect();
        if trimmed.is_empty() {
            sentence_start |= ends_sentence;
            continue;
        }
        let digits: String = trimmed
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let has_digit = trimmed.chars().any(|c| c.is_ascii_digit());
        let has_alpha = trimmed.chars().any(char::is_alphabetic);
        if has_digit && !has_alpha {
            let mut number = digits.trim_end_matches('.').to_owned();
            if trimmed.contains('%') {
                number.push('%');
            }
            *numbers.entry(number).or_insert(0) += 1;
        }
        let lower = trimmed.to_lowercase();
        if let Some((_, value)) = NUMBER_WORDS.iter().find(|(w, _)| *w == lower) {
            *numbers.entry((*value).to_owned()).or_insert(0) += 1;
        }
        let first = trimmed.chars().next().unwrap_or(' ');
        let acronym = trimmed.chars().filter(|c| c.is_uppercase()).count() >= 2;
        let capitalised = first.is_uppercase() && !sentence_start;
        if (acronym || capitalised || (has_digit && has_alpha)) && lower != "i" {
            entities.push(lower.clone());
        }
        words.push(lower);
        sentence_start = ends_sentence;
    }
    Parsed {
        words,
        entities,
        numbers,
    }
}

/// A crude stem, so that word forms meet: "expanding", "expanded", "expands" → "expand";
/// "raise", "raised", "raising" → "rais".
fn stem(word: &str) -> &str {
    let word = ["ing", "ed", "es", "s"]
        .iter()
        .find_map(|suffix| {
            word.strip_suffix(suffix)
                .filter(|rest| rest.len() >= 3 && !word.ends_with("ss"))
        })
        .unwrap_or(word);
    word.strip_suffix('e')
        .filter(|rest| rest.len() >= 3)
        .unwrap_or(word)
}

fn stems(text: &str) -> String {
    text.split(' ').map(stem).collect::<Vec<_>>().join(" ")
}

fn present<'a>(words: &[String], vocabulary: &[&'a str]) -> BTreeSet<&'a str> {
    let text = format!(" {} ", stems(&words.join(" ")));
    vocabulary
        .iter()
        .filter(|term| text.contains(&format!(" {} ", stems(term))))
        .copied()
        .collect()
}

/// Why serving `cached`'s answer to `asked` could be wrong; `None` when the guard finds no
/// meaning-changing difference.
pub fn meaning_differs(asked: &str, cached: &str) -> Option<&'static str> {
    let (a, b) = (parse(asked), parse(cached));
    if present(&a.words, NEGATIONS) != present(&b.words, NEGATIONS) {
        return Some("negation");
    }
    for (yes, no) in OPPOSITES {
        let side = |p: &Parsed| {
            (
                !present(&p.words, yes).is_empty(),
                !present(&p.words, no).is_empty(),
            )
        };
        if side(&a) != side(&b) {
            return Some("polarity");
        }
    }
    if a.numbers != b.numbers {
        return Some("numbers");
    }
    if present(&a.words, TIME) != present(&b.words, TIME) {
        return Some("time");
    }
    let comparatives = |p: &Parsed| {
        let mut found = present(&p.words, COMPARATIVES)
            .into_iter()
            .map(str::to_owned)
            .collect::<BTreeSet<String>>();
        for pair in p.words.windows(2) {
            if pair[1] == "than" && pair[0].ends_with("er") {
                found.insert(pair[0].clone());
            }
        }
        found
    };
    if comparatives(&a) != comparatives(&b) {
        return Some("comparison");
    }
    let set = |p: &Parsed| p.entities.iter().cloned().collect::<BTreeSet<String>>();
    if set(&a) != set(&b) {
        return Some("entities");
    }
    let dedup = |p: &Parsed| {
        let mut seen = BTreeSet::new();
        p.entities
            .iter()
            .filter(|e| seen.insert((*e).clone()))
            .cloned()
            .collect::<Vec<String>>()
    };
    if dedup(&a) != dedup(&b) {
        return Some("entity order");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alikes_are_caught_by_kind() {
        let cases = [
            (
                "Enable 2FA for all admins",
                "Disable 2FA for all admins",
                "polarity",
            ),
            (
                "Should we hire more engineers?",
                "Should we not hire more engineers?",
                "negation",
            ),
            (
                "Can we cut prices by 10%?",
                "Can we cut prices by 15%?",
                "numbers",
            ),
            (
                "What is the forecast for next quarter?",
                "What is the forecast for last quarter?",
                "time",
            ),
            (
                "Is Postgres faster than MySQL?",
                "Is Postgres slower than MySQL?",
                "comparison",
            ),
            (
                "Should we migrate from AWS to GCP?",
                "Should we migrate from GCP to AWS?",
                "entity order",
            ),
            (
                "Summarise the Acme contract",
                "Summarise the Globex contract",
                "entities",
            ),
        ];
        for (a, b, kind) in cases {
            assert_eq!(meaning_differs(a, b), Some(kind), "{a} / {b}");
        }
    }

    #[test]
    fn paraphrases_pass() {
        let cases = [
            ("Enable 2FA for all admins", "Turn on 2FA for every admin"),
            (
                "How do I reset my password?",
                "What's the way to reset my password?",
            ),
            (
                "Should we expand into Europe next year?",
                "Is expanding into Europe next year a good idea?",
            ),
            (
                "Give me three ideas to improve retention",
                "Suggest three ways to improve retention",
            ),
        ];
        for (a, b) in cases {
            assert_eq!(meaning_differs(a, b), None, "{a} / {b}");
        }
    }

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 3.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }
}
