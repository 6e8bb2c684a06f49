//! The semantic cache's guard. Cosine similarity of sentence embeddings cannot tell "the same
//! question in other words" from "a look-alike that needs another answer": with
//! all-MiniLM-L6-v2, "enable 2FA for all admins" and "disable 2FA for all admins" score 0.92,
//! and "a letter from our company to the supplier" and "… from the supplier to our company"
//! nearly 1.0. So a semantic hit needs the similarity AND this guard, which looks for a
//! meaning-changing difference between the two prompts and refuses the hit when it finds one.
//!
//! It judges structure, not a list of any set's words:
//! - **closed word classes** must match: negation, quantifier scope (all / some / only …),
//!   modality and tense (should / did / must / is it legal), who is asking about whom
//!   (pronouns), numbers, units and currencies, time references, comparatives, and the side
//!   taken in pairs of opposites (enable / disable);
//! - **roles**: two words of the one prompt that exchange places in the other ("X owes Y" /
//!   "Y owes X", "from A to B" / "from B to A", "A over B"), whatever the words: the other
//!   prompt aligns better with the two exchanged than as written. Symmetric joins ("X and Y",
//!   "between X and Y") and a change of voice ("the board approved it" / "it was approved by
//!   the board") are not exchanges;
//! - **content**: the content words of the two prompts, aligned in order, must match one to
//!   one, up to inflection, everyday synonyms and typos. A word replaced by another that is
//!   not its synonym changes the subject ("contract" / "invoice") or, before a shared head
//!   noun, its qualifier ("small business customers" / "enterprise customers"); a content
//!   word on one side only adds a condition. Words that only frame the request ("give me",
//!   "tips for", "what is the best way to", politeness) are not content. Synonyms are the
//!   lexicon's and WordNet 3.0's (the sets of senses attested in its tagged corpora);
//! - **the asker's side**: "I" acting in one prompt and "me" acted on in the other ("my
//!   cofounder wants to buy me out" / "I want to buy out my cofounder"), or another subject
//!   of the question ("can they end it" / "can we end it");
//! - **what the question asks for**: yes or no, a reason, a time, a place, a person, a manner
//!   or an amount ("Should I refinance?" / "How do I refinance?"; "what" paraphrases any);
//! - **opposites** only when the prompts take opposite sides: a side named in one prompt only
//!   is a content word, matched to its synonym or found added;
//! - **a preamble about the asking** ("I keep hearing this term. What is a cap table?") is
//!   framing: the question after it is judged. One that states a condition (a number, a
//!   name, "we", or no word of asking: "I'm self-employed.") is content.
//!
//! It errs on the side of a miss: a miss costs one upstream call; a false hit serves a wrong
//! answer. Measured on held-out pairs in `benches/semantic.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::OnceLock;

use crate::lexicon::{self, COORDINATORS};
use crate::text::{Word, stem, words};

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

/// A meaning-changing difference the guard found: its kind (the metric's `reason` label) and
/// what differs, for the debug log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// question, negation, polarity, numbers, units, time, comparison, scope, modality,
    /// perspective, roles, entities, subject, qualifier, addition, length.
    pub kind: &'static str,
    /// What differs, e.g. `"supplier" and "company" exchange roles`.
    pub detail: String,
}

fn differ(kind: &'static str, detail: String) -> Option<Difference> {
    Some(Difference { kind, detail })
}

/// Prompts longer than this many words are not judged (a miss): the guard is for questions.
const MAX_WORDS: usize = 200;

/// Why serving `cached`'s answer to `asked` could be wrong; `None` when the guard finds no
/// meaning-changing difference.
pub fn meaning_differs(asked: &str, cached: &str) -> Option<Difference> {
    let difference = judged(asked, cached)?;
    if difference.kind == "length" {
        return Some(difference);
    }
    // One prompt is the other's question after words about the asker's asking ("I'm curious
    // about something I use every day. How do noise-canceling headphones work?").
    if framed_question(asked).is_some_and(|(_, q)| judged(q, cached).is_none())
        || framed_question(cached).is_some_and(|(_, q)| judged(asked, q).is_none())
    {
        return None;
    }
    Some(difference)
}

fn judged(asked: &str, cached: &str) -> Option<Difference> {
    let (a, b) = match met(asked, cached) {
        Ok(words) => words,
        Err(too_long) => return Some(too_long),
    };
    if let (Some(x), Some(y)) = (question(asked), question(cached))
        && x != y
        && x != "what"
        && y != "what"
    {
        return differ("question", format!("{x} against {y}"));
    }
    classes(&a, &b)
        .or_else(|| roles(&a, &b))
        .or_else(|| content(&a, &b))
}

/// The auxiliaries and modals that open a yes/no question or stand before its subject.
const AUXILIARIES: &[&str] = &[
    "is", "are", "am", "was", "were", "do", "does", "did", "can", "could", "should", "shall",
    "will", "would", "may", "might", "must", "has", "have",
];

/// What the prompt's question asks for: "yes/no" ("Should I refinance?", "whether"), a reason
/// ("why"), a time, a place, a person, a manner ("how") or an amount ("how much", "how long",
/// "how often"); "what" for "what" and "which", which paraphrase any of them ("What is the
/// process for …" / "How do I …"). Judged on the last sentence that asks (the one ending in a
/// question mark, else the whole prompt), after politeness ("can you tell me whether"); `None`
/// for a prompt with no question word ("cast iron skillet cleaning tips").
fn question(text: &str) -> Option<&'static str> {
    let sentence = text
        .split_inclusive(['?', '!', '.'])
        .rfind(|s| s.trim_end().ends_with('?'))
        .unwrap_or(text);
    // A fronted clause of time, place or condition is no question: "When guests arrive, how
    // can I stop my dog barking?".
    let main = match sentence.split_once(',') {
        Some((front, rest))
            if prepare(front).first().is_some_and(|x| {
                matches!(
                    x.text.as_str(),
                    "when" | "where" | "if" | "before" | "after" | "while" | "once"
                )
            }) =>
        {
            rest
        }
        _ => sentence,
    };
    let w = prepare(main);
    let starts = |phrase: &str| {
        let p: Vec<&str> = phrase.split(' ').collect();
        w.len() >= p.len() && w.iter().zip(&p).all(|(x, y)| x.text == *y)
    };
    // "Is there a way to …" asks how.
    if starts("is there a way") || starts("is there any way") {
        return Some("how");
    }
    if w.first()
        .is_some_and(|x| AUXILIARIES.contains(&x.text.as_str()))
    {
        return Some("yes/no");
    }
    for (i, x) in w.iter().enumerate() {
        let next = w.get(i + 1).map(|n| n.text.as_str());
        return Some(match x.text.as_str() {
            "whether" => "yes/no",
            "why" => "why",
            "when" => "when",
            "where" => "where",
            "who" | "whom" | "whose" => "who",
            "what" | "which" => "what",
            "how" => match next {
                Some("much" | "many") => "how much",
                Some("long") => "how long",
                Some("often") => "how often",
                _ => "how",
            },
            _ => continue,
        });
    }
    None
}

/// Most words a preamble about the asking may have.
const MAX_PREAMBLE_WORDS: usize = 30;

/// A prompt's last sentence, when the sentences before it only speak of the asker's asking:
/// the speaker is "I" (not "we": a company's facts are conditions), a word of asking or
/// knowing is there ("curious", "question", "wondering", "understand", "advice"), and nothing
/// that conditions an answer is (a number, a name, a unit or currency). So "I've been reading
/// the news lately and it got me thinking. What causes inflation?" is the question; "We have
/// 40 staff. What benefits should we offer?" and "I'm self-employed. How do I file taxes?"
/// are not (no asking in them). Returns (preamble, question).
fn framed_question(text: &str) -> Option<(&str, &str)> {
    let text = text.trim();
    // The last sentence end with a sentence after it ('.', '?', '!' or ':' then a space).
    let boundary = text
        .char_indices()
        .filter(|&(i, c)| {
            matches!(c, '.' | '?' | '!' | ':')
                && text[i + 1..].starts_with(char::is_whitespace)
                && text[i + 1..].split_whitespace().nth(1).is_some()
        })
        .map(|(i, _)| i + 1)
        .next_back()?;
    let (preamble, question) = (&text[..boundary], text[boundary..].trim());
    let w = words(preamble);
    let has = |class: &str| {
        lexicon::PERSONS.iter().any(|(name, members)| {
            *name == class && w.iter().any(|x| members.contains(&x.text.as_str()))
        })
    };
    let conditioned = w.iter().any(|x| {
        x.name
            || x.number
            || lexicon::NUMBER_WORDS
                .iter()
                .any(|(n, _)| *n == x.text && x.text != "one")
            || lexicon::UNITS
                .iter()
                .any(|(_, m)| m.contains(&x.text.as_str()))
    });
    let asking = w.iter().any(|x| lexicon::is_asking(&x.stem));
    (w.len() <= MAX_PREAMBLE_WORDS
        && has("first person")
        && !has("first person plural")
        && asking
        && !conditioned)
        .then_some((preamble, question))
}

/// Both texts' words, made to meet where they only differ in writing: an acronym spelled out
/// in the other ("PTO" / "paid time off"), a compound written apart ("time zones" /
/// "timezones"), a typo of the other's word ("recieve"). Texts too long to judge are a
/// difference of their own.
fn met(a: &str, b: &str) -> Result<(Vec<Word>, Vec<Word>), Difference> {
    let (mut a, mut b) = (prepare(a), prepare(b));
    if a.len() > MAX_WORDS || b.len() > MAX_WORDS {
        return Err(Difference {
            kind: "length",
            detail: format!("longer than {MAX_WORDS} words"),
        });
    }
    contract_acronyms(&mut a, &b);
    contract_acronyms(&mut b, &a);
    join_compounds(&mut a, &b);
    join_compounds(&mut b, &a);
    correct_typos(&mut a, &b);
    correct_typos(&mut b, &a);
    Ok((a, b))
}

/// Whether `a` and `b` speak of different things: their content words (closed classes such
/// as numbers, negations, times and quantifiers aside) do not match one to one, up to word
/// forms, everyday synonyms, typos, acronyms and compounds. Two statements of one topic
/// ("runway is 14 months" / "our runway is now 12 months") are not different here, though
/// [`meaning_differs`] tells them apart: the conversation's memory keeps the newer of them
/// as an update of the older, and keeps both of "churn among small customers is 5 %" and
/// "churn among enterprise customers is 2 %".
pub fn topic_differs(a: &str, b: &str) -> Option<Difference> {
    match met(a, b) {
        Ok((a, b)) => content(&a, &b),
        Err(too_long) => Some(too_long),
    }
}

/// The prompt's words without politeness and filler.
fn prepare(text: &str) -> Vec<Word> {
    let mut all = words(text);
    all.retain(|w| !lexicon::is_filler_word(&w.text));
    let texts: Vec<String> = all.iter().map(|w| w.text.clone()).collect();
    let mut kept = Vec::with_capacity(all.len());
    let mut i = 0;
    while i < all.len() {
        match lexicon::filler_at(&texts, i) {
            Some(skip) => i += skip,
            // "fails to rise" is "does not rise".
            None if matches!(
                all[i].text.as_str(),
                "fail" | "fails" | "failed" | "failing"
            ) && all.get(i + 1).is_some_and(|n| n.text == "to") =>
            {
                kept.extend(words("not"));
                i += 2;
            }
            None => {
                kept.push(all[i].clone());
                i += 1;
            }
        }
    }
    kept
}

/// Words of `within` that spell out an acronym of `other` ("data processing agreement" for
/// "DPA", "two-factor authentication" for "2FA", "request for proposal" for "RFP") become
/// that acronym.
fn contract_acronyms(within: &mut Vec<Word>, other: &[Word]) {
    let acronyms: Vec<Word> = other
        .iter()
        .filter(|w| {
            (2..=6).contains(&w.text.len()) && w.name && !within.iter().any(|x| x.text == w.text)
        })
        .cloned()
        .collect();
    for acronym in acronyms {
        let letters: Vec<char> = acronym.text.chars().collect();
        let initial = |w: &Word| -> Option<char> {
            let digit = lexicon::NUMBER_WORDS
                .iter()
                .find(|(n, _)| *n == w.text)
                .and_then(|(_, d)| d.chars().next().filter(char::is_ascii_digit));
            digit.or_else(|| w.text.chars().next())
        };
        for start in 0..within.len() {
            if let Some(end) = spell(within, start, start, &letters, &initial)
                && end - start >= 2
                && within[start..end].iter().all(|w| w.text.len() > 1)
            {
                within.splice(start..end, [acronym.clone()]);
                break;
            }
        }
    }
}

/// Where the words from `at` spell `letters` by their initials (small words may be skipped
/// in between: "request for proposal", "simple agreement for future equity").
fn spell(
    words: &[Word],
    start: usize,
    at: usize,
    letters: &[char],
    initial: &dyn Fn(&Word) -> Option<char>,
) -> Option<usize> {
    let Some((first, rest)) = letters.split_first() else {
        return Some(at);
    };
    let word = words.get(at)?;
    if initial(word) == Some(*first)
        && let Some(end) = spell(words, start, at + 1, rest, initial)
    {
        return Some(end);
    }
    let skippable = matches!(
        word.text.as_str(),
        "of" | "for" | "and" | "the" | "to" | "on" | "in"
    );
    (skippable && at > start)
        .then(|| spell(words, start, at + 1, letters, initial))
        .flatten()
}

/// Two adjacent words of `within` written as one word in `other` ("time zones" /
/// "timezones", "set up" / "setup") become that word.
fn join_compounds(within: &mut Vec<Word>, other: &[Word]) {
    let mut i = 0;
    while i + 1 < within.len() {
        let joined = format!("{}{}", within[i].text, within[i + 1].text);
        if let Some(word) = other
            .iter()
            .find(|o| o.text == joined || (o.stem == stem(&joined) && o.text.len() > 5))
        {
            within.splice(i..i + 2, [word.clone()]);
        }
        i += 1;
    }
}

/// A word of `within` that is a typo of a word of `other` (and not its opposite) becomes
/// that word.
fn correct_typos(within: &mut [Word], other: &[Word]) {
    for word in within.iter_mut() {
        if word.name
            || word.number
            || other
                .iter()
                .any(|o| o.text == word.text || o.stem == word.stem)
        {
            continue;
        }
        if let Some(right) = other.iter().find(|o| {
            !o.name
                && (typo(&word.text, &o.text) || typo(&word.stem, &o.stem))
                && !lexicon::opposed(&word.stem, &o.stem)
        }) {
            *word = right.clone();
        }
    }
}

fn texts(words: &[Word]) -> Vec<&str> {
    words.iter().map(|w| w.text.as_str()).collect()
}

/// Whether `phrase` (words separated by spaces) occurs in `words`, by stem.
fn has_phrase(words: &[Word], phrase: &str) -> bool {
    let parts: Vec<(&str, String)> = phrase.split(' ').map(|p| (p, stem(p))).collect();
    words.windows(parts.len()).any(|window| {
        window
            .iter()
            .zip(&parts)
            .all(|(w, (text, stemmed))| w.stem == *stemmed || w.text == *text)
    })
}

fn word_classes<'a>(words: &[Word], classes: &[(&'a str, &[&str])]) -> BTreeSet<&'a str> {
    classes
        .iter()
        .filter(|(_, members)| members.iter().any(|m| words.iter().any(|w| w.text == *m)))
        .map(|(name, _)| *name)
        .collect()
}

fn shown(set: &BTreeSet<&str>) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        set.iter().copied().collect::<Vec<_>>().join(", ")
    }
}

/// The closed classes: each must be the same in both prompts.
fn classes(a: &[Word], b: &[Word]) -> Option<Difference> {
    let negations = |w: &[Word]| {
        w.iter()
            .filter(|w| lexicon::NEGATIONS.contains(&w.text.as_str()))
            .count()
    };
    let (na, nb) = (negations(a), negations(b));
    if na != nb {
        return differ("negation", format!("{na} negations against {nb}"));
    }
    let numbers = |w: &[Word]| {
        let mut found: BTreeMap<String, usize> = BTreeMap::new();
        for (i, word) in w.iter().enumerate() {
            // "one" is a number before a content word ("one week"), else a pronoun ("how to
            // build one", "a simple one", "one-on-one").
            let pronoun = word.text == "one"
                && w.get(i + 1)
                    .is_none_or(|next| lexicon::is_light(&next.text));
            // "a week" is one week ("twice a week" is a rate: no number of its own).
            let one_unit = matches!(word.text.as_str(), "a" | "an")
                && w.get(i + 1)
                    .is_some_and(|next| lexicon::is_time_unit(&next.stem))
                && i.checked_sub(1).is_none_or(|before| {
                    let before = &w[before];
                    !(before.number
                        || lexicon::NUMBER_WORDS.iter().any(|(n, _)| *n == before.text)
                        || matches!(before.text.as_str(), "once" | "times"))
                });
            let value = if pronoun {
                None
            } else if one_unit {
                Some("1".to_owned())
            } else if word.number {
                Some(word.text.clone())
            } else {
                lexicon::NUMBER_WORDS
                    .iter()
                    .find(|(n, _)| *n == word.text)
                    .map(|(_, v)| (*v).to_owned())
            };
            if let Some(value) = value {
                *found.entry(value).or_default() += 1;
            }
        }
        found
    };
    let (numbers_a, numbers_b) = (numbers(a), numbers(b));
    if numbers_a.keys().ne(numbers_b.keys()) {
        let keys = |n: &BTreeMap<String, usize>| n.keys().cloned().collect::<Vec<_>>().join(", ");
        return differ(
            "numbers",
            format!("{} against {}", keys(&numbers_a), keys(&numbers_b)),
        );
    }
    let (units_a, units_b) = (
        word_classes(a, lexicon::UNITS),
        word_classes(b, lexicon::UNITS),
    );
    if units_a != units_b {
        return differ(
            "units",
            format!("{} against {}", shown(&units_a), shown(&units_b)),
        );
    }
    let (time_a, time_b) = (times(a), times(b));
    if time_a != time_b {
        return differ(
            "time",
            format!("{} against {}", shown(&time_a), shown(&time_b)),
        );
    }
    let (more_a, more_b) = (comparatives(a), comparatives(b));
    // "quickest" / "fastest", "easiest" / "simplest": one degree of synonyms.
    let synonymous = more_a.len() == more_b.len()
        && more_a.iter().zip(&more_b).all(|(x, y)| {
            let (gx, gy) = (degree_groups(x), degree_groups(y));
            x == y || gx.iter().any(|g| gy.contains(g))
        });
    if more_a != more_b && !synonymous {
        return differ(
            "comparison",
            format!("{} against {}", more_a.join(", "), more_b.join(", ")),
        );
    }
    for (yes, no) in lexicon::OPPOSITES {
        let side = |w: &[Word]| {
            (
                yes.iter().any(|p| has_phrase(w, p)),
                no.iter().any(|p| has_phrase(w, p)),
            )
        };
        // Opposite sides taken ("enable" / "disable", "pros" / "pros and cons"). A side named
        // in one prompt only ("learn it quickly" / "learn it fast") is a content word like any
        // other: the content test matches it to a synonym or finds it added or replaced.
        let (sa, sb) = (side(a), side(b));
        if sa != sb && sa != (false, false) && sb != (false, false) {
            return differ("polarity", format!("{} against {}", yes[0], no[0]));
        }
    }
    let (scope_a, scope_b) = (scope(a), scope(b));
    if scope_a != scope_b {
        return differ(
            "scope",
            format!("{} against {}", shown(&scope_a), shown(&scope_b)),
        );
    }
    let (mut modal_a, mut modal_b) = (modality(a), modality(b));
    // Advice against plain present is one question ("How do we price it?" / "How should we
    // price it?"); advice against ability or permission is not ("Can I" / "Should I").
    let ability = |w: &[Word]| {
        w.iter().any(|x| {
            matches!(
                x.text.as_str(),
                "can" | "could" | "able" | "possible" | "feasible"
            )
        })
    };
    // "Can an employer require it" / "Must an employer require it": ability against
    // obligation, whatever else the sentence requires.
    let must = |w: &[Word]| {
        w.iter().any(|x| x.text == "must")
            || w.windows(2).any(|p| {
                matches!(p[0].text.as_str(), "have" | "has" | "need" | "needs") && p[1].text == "to"
            })
    };
    if ability(a) != ability(b) && must(a) != must(b) {
        return differ(
            "modality",
            "ability against obligation (\"can\" / \"must\")".to_owned(),
        );
    }
    let (advice_a, advice_b) = (modal_a.contains("advice"), modal_b.contains("advice"));
    let against_ability = (advice_a && ability(b)) || (advice_b && ability(a));
    if advice_a != advice_b && !against_ability {
        modal_a.remove("advice");
        modal_b.remove("advice");
    }
    if modal_a != modal_b {
        return differ(
            "modality",
            format!("{} against {}", shown(&modal_a), shown(&modal_b)),
        );
    }
    if let Some(flip) = asker_flips(a, b) {
        return Some(flip);
    }
    // Who the question is about: "Can they end it?" / "Can we end it?".
    let (asked_a, asked_b) = (question_subjects(a), question_subjects(b));
    if !asked_a.is_empty() && !asked_b.is_empty() && asked_a != asked_b {
        return differ(
            "perspective",
            format!("asked of {} against {}", shown(&asked_a), shown(&asked_b)),
        );
    }
    let (persons_a, persons_b) = (
        word_classes(a, lexicon::PERSONS),
        word_classes(b, lexicon::PERSONS),
    );
    let only_a: BTreeSet<&str> = persons_a.difference(&persons_b).copied().collect();
    let only_b: BTreeSet<&str> = persons_b.difference(&persons_a).copied().collect();
    if !only_a.is_empty() && !only_b.is_empty() {
        return differ(
            "perspective",
            format!("{} against {}", shown(&only_a), shown(&only_b)),
        );
    }
    None
}

/// The asker acts in the one prompt and is only acted on in the other: "I want to buy out my
/// cofounder" / "my cofounder wants to buy me out", "we owe them" / "they owe us". The same
/// pronoun's subject and object forms tell it, whatever the nouns; an object after a word that
/// frames the request ("give me", "walk us through") is the addressee of the answer, not a
/// party, and a change of voice moves the subject by itself.
fn asker_flips(a: &[Word], b: &[Word]) -> Option<Difference> {
    let cases = |w: &[Word], subject: &str, object: &str| {
        let acts = w.iter().filter(|x| x.text == subject).count();
        let acted_on = w
            .iter()
            .enumerate()
            .filter(|(i, x)| {
                x.text == object
                    && !i.checked_sub(1).is_some_and(|p| {
                        lexicon::is_light(&w[p].text) && !lexicon::is_function_word(&w[p].text)
                    })
            })
            .count();
        (acts, acted_on)
    };
    if voice_changed(a, b) {
        return None;
    }
    for (subject, object) in [("i", "me"), ("we", "us")] {
        let ((sa, oa), (sb, ob)) = (cases(a, subject, object), cases(b, subject, object));
        // More of the one form and fewer of the other: the asker moved between the parties.
        if (sa > sb && oa < ob) || (sa < sb && oa > ob) {
            return differ(
                "perspective",
                format!("\"{subject}\" {sa} and \"{object}\" {oa} times against {sb} and {ob}"),
            );
        }
    }
    None
}

/// The persons a question asks about: a subject pronoun right after its auxiliary ("can
/// they", "should we", "do I"). "You" is left out (generic: "how do you make bread"), and so
/// is "it" ("is it legal").
fn question_subjects(w: &[Word]) -> BTreeSet<&'static str> {
    w.windows(2)
        .filter(|p| AUXILIARIES.contains(&p[0].text.as_str()))
        .filter(|p| matches!(p[1].text.as_str(), "i" | "we" | "they" | "he" | "she"))
        .filter_map(|p| person(&p[1].text))
        .collect()
}

/// The quantifiers' scopes; "much" and "many" after "how", "too", "so" or "as" ask or
/// judge an amount ("how much should we charge"), they do not quantify.
fn scope(w: &[Word]) -> BTreeSet<&'static str> {
    let quantifies = |i: usize| {
        !(matches!(w[i].text.as_str(), "much" | "many")
            && i.checked_sub(1)
                .is_some_and(|b| matches!(w[b].text.as_str(), "how" | "too" | "so" | "as")))
    };
    lexicon::SCOPE
        .iter()
        .filter(|(_, members)| {
            (0..w.len()).any(|i| quantifies(i) && members.contains(&w[i].text.as_str()))
        })
        .map(|(name, _)| *name)
        .collect()
}

/// Time references: unambiguous time words, and the ambiguous ones ("this", "may", "by",
/// "first") next to a time word or a number.
fn times(w: &[Word]) -> BTreeSet<&'static str> {
    let is_time = |i: usize| w.get(i).and_then(time_word);
    let anchored = |i: usize| {
        let near = |j: Option<usize>| {
            j.and_then(|j| w.get(j)).is_some_and(|n| {
                n.number
                    || time_word(n).is_some_and(|_| {
                        let table = time_table();
                        table.2.contains(&n.text) || table.3.contains(&n.stem)
                    })
            })
        };
        near(i.checked_sub(1)) || near(Some(i + 1)) || near(Some(i + 2))
    };
    (0..w.len())
        .filter_map(|i| {
            let time = is_time(i)?;
            (!lexicon::TIME_AMBIGUOUS.contains(&time) || anchored(i)).then_some(time)
        })
        .collect()
}

/// The time words by text and by stem (the first of the lexicon's order wins), and the texts
/// and stems of those that are not ambiguous; built once.
type TimeTable = (
    HashMap<&'static str, usize>,
    HashMap<String, usize>,
    HashSet<String>,
    HashSet<String>,
);

fn time_table() -> &'static TimeTable {
    static TABLE: OnceLock<TimeTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = TimeTable::default();
        for (i, t) in lexicon::TIME.iter().enumerate() {
            table.0.entry(t).or_insert(i);
            table.1.entry(stem(t)).or_insert(i);
            if !lexicon::TIME_AMBIGUOUS.contains(t) {
                table.2.insert((*t).to_owned());
                table.3.insert(stem(t));
            }
        }
        table
    })
}

/// The lexicon's time word a word is, by its text or its stem.
fn time_word(word: &Word) -> Option<&'static str> {
    let table = time_table();
    let by_text = table.0.get(word.text.as_str()).copied();
    let by_stem = table.1.get(&word.stem).copied();
    let first = match (by_text, by_stem) {
        (Some(x), Some(y)) => x.min(y),
        (x, y) => x.or(y)?,
    };
    Some(lexicon::TIME[first])
}

/// Comparatives and superlatives: the listed words and `-er than`.
fn comparatives(w: &[Word]) -> Vec<String> {
    let mut found: BTreeSet<String> = w
        .iter()
        .filter(|w| lexicon::COMPARATIVES.contains(&w.text.as_str()))
        .map(|w| w.text.clone())
        .collect();
    for pair in w.windows(2) {
        if pair[1].text == "than"
            && pair[0].text.ends_with("er")
            && !lexicon::is_function_word(&pair[0].text)
            && !matches!(
                pair[0].text.as_str(),
                "rather"
                    | "other"
                    | "either"
                    | "neither"
                    | "whether"
                    | "never"
                    | "ever"
                    | "over"
                    | "under"
                    | "after"
            )
        {
            found.insert(pair[0].text.clone());
        }
    }
    found.into_iter().collect()
}

/// The synonym groups of a comparative's or superlative's plain adjective ("easiest" → "easy",
/// "biggest" → "big"); none for "more", "most" and the like.
fn degree_groups(word: &str) -> Vec<usize> {
    let plain = if let Some(rest) = word
        .strip_suffix("iest")
        .or_else(|| word.strip_suffix("ier"))
    {
        format!("{rest}y")
    } else if let Some(rest) = word.strip_suffix("est").or_else(|| word.strip_suffix("er")) {
        let b = rest.as_bytes();
        if b.len() >= 3 && b[b.len() - 1] == b[b.len() - 2] {
            rest[..rest.len() - 1].to_owned() // "biggest"
        } else if synonym_groups().contains_key(&stem(rest)) {
            rest.to_owned() // "quickest"
        } else {
            format!("{rest}e") // "simplest", "safest"
        }
    } else {
        return Vec::new();
    };
    synonym_groups()
        .get(&stem(&plain))
        .cloned()
        .unwrap_or_default()
}

/// Modality and tense classes, with "have to", "has to", "need to" and "used to".
fn modality(w: &[Word]) -> BTreeSet<&'static str> {
    let mut found = word_classes(w, lexicon::MODALITY);
    found.remove("obligation");
    let obliged = w.iter().any(|x| {
        lexicon::MODALITY
            .iter()
            .find(|(n, _)| *n == "obligation")
            .is_some_and(|(_, m)| m.contains(&x.text.as_str()) && x.text != "have")
    }) || w.windows(2).any(|p| {
        matches!(
            p[0].text.as_str(),
            "have" | "has" | "had" | "need" | "needs" | "needed"
        ) && p[1].text == "to"
    });
    if obliged {
        found.insert("obligation");
    }
    if w.windows(2)
        .any(|p| p[0].text == "used" && p[1].text == "to")
    {
        found.insert("past");
    }
    // The perfect: "has the EU banned", "have we hired".
    if w.iter().enumerate().any(|(i, x)| {
        matches!(x.text.as_str(), "has" | "have" | "had")
            && w[i + 1..].iter().take(3).any(is_participle)
    }) {
        found.insert("past");
    }
    found
}

/// Builds the synonym table now (WordNet's sets are read once per process, ~60 ms), so that
/// the first comparison a server makes is as fast as the others.
pub fn warm() {
    synonym_groups();
}

/// WordNet 3.0's synonym sets of attested senses (`wordnet/extract.py`).
const WORDNET: &str = include_str!("wordnet.txt");

/// The synonym groups of each word form, by stem.
fn synonym_groups() -> &'static HashMap<String, Vec<usize>> {
    static GROUPS: OnceLock<HashMap<String, Vec<usize>>> = OnceLock::new();
    GROUPS.get_or_init(|| {
        let mut map: HashMap<String, Vec<usize>> = HashMap::new();
        // Everyday synonyms, and the members of one side of a pair of opposites ("enable" /
        // "turn on": the polarity check has made sure both prompts take the same side).
        let sides = lexicon::OPPOSITES.iter().flat_map(|(yes, no)| [*yes, *no]);
        let ours = lexicon::SYNONYMS.iter().copied().chain(sides);
        let mut add = |id: usize, member: &str| {
            let key: String = member.split(' ').map(stem).collect::<Vec<_>>().join(" ");
            map.entry(key).or_default().push(id);
        };
        let mut id = 0;
        for group in ours {
            for member in group {
                add(id, member);
            }
            id += 1;
        }
        // WordNet's synonym sets, without the members that belong to a closed class (numbers,
        // scope, time: "some" in "about, approximately, some"), frame the request, or hold a
        // function word ("take for", "buy out": the phrase would swallow words that the
        // alignment needs apart).
        for line in WORDNET.lines().filter(|l| !l.starts_with('#')) {
            let members: Vec<&str> = line
                .split(',')
                .filter(|m| {
                    let w = words(m);
                    !w.iter().any(|x| classed(x) || lexicon::is_light(&x.text))
                })
                .collect();
            if members.len() >= 2 {
                for member in members {
                    add(id, member);
                }
                id += 1;
            }
        }
        map
    })
}

/// The longest multi-word synonym phrase starting at `i`: its length and groups.
fn phrase_at(w: &[Word], i: usize) -> Option<(usize, Vec<usize>)> {
    (2..=4).rev().find_map(|len| {
        let window = w.get(i..i + len)?;
        let key = window
            .iter()
            .map(|x| x.stem.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        synonym_groups().get(&key).map(|g| (len, g.clone()))
    })
}

/// A unit of content for the alignment: a word or a multi-word phrase.
#[derive(Debug, Clone)]
struct Unit {
    text: String,
    /// The words as written (lowercase), for the difference's detail.
    surface: String,
    stem: String,
    name: bool,
    groups: Vec<usize>,
    /// Index of the unit's last word in the prompt.
    end: usize,
}

impl Unit {
    fn same(&self, other: &Unit) -> bool {
        self.stem == other.stem
            || self.text == other.text
            || self.groups.iter().any(|g| other.groups.contains(g))
            || derived(&self.stem, &other.stem)
            || abbreviates(self, other)
            || abbreviates(other, self)
    }
}

/// A short form written in lowercase that no table knows, made of the long word's letters in
/// order from its first ("mgmt" / "management", "avg" / "average", "intl" / "international",
/// "temp" / "temperature"): an abbreviation. Not a known word ("pan" / "pancake") and not a capitalised acronym (those
/// are spelled out by `contract_acronyms`).
fn abbreviates(short: &Unit, long: &Unit) -> bool {
    let (s, l) = (short.surface.as_str(), long.surface.as_str());
    if short.name || !short.groups.is_empty() || !(2..=5).contains(&s.len()) {
        return false;
    }
    let (ls, ll) = (s.chars().count(), l.chars().count());
    if ll < ls + 3 || l.contains(' ') {
        return false;
    }
    if !short.groups.is_empty()
        || lexicon::is_function_word(s)
        || s.chars().next() != l.chars().next()
    {
        return false;
    }
    // Abbreviations drop vowels: at most one after the first letter for a cut-off word
    // ("temp", "prep"), none for a contracted one ("mgmt"); "vegan" is no "vegetarian".
    let vowels = s.chars().skip(1).filter(|c| "aeiou".contains(*c)).count();
    if vowels > usize::from(l.starts_with(s)) {
        return false;
    }
    let mut rest = l.chars();
    s.chars()
        .all(|c| c.is_ascii_alphabetic() && rest.any(|x| x == c))
}

/// Two forms of one word that the light stem leaves apart ("storage" / "storing",
/// "improvement" / "improve", "conversion" / "convert"): a shared root of at least four
/// letters, each followed by a derivational ending (not "employee" / "employer").
fn derived(a: &str, b: &str) -> bool {
    let shared = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    shared >= 4
        && [&a[shared..], &b[shared..]]
            .iter()
            .all(|rest| lexicon::DERIVATIONS.contains(rest))
}

/// A typo: the same first letter, at most one edit (two for long words), both of at least
/// six letters, where a real word is rarely one edit from another ("lease" / "leave").
fn typo(a: &str, b: &str) -> bool {
    let (la, lb) = (a.chars().count(), b.chars().count());
    if lexicon::is_function_word(a) && lexicon::is_function_word(b) {
        return false; // "form" / "from" are both words
    }
    // The two parties of one act: "employer" / "employee", "lessor" / "lessee".
    let party = |w: &str| ["ee", "ees"].iter().any(|e| w.ends_with(e));
    let agent = |w: &str| ["er", "ers", "or", "ors"].iter().any(|e| w.ends_with(e));
    if (party(a) && agent(b)) || (party(b) && agent(a)) {
        return false;
    }
    if la == lb && la >= 3 && transposed(a, b) {
        return true; // "teh", "tkae", "scroe", "cheif"
    }
    if la.min(lb) < 6 || a.chars().next() != b.chars().next() {
        return false;
    }
    let limit = if la.min(lb) >= 8 { 2 } else { 1 };
    la.abs_diff(lb) <= limit && damerau(a, b) <= limit
}

/// One swap of adjacent letters and nothing else.
fn transposed(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let differing: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    differing.len() == 2
        && differing[1] == differing[0] + 1
        && a[differing[0]] == b[differing[1]]
        && a[differing[1]] == b[differing[0]]
}

/// Optimal string alignment distance (edits and adjacent transpositions).
fn damerau(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// Whether a word is judged by a closed class rather than as content.
fn classed(w: &Word) -> bool {
    let t = w.text.as_str();
    w.number
        || lexicon::NEGATIONS.contains(&t)
        || lexicon::COMPARATIVES.contains(&t)
        || lexicon::NUMBER_WORDS.iter().any(|(n, _)| *n == t)
        || [
            lexicon::SCOPE,
            lexicon::MODALITY,
            lexicon::PERSONS,
            lexicon::UNITS,
        ]
        .iter()
        .any(|classes| classes.iter().any(|(_, m)| m.contains(&t)))
        || (lexicon::TIME.contains(&t) && !lexicon::TIME_AMBIGUOUS.contains(&t))
}

/// The prompt's units: every word and phrase, light or not, for the role test; content only
/// for the content test.
fn units(w: &[Word], content_only: bool) -> Vec<Unit> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < w.len() {
        if let Some((len, groups)) = phrase_at(w, i) {
            let window = &w[i..i + len];
            let text = texts(window).join(" ");
            let light = window.iter().all(|x| lexicon::is_light(&x.text));
            if !(content_only && light) {
                out.push(Unit {
                    surface: text.clone(),
                    stem: window
                        .iter()
                        .map(|x| x.stem.as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                    text,
                    name: false,
                    groups,
                    end: i + len - 1,
                });
            }
            i += len;
            continue;
        }
        let word = &w[i];
        let skip = if content_only {
            lexicon::is_light(&word.text) || classed(word)
        } else {
            matches!(word.text.as_str(), "a" | "an" | "the")
        };
        if !skip {
            let key = person(&word.text).map_or_else(|| word.stem.clone(), str::to_owned);
            out.push(Unit {
                surface: word.text.clone(),
                groups: synonym_groups()
                    .get(&word.stem)
                    .cloned()
                    .unwrap_or_default(),
                text: key.clone(),
                stem: key,
                name: word.name,
                end: i,
            });
        }
        i += 1;
    }
    out
}

/// A pronoun's person, so that "my" and "me" are one argument in the role test.
fn person(word: &str) -> Option<&'static str> {
    lexicon::PERSONS
        .iter()
        .find(|(_, m)| m.contains(&word))
        .map(|(n, _)| *n)
}

/// Length of the longest common subsequence of `a` and `b`.
fn lcs(a: &[&Unit], b: &[&Unit]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x.same(y) {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Two content words exchanging places: `b` aligns better with `a` once they are swapped.
fn roles(a: &[Word], b: &[Word]) -> Option<Difference> {
    let (ua, ub) = (units(a, false), units(b, false));
    if ua.len() > 64 || ub.len() > 64 {
        return None; // long prompts: the content test still applies
    }
    let ra: Vec<&Unit> = ua.iter().collect();
    let rb: Vec<&Unit> = ub.iter().collect();
    let base = lcs(&ra, &rb);
    let arguments: Vec<usize> = (0..ua.len())
        .filter(|&i| {
            let u = &ua[i];
            !lexicon::is_light(&u.text)
                && person(&a[u.end].text).is_none()
                && !a[u.end].number
                && ub.iter().any(|v| u.same(v))
        })
        .collect();
    for (n, &x) in arguments.iter().enumerate() {
        for &y in &arguments[n + 1..] {
            if ua[x].same(&ua[y]) {
                continue;
            }
            let mut swapped = ra.clone();
            for unit in swapped.iter_mut() {
                if unit.same(&ua[x]) {
                    *unit = &ua[y];
                } else if unit.same(&ua[y]) {
                    *unit = &ua[x];
                }
            }
            if lcs(&swapped, &rb) <= base || !pivoted(&ua, &ub, x, y) || !framed(&ua, &ub, x, y) {
                continue;
            }
            if symmetric(a, ua[x].end, ua[y].end) || voice_changed(a, b) {
                continue;
            }
            return differ(
                "roles",
                format!("\"{}\" and \"{}\" exchange roles", ua[x].text, ua[y].text),
            );
        }
    }
    None
}

/// A word relates the two in both prompts: it stands between `x` and `y` in `a` and between
/// them in `b` too ("from X to Y" / "from Y to X": "to"; "X owes Y" / "Y owes X": "owes"),
/// so they changed places around it rather than the sentence being rebuilt ("symptoms of
/// dehydration" / "dehydration symptoms").
fn pivoted(ua: &[Unit], ub: &[Unit], x: usize, y: usize) -> bool {
    let position = |units: &[Unit], of: &Unit| units.iter().position(|u| u.same(of));
    let (Some(bx), Some(by)) = (position(ub, &ua[x]), position(ub, &ua[y])) else {
        return false;
    };
    let (lo, hi) = (x.min(y), x.max(y));
    let (blo, bhi) = (bx.min(by), bx.max(by));
    ua[lo + 1..hi]
        .iter()
        .any(|pivot| ub[blo + 1..bhi].iter().any(|u| u.same(pivot)))
}

/// Each of the two stands in the other's frame: `x`'s neighbour in `a` (left or right, the
/// start or end counting) is `y`'s neighbour in `b`, and `y`'s in `a` is `x`'s in `b`. So
/// the words exchanged places and the sentence kept its shape ("the buyer owes the seller" /
/// "the seller owes the buyer"), rather than being rebuilt around them ("the main components
/// of a pitch deck for seed investors" / "seed investor pitch deck components").
fn framed(ua: &[Unit], ub: &[Unit], x: usize, y: usize) -> bool {
    let position = |units: &[Unit], of: &Unit| units.iter().position(|u| u.same(of));
    fn neighbours(units: &[Unit], i: usize) -> [Option<&Unit>; 2] {
        [i.checked_sub(1).map(|j| &units[j]), units.get(i + 1)]
    }
    let same = |p: Option<&Unit>, q: Option<&Unit>| match (p, q) {
        (None, None) => true,
        (Some(p), Some(q)) => p.same(q),
        _ => false,
    };
    let shares = |ax: usize, by: usize| {
        let (na, nb) = (neighbours(ua, ax), neighbours(ub, by));
        same(na[0], nb[0]) || same(na[1], nb[1])
    };
    let (Some(bx), Some(by)) = (position(ub, &ua[x]), position(ub, &ua[y])) else {
        return false;
    };
    shares(x, by) && shares(y, bx)
}

/// The words between positions `i` and `j` join them symmetrically: a coordinator and
/// nothing that relates one to the other (a preposition or a verb-like content word).
fn symmetric(w: &[Word], i: usize, j: usize) -> bool {
    let (from, to) = (i.min(j), i.max(j));
    let between = &w[from + 1..to];
    between
        .iter()
        .any(|x| COORDINATORS.contains(&x.text.as_str()))
        && between
            .iter()
            .filter(|x| !lexicon::is_function_word(&x.text))
            .count()
            <= 1
        && !between.iter().any(|x| {
            matches!(
                x.text.as_str(),
                "to" | "from"
                    | "into"
                    | "over"
                    | "than"
                    | "by"
                    | "for"
                    | "against"
                    | "toward"
                    | "towards"
                    | "onto"
            )
        })
}

/// One prompt is in the passive voice and the other is not: a form of "to be" followed
/// within three words by a participle ("are credit scores calculated", "be split").
fn voice_changed(a: &[Word], b: &[Word]) -> bool {
    let passive = |w: &[Word]| {
        w.iter().enumerate().any(|(i, x)| {
            lexicon::BE.contains(&x.text.as_str()) && w[i + 1..].iter().take(3).any(is_participle)
        })
    };
    passive(a) != passive(b)
}

/// A past participle by its form ("calculated", "taken") or an irregular one ("split").
fn is_participle(w: &Word) -> bool {
    (w.text.len() > 4 && (w.text.ends_with("ed") || w.text.ends_with("en")))
        || lexicon::PARTICIPLES.contains(&w.text.as_str())
}

/// The content words, matched one to one whatever their order (the role test judges order):
/// a word left over on both sides is a substitution, on one side an addition.
fn content(a: &[Word], b: &[Word]) -> Option<Difference> {
    let (ua, ub) = (units(a, true), units(b, true));
    let mut taken_a = vec![false; ua.len()];
    let mut taken_b = vec![false; ub.len()];
    // The closest matches first: the same stem, then synonyms, typos and word forms.
    let exact = |x: &Unit, y: &Unit| x.stem == y.stem || x.text == y.text;
    let close = |x: &Unit, y: &Unit| x.same(y);
    type Matches<'f> = &'f dyn Fn(&Unit, &Unit) -> bool;
    let passes: [Matches; 2] = [&exact, &close];
    for matches in passes {
        for (i, x) in ua.iter().enumerate() {
            if taken_a[i] {
                continue;
            }
            if let Some(j) = (0..ub.len()).find(|&j| !taken_b[j] && matches(x, &ub[j])) {
                taken_a[i] = true;
                taken_b[j] = true;
            }
        }
    }
    let left = |taken: &[bool]| -> Vec<usize> { (0..taken.len()).filter(|&i| !taken[i]).collect() };
    let (only_a, only_b) = (left(&taken_a), left(&taken_b));
    let shown = |units: &[Unit], which: &[usize]| {
        which
            .iter()
            .map(|&i| units[i].surface.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    match (only_a.is_empty(), only_b.is_empty()) {
        (true, true) => None,
        (false, false) => {
            let name = only_a.iter().any(|&i| ua[i].name) || only_b.iter().any(|&i| ub[i].name);
            // A qualifier: the replaced word stands before a word both prompts share.
            let before_shared = only_a
                .iter()
                .any(|&i| taken_a.get(i + 1).copied().unwrap_or(false));
            let kind = if name {
                "entities"
            } else if before_shared {
                "qualifier"
            } else {
                "subject"
            };
            differ(
                kind,
                format!(
                    "\"{}\" against \"{}\"",
                    shown(&ua, &only_a),
                    shown(&ub, &only_b)
                ),
            )
        }
        (false, true) => differ(
            "addition",
            format!("\"{}\" only in the one", shown(&ua, &only_a)),
        ),
        (true, false) => differ(
            "addition",
            format!("\"{}\" only in the other", shown(&ub, &only_b)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(a: &str, b: &str) -> Option<&'static str> {
        meaning_differs(a, b).map(|d| d.kind)
    }

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
                "Budget of $500 for the offsite",
                "Budget of €500 for the offsite",
                "units",
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
                "Notify all of the tenants",
                "Notify some of the tenants",
                "scope",
            ),
            (
                "Should we have renewed the lease?",
                "Will we renew the lease?",
                "modality",
            ),
            (
                "Should we migrate from AWS to GCP?",
                "Should we migrate from GCP to AWS?",
                "roles",
            ),
            (
                "Does the landlord owe the tenant a refund?",
                "Does the tenant owe the landlord a refund?",
                "roles",
            ),
            (
                "Should design report to engineering?",
                "Should engineering report to design?",
                "roles",
            ),
            (
                "Prioritise speed over accuracy in the audit",
                "Prioritise accuracy over speed in the audit",
                "roles",
            ),
            (
                "Summarise the Acme contract",
                "Summarise the Globex contract",
                "entities",
            ),
            ("Summarise the lease", "Summarise the mortgage", "subject"),
            (
                "Summarise the lease terms",
                "Summarise the loan terms",
                "qualifier",
            ),
            (
                "Pricing for vegetarian meal kits",
                "Pricing for vegan meal kits",
                "qualifier",
            ),
        ];
        for (a, b, expected) in cases {
            assert_eq!(
                kind(a, b),
                Some(expected),
                "{a} / {b}: {:?}",
                meaning_differs(a, b)
            );
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
                "Next year, should we expand into Europe?",
            ),
            (
                "Give me three ideas to improve retention",
                "Suggest three ways to improve retention",
            ),
            (
                "Hi! Could you please tell me how to recieve wire transfers",
                "how to receive wire transfers",
            ),
            (
                "Compare the cost of leasing and buying a van",
                "Compare the cost of buying and leasing a van",
            ),
            (
                "How should the board approve the budget?",
                "How should the budget be approved by the board?",
            ),
        ];
        for (a, b) in cases {
            assert_eq!(meaning_differs(a, b), None, "{a} / {b}");
        }
    }

    #[test]
    fn writing_differences_meet() {
        let cases = [
            (
                "What is our PTO policy?",
                "What is our paid time off policy?",
            ),
            (
                "Set up 2FA for the team",
                "Set up two-factor authentication for the team",
            ),
            (
                "Write an RFP for cleaning services",
                "Write a request for proposal for cleaning services",
            ),
            (
                "Best tools for remote teams across time zones",
                "best tools for remote teams across timezones",
            ),
            (
                "how do I make teh perfect omelette",
                "How do I make the perfect omelette?",
            ),
            (
                "What are the benefits of hiring contractors rather than employees?",
                "What are the advantages of hiring contractors instead of staff?",
            ),
        ];
        for (a, b) in cases {
            assert_eq!(meaning_differs(a, b), None, "{a} / {b}");
        }
        // A typo is not a different word's inflection, nor an opposite.
        assert_eq!(
            kind(
                "How do we onboarding contractors",
                "How do we offboarding contractors"
            ),
            Some("polarity")
        );
    }

    #[test]
    fn advice_differs_from_ability_not_from_plain_present() {
        assert_eq!(
            meaning_differs(
                "How do we price the add-on?",
                "How should we price the add-on?"
            ),
            None
        );
        assert_eq!(
            kind(
                "Can I break my lease early?",
                "Should I break my lease early?"
            ),
            Some("modality")
        );
        assert_eq!(
            kind(
                "Has the city banned scooters?",
                "Should the city ban scooters?"
            ),
            Some("modality")
        );
    }

    #[test]
    fn rebuilt_sentences_are_not_role_swaps() {
        let cases = [
            (
                "What are the symptoms of dehydration in older adults?",
                "dehydration symptoms older adults",
            ),
            (
                "How are credit scores calculated?",
                "How do lenders calculate credit scores?",
            ),
        ];
        for (a, b) in cases {
            assert_ne!(kind(a, b), Some("roles"), "{a} / {b}");
        }
    }

    #[test]
    fn the_difference_explains_itself() {
        let d = meaning_differs(
            "a letter from the tenant to the landlord",
            "a letter from the landlord to the tenant",
        )
        .expect("a difference");
        assert_eq!(d.kind, "roles");
        assert!(
            d.detail.contains("tenant") && d.detail.contains("landlord"),
            "{}",
            d.detail
        );
    }

    #[test]
    fn long_prompts_are_not_judged() {
        let long = "word ".repeat(MAX_WORDS + 1);
        assert_eq!(kind(&long, &long), Some("length"));
    }

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 3.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }

    #[test]
    fn a_new_value_of_one_topic_is_the_same_topic_and_another_segment_is_not() {
        let same = [
            ("Our runway is 14 months.", "Runway is now 12 months."),
            (
                "We sell to mid-market companies.",
                "We do not sell to mid-market companies.",
            ),
            ("The CFO reports to the CEO.", "The CEO reports to the CFO."),
            ("Revenue grew 20% last year.", "revenue grew 35 % last year"),
        ];
        for (a, b) in same {
            assert_eq!(topic_differs(a, b), None, "{a} / {b}");
            assert!(meaning_differs(a, b).is_some(), "{a} / {b}");
        }
        let other = [
            (
                "Churn among small business customers is 5%.",
                "Churn among enterprise customers is 2%.",
            ),
            ("Our runway is 14 months.", "Our headcount is 14 people."),
            (
                "We sell to mid-market companies.",
                "We sell to mid-market companies in Germany.",
            ),
            // Two years' figures are two facts.
            ("Revenue grew 20% last year.", "revenue grew 35 % this year"),
        ];
        for (a, b) in other {
            assert!(topic_differs(a, b).is_some(), "{a} / {b}");
        }
    }

    #[test]
    fn a_preamble_about_the_asking_is_framing_and_one_about_the_asker_is_a_condition() {
        let question = "What is a convertible note?";
        let framed = "I keep getting confused by this term. What is a convertible note?";
        assert_eq!(meaning_differs(framed, question), None);
        assert_eq!(meaning_differs(question, framed), None);
        let conditioned = [
            (
                "How do I file my taxes?",
                "I'm self-employed. How do I file my taxes?",
            ),
            (
                "What benefits should we offer?",
                "We have 40 staff and I'm curious. What benefits should we offer?",
            ),
            (
                "How should I invest my savings?",
                "I'm curious as I live in Germany. How should I invest my savings?",
            ),
        ];
        for (a, b) in conditioned {
            assert!(meaning_differs(b, a).is_some(), "{a} / {b}");
        }
        // A prompt too long to judge is not searched for a preamble.
        let long = format!("{} {question}", "Our team keeps asking. ".repeat(100));
        assert_eq!(kind(&long, question), Some("length"));
    }

    #[test]
    fn fixed_forms_meet_their_plain_ones() {
        let same = [
            (
                "Why does the nightly build not finish?",
                "Why does the nightly build fail to finish?",
            ),
            ("Plan a week in Lisbon", "Plan one week in Lisbon"),
            (
                "How much should we charge for onboarding?",
                "What should we charge for onboarding?",
            ),
            // WordNet's synonyms.
            ("How do I mend a torn sail?", "How do I repair a torn sail?"),
        ];
        for (a, b) in same {
            assert_eq!(meaning_differs(a, b), None, "{a} / {b}");
        }
        let different = [
            (
                "Why does the nightly build finish?",
                "Why does the nightly build fail to finish?",
                "negation",
            ),
            (
                "Plan a week in Lisbon",
                "Plan two weeks in Lisbon",
                "numbers",
            ),
            (
                "Should we keep both vendors?",
                "Should we keep either vendor?",
                "scope",
            ),
            (
                "Do any of our customers use SSO?",
                "Do all of our customers use SSO?",
                "scope",
            ),
        ];
        for (a, b, expected) in different {
            assert_eq!(kind(a, b), Some(expected), "{a} / {b}");
        }
    }

    #[test]
    fn the_asker_changing_sides_is_a_perspective() {
        assert_eq!(
            kind(
                "My landlord wants to sue me. What can I do?",
                "I want to sue my landlord. What can I do?"
            ),
            Some("perspective")
        );
        assert_eq!(
            kind("Do they owe us the deposit?", "Do we owe them the deposit?"),
            Some("perspective")
        );
        // An object after a framing word is the addressee, not a party.
        assert_eq!(
            meaning_differs(
                "Give me tips so I can sleep better",
                "How can I sleep better?"
            ),
            None
        );
    }

    #[test]
    fn a_side_named_once_is_content_and_opposite_sides_are_not_the_same() {
        // One prompt names a side, the other a synonym of it: the content test matches them.
        assert_eq!(
            kind("learn touch typing quickly", "learn touch typing fast"),
            None
        );
        assert_eq!(
            kind(
                "How do I get rid of mold in my grout?",
                "remove mold from grout"
            ),
            None
        );
        // Opposite sides, and a side against a word that is not its synonym.
        assert_eq!(
            kind("How do I increase prices?", "How do I decrease prices?"),
            Some("polarity")
        );
        assert_eq!(
            kind("How does income tax work?", "How does sales tax work?"),
            Some("qualifier")
        );
    }

    #[test]
    fn the_parties_of_one_act_and_the_question_s_subject_differ() {
        assert!(!typo("employer", "employee"));
        assert!(!typo("lessor", "lessee"));
        assert_eq!(
            kind(
                "My employer wants me to sign a non-compete",
                "I want my employee to sign a non-compete"
            ),
            Some("qualifier")
        );
        assert_eq!(
            kind(
                "The supplier is late. Can they end the contract early?",
                "The supplier is late. Can we end the contract early?"
            ),
            Some("perspective")
        );
        // The same subject under another auxiliary is one question.
        assert_eq!(
            kind(
                "How do we price a new product?",
                "How should we price a new product?"
            ),
            None
        );
    }

    #[test]
    fn ability_obligation_and_advice_are_told_apart() {
        assert_eq!(
            kind(
                "Can an employer require a flu shot?",
                "Must an employer require a flu shot?"
            ),
            Some("modality")
        );
        assert_eq!(
            kind(
                "Would it be smart to borrow against my 401(k)?",
                "Would it be possible to borrow against my 401(k)?"
            ),
            Some("modality")
        );
        assert_eq!(
            kind(
                "Would it be wise to refinance now?",
                "Should I refinance now?"
            ),
            None
        );
    }

    #[test]
    fn word_forms_abbreviations_and_politeness_meet() {
        // Irregular verbs in a change of voice.
        assert_eq!(
            kind(
                "How was the Eiffel Tower built?",
                "How did they build the Eiffel Tower?"
            ),
            None
        );
        // Abbreviations without their vowels, British and American spelling.
        assert_eq!(
            kind(
                "best project mgmt tool for a small agency",
                "best project management tool for a small agency"
            ),
            None
        );
        assert_eq!(
            kind(
                "names for a bakery specialising in bread",
                "names for a bakery that specializes in bread"
            ),
            None
        );
        // A real word is no abbreviation, and no typo of another real word.
        assert_eq!(
            kind(
                "a meal plan for a vegan athlete",
                "a meal plan for a vegetarian athlete"
            ),
            Some("qualifier")
        );
        assert_eq!(
            kind("how to care for a plant", "how to care for a planet"),
            Some("subject")
        );
        // Superlatives of synonyms are one degree; of other words they are not.
        assert_eq!(
            kind(
                "What's the quickest way to learn Spanish?",
                "What's the fastest way to learn Spanish?"
            ),
            None
        );
        assert_eq!(
            kind(
                "What's the cheapest way to learn Spanish?",
                "What's the fastest way to learn Spanish?"
            ),
            Some("comparison")
        );
        // Greetings and thanks frame the request.
        assert_eq!(
            kind(
                "Good morning! How should we prepare for a SOC 2 audit? Much appreciated.",
                "How should we prepare for a SOC 2 audit?"
            ),
            None
        );
    }

    #[test]
    fn what_the_question_asks_for_is_judged() {
        assert_eq!(
            kind(
                "Should I refinance my mortgage?",
                "How do I refinance my mortgage?"
            ),
            Some("question")
        );
        assert_eq!(
            kind(
                "Why did sales drop last quarter?",
                "When did sales drop last quarter?"
            ),
            Some("question")
        );
        assert_eq!(
            kind(
                "Do I need to register my business?",
                "Should I register my business?"
            ),
            Some("modality")
        );
        // A fronted clause, a way of asking how, and politeness are no other question.
        assert_eq!(
            kind(
                "When guests arrive, how can I stop my dog barking at the door?",
                "How can I stop my dog barking at the door when guests arrive?"
            ),
            None
        );
        assert_eq!(
            kind(
                "Is there a way to lower my electricity bill?",
                "How can I lower my electricity bill?"
            ),
            None
        );
        assert_eq!(
            kind(
                "Could you tell me whether I should refinance my mortgage?",
                "Should I refinance my mortgage?"
            ),
            None
        );
    }
}
