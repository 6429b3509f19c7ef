//! The SQLite backend against a real database file in a temporary directory.

use db::{Config, Db, DbError, Position};

async fn open(dir: &tempfile::TempDir) -> Db {
    // A nested path proves the parent directory is created too.
    let path = dir.path().join("nested").join("foobar.sqlite");
    Db::open(&Config::Sqlite { path })
        .await
        .expect("open database")
}

#[tokio::test]
async fn reopening_keeps_data_and_skips_applied_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir).await;
    db.ping().await.unwrap();
    db.create_user("alice", "hash", 10).await.unwrap();
    drop(db);

    let db = open(&dir).await;
    let alice = db.user_by_name("alice", None).await.unwrap().unwrap();
    assert_eq!(alice.username, "alice");
    assert_eq!(db.user_by_id(alice.id, None).await.unwrap(), Some(alice));
    assert_eq!(db.counts(None).await.unwrap().users, 1);
}

#[tokio::test]
async fn taken_username_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir).await;
    db.create_user("bob", "hash", 10).await.unwrap();
    let err = db.create_user("bob", "other", 11).await.unwrap_err();
    assert!(
        matches!(err, DbError::Conflict { what: "username" }),
        "{err}"
    );
    assert!(db.user_by_name("nobody", None).await.unwrap().is_none());
}

#[tokio::test]
async fn sessions_expire_and_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir).await;
    let user = db.create_user("carol", "hash", 10).await.unwrap().value;
    let written = db
        .create_session(b"token-hash", user.id, 100, 200)
        .await
        .unwrap();

    let seen = db
        .session_user(b"token-hash", 150, Some(&written.position))
        .await
        .unwrap();
    assert_eq!(seen.map(|u| u.id), Some(user.id));
    assert!(db
        .session_user(b"token-hash", 200, None)
        .await
        .unwrap()
        .is_none());
    assert!(db
        .session_user(b"unknown", 150, None)
        .await
        .unwrap()
        .is_none());

    db.delete_session(b"token-hash").await.unwrap();
    assert!(db
        .session_user(b"token-hash", 150, None)
        .await
        .unwrap()
        .is_none());
    // Logging out twice is fine.
    db.delete_session(b"token-hash").await.unwrap();
}

#[tokio::test]
async fn creating_a_session_sweeps_expired_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir).await;
    let user = db.create_user("dave", "hash", 10).await.unwrap().value;
    db.create_session(b"old", user.id, 100, 200).await.unwrap();
    db.create_session(b"new", user.id, 300, 400).await.unwrap();
    // Even a clock going back cannot revive the swept session.
    assert!(db.session_user(b"old", 150, None).await.unwrap().is_none());
    assert!(db.session_user(b"new", 350, None).await.unwrap().is_some());
}

#[tokio::test]
async fn timeline_is_newest_first_and_pages_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir).await;
    let erin = db.create_user("erin", "hash", 10).await.unwrap().value;
    let frank = db.create_user("frank", "hash", 10).await.unwrap().value;
    let mut ids = Vec::new();
    for i in 0..5 {
        let author = if i % 2 == 0 { &erin } else { &frank };
        let post = db
            .create_post(author.id, &format!("post {i}"), 100 + i)
            .await
            .unwrap()
            .value;
        assert_eq!(post.author, author.username);
        ids.push(post.id);
    }

    let first = db.timeline(None, 2, None).await.unwrap();
    assert_eq!(
        first.iter().map(|p| p.body.as_str()).collect::<Vec<_>>(),
        ["post 4", "post 3"]
    );
    assert_eq!(first[1].author, "frank");
    let second = db.timeline(Some(first[1].id), 2, None).await.unwrap();
    assert_eq!(
        second.iter().map(|p| p.id).collect::<Vec<_>>(),
        [ids[2], ids[1]]
    );
    let last = db.timeline(Some(second[1].id), 2, None).await.unwrap();
    assert_eq!(last.iter().map(|p| p.id).collect::<Vec<_>>(), [ids[0]]);

    let erins = db.user_posts(erin.id, None, 10, None).await.unwrap();
    assert_eq!(
        erins.iter().map(|p| p.body.as_str()).collect::<Vec<_>>(),
        ["post 4", "post 2", "post 0"]
    );
    let older = db
        .user_posts(erin.id, Some(erins[0].id), 1, None)
        .await
        .unwrap();
    assert_eq!(older[0].body, "post 2");
    assert_eq!(db.counts(None).await.unwrap().posts, 5);
}

#[tokio::test]
async fn positions_round_trip_through_text() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir).await;
    let position = db.create_user("gina", "hash", 1).await.unwrap().position;
    let text = position.encode();
    assert!(text
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, ',' | ';' | '"' | '\\')));
    assert_eq!(Position::decode(&text), Some(position));
    assert_eq!(Position::decode("garbage"), None);
}

#[tokio::test]
async fn a_closed_database_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir).await;
    db.close().await;
    let err = db.ping().await.unwrap_err();
    assert!(matches!(err, DbError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("retry"));
}
