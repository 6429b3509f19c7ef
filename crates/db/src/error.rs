//! [`DbError`]: failures sorted by what the caller can do about them.

/// A database failure. Callers branch on the variant: a conflict is the user's to fix, an
/// unavailable database is worth retrying later (HTTP 503), anything else is a bug or damage.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A unique value is already taken (for example a username).
    #[error("this {what} is already taken; choose a different one")]
    Conflict {
        /// What was taken, in words a user understands ("username").
        what: &'static str,
    },
    /// The database cannot be reached, is busy beyond the wait limit, or its storage failed.
    /// Nothing was changed; retrying later may succeed.
    #[error(
        "the database is unavailable while {doing} ({cause}); check that it is running, \
         reachable and has free disk space, then retry"
    )]
    Unavailable {
        /// What the database layer was trying to do.
        doing: &'static str,
        /// The underlying error, as text so the engine's types do not leak to callers.
        cause: String,
    },
    /// A database server cannot be used as configured (unreachable at start, refuses our
    /// user, is not replicating): an operator has to fix the server or the site file.
    #[error("database server {server} ({address}): {problem}; {fix}")]
    Setup {
        /// Which server: `primary`, `replica1`, ...
        server: String,
        /// Its `host:port`.
        address: String,
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// Anything else: a query the schema does not support, corrupt data, a failed migration.
    #[error(
        "database error while {doing} ({cause}); this needs an operator: see the server log \
         and check the database file and schema version"
    )]
    Other {
        /// What the database layer was trying to do.
        doing: &'static str,
        /// The underlying error, as text so the engine's types do not leak to callers.
        cause: String,
    },
}
