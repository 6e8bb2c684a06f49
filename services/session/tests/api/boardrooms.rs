use boardroom_proto::session::v1 as pb;
use tonic::Code;

use crate::helpers::{TestApp, advisor, spawn_app, violated_fields};
use crate::on_both_backends;

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

/// CreateBoardroom, its boardroom or the refusal.
async fn create(
    app: &mut TestApp,
    request: pb::CreateBoardroomRequest,
) -> Result<pb::Boardroom, tonic::Status> {
    let created = app.client.create_boardroom(request).await?.into_inner();
    Ok(created.boardroom.expect("boardroom"))
}

/// UpdateBoardroom of the `paths` of `boardroom`, the new boardroom or the refusal.
async fn update(
    app: &mut TestApp,
    boardroom: pb::Boardroom,
    paths: &[&str],
) -> Result<pb::Boardroom, tonic::Status> {
    let updated = app
        .client
        .update_boardroom(pb::UpdateBoardroomRequest {
            boardroom: Some(boardroom),
            update_mask: mask(paths),
            expected_version: 0,
        })
        .await?
        .into_inner();
    Ok(updated.boardroom.expect("boardroom"))
}

/// GetBoardroom.
async fn get(app: &mut TestApp, id: &str) -> pb::Boardroom {
    app.client
        .get_boardroom(pb::GetBoardroomRequest { id: id.into() })
        .await
        .expect("get")
        .into_inner()
        .boardroom
        .expect("boardroom")
}

on_both_backends!(create_get_update, |backend| async move {
    let mut app = spawn_app(backend).await;
    let created = app.boardroom("owner-1").await;
    assert_eq!(created.version, 1);
    assert_eq!(created.advisors.len(), 2);

    let got = app
        .client
        .get_boardroom(pb::GetBoardroomRequest {
            id: created.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.boardroom.as_ref(), Some(&created));

    // Only the masked field changes; the version moves on.
    let mut change = created.clone();
    change.name = "Renamed".into();
    change.advisors = vec![advisor("Ignored")];
    let updated = app
        .client
        .update_boardroom(pb::UpdateBoardroomRequest {
            boardroom: Some(change),
            update_mask: mask(&["name"]),
            expected_version: 1,
        })
        .await
        .expect("update")
        .into_inner()
        .boardroom
        .expect("boardroom");
    assert_eq!(updated.name, "Renamed");
    assert_eq!(updated.advisors, created.advisors);
    assert_eq!(updated.version, 2);

    // The Get cache saw the write.
    let got = app
        .client
        .get_boardroom(pb::GetBoardroomRequest {
            id: created.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.boardroom.expect("boardroom").name, "Renamed");

    // A stale expected_version is ABORTED and changes nothing.
    let mut stale = updated.clone();
    stale.advisors = vec![advisor("Solo")];
    let err = app
        .client
        .update_boardroom(pb::UpdateBoardroomRequest {
            boardroom: Some(stale),
            update_mask: mask(&["advisors"]),
            expected_version: 1,
        })
        .await
        .expect_err("stale version");
    assert_eq!(err.code(), Code::Aborted);
    let got = app
        .client
        .get_boardroom(pb::GetBoardroomRequest {
            id: created.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.boardroom.expect("boardroom").advisors.len(), 2);
    app.stop().await;
});

on_both_backends!(validation_names_every_field, |backend| async move {
    let mut app = spawn_app(backend).await;
    let err = app
        .client
        .create_boardroom(pb::CreateBoardroomRequest {
            owner_id: String::new(),
            name: "x".repeat(201),
            advisors: vec![
                advisor("A"),
                advisor("a"),
                pb::Advisor {
                    model: String::new(),
                    ..advisor("B")
                },
            ],
            request_id: "r".repeat(129),
            double_text: pb::DoubleTextPolicy::Unspecified as i32,
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    let fields = violated_fields(&err);
    for expected in [
        "owner_id",
        "name",
        "advisors[1].name",
        "advisors[2].model",
        "request_id",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} not in {fields:?}"
        );
    }
    let err = app
        .client
        .create_boardroom(pb::CreateBoardroomRequest {
            owner_id: "o".into(),
            name: "n".into(),
            advisors: vec![],
            request_id: String::new(),
            double_text: pb::DoubleTextPolicy::Unspecified as i32,
            ..Default::default()
        })
        .await
        .expect_err("no advisors");
    assert_eq!(violated_fields(&err), ["advisors"]);
    let too_many = (0..17).map(|i| advisor(&format!("A{i}"))).collect();
    let err = app
        .client
        .create_boardroom(pb::CreateBoardroomRequest {
            owner_id: "o".into(),
            name: "n".into(),
            advisors: too_many,
            request_id: String::new(),
            double_text: pb::DoubleTextPolicy::Unspecified as i32,
            ..Default::default()
        })
        .await
        .expect_err("too many advisors");
    assert_eq!(violated_fields(&err), ["advisors"]);

    let err = app
        .client
        .get_boardroom(pb::GetBoardroomRequest {
            id: "not-a-uuid".into(),
        })
        .await
        .expect_err("bad id");
    assert_eq!(violated_fields(&err), ["id"]);

    let created = app.boardroom("o").await;
    let err = app
        .client
        .update_boardroom(pb::UpdateBoardroomRequest {
            boardroom: Some(created.clone()),
            update_mask: mask(&["owner_id"]),
            expected_version: 0,
        })
        .await
        .expect_err("immutable field");
    assert_eq!(violated_fields(&err), ["update_mask"]);
    let err = app
        .client
        .update_boardroom(pb::UpdateBoardroomRequest {
            boardroom: Some(created),
            update_mask: None,
            expected_version: 0,
        })
        .await
        .expect_err("no mask");
    assert_eq!(violated_fields(&err), ["update_mask"]);
    let err = app
        .client
        .update_boardroom(pb::UpdateBoardroomRequest {
            boardroom: None,
            update_mask: mask(&["name"]),
            expected_version: 0,
        })
        .await
        .expect_err("no boardroom");
    assert_eq!(violated_fields(&err), ["boardroom"]);
    app.stop().await;
});

on_both_backends!(unknown_ids_are_not_found, |backend| async move {
    let mut app = spawn_app(backend).await;
    let id = uuid::Uuid::now_v7().to_string();
    let err = app
        .client
        .get_boardroom(pb::GetBoardroomRequest { id: id.clone() })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let mut ghost = app.boardroom("o").await;
    ghost.id = id;
    let err = app
        .client
        .update_boardroom(pb::UpdateBoardroomRequest {
            boardroom: Some(ghost),
            update_mask: mask(&["name"]),
            expected_version: 0,
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    app.stop().await;
});

on_both_backends!(
    create_is_idempotent_under_concurrent_retries,
    |backend| async move {
        let app = spawn_app(backend).await;
        let request = pb::CreateBoardroomRequest {
            owner_id: "owner-idem".into(),
            name: "Board".into(),
            advisors: vec![advisor("CFO")],
            request_id: "req-42".into(),
            double_text: pb::DoubleTextPolicy::Unspecified as i32,
            ..Default::default()
        };
        let calls = (0..8).map(|_| {
            let mut client = app.client.clone();
            let request = request.clone();
            async move {
                client
                    .create_boardroom(request)
                    .await
                    .expect("create")
                    .into_inner()
                    .boardroom
                    .expect("boardroom")
                    .id
            }
        });
        let ids = futures::future::join_all(calls).await;
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        let mut client = app.client.clone();
        let listed = client
            .list_boardrooms(pb::ListBoardroomsRequest {
                owner_id: "owner-idem".into(),
                page_size: 10,
                page_token: String::new(),
            })
            .await
            .expect("list")
            .into_inner();
        assert_eq!(listed.boardrooms.len(), 1, "one row for eight retries");
        // The same request id from another owner is another boardroom.
        let other = client
            .create_boardroom(pb::CreateBoardroomRequest {
                owner_id: "someone-else".into(),
                ..request
            })
            .await
            .expect("create")
            .into_inner();
        assert_ne!(other.boardroom.expect("boardroom").id, ids[0]);
        app.stop().await;
    }
);

on_both_backends!(
    a_double_text_policy_is_stored_updated_and_checked,
    |backend| async move {
        let mut app = spawn_app(backend).await;
        let created = app
            .client
            .create_boardroom(pb::CreateBoardroomRequest {
                owner_id: "owner-1".into(),
                name: "Board".into(),
                advisors: vec![advisor("CFO")],
                request_id: String::new(),
                double_text: pb::DoubleTextPolicy::Enqueue as i32,
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner()
            .boardroom
            .expect("boardroom");
        assert_eq!(created.double_text, pb::DoubleTextPolicy::Enqueue as i32);
        // Unchanged by an update of another field, changed by its own path.
        let mut change = created.clone();
        change.name = "Renamed".into();
        change.double_text = pb::DoubleTextPolicy::Interrupt as i32;
        let renamed = app
            .client
            .update_boardroom(pb::UpdateBoardroomRequest {
                boardroom: Some(change.clone()),
                update_mask: mask(&["name"]),
                expected_version: 0,
            })
            .await
            .expect("update")
            .into_inner()
            .boardroom
            .expect("boardroom");
        assert_eq!(renamed.double_text, pb::DoubleTextPolicy::Enqueue as i32);
        app.client
            .update_boardroom(pb::UpdateBoardroomRequest {
                boardroom: Some(change),
                update_mask: mask(&["double_text"]),
                expected_version: 0,
            })
            .await
            .expect("update");
        let got = app
            .client
            .get_boardroom(pb::GetBoardroomRequest {
                id: created.id.clone(),
            })
            .await
            .expect("get")
            .into_inner()
            .boardroom
            .expect("boardroom");
        assert_eq!(got.double_text, pb::DoubleTextPolicy::Interrupt as i32);

        // A value the contract does not define names its field, and nothing is written.
        let err = app
            .client
            .create_boardroom(pb::CreateBoardroomRequest {
                owner_id: "owner-1".into(),
                name: "Board".into(),
                advisors: vec![advisor("CFO")],
                request_id: String::new(),
                double_text: 42,
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(violated_fields(&err), ["double_text"]);
        let mut bad = got.clone();
        bad.double_text = 42;
        let err = app
            .client
            .update_boardroom(pb::UpdateBoardroomRequest {
                boardroom: Some(bad),
                update_mask: mask(&["double_text"]),
                expected_version: 0,
            })
            .await
            .expect_err("refused");
        assert_eq!(violated_fields(&err), ["boardroom.double_text"]);
    }
);

on_both_backends!(
    a_deliberation_mode_and_debate_rounds_are_stored_updated_and_checked,
    |backend| async move {
        let mut app = spawn_app(backend).await;
        let request = |deliberation: i32, debate_rounds: u32| pb::CreateBoardroomRequest {
            owner_id: "owner-1".into(),
            name: "Board".into(),
            advisors: vec![advisor("CFO")],
            deliberation,
            debate_rounds,
            ..Default::default()
        };
        let plain = create(&mut app, request(0, 0)).await.expect("create");
        assert_eq!(
            (plain.deliberation, plain.debate_rounds),
            (pb::DeliberationMode::Unspecified as i32, 0)
        );
        let created = create(&mut app, request(pb::DeliberationMode::Debate as i32, 3))
            .await
            .expect("create");
        assert_eq!(
            (created.deliberation, created.debate_rounds),
            (pb::DeliberationMode::Debate as i32, 3)
        );
        // Each changed by its own path only.
        let mut change = created.clone();
        change.deliberation = pb::DeliberationMode::Review as i32;
        change.debate_rounds = 1;
        let updated = update(&mut app, change.clone(), &["deliberation"])
            .await
            .expect("update");
        assert_eq!(
            (updated.deliberation, updated.debate_rounds),
            (pb::DeliberationMode::Review as i32, 3)
        );
        update(&mut app, change, &["debate_rounds"])
            .await
            .expect("update");
        let got = get(&mut app, &created.id).await;
        assert_eq!(
            (got.deliberation, got.debate_rounds),
            (pb::DeliberationMode::Review as i32, 1)
        );

        // Out of range: the field is named and nothing is written.
        let err = create(&mut app, request(42, 5)).await.expect_err("refused");
        assert_eq!(violated_fields(&err), ["debate_rounds", "deliberation"]);
        let mut bad = got.clone();
        bad.debate_rounds = 5;
        let err = update(&mut app, bad, &["debate_rounds"])
            .await
            .expect_err("refused");
        assert_eq!(violated_fields(&err), ["boardroom.debate_rounds"]);
        let after = get(&mut app, &created.id).await;
        assert_eq!((after.debate_rounds, after.version), (1, got.version));
    }
);
