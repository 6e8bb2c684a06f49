//! The semantic cache's decision on an adversarial set (`benches/semantic_pairs.tsv`):
//! paraphrase pairs that should share an answer and look-alikes that must not (negation,
//! opposites, other numbers, other times, comparatives, other or swapped names). For each
//! threshold: the share of paraphrases served (hit rate) and of look-alikes served (false
//! positives), by cosine alone and by cosine AND the guard.
//!
//! Embeddings come from any OpenAI-compatible `/v1/embeddings` (`SEMANTIC_EMBEDDINGS_URL`,
//! e.g. `../shared/tools/embedserver.py` serving all-MiniLM-L6-v2 at
//! http://127.0.0.1:8002/v1), else from the mock provider's bag-of-words vectors.
//! `cargo bench -p boardroom-llm-gateway --bench semantic`.

use boardroom_llm_gateway::provider::mock::embed_text;
use boardroom_llm_gateway::semantic_guard::{cosine, meaning_differs};

struct Pair {
    kind: String,
    hit: bool,
    a: String,
    b: String,
}

fn pairs() -> Vec<Pair> {
    include_str!("semantic_pairs.tsv")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            (f.len() == 4).then(|| Pair {
                kind: f[0].to_owned(),
                hit: f[1] == "hit",
                a: f[2].to_owned(),
                b: f[3].to_owned(),
            })
        })
        .collect()
}

fn embed(texts: &[String]) -> (Vec<Vec<f32>>, String) {
    let Ok(url) = std::env::var("SEMANTIC_EMBEDDINGS_URL") else {
        return (
            texts.iter().map(|t| embed_text(t)).collect(),
            "mock bag-of-words".into(),
        );
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let body = serde_json::json!({"model": "all-MiniLM-L6-v2", "input": texts});
        let response: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/embeddings", url.trim_end_matches('/')))
            .json(&body)
            .send()
            .await
            .expect("the embeddings endpoint answers")
            .json()
            .await
            .expect("JSON");
        let vectors = response["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|d| {
                d["embedding"]
                    .as_array()
                    .expect("embedding")
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(0.0) as f32)
                    .collect()
            })
            .collect();
        (
            vectors,
            format!("{} at {url}", response["model"].as_str().unwrap_or("?")),
        )
    })
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pairs = pairs();
    let texts: Vec<String> = pairs
        .iter()
        .flat_map(|p| [p.a.clone(), p.b.clone()])
        .collect();
    let (vectors, source) = embed(&texts);
    let scored: Vec<(&Pair, f32, Option<&'static str>)> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                p,
                cosine(&vectors[2 * i], &vectors[2 * i + 1]),
                meaning_differs(&p.a, &p.b),
            )
        })
        .collect();
    let paraphrases = scored.iter().filter(|(p, _, _)| p.hit).count();
    let lookalikes = scored.len() - paraphrases;
    println!(
        "Embeddings: {source}. {paraphrases} paraphrase pairs, {lookalikes} look-alike pairs.\n"
    );
    println!(
        "| threshold | cosine alone: hits | false positives | cosine + guard: hits | false positives |"
    );
    println!("|---|---|---|---|---|");
    for threshold in [0.60f32, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95] {
        let share = |hit: bool, guarded: bool| {
            let n = scored
                .iter()
                .filter(|(p, c, g)| p.hit == hit && *c >= threshold && (!guarded || g.is_none()))
                .count();
            100.0 * n as f64 / if hit { paraphrases } else { lookalikes } as f64
        };
        println!(
            "| {threshold:.2} | {:.0} % | {:.0} % | {:.0} % | {:.0} % |",
            share(true, false),
            share(false, false),
            share(true, true),
            share(false, true)
        );
    }
    println!("\nGuard verdicts (whatever the similarity):\n");
    let rejected = |kind: &str, hit: bool| {
        let of_kind: Vec<_> = scored
            .iter()
            .filter(|(p, _, _)| p.kind == kind && p.hit == hit)
            .collect();
        let caught = of_kind.iter().filter(|(_, _, g)| g.is_some()).count();
        (caught, of_kind.len())
    };
    for kind in [
        "negation",
        "polarity",
        "numbers",
        "time",
        "comparison",
        "entities",
    ] {
        let (caught, total) = rejected(kind, false);
        let mean: f32 = scored
            .iter()
            .filter(|(p, _, _)| p.kind == kind)
            .map(|(_, c, _)| c)
            .sum::<f32>()
            / total.max(1) as f32;
        println!("- {kind}: {caught}/{total} look-alikes rejected (mean cosine {mean:.2})");
    }
    let (wrongly, total) = rejected("paraphrase", true);
    println!("- paraphrases wrongly rejected: {wrongly}/{total}");
    for (p, c, g) in &scored {
        if p.hit && g.is_some() {
            println!(
                "  - {:?} ({c:.2}): {} / {}",
                g.unwrap_or_default(),
                p.a,
                p.b
            );
        }
    }
}
