-- The foobar data model for MySQL/MariaDB (MariaDB 10.11 dialect; MySQL 8 reads it too).
-- Same tables as migrations/sqlite: accounts, login sessions, posts; unix-second timestamps.
-- InnoDB for transactions and row locks; utf8mb4 so a post can hold any character. (Not a
-- `_bin` collation: sqlx then reports the text columns as binary and will not read them as
-- strings; usernames are lowercase ASCII, so the default collation compares them exactly.)

CREATE TABLE IF NOT EXISTS users (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username      VARCHAR(64)  NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    created_at    BIGINT       NOT NULL,
    UNIQUE KEY users_username (username)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Only a hash of the session token is stored: a leaked database dump does not log anyone in.
CREATE TABLE IF NOT EXISTS sessions (
    token_hash VARBINARY(64) NOT NULL PRIMARY KEY,
    user_id    BIGINT        NOT NULL,
    created_at BIGINT        NOT NULL,
    expires_at BIGINT        NOT NULL,
    KEY sessions_expires_at (expires_at),
    CONSTRAINT sessions_user FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS posts (
    id         BIGINT   NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id    BIGINT   NOT NULL,
    body       TEXT     NOT NULL,
    created_at BIGINT   NOT NULL,
    -- A user's page lists their posts newest first, paged by id.
    KEY posts_user_id_id (user_id, id),
    CONSTRAINT posts_user FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
