//! The rules for what users may type. Each function returns the cleaned value or a message
//! that tells the user how to fix their input.
//!
//! Text shown to other people refuses characters that can hide or disguise what it says:
//! control characters (a post keeps its newlines and tabs), bidirectional overrides and
//! isolates (which can make `gnp.exe` display as `exe.png`), and zero-width characters
//! (which make two different strings look the same).

/// The longest password, in characters. Checked before any hashing, on login as well as
/// signup, so nobody can make the server hash megabytes.
pub(crate) const PASSWORD_MAX_CHARS: usize = 128;

/// Usernames appear in URLs (`/u/{name}`), so they are limited to characters that need no
/// escaping, and lowercased so `Alice` and `alice` cannot be two different people. The
/// character rule is applied before lowercasing, so a look-alike that lowercases to ASCII
/// (the Kelvin sign `K` becomes `k`) is refused rather than folded into someone's name.
pub(crate) fn username(raw: &str) -> Result<String, &'static str> {
    if let Some(problem) = hidden_characters(raw, false) {
        return Err(problem.username_message());
    }
    let name = raw.trim();
    let len = name.chars().count();
    if !(3..=32).contains(&len) {
        return Err("Choose a username of 3 to 32 characters.");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("Use only letters, digits and underscores in your username.");
    }
    Ok(name.to_ascii_lowercase())
}

/// Only the length rule, for login: checked before the password is hashed.
pub(crate) fn password_length(raw: &str) -> Result<(), &'static str> {
    // Bytes first: a megabyte of input is refused without counting its characters.
    if raw.len() > 4 * PASSWORD_MAX_CHARS || raw.chars().count() > PASSWORD_MAX_CHARS {
        return Err("Passwords are at most 128 characters; check what you typed.");
    }
    Ok(())
}

/// A floor against guessable passwords and a ceiling so nobody can make the server hash
/// megabytes.
pub(crate) fn password(raw: &str) -> Result<&str, &'static str> {
    if password_length(raw).is_err() {
        return Err("Choose a password of at most 128 characters.");
    }
    if raw.chars().count() < 8 {
        return Err("Choose a password of at least 8 characters.");
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
    if let Some(problem) = hidden_characters(body, true) {
        return Err(problem.post_message());
    }
    Ok(body)
}

/// A kind of character that text shown to others may not contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hidden {
    Control,
    Bidi,
    ZeroWidth,
}

impl Hidden {
    fn post_message(self) -> &'static str {
        match self {
            Hidden::Control => {
                "Your post contains a control character. Remove it (line breaks and tabs are \
                 fine) and post again."
            }
            Hidden::Bidi => {
                "Your post contains a text-direction override (U+202A–U+202E or \
                 U+2066–U+2069), which can disguise what it says. Remove it and post again."
            }
            Hidden::ZeroWidth => {
                "Your post contains an invisible zero-width character (such as U+200B or \
                 U+FEFF). Remove it and post again."
            }
        }
    }

    fn username_message(self) -> &'static str {
        match self {
            Hidden::Control => {
                "Your username contains a control character; use only letters, digits and \
                 underscores."
            }
            Hidden::Bidi => {
                "Your username contains a text-direction override; use only letters, digits \
                 and underscores."
            }
            Hidden::ZeroWidth => {
                "Your username contains an invisible zero-width character; use only letters, \
                 digits and underscores."
            }
        }
    }
}

/// The first kind of hidden character in `text`, if any. `layout` allows line breaks and
/// tabs (a browser's textarea sends `\r\n`).
fn hidden_characters(text: &str, layout: bool) -> Option<Hidden> {
    text.chars().find_map(|c| match c {
        '\n' | '\r' | '\t' if layout => None,
        c if c.is_control() => Some(Hidden::Control),
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => Some(Hidden::Bidi),
        '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{180E}' => {
            Some(Hidden::ZeroWidth)
        }
        _ => None,
    })
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
        // The Kelvin sign lowercases to an ASCII `k`.
        assert!(username("\u{212A}evin").is_err());
    }

    #[test]
    fn usernames_refuse_hidden_characters_with_a_clear_message() {
        for (name, words) in [
            ("ali\u{0}ce", "control character"),
            ("alice\t", "control character"),
            ("\u{202E}ecila", "text-direction"),
            ("ali\u{2066}ce", "text-direction"),
            ("ali\u{200B}ce", "zero-width"),
            ("\u{FEFF}alice", "zero-width"),
            ("ali\u{2060}ce", "zero-width"),
        ] {
            let message = username(name).unwrap_err();
            assert!(message.contains(words), "{name:?}: {message}");
        }
    }

    #[test]
    fn passwords_have_bounds_in_characters() {
        assert!(password("short").is_err());
        assert!(password("long enough").is_ok());
        assert!(password(&"é".repeat(128)).is_ok());
        assert!(password(&"x".repeat(129)).is_err());
        assert!(password_length(&"x".repeat(128)).is_ok());
        assert!(password_length(&"x".repeat(129)).is_err());
        assert!(password_length(&"x".repeat(1536 * 1024)).is_err());
    }

    #[test]
    fn posts_are_trimmed_and_counted_in_characters() {
        assert_eq!(post_body("  hi \n"), Ok("hi"));
        assert!(post_body(" \n\t ").is_err());
        assert!(post_body(&"é".repeat(280)).is_ok());
        assert!(post_body(&"x".repeat(281)).is_err());
    }

    #[test]
    fn posts_keep_layout_but_refuse_hidden_characters() {
        assert_eq!(
            post_body("line one\r\n\tline two"),
            Ok("line one\r\n\tline two")
        );
        for (body, words) in [
            ("bell\u{7}", "control character"),
            ("esc\u{1b}[31m", "control character"),
            ("c1\u{85}x", "control character"),
            ("gnp\u{202E}exe.txt", "text-direction"),
            ("a\u{202A}b", "text-direction"),
            ("a\u{2069}b", "text-direction"),
            ("pay\u{200B}pal", "zero-width"),
            ("a\u{200F}b", "zero-width"),
            ("a\u{FEFF}b", "zero-width"),
        ] {
            let message = post_body(body).unwrap_err();
            assert!(message.contains(words), "{body:?}: {message}");
        }
    }
}
