//! `GET /live`: a WebSocket that pushes every new post, as JSON with the API's fields
//! (`{"id", "author", "body", "created_at"}`), to the timeline page's `live.js`.
//!
//! The app tier is stateless and may have several servers, and a post can be made
//! through any of them, so the feed does not trust its own server alone: a post made
//! here is pushed at once, and a poller reads the newest posts from the database every
//! second ([`POLL`]) and pushes those it has not pushed yet, which brings the posts
//! made through the other app servers within about a second. The poller runs only
//! while someone listens. Posts made while nobody listened are not replayed (the page
//! shows them on its next load); a client that reads too slowly skips the posts it
//! missed rather than holding memory on the server.
//!
//! The feed carries only what the public timeline shows to anyone, so it needs no
//! session, and a page of another site opening it learns nothing it could not fetch.

use std::collections::BTreeSet;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use db::Post;
use tokio::sync::broadcast;

use crate::Shared;

/// How often the database is asked for posts made through other app servers.
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// How many posts one poll reads at most: more new posts than this in a second are
/// not all pushed (the page shows them on its next load).
const POLL_BATCH: u32 = 200;

/// How many posts may wait for one slow client before it skips some.
const QUEUE: usize = 256;

/// A ping to each client this often: a dead client is found by the failed write, and
/// proxies in front see traffic well within their tunnel timeout.
const PING: Duration = Duration::from_secs(30);

/// The posts to push, and which were pushed.
pub(crate) struct Feed {
    tx: broadcast::Sender<Utf8Bytes>,
    seen: Mutex<Seen>,
}

/// What the feed has pushed, so a post is pushed once whether it was made here or
/// found by the poller.
#[derive(Default)]
struct Seen {
    /// Every post up to this id was handled; meaningful while `primed`.
    cursor: i64,
    /// The cursor was read from the database since someone started listening.
    primed: bool,
    /// Posts above the cursor already pushed (made here, or pushed by a poll).
    pushed: BTreeSet<i64>,
}

impl Feed {
    pub(crate) fn new() -> Feed {
        Feed {
            tx: broadcast::channel(QUEUE).0,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Pushes `post` to every listener, unless it was pushed already.
    pub(crate) fn publish(&self, post: &Post) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let mut seen = self.seen.lock().expect("feed lock");
        if (seen.primed && post.id <= seen.cursor) || !seen.pushed.insert(post.id) {
            return;
        }
        let json = crate::api::post_json(post).to_string();
        // No receiver left since the check: nothing to do.
        let _ = self.tx.send(json.into());
    }

    /// Reads where the cursor is, if no poll has since someone started listening: a
    /// new listener's feed starts at the posts it could not have seen, not at the next
    /// poll (a post made elsewhere in between would be taken for an old one).
    async fn prime(&self, db: &db::Db) {
        if self.seen.lock().expect("feed lock").primed {
            return;
        }
        match db.timeline(None, 1, None).await {
            Ok(newest) => {
                let top = newest.first().map_or(0, |p| p.id);
                let mut seen = self.seen.lock().expect("feed lock");
                if !seen.primed {
                    seen.cursor = seen.cursor.max(top);
                    seen.primed = true;
                    let above = seen.cursor + 1;
                    seen.pushed = seen.pushed.split_off(&above);
                }
            }
            // The next poll primes it instead.
            Err(e) => tracing::debug!(error = %e, "live feed: reading the newest post failed"),
        }
    }

    /// One poll of the database: the newest posts, those above the cursor pushed in
    /// id order. The first poll after a quiet spell only reads where the cursor is.
    async fn poll(&self, db: &db::Db) -> Result<(), db::DbError> {
        if self.tx.receiver_count() == 0 {
            let mut seen = self.seen.lock().expect("feed lock");
            seen.primed = false;
            seen.pushed.clear();
            return Ok(());
        }
        let mut newest = db.timeline(None, POLL_BATCH, None).await?;
        let top = newest.first().map_or(0, |p| p.id);
        let primed = self.seen.lock().expect("feed lock").primed;
        if primed {
            let cursor = self.seen.lock().expect("feed lock").cursor;
            newest.retain(|p| p.id > cursor);
            for post in newest.iter().rev() {
                self.publish(post);
            }
        }
        let mut seen = self.seen.lock().expect("feed lock");
        seen.cursor = seen.cursor.max(top);
        seen.primed = true;
        let above = seen.cursor + 1;
        seen.pushed = seen.pushed.split_off(&above);
        Ok(())
    }

    /// Polls every [`POLL`] until the feed is dropped (with the app).
    pub(crate) fn spawn_poller(feed: Weak<Feed>, db: db::Db) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(feed) = feed.upgrade() else { return };
                if let Err(e) = feed.poll(&db).await {
                    tracing::debug!(error = %e, "live feed: polling for new posts failed");
                }
            }
        });
    }
}

/// `GET /live`: upgrades to the feed's WebSocket.
pub(crate) async fn live(
    State(state): State<Shared>,
    hold: Option<Extension<net::tunnel::Hold>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let rx = state.feed.tx.subscribe();
    state.feed.prime(&state.db).await;
    upgrade.on_upgrade(move |socket| listen(socket, rx, hold))
}

/// Sends the feed to one client until it leaves. `hold` keeps the client's
/// connection counted by the server (budget, drain) while the feed runs.
async fn listen(
    mut socket: WebSocket,
    mut rx: broadcast::Receiver<Utf8Bytes>,
    hold: Option<Extension<net::tunnel::Hold>>,
) {
    let _hold = hold;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING, PING);
    loop {
        tokio::select! {
            post = rx.recv() => match post {
                Ok(json) => {
                    if socket.send(Message::Text(json)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                // axum answers pings itself; what a client says is not read.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(id: i64) -> Post {
        Post {
            id,
            user_id: 1,
            author: "ann".into(),
            body: format!("post {id}"),
            created_at: 0,
        }
    }

    fn ids(rx: &mut broadcast::Receiver<Utf8Bytes>) -> Vec<i64> {
        let mut out = Vec::new();
        while let Ok(json) = rx.try_recv() {
            let value: serde_json::Value = serde_json::from_str(json.as_str()).unwrap();
            out.push(value["id"].as_i64().unwrap());
        }
        out
    }

    #[test]
    fn a_post_is_pushed_once_and_only_to_listeners() {
        let feed = Feed::new();
        feed.publish(&post(1));
        let mut rx = feed.tx.subscribe();
        feed.publish(&post(2));
        feed.publish(&post(2));
        feed.publish(&post(3));
        assert_eq!(ids(&mut rx), [2, 3]);
        // A poll that found them up to 3 moved the cursor: they are not pushed again.
        {
            let mut seen = feed.seen.lock().unwrap();
            seen.cursor = 3;
            seen.primed = true;
            seen.pushed = seen.pushed.split_off(&4);
        }
        feed.publish(&post(3));
        feed.publish(&post(4));
        assert_eq!(ids(&mut rx), [4]);
        let json: serde_json::Value =
            serde_json::from_str(&crate::api::post_json(&post(5)).to_string()).unwrap();
        assert_eq!(json["body"], "post 5");
        assert_eq!(json["author"], "ann");
    }

    /// Posts made through another app server (straight into the database here) reach
    /// this server's listeners by the poll, once each and in order; a post made here
    /// too is not pushed twice.
    #[tokio::test]
    async fn the_poller_pushes_posts_made_elsewhere_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = db::Db::open(&db::Config::Sqlite {
            path: dir.path().join("foobar.db"),
        })
        .await
        .unwrap();
        let user = db.create_user("bob", "x", 0).await.unwrap().value;
        let before = db
            .create_post(user.id, "before anyone listened", 0)
            .await
            .unwrap();
        let feed = Feed::new();
        feed.poll(&db).await.unwrap();
        let mut rx = feed.tx.subscribe();
        // The first poll with a listener finds where the timeline is: nothing old.
        feed.poll(&db).await.unwrap();
        assert_eq!(ids(&mut rx), Vec::<i64>::new());
        assert!(feed.seen.lock().unwrap().cursor >= before.value.id);

        let elsewhere: Vec<i64> = [
            db.create_post(user.id, "one", 0).await.unwrap().value.id,
            db.create_post(user.id, "two", 0).await.unwrap().value.id,
        ]
        .to_vec();
        let here = db.create_post(user.id, "three", 0).await.unwrap().value;
        feed.publish(&here);
        feed.poll(&db).await.unwrap();
        let mut want = vec![here.id];
        want.extend(&elsewhere);
        assert_eq!(ids(&mut rx), want);
        feed.poll(&db).await.unwrap();
        assert_eq!(ids(&mut rx), Vec::<i64>::new(), "nothing twice");

        // Nobody listening: nothing read, and the next listener starts from now.
        drop(rx);
        feed.poll(&db).await.unwrap();
        assert!(!feed.seen.lock().unwrap().primed);
        db.create_post(user.id, "unheard", 0).await.unwrap();
        let mut rx = feed.tx.subscribe();
        feed.poll(&db).await.unwrap();
        let last = db.create_post(user.id, "heard", 0).await.unwrap().value;
        feed.poll(&db).await.unwrap();
        assert_eq!(ids(&mut rx), [last.id]);
    }

    /// A listener that arrives between two polls is primed at once: a post made
    /// elsewhere before the next poll is new to it, not taken for an old one.
    #[tokio::test]
    async fn a_post_made_elsewhere_right_after_a_listener_arrives_is_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let db = db::Db::open(&db::Config::Sqlite {
            path: dir.path().join("foobar.db"),
        })
        .await
        .unwrap();
        let user = db.create_user("carol", "x", 0).await.unwrap().value;
        db.create_post(user.id, "old", 0).await.unwrap();
        let feed = Feed::new();
        let mut rx = feed.tx.subscribe();
        feed.prime(&db).await;
        let fresh = db.create_post(user.id, "fresh", 0).await.unwrap().value;
        feed.poll(&db).await.unwrap();
        assert_eq!(ids(&mut rx), [fresh.id]);
    }
}
