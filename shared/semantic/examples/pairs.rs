//! The guard alone on pair sets (no embeddings): per kind, how many pairs it lets through,
//! then every wrong decision with the guard's reason. For working on the guard against a
//! development set; the semantic cache's own figures (cosine AND guard) come from the
//! gateway's `semantic` bench.
//! `cargo run -p boardroom-semantic --example pairs -- SET.tsv [...] [--quiet | --all]`

use std::collections::BTreeMap;

use boardroom_semantic::guard::meaning_differs;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quiet = args.iter().any(|a| a == "--quiet");
    let all = args.iter().any(|a| a == "--all");
    for path in args.iter().filter(|a| !a.starts_with("--")) {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut kinds: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        let mut wrong = Vec::new();
        let (mut hits, mut hit_pairs, mut false_hits, mut miss_pairs) = (0, 0, 0, 0);
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 4, "{path}: {line}");
            let (kind, hit, a, b) = (f[0], f[1] == "hit", f[2], f[3]);
            let refused = meaning_differs(b, a);
            let passed = refused.is_none();
            let entry = kinds.entry(kind).or_default();
            entry.1 += 1;
            if passed {
                entry.0 += 1;
            }
            if hit {
                hit_pairs += 1;
                hits += usize::from(passed);
            } else {
                miss_pairs += 1;
                false_hits += usize::from(passed);
            }
            if passed != hit || all {
                let why =
                    refused.map_or("passed".to_owned(), |d| format!("{}: {}", d.kind, d.detail));
                wrong.push(format!("- [{kind}] {why} — {a} | {b}"));
                // (--all lists every pair, right or wrong.)
            }
        }
        println!(
            "## {path}: paraphrases passed {hits}/{hit_pairs} ({:.1} %), look-alikes passed {false_hits}/{miss_pairs} ({:.1} %)",
            100.0 * hits as f64 / hit_pairs.max(1) as f64,
            100.0 * false_hits as f64 / miss_pairs.max(1) as f64
        );
        for (kind, (passed, of)) in &kinds {
            println!("  {kind}: {passed}/{of}");
        }
        if !quiet {
            wrong.iter().for_each(|w| println!("{w}"));
        }
    }
}
