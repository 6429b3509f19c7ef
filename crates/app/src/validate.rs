//! The rules for what users may type. Each function returns the cleaned value or a message
//! that tells the user how to fix their input.

/// Usernames appear in URLs (`/u/{name}`), so they are limited to characters that need no
/// escaping, and lowercased so `Alice` and `alice` cannot be two different people.
pub(crate) fn username(raw: &str) -> Result<String, &'static str> {
    let name = raw.trim().to_lowercase();
    let len = name.chars().count();
    if !(3..=32).contains(&len) {
        return Err("Choose a username of 3 to 32 characters.");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err("Use only letters, digits and underscores in your username.");
    }
    Ok(name)
}

/// A floor against guessable passwords and a ceiling so nobody can make the server hash
/// megabytes.
pub(crate) fn password(raw: &str) -> Result<&str, &'static str> {
    let len = raw.chars().count();
    if len < 8 {
        return Err("Choose a password of at least 8 characters.");
    }
    if len > 128 {
        return Err("Choose a password of at most 128 characters.");
    }
    Ok(raw)
}

/// The maximum length of a post, in characters (not bytes), after trimming.
pub(crate) const POST_MAX_CHARS: usize = 280;

/// Posts are trimmed so a post of only whitespace counts as empty.
pub(crate) fn post_body(raw: &str) -> Result<&str, &'static str> {
    let body = raw.trim();
    if body.is_empty() {
        return Err("Write something before posting.");
    }
    if body.chars().count() > POST_MAX_CHARS {
        return Err("Keep your post to 280 characters.");
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_trimmed_lowercased_and_restricted() {
        assert_eq!(username("  Alice_1 "), Ok("alice_1".to_owned()));
        assert!(username("ab").is_err());
        assert!(username(&"a".repeat(33)).is_err());
        assert!(username("bad-name").is_err());
        assert!(username("café").is_err());
    }

    #[test]
    fn passwords_have_bounds_in_characters() {
        assert!(password("short").is_err());
        assert!(password("long enough").is_ok());
        assert!(password(&"é".repeat(128)).is_ok());
        assert!(password(&"x".repeat(129)).is_err());
    }

    #[test]
    fn posts_are_trimmed_and_counted_in_characters() {
        assert_eq!(post_body("  hi \n"), Ok("hi"));
        assert!(post_body(" \n\t ").is_err());
        assert!(post_body(&"é".repeat(280)).is_ok());
        assert!(post_body(&"x".repeat(281)).is_err());
    }
}
