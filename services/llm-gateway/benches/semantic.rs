//! The semantic cache's decision on pair sets (`benches/semantic/dev.tsv`, `test.tsv`:
//! paraphrases that should share an answer, look-alikes of 14 kinds that must not). The
//! decision is the gateway's own: the cached prompt `a`, the asked prompt `b`, both embedded
//! as the gateway embeds them (`semantic::text::normalise`), then the guard. For each
//! threshold: the share of paraphrases served (hits) and of look-alikes served (false hits),
//! by cosine alone (raw and normalised text) and by cosine AND the guard; then, at the default
//! threshold, by kind; then the guard's reasons and its cost. The last column adds the
//! verifier stage (`semantic::verifier`, the gateway's client over real HTTP) in front of a
//! MOCK cross-encoder served here on `/v1/rerank`: it scores a pair by the cosine of the
//! mock provider's bag-of-words vectors of the normalised prompts (min_score 0.5). It is no
//! model: the column shows the stage working and what it costs per call, not what a real
//! cross-encoder would catch. A set whose name contains "test" (the held-out half), "fresh"
//! (a third set, written apart from the guard) or "holdout" (a fourth, 440 pairs, written
//! blind and committed before its first measurement) is held out: its pairs are not listed.
//!
//! Embeddings come from any OpenAI-compatible `/v1/embeddings` (`SEMANTIC_EMBEDDINGS_URL`,
//! e.g. `../shared/tools/embedserver.py` serving all-MiniLM-L6-v2 at
//! http://127.0.0.1:8002/v1), else from the mock provider's bag-of-words vectors.
//! `cargo bench -p boardroom-llm-gateway --bench semantic [-- SET.tsv ...]`.

use std::collections::BTreeMap;
use std::time::Instant;

use boardroom_llm_gateway::provider::mock::embed_text;
use boardroom_llm_gateway::semantic::guard::{cosine, meaning_differs};
use boardroom_llm_gateway::semantic::text::normalise;
use boardroom_llm_gateway::semantic::verifier::{Verdict, Verifier};
use boardroom_runtime::config::{SemanticConfig, VerifierConfig};

struct Pair {
    kind: String,
    hit: bool,
    a: String,
    b: String,
}

struct Scored<'a> {
    pair: &'a Pair,
    raw: f32,
    normalised: f32,
    refused: Option<(&'static str, String)>,
    verified: bool,
}

/// The mock cross-encoder: `/v1/rerank` scoring by bag-of-words cosine.
async fn mock_reranker() -> String {
    async fn rerank(
        axum::Json(body): axum::Json<serde_json::Value>,
    ) -> axum::Json<serde_json::Value> {
        let query = normalise(body["query"].as_str().unwrap_or_default());
        let results: Vec<serde_json::Value> = body["documents"]
            .as_array()
            .map(|d| d.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(index, d)| {
                let doc = normalise(d.as_str().unwrap_or_default());
                let score = cosine(&embed_text(&query), &embed_text(&doc));
                serde_json::json!({"index": index, "relevance_score": score})
            })
            .collect();
        axum::Json(serde_json::json!({"results": results}))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1/rerank", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route("/v1/rerank", axum::routing::post(rerank));
    #[allow(clippy::disallowed_methods)] // the bench's own server, for the process's life
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn pairs(path: &str) -> Vec<Pair> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 4, "{path}: {line}");
            Pair {
                kind: f[0].to_owned(),
                hit: f[1] == "hit",
                a: f[2].to_owned(),
                b: f[3].to_owned(),
            }
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
        let client = reqwest::Client::new();
        let mut vectors = Vec::with_capacity(texts.len());
        let mut model = String::new();
        for chunk in texts.chunks(256) {
            let body = serde_json::json!({"model": "all-MiniLM-L6-v2", "input": chunk});
            let response: serde_json::Value = client
                .post(format!("{}/embeddings", url.trim_end_matches('/')))
                .json(&body)
                .send()
                .await
                .expect("the embeddings endpoint answers")
                .json()
                .await
                .expect("JSON");
            model = response["model"].as_str().unwrap_or("?").to_owned();
            vectors.extend(response["data"].as_array().expect("data").iter().map(|d| {
                d["embedding"]
                    .as_array()
                    .expect("embedding")
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(0.0) as f32)
                    .collect::<Vec<f32>>()
            }));
        }
        (vectors, format!("{model} at {url}"))
    })
}

fn share(n: usize, of: usize) -> String {
    format!("{:.1} %", 100.0 * n as f64 / of.max(1) as f64)
}

fn report(path: &str) {
    let pairs = pairs(path);
    let held_out = ["test", "fresh", "holdout"]
        .iter()
        .any(|n| path.contains(n));
    let raw_texts: Vec<String> = pairs
        .iter()
        .flat_map(|p| [p.a.clone(), p.b.clone()])
        .collect();
    let normal_texts: Vec<String> = raw_texts.iter().map(|t| normalise(t)).collect();
    let (raw, source) = embed(&raw_texts);
    let (normal, _) = embed(&normal_texts);
    let started = Instant::now();
    let verdicts: Vec<_> = pairs
        .iter()
        .map(|p| meaning_differs(&p.b, &p.a).map(|d| (d.kind, d.detail)))
        .collect();
    let guard_cost = started.elapsed() / pairs.len().max(1) as u32;
    let default = SemanticConfig::default().threshold;
    // The verifier's verdict on every pair the guard passes (its own column applies the
    // threshold too), through the real client.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (verdicts_of_verifier, verifier_cost) = runtime.block_on(async {
        let config = VerifierConfig {
            url: mock_reranker().await,
            ..VerifierConfig::default()
        };
        let verifier = Verifier::new(&config, reqwest::Client::new()).expect("a verifier");
        let mut out = Vec::new();
        let mut spent = std::time::Duration::ZERO;
        let mut calls = 0u32;
        for (p, refused) in pairs.iter().zip(&verdicts) {
            if refused.is_some() {
                out.push(false);
                continue;
            }
            let started = Instant::now();
            out.push(verifier.verify(&p.b, &p.a).await == Verdict::Same);
            spent += started.elapsed();
            calls += 1;
        }
        (out, spent / calls.max(1))
    });
    let scored: Vec<Scored> = pairs
        .iter()
        .zip(verdicts)
        .zip(verdicts_of_verifier)
        .enumerate()
        .map(|(i, ((pair, refused), verified))| Scored {
            pair,
            raw: cosine(&raw[2 * i], &raw[2 * i + 1]),
            normalised: cosine(&normal[2 * i], &normal[2 * i + 1]),
            refused,
            verified,
        })
        .collect();
    let paraphrases = scored.iter().filter(|s| s.pair.hit).count();
    let lookalikes = scored.len() - paraphrases;
    println!(
        "## {path}\n\nEmbeddings: {source}. {paraphrases} paraphrase pairs, {lookalikes} look-alike pairs.\n"
    );
    println!(
        "| threshold | cosine (raw text): paraphrases served | look-alikes served | cosine (normalised): paraphrases | look-alikes | cosine + guard: paraphrases | look-alikes | + verifier (mock): paraphrases | look-alikes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut thresholds = vec![0.70f32, 0.75, 0.80, 0.85, 0.90, 0.95];
    if !thresholds.iter().any(|t| (t - default).abs() < 1e-6) {
        thresholds.push(default);
        thresholds.sort_by(f32::total_cmp);
    }
    for threshold in thresholds {
        let count = |hit: bool, f: &dyn Fn(&Scored) -> bool| {
            let n = scored.iter().filter(|s| s.pair.hit == hit && f(s)).count();
            share(n, if hit { paraphrases } else { lookalikes })
        };
        let raw = |s: &Scored| s.raw >= threshold;
        let normal = |s: &Scored| s.normalised >= threshold;
        let guarded = |s: &Scored| s.normalised >= threshold && s.refused.is_none();
        let verified = |s: &Scored| guarded(s) && s.verified;
        let mark = if (threshold - default).abs() < 1e-6 {
            " (default)"
        } else {
            ""
        };
        println!(
            "| {threshold:.2}{mark} | {} | {} | {} | {} | {} | {} | {} | {} |",
            count(true, &raw),
            count(false, &raw),
            count(true, &normal),
            count(false, &normal),
            count(true, &guarded),
            count(false, &guarded),
            count(true, &verified),
            count(false, &verified),
        );
    }
    println!("\nBy kind at the default threshold {default:.2} (served / pairs):\n");
    println!("| kind | cosine alone | cosine + guard | mean cosine |");
    println!("|---|---|---|---|");
    let mut kinds: BTreeMap<&str, Vec<&Scored>> = BTreeMap::new();
    for s in &scored {
        kinds.entry(&s.pair.kind).or_default().push(s);
    }
    for (kind, of_kind) in &kinds {
        let alone = of_kind.iter().filter(|s| s.normalised >= default).count();
        let guarded = of_kind
            .iter()
            .filter(|s| s.normalised >= default && s.refused.is_none())
            .count();
        let mean = of_kind.iter().map(|s| s.normalised).sum::<f32>() / of_kind.len() as f32;
        println!(
            "| {kind} | {alone}/{n} | {guarded}/{n} | {mean:.2} |",
            n = of_kind.len()
        );
    }
    let mut reasons: BTreeMap<(&str, bool), usize> = BTreeMap::new();
    for s in &scored {
        if let Some((reason, _)) = &s.refused {
            *reasons.entry((reason, s.pair.hit)).or_default() += 1;
        }
    }
    println!(
        "\nThe guard's reasons (whatever the similarity): look-alikes refused / paraphrases refused\n"
    );
    let mut names: Vec<&str> = reasons.keys().map(|(r, _)| *r).collect();
    names.dedup();
    for reason in names {
        println!(
            "- {reason}: {} / {}",
            reasons.get(&(reason, false)).unwrap_or(&0),
            reasons.get(&(reason, true)).unwrap_or(&0)
        );
    }
    println!(
        "\nGuard cost: {:.1} µs per comparison (mean over the set).",
        guard_cost.as_secs_f64() * 1e6
    );
    println!(
        "Verifier cost: {:.2} ms per call (the gateway's client, HTTP/1.1 on loopback, mock scoring), verdicts cached by pair.",
        verifier_cost.as_secs_f64() * 1e3
    );
    if held_out {
        println!("\n(held-out half: pairs not listed)\n");
        return;
    }
    println!("\nWrong at the default threshold:\n");
    for s in &scored {
        let served = s.normalised >= default && s.refused.is_none();
        if served != s.pair.hit {
            let why = match &s.refused {
                Some((kind, detail)) => format!("refused, {kind}: {detail}"),
                None if s.pair.hit => "below the threshold".into(),
                None => "served".into(),
            };
            println!(
                "- [{}] {:.2} {why} — {} | {}",
                s.pair.kind, s.normalised, s.pair.a, s.pair.b
            );
        }
    }
    println!();
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sets: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let sets = if sets.is_empty() {
        vec![concat!(env!("CARGO_MANIFEST_DIR"), "/benches/semantic/dev.tsv").to_owned()]
    } else {
        sets
    };
    for set in &sets {
        report(set);
    }
}
