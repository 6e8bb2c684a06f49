use boardroom_proto::session::v1 as pb;
use boardroom_testkit::{metric_value, scrape_metrics};
use tonic::Code;

use crate::helpers::{spawn_app, violated_fields};
use crate::on_both_backends;

fn list(
    session_id: &str,
    thread_type: pb::ThreadType,
    status: pb::ThreadStatus,
) -> pb::ListThreadsRequest {
    pb::ListThreadsRequest {
        session_id: session_id.into(),
        thread_type: thread_type.into(),
        status: status.into(),
        page_size: 0,
        page_token: String::new(),
    }
}

on_both_backends!(lifecycle_filters_and_status, |backend| async move {
    let mut app = spawn_app(backend).await;
    let board = app.boardroom("o").await;
    let session = app.session(&board.id, "u").await;
    let main = app.thread(&session.id, pb::ThreadType::Main).await;
    let side = app.thread(&session.id, pb::ThreadType::Breakout).await;
    let private = app.thread(&session.id, pb::ThreadType::Private).await;
    assert_eq!(main.status(), pb::ThreadStatus::Open);

    let got = app
        .client
        .get_thread(pb::GetThreadRequest {
            id: side.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.thread.as_ref(), Some(&side));
    let paused = app
        .client
        .update_thread_status(pb::UpdateThreadStatusRequest {
            id: side.id.clone(),
            status: pb::ThreadStatus::Paused.into(),
        })
        .await
        .expect("update")
        .into_inner()
        .thread
        .expect("thread");
    assert_eq!(paused.status(), pb::ThreadStatus::Paused);
    let got = app
        .client
        .get_thread(pb::GetThreadRequest {
            id: side.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        got.thread.expect("thread").status(),
        pb::ThreadStatus::Paused,
        "cache invalidated by the update"
    );

    let ids = |r: pb::ListThreadsResponse| r.threads.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let all = app
        .client
        .list_threads(list(
            &session.id,
            pb::ThreadType::Unspecified,
            pb::ThreadStatus::Unspecified,
        ))
        .await
        .expect("list");
    assert_eq!(
        ids(all.into_inner()),
        [main.id.clone(), side.id.clone(), private.id.clone()],
        "oldest first"
    );
    let open = app
        .client
        .list_threads(list(
            &session.id,
            pb::ThreadType::Unspecified,
            pb::ThreadStatus::Open,
        ))
        .await
        .expect("list");
    assert_eq!(
        ids(open.into_inner()),
        [main.id.clone(), private.id.clone()]
    );
    let breakout_paused = app
        .client
        .list_threads(list(
            &session.id,
            pb::ThreadType::Breakout,
            pb::ThreadStatus::Paused,
        ))
        .await
        .expect("list");
    assert_eq!(ids(breakout_paused.into_inner()), [side.id.as_str()]);
    let private_only = app
        .client
        .list_threads(list(
            &session.id,
            pb::ThreadType::Private,
            pb::ThreadStatus::Unspecified,
        ))
        .await
        .expect("list");
    assert_eq!(ids(private_only.into_inner()), [private.id.as_str()]);

    // No new threads in an ended session.
    app.client
        .end_session(pb::EndSessionRequest {
            id: session.id.clone(),
        })
        .await
        .expect("end");
    let err = app
        .client
        .create_thread(pb::CreateThreadRequest {
            session_id: session.id.clone(),
            thread_type: pb::ThreadType::Main.into(),
            title: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("ended session");
    assert_eq!(err.code(), Code::FailedPrecondition);
    app.stop().await;
});

on_both_backends!(bad_input_and_unknown_ids, |backend| async move {
    let mut app = spawn_app(backend).await;
    let err = app
        .client
        .create_thread(pb::CreateThreadRequest {
            session_id: "x".into(),
            thread_type: 0,
            title: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("invalid");
    assert_eq!(violated_fields(&err), ["session_id", "thread_type"]);
    let err = app
        .client
        .create_thread(pb::CreateThreadRequest {
            session_id: uuid::Uuid::now_v7().to_string(),
            thread_type: 99,
            title: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("invalid");
    assert_eq!(violated_fields(&err), ["thread_type"]);
    let err = app
        .client
        .create_thread(pb::CreateThreadRequest {
            session_id: uuid::Uuid::now_v7().to_string(),
            thread_type: 1,
            title: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("unknown session");
    assert_eq!(err.code(), Code::NotFound);
    let err = app
        .client
        .update_thread_status(pb::UpdateThreadStatusRequest {
            id: "x".into(),
            status: 0,
        })
        .await
        .expect_err("invalid");
    assert_eq!(violated_fields(&err), ["id", "status"]);
    let err = app
        .client
        .update_thread_status(pb::UpdateThreadStatusRequest {
            id: uuid::Uuid::now_v7().to_string(),
            status: 3,
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let mut bad_filter = list(
        &uuid::Uuid::now_v7().to_string(),
        pb::ThreadType::Unspecified,
        pb::ThreadStatus::Unspecified,
    );
    bad_filter.status = 42;
    let err = app
        .client
        .list_threads(bad_filter)
        .await
        .expect_err("invalid");
    assert_eq!(violated_fields(&err), ["status"]);
    let err = app
        .client
        .get_session_tree(pb::GetSessionTreeRequest {
            session_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    app.stop().await;
});

on_both_backends!(
    session_tree_takes_a_fixed_number_of_queries,
    |backend| async move {
        let mut app = spawn_app(backend).await;
        let board = app.boardroom("o").await;
        let session = app.session(&board.id, "u").await;
        let mut created = Vec::new();
        for _ in 0..25 {
            created.push(app.thread(&session.id, pb::ThreadType::Breakout).await.id);
        }
        let before = scrape_metrics(app.admin).await;
        let tree = app
            .client
            .get_session_tree(pb::GetSessionTreeRequest {
                session_id: session.id.clone(),
            })
            .await
            .expect("tree")
            .into_inner();
        let after = scrape_metrics(app.admin).await;
        assert_eq!(tree.session.expect("session").id, session.id);
        assert_eq!(tree.boardroom.expect("boardroom").id, board.id);
        assert_eq!(
            tree.threads.into_iter().map(|t| t.id).collect::<Vec<_>>(),
            created
        );

        let count = |text: &str, name: &str| {
            metric_value(
                text,
                &[
                    "db_client_operation_duration_seconds_count",
                    &format!("db_operation_name=\"{name}\""),
                ],
            )
        };
        assert_eq!(
            count(&after, "thread.tree_by_session") - count(&before, "thread.tree_by_session"),
            1.0
        );
        assert_eq!(
            count(&after, "thread.get") - count(&before, "thread.get"),
            0.0,
            "no per-thread queries"
        );
        let all_queries =
            |text: &str| metric_value(text, &["db_client_operation_duration_seconds_count"]);
        assert!(
            all_queries(&after) - all_queries(&before) <= 3.0,
            "at most session + boardroom + threads"
        );
        app.stop().await;
    }
);

on_both_backends!(
    a_retried_create_is_answered_even_after_the_session_ended,
    |backend| async move {
        let mut app = spawn_app(backend).await;
        let board = app.boardroom("o").await;
        let session = app.session(&board.id, "u").await;
        let request = pb::CreateThreadRequest {
            session_id: session.id.clone(),
            thread_type: pb::ThreadType::Main.into(),
            title: "kickoff".into(),
            request_id: "thread-req-1".into(),
        };
        let first = app
            .client
            .create_thread(request.clone())
            .await
            .expect("create")
            .into_inner()
            .thread
            .expect("thread");
        app.client
            .end_session(pb::EndSessionRequest {
                id: session.id.clone(),
            })
            .await
            .expect("end");
        let retried = app
            .client
            .create_thread(request)
            .await
            .expect("retry answered")
            .into_inner()
            .thread
            .expect("thread");
        assert_eq!(retried, first);
        app.stop().await;
    }
);
