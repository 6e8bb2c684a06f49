//! Prompts taken apart into words, for the guard and for the embedding. Contractions are
//! expanded ("what's" → "what is", "don't" and "dont" → "do not"), hyphenated and slashed
//! words split, numbers kept whole ("1,000", "2.5", "10%" and "10k" → "1000", "2.5", "10%",
//! "10000"), and currency signs made words ("$" → "usd"), so that the forms people type meet.

use crate::lexicon;

/// One word of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// Lowercase, contractions expanded.
    pub text: String,
    /// A light stem: inflections off, so word forms meet ("prices", "pricing" → "pric").
    pub stem: String,
    /// Written as a name: capitalised inside a sentence, an acronym, or letters and digits.
    pub name: bool,
    /// A number, normalised ("1000", "2.5", "10%").
    pub number: bool,
}

/// The words of `text`, in order.
pub fn words(text: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut sentence_start = true;
    for raw in text.split_whitespace() {
        let ends_sentence = raw.ends_with(['.', '?', '!', ':', ';']) && !is_number_like(raw);
        for piece in pieces(raw) {
            push_piece(&mut out, &piece, sentence_start);
            sentence_start = false;
        }
        sentence_start |= ends_sentence;
    }
    out
}

/// The prompt as it is embedded: its words, lowercase, contractions expanded, politeness and
/// filler that change nothing asked left out ("hi", "please", "can you tell me", "thanks in
/// advance"), punctuation dropped. Paraphrases that differ only in these meet exactly.
pub fn normalise(text: &str) -> String {
    let words: Vec<String> = words(text).into_iter().map(|w| w.text).collect();
    let mut kept: Vec<&str> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        if let Some(skip) = lexicon::filler_at(&words, i) {
            i += skip;
            continue;
        }
        kept.push(&words[i]);
        i += 1;
    }
    if kept.is_empty() {
        // Nothing but filler ("thanks!"): embed what was written.
        return words.join(" ");
    }
    kept.join(" ")
}

fn is_number_like(raw: &str) -> bool {
    let t = raw.trim_end_matches(['.', '?', '!', ':', ';', ',']);
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | ','))
}

/// A whitespace-separated piece split at punctuation: `"(Acme's" "Q&A" "B2B/B2C"` → words.
fn pieces(raw: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = raw.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let prev_digit = i > 0 && chars[i - 1].is_ascii_digit();
        let next_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        let next_alpha = chars.get(i + 1).is_some_and(|n| n.is_alphabetic());
        let keep = c.is_alphanumeric()
            || ((c == '.' || c == ',') && prev_digit && next_digit)
            || ((c == '\'' || c == '’') && !current.is_empty() && next_alpha);
        if keep {
            current.push(if c == '’' { '\'' } else { c });
            continue;
        }
        if !current.is_empty() {
            pieces.push(std::mem::take(&mut current));
        }
        match c {
            '$' | '€' | '£' | '¥' | '%' | '&' | '+' | '°' => pieces.push(c.to_string()),
            _ => {}
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

fn push_piece(out: &mut Vec<Word>, piece: &str, sentence_start: bool) {
    let lower = piece.to_lowercase();
    // Symbols.
    let symbol = match piece {
        "$" => Some("usd"),
        "€" => Some("eur"),
        "£" => Some("gbp"),
        "¥" => Some("jpy"),
        "&" => Some("and"),
        "+" => Some("plus"),
        "°" => Some("degrees"),
        _ => None,
    };
    if let Some(symbol) = symbol {
        out.push(plain(symbol));
        return;
    }
    if piece == "%" {
        match out.last_mut() {
            Some(last) if last.number && !last.text.ends_with('%') => last.text.push('%'),
            _ => out.push(plain("percent")),
        }
        return;
    }
    if (lower == "percent" || lower == "pct")
        && let Some(last) = out
            .last_mut()
            .filter(|l| l.number && !l.text.ends_with('%'))
    {
        last.text.push('%');
        last.stem = last.text.clone();
        return;
    }
    // Numbers: "1,000" → "1000", "10k" → "10000", "2.5m" → "2500000", "3rd" → "3".
    if let Some(number) = number(&lower) {
        out.push(Word {
            stem: number.clone(),
            text: number,
            name: false,
            number: true,
        });
        return;
    }
    // Contractions.
    if let Some(expanded) = lexicon::contraction(&lower) {
        for w in expanded.split(' ') {
            out.push(plain(w));
        }
        return;
    }
    let (base, suffix) = match lower.split_once('\'') {
        Some((base, "s")) => (base.to_owned(), None), // possessive or "is": the owner stays
        Some((base, "re")) => (base.to_owned(), Some("are")),
        Some((base, "ll")) => (base.to_owned(), Some("will")),
        Some((base, "ve")) => (base.to_owned(), Some("have")),
        Some((base, "d")) => (base.to_owned(), Some("would")),
        Some((base, "m")) => (base.to_owned(), Some("am")),
        Some((base, rest)) => (format!("{base}{rest}"), None),
        None => (lower.clone(), None),
    };
    let letters = piece.chars().filter(|c| c.is_alphabetic()).count();
    let uppercase = piece.chars().filter(|c| c.is_uppercase()).count();
    let has_digit = piece.chars().any(|c| c.is_ascii_digit());
    let first_upper = piece.chars().next().is_some_and(char::is_uppercase);
    let acronym = uppercase >= 2 && uppercase * 2 >= letters;
    let name = (acronym || (first_upper && !sentence_start) || (has_digit && letters > 0))
        && base != "i"
        && !lexicon::is_function_word(&base);
    out.push(Word {
        stem: stem(&base),
        text: base,
        name,
        number: false,
    });
    if let Some(suffix) = suffix {
        out.push(plain(suffix));
    }
}

fn plain(text: &str) -> Word {
    Word {
        text: text.to_owned(),
        stem: stem(text),
        name: false,
        number: false,
    }
}

/// A number written with digits (and maybe a scale or ordinal suffix), normalised.
fn number(lower: &str) -> Option<String> {
    let digits_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .unwrap_or(lower.len());
    if digits_end == 0 || !lower.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let (digits, suffix) = lower.split_at(digits_end);
    let plain: String = digits.chars().filter(|c| *c != ',').collect();
    let plain = plain.trim_end_matches('.');
    let scale = match suffix {
        "" | "st" | "nd" | "rd" | "th" | "s" => 1.0,
        "k" => 1e3,
        "m" | "mm" => 1e6,
        "b" | "bn" => 1e9,
        _ => return None, // "2fa", "b2b", "h100": a name, not a number
    };
    if scale == 1.0 {
        return Some(plain.to_owned());
    }
    let value: f64 = plain.parse().ok()?;
    Some(format!("{}", value * scale))
}

/// A light stem: inflectional endings off ("prices", "priced", "pricing" → "pric";
/// "companies" → "compani"), so forms of one word meet. Derivations stay apart.
pub fn stem(word: &str) -> String {
    if let Some(base) = lexicon::irregular(word) {
        return stem(base);
    }
    if word.len() <= 3 || lexicon::UNINFLECTED.contains(&word) {
        return word.to_owned();
    }
    if let Some(rest) = word.strip_suffix("ees") {
        return format!("{rest}ee"); // "employees", "fees"
    }
    let mut w = word;
    for suffix in ["ies", "ied", "ying", "ing", "ed", "es", "s"] {
        if let Some(rest) = w.strip_suffix(suffix)
            && rest.len() >= 3
            && !w.ends_with("ss")
            && !w.ends_with("us")
            && !w.ends_with("is")
        {
            w = rest;
            if matches!(suffix, "ies" | "ied" | "ying") {
                return format!("{w}i");
            }
            break;
        }
    }
    let w = match w.strip_suffix('e') {
        Some(rest) if rest.len() >= 3 && !rest.ends_with('e') => rest,
        _ => w,
    };
    if let Some(rest) = w.strip_suffix('y').filter(|r| r.len() >= 3) {
        return format!("{rest}i");
    }
    // A doubled final consonant left by an ending ("planned" → "plann" → "plan").
    let bytes = w.as_bytes();
    if w.len() < word.len()
        && bytes.len() >= 4
        && bytes[bytes.len() - 1] == bytes[bytes.len() - 2]
        && !matches!(bytes[bytes.len() - 1], b'l' | b's' | b'z' | b'e' | b'o')
    {
        return w[..w.len() - 1].to_owned();
    }
    w.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<String> {
        words(s).into_iter().map(|w| w.text).collect()
    }

    #[test]
    fn contractions_numbers_and_symbols_become_words() {
        assert_eq!(
            texts("What's the plan? Don't cut $1,000 (10%) by Q3's end"),
            [
                "what", "is", "the", "plan", "do", "not", "cut", "usd", "1000", "10%", "by", "q3",
                "end"
            ]
        );
        assert_eq!(texts("dont raise 10k"), ["do", "not", "raise", "10000"]);
        assert_eq!(texts("B2B/B2C Q&A"), ["b2b", "b2c", "q", "and", "a"]);
        assert_eq!(texts("2.5 percent, 3rd"), ["2.5%", "3"]);
    }

    #[test]
    fn names_are_capitalised_inside_a_sentence_acronyms_or_alphanumeric() {
        let names: Vec<String> = words("Should Acme move to AWS? Ask Bob about the H100 plan")
            .into_iter()
            .filter(|w| w.name)
            .map(|w| w.text)
            .collect();
        assert_eq!(names, ["acme", "aws", "bob", "h100"]);
    }

    #[test]
    fn stems_meet_across_inflections() {
        for (a, b) in [
            ("prices", "pricing"),
            ("planned", "plan"),
            ("companies", "company"),
            ("hires", "hiring"),
        ] {
            assert_eq!(stem(a), stem(b), "{a} / {b}");
        }
        assert_ne!(stem("business"), stem("busy"));
    }

    #[test]
    fn normalising_drops_politeness_and_punctuation() {
        assert_eq!(
            normalise("Hi! Could you please tell me how to reset my password? Thanks in advance"),
            "how to reset my password"
        );
        assert_eq!(normalise("thanks!"), "thanks");
    }
}
