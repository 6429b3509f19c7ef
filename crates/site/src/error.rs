//! Site-file errors that point at the text: line, column, the line itself, and what
//! to write instead.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// Why a site file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// The file could not be read at all.
    #[error("cannot read site file {}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    /// The file was read, and these are its mistakes.
    #[error("{}", render(origin, mistakes))]
    Invalid {
        origin: String,
        mistakes: Vec<Mistake>,
    },
}

/// One mistake in a site file.
#[derive(Debug, Clone)]
pub struct Mistake {
    /// 1-based line of the mistake.
    pub line: usize,
    /// 1-based column (in characters) of the mistake.
    pub column: usize,
    /// The line's text, to show under the message.
    pub source_line: String,
    /// How many characters of the line the mistake covers (at least 1).
    pub width: usize,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    pub hint: Option<String>,
}

impl Mistake {
    /// A mistake covering `span` (byte offsets) of `text`.
    pub fn at(text: &str, span: Range<usize>, message: String, hint: Option<String>) -> Mistake {
        let start = span.start.min(text.len());
        let (line, column) = line_column(text, start);
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let source_line = text[line_start..line_end]
            .trim_end_matches('\r')
            .to_string();
        let end = span.end.clamp(start, line_end);
        let width = text[start..end].chars().count().max(1);
        Mistake {
            line,
            column,
            source_line,
            width,
            message,
            hint,
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn render(origin: &str, mistakes: &[Mistake]) -> String {
    let mut out = String::new();
    for (i, m) in mistakes.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&m.render(origin));
    }
    out
}

impl Mistake {
    /// The mistake as a compiler-style message: `file:line:col: message`, the line,
    /// a caret under the mistake, and the hint.
    pub fn render(&self, origin: &str) -> String {
        let mut out = format!("{origin}:{}:{}: {}\n", self.line, self.column, self.message);
        let gutter = self.line.to_string();
        let pad = " ".repeat(gutter.len());
        out.push_str(&format!("{pad} |\n{gutter} | {}\n", self.source_line));
        out.push_str(&format!(
            "{pad} | {}{}\n",
            " ".repeat(self.column - 1),
            "^".repeat(self.width)
        ));
        if let Some(hint) = &self.hint {
            out.push_str(&format!("{pad} = help: {hint}\n"));
        }
        out
    }
}

impl fmt::Display for Mistake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}
