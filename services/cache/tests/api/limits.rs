//! Every configured limit: over it is INVALID_ARGUMENT naming the field and the limit, and
//! nothing of the request is written.

use boardroom_proto::cache::v1 as pb;
use bytes::Bytes;

use crate::helpers::{entry, found, spawn_app, violations};

fn ttl_ms(ms: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: ms / 1000,
        nanos: i32::try_from((ms % 1000) * 1_000_000).expect("small"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_is_named_and_a_batch_with_one_bad_entry_writes_nothing() {
    let app = spawn_app(|c| {
        let l = &mut c.cache.limits;
        l.max_key_bytes = 8;
        l.max_value_bytes = 16;
        l.min_ttl_ms = 1_000;
        l.max_ttl_ms = 60_000;
        l.default_ttl_ms = 10_000;
        l.max_batch = 3;
        l.max_tags = 2;
        l.max_tag_bytes = 4;
    })
    .await;
    let mut client = app.client.clone();
    let good = |key: &str| entry(key, "v", &["t"]);
    let mut cases: Vec<(pb::Entry, &str, &str)> = Vec::new();
    let mut e = good("x");
    e.key = "123456789".into();
    cases.push((e, "entries[1].key", "max_key_bytes"));
    let mut e = good("x");
    e.key = String::new();
    cases.push((e, "entries[1].key", "must not be empty"));
    let mut e = good("x");
    e.value = Bytes::from(vec![b'v'; 17]);
    cases.push((e, "entries[1].value", "max_value_bytes"));
    let mut e = good("x");
    e.ttl = ttl_ms(999);
    cases.push((e, "entries[1].ttl", "min_ttl_ms"));
    let mut e = good("x");
    e.ttl = ttl_ms(60_001);
    cases.push((e, "entries[1].ttl", "max_ttl_ms"));
    let mut e = good("x");
    e.ttl = Some(prost_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    cases.push((e, "entries[1].ttl", "non-negative"));
    let mut e = good("x");
    e.tags = vec!["a".into(), "b".into(), "c".into()];
    cases.push((e, "entries[1].tags", "max_tags"));
    let mut e = good("x");
    e.tags = vec!["12345".into()];
    cases.push((e, "entries[1].tags[0]", "max_tag_bytes"));

    for (bad, field, limit) in cases {
        let err = client
            .set_many(pb::SetManyRequest {
                namespace: "n".into(),
                entries: vec![good("first"), bad, good("last")],
            })
            .await
            .expect_err("rejected");
        let v = violations(&err);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].0, field);
        assert!(v[0].1.contains(limit), "{:?} names {limit}", v[0].1);
    }
    let got = client
        .get_many(pb::GetManyRequest {
            namespace: "n".into(),
            keys: vec!["first".into(), "last".into()],
        })
        .await
        .expect("get many")
        .into_inner()
        .lookups;
    assert_eq!(
        found(&got),
        [None, None],
        "no rejected batch wrote anything"
    );

    let too_many: Vec<String> = (0..4).map(|i| format!("k{i}")).collect();
    let err = client
        .get_many(pb::GetManyRequest {
            namespace: "n".into(),
            keys: too_many.clone(),
        })
        .await
        .expect_err("batch");
    assert_eq!(violations(&err)[0].0, "keys");
    assert!(violations(&err)[0].1.contains("max_batch"));
    let err = client
        .set_many(pb::SetManyRequest {
            namespace: "n".into(),
            entries: too_many.iter().map(|k| good(k)).collect(),
        })
        .await
        .expect_err("batch");
    assert!(violations(&err)[0].1.contains("max_batch"));
    for (err, field) in [
        (
            client
                .delete(pb::DeleteRequest {
                    namespace: "n".into(),
                    keys: vec![],
                })
                .await
                .expect_err("empty"),
            "keys",
        ),
        (
            client
                .invalidate_tags(pb::InvalidateTagsRequest {
                    namespace: "n".into(),
                    tags: vec!["12345".into()],
                })
                .await
                .expect_err("long tag"),
            "tags[0]",
        ),
        (
            client
                .set(pb::SetRequest {
                    namespace: "n".into(),
                    entry: None,
                })
                .await
                .expect_err("no entry"),
            "entry",
        ),
    ] {
        assert_eq!(violations(&err)[0].0, field);
    }

    // Within every limit, and without a TTL: the default applies.
    let mut e = good("ok");
    e.ttl = None;
    client
        .set(pb::SetRequest {
            namespace: "n".into(),
            entry: Some(e),
        })
        .await
        .expect("accepted");
}
