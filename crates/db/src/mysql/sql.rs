//! The statements whose shape matters to MariaDB's optimizer, and why.

use super::*;

/// Posts joined with their author, the shape every post query returns. `STRAIGHT_JOIN`
/// keeps posts as the driving table: otherwise, with few users, the optimizer may start
/// from `users` and sort every post of theirs to find the newest page (measured: ~100x
/// slower timelines at 25k posts).
pub(super) const POST_COLUMNS: &str = "SELECT p.id, p.user_id, u.username, p.body, p.created_at \
     FROM posts p STRAIGHT_JOIN users u ON u.id = p.user_id";

/// A page of posts, newest first: the page's ids are chosen from `posts` alone, in a
/// derived table, and only those rows are read and joined with their authors. `WHERE`
/// (with `?`s) and the `LIMIT ?` apply to the ids.
///
/// Why not one join with `ORDER BY p.id DESC LIMIT ?`: MariaDB 10.11 then chose, per
/// execution, between walking the primary key backwards (51 rows read) and reading
/// every post, joining and sorting them all; under concurrent load most executions of
/// the same prepared statement took the second plan. And because `body` is `TEXT`, its
/// temporary table went to disk: a file created and deleted in the replica's tmpdir
/// per timeline, where the replica spent 0.5 ms of CPU per request in ext4's inode
/// code (perf) and capped the site at ~1,500 timelines/s. The ids alone make a small
/// in-memory table with one sensible plan. The joined rows are put in order by
/// [`newest_first`], not by an outer `ORDER BY`: that sort, too, went through a
/// temporary table on disk in two executions out of three under load.
pub(super) fn page_of_posts(filter: &str) -> String {
    format!(
        "SELECT p.id, p.user_id, u.username, p.body, p.created_at \
         FROM (SELECT id FROM posts {filter} ORDER BY id DESC LIMIT ?) page \
         STRAIGHT_JOIN posts p ON p.id = page.id \
         STRAIGHT_JOIN users u ON u.id = p.user_id"
    )
}

/// The rows of a [`page_of_posts`] query as posts, newest first.
pub(super) fn newest_first(rows: &[sqlx::mysql::MySqlRow]) -> Result<Vec<Post>, sqlx::Error> {
    let mut posts = rows
        .iter()
        .map(Post::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    posts.sort_unstable_by_key(|p| std::cmp::Reverse(p.id));
    Ok(posts)
}

/// A user row's columns.
pub(super) const USER_COLUMNS: &str = "SELECT id, username, password_hash, created_at FROM users";
