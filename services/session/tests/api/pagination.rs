use std::collections::HashSet;

use boardroom_proto::session::v1 as pb;

use crate::helpers::{spawn_app, violated_fields};
use crate::on_both_backends;

fn page(user: &str, size: i32, token: String) -> pb::ListSessionsRequest {
    pb::ListSessionsRequest {
        user_id: user.into(),
        active_only: false,
        page_size: size,
        page_token: token,
    }
}

on_both_backends!(
    pages_are_complete_and_disjoint_under_concurrent_inserts,
    |backend| async move {
        let mut app = spawn_app(backend).await;
        let board = app.boardroom("o").await;
        let mut existing = Vec::new();
        for _ in 0..57 {
            existing.push(app.session(&board.id, "pager").await.id);
        }
        existing.reverse(); // newest first

        // Another client keeps inserting while we page.
        let mut writer = app.client.clone();
        let board_id = board.id.clone();
        let inserts = tokio::spawn(async move {
            for _ in 0..30 {
                writer
                    .create_session(pb::CreateSessionRequest {
                        boardroom_id: board_id.clone(),
                        user_id: "pager".into(),
                        title: String::new(),
                        request_id: String::new(),
                    })
                    .await
                    .expect("concurrent insert");
            }
        });

        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let response = app
                .client
                .list_sessions(page("pager", 10, token))
                .await
                .expect("page")
                .into_inner();
            assert!(response.sessions.len() <= 10);
            seen.extend(response.sessions.into_iter().map(|s| s.id));
            pages += 1;
            if response.next_page_token.is_empty() {
                break;
            }
            token = response.next_page_token;
        }
        inserts.await.expect("writer");
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "a row appeared twice");
        let tail: Vec<_> = seen
            .iter()
            .filter(|id| existing.contains(id))
            .cloned()
            .collect();
        assert_eq!(
            tail, existing,
            "every row that existed before paging, once, in order"
        );
        assert!(pages >= 6);
        app.stop().await;
    }
);

on_both_backends!(page_tokens_and_sizes_are_checked, |backend| async move {
    let mut app = spawn_app(backend).await;
    let board = app.boardroom("o").await;
    for _ in 0..3 {
        app.session(&board.id, "a").await;
    }
    let first = app
        .client
        .list_sessions(page("a", 2, String::new()))
        .await
        .expect("page")
        .into_inner();
    assert_eq!(first.sessions.len(), 2);
    assert!(!first.next_page_token.is_empty());

    // A token of user a's list replayed against user b's.
    let err = app
        .client
        .list_sessions(page("b", 2, first.next_page_token.clone()))
        .await
        .expect_err("foreign token");
    assert_eq!(violated_fields(&err), ["page_token"]);
    // Or against the active-only list.
    let mut active = page("a", 2, first.next_page_token.clone());
    active.active_only = true;
    let err = app
        .client
        .list_sessions(active)
        .await
        .expect_err("other filter");
    assert_eq!(violated_fields(&err), ["page_token"]);
    let err = app
        .client
        .list_sessions(page("a", 2, "garbage!".into()))
        .await
        .expect_err("garbage");
    assert_eq!(violated_fields(&err), ["page_token"]);
    let err = app
        .client
        .list_sessions(page("a", 1001, String::new()))
        .await
        .expect_err("too big");
    assert_eq!(violated_fields(&err), ["page_size"]);
    let err = app
        .client
        .list_sessions(page("a", -1, String::new()))
        .await
        .expect_err("negative");
    assert_eq!(violated_fields(&err), ["page_size"]);

    let second = app
        .client
        .list_sessions(page("a", 2, first.next_page_token))
        .await
        .expect("page")
        .into_inner();
    assert_eq!(second.sessions.len(), 1);
    assert!(second.next_page_token.is_empty(), "last page has no token");
    app.stop().await;
});

on_both_backends!(thread_and_boardroom_lists_page_too, |backend| async move {
    let mut app = spawn_app(backend).await;
    let mut boards = Vec::new();
    for _ in 0..5 {
        boards.push(app.boardroom("owner-p").await.id);
    }
    let session = app.session(&boards[0], "u").await;
    let mut threads = Vec::new();
    for _ in 0..5 {
        threads.push(app.thread(&session.id, pb::ThreadType::Main).await.id);
    }
    let mut token = String::new();
    let mut seen_boards = Vec::new();
    loop {
        let r = app
            .client
            .list_boardrooms(pb::ListBoardroomsRequest {
                owner_id: "owner-p".into(),
                page_size: 2,
                page_token: token,
            })
            .await
            .expect("page")
            .into_inner();
        seen_boards.extend(r.boardrooms.into_iter().map(|b| b.id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    boards.reverse();
    assert_eq!(seen_boards, boards);

    let mut token = String::new();
    let mut seen_threads = Vec::new();
    loop {
        let r = app
            .client
            .list_threads(pb::ListThreadsRequest {
                session_id: session.id.clone(),
                thread_type: 0,
                status: 0,
                page_size: 2,
                page_token: token,
            })
            .await
            .expect("page")
            .into_inner();
        seen_threads.extend(r.threads.into_iter().map(|t| t.id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen_threads, threads);
    app.stop().await;
});
