//! No call reads, writes or invalidates another namespace's keys.

use boardroom_proto::cache::v1 as pb;
use tonic::Code;

use crate::helpers::{client_with_token, entry, found, spawn_app, violations, with_callers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_caller_is_confined_to_its_own_namespace() {
    let app = spawn_app(with_callers).await;
    let mut alpha = client_with_token(app.addr, "alpha-token").await;
    let mut beta = client_with_token(app.addr, "beta-token").await;

    alpha
        .set(pb::SetRequest {
            namespace: String::new(),
            entry: Some(entry("k", "alpha's", &["t"])),
        })
        .await
        .expect("alpha writes in its namespace");

    let get = |namespace: &str| pb::GetRequest {
        namespace: namespace.to_owned(),
        key: "k".into(),
    };
    let seen = beta.get(get("")).await.expect("beta reads its own");
    assert!(
        !seen.into_inner().lookup.expect("lookup").found,
        "beta does not see alpha's key"
    );
    let denied = beta
        .get(get("alpha"))
        .await
        .expect_err("beta asks for alpha's");
    assert_eq!(denied.code(), Code::PermissionDenied);
    for call in [
        beta.delete(pb::DeleteRequest {
            namespace: "alpha".into(),
            keys: vec!["k".into()],
        })
        .await
        .map(|_| ()),
        beta.invalidate_tags(pb::InvalidateTagsRequest {
            namespace: "alpha".into(),
            tags: vec!["t".into()],
        })
        .await
        .map(|_| ()),
        beta.watch_invalidations(pb::WatchInvalidationsRequest {
            namespace: "alpha".into(),
        })
        .await
        .map(|_| ()),
    ] {
        assert_eq!(call.expect_err("denied").code(), Code::PermissionDenied);
    }

    // Beta's own key "k" and tag "t" are other entries than alpha's.
    beta.delete(pb::DeleteRequest {
        namespace: String::new(),
        keys: vec!["k".into()],
    })
    .await
    .expect("beta deletes its own k");
    beta.invalidate_tags(pb::InvalidateTagsRequest {
        namespace: String::new(),
        tags: vec!["t".into()],
    })
    .await
    .expect("beta invalidates its own t");
    let alphas = alpha
        .get(get("alpha"))
        .await
        .expect("alpha reads")
        .into_inner();
    assert_eq!(
        found(&[alphas.lookup.expect("lookup")]),
        [Some("alpha's")],
        "alpha's entry survived beta's delete and invalidation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_authentication_the_namespace_field_is_required_and_separates_keys() {
    let app = spawn_app(|_| {}).await;
    let mut client = app.client.clone();
    let err = client
        .get(pb::GetRequest {
            namespace: String::new(),
            key: "k".into(),
        })
        .await
        .expect_err("no namespace");
    assert_eq!(violations(&err)[0].0, "namespace");
    let err = client
        .get(pb::GetRequest {
            namespace: "a:b".into(),
            key: "k".into(),
        })
        .await
        .expect_err("a colon would let namespaces meet");
    assert_eq!(violations(&err)[0].0, "namespace");

    client
        .set(pb::SetRequest {
            namespace: "a".into(),
            entry: Some(entry("b:c", "1", &[])),
        })
        .await
        .expect("set");
    let other = client
        .get(pb::GetRequest {
            namespace: "a.b".into(),
            key: "c".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert!(!other.lookup.expect("lookup").found);
}
