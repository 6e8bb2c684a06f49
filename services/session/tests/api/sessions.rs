use boardroom_proto::session::v1 as pb;
use tonic::Code;

use crate::helpers::{spawn_app, violated_fields};
use crate::on_both_backends;

on_both_backends!(lifecycle_and_lists, |backend| async move {
    let mut app = spawn_app(backend).await;
    let board = app.boardroom("owner").await;
    let first = app.session(&board.id, "alice").await;
    let second = app.session(&board.id, "alice").await;
    let bobs = app.session(&board.id, "bob").await;
    assert!(first.active && first.end_time.is_none());

    // Cached read, then a write that must be visible to the next read.
    let got = app
        .client
        .get_session(pb::GetSessionRequest {
            id: first.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.session.as_ref(), Some(&first));
    let ended = app
        .client
        .end_session(pb::EndSessionRequest {
            id: first.id.clone(),
        })
        .await
        .expect("end")
        .into_inner();
    let ended = ended.session.expect("session");
    assert!(!ended.active && ended.end_time.is_some());
    let got = app
        .client
        .get_session(pb::GetSessionRequest {
            id: first.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        got.session.as_ref(),
        Some(&ended),
        "the cache must not serve the pre-end session"
    );
    // Ending again is a no-op.
    let again = app
        .client
        .end_session(pb::EndSessionRequest {
            id: first.id.clone(),
        })
        .await
        .expect("end")
        .into_inner();
    assert_eq!(again.session.as_ref(), Some(&ended));

    let all = app
        .client
        .list_sessions(pb::ListSessionsRequest {
            user_id: "alice".into(),
            active_only: false,
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<_> = all.sessions.iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, [second.id.clone(), first.id.clone()], "newest first");
    assert!(all.next_page_token.is_empty());
    let active = app
        .client
        .list_sessions(pb::ListSessionsRequest {
            user_id: "alice".into(),
            active_only: true,
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        active
            .sessions
            .iter()
            .map(|s| s.id.clone())
            .collect::<Vec<_>>(),
        [second.id.as_str()]
    );

    let by_board = app
        .client
        .list_active_sessions(pb::ListActiveSessionsRequest {
            boardroom_id: board.id.clone(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        by_board
            .sessions
            .iter()
            .map(|s| s.id.clone())
            .collect::<Vec<_>>(),
        [bobs.id, second.id]
    );
    app.stop().await;
});

on_both_backends!(bad_input_and_unknown_ids, |backend| async move {
    let mut app = spawn_app(backend).await;
    let err = app
        .client
        .create_session(pb::CreateSessionRequest {
            boardroom_id: "nope".into(),
            user_id: String::new(),
            title: "t".repeat(201),
            request_id: String::new(),
        })
        .await
        .expect_err("invalid");
    let fields = violated_fields(&err);
    assert_eq!(fields, ["boardroom_id", "user_id", "title"]);

    let unknown = uuid::Uuid::now_v7().to_string();
    let err = app
        .client
        .create_session(pb::CreateSessionRequest {
            boardroom_id: unknown.clone(),
            user_id: "u".into(),
            title: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("unknown boardroom");
    assert_eq!(err.code(), Code::NotFound);
    for err in [
        app.client
            .get_session(pb::GetSessionRequest {
                id: unknown.clone(),
            })
            .await
            .expect_err("unknown"),
        app.client
            .end_session(pb::EndSessionRequest {
                id: unknown.clone(),
            })
            .await
            .expect_err("unknown"),
    ] {
        assert_eq!(err.code(), Code::NotFound);
    }
    let err = app
        .client
        .list_sessions(pb::ListSessionsRequest {
            user_id: String::new(),
            active_only: false,
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect_err("no user");
    assert_eq!(violated_fields(&err), ["user_id"]);
    let err = app
        .client
        .list_active_sessions(pb::ListActiveSessionsRequest {
            boardroom_id: "x".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect_err("bad id");
    assert_eq!(violated_fields(&err), ["boardroom_id"]);
    app.stop().await;
});

on_both_backends!(create_session_is_idempotent, |backend| async move {
    let mut app = spawn_app(backend).await;
    let board = app.boardroom("owner").await;
    let request = pb::CreateSessionRequest {
        boardroom_id: board.id,
        user_id: "u".into(),
        title: "t".into(),
        request_id: "retry-1".into(),
    };
    let a = app
        .client
        .create_session(request.clone())
        .await
        .expect("first")
        .into_inner()
        .session
        .expect("session");
    let b = app
        .client
        .create_session(request)
        .await
        .expect("retry")
        .into_inner()
        .session
        .expect("session");
    assert_eq!(a, b);
    app.stop().await;
});
