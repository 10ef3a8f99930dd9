//! Diagnostics for invalid pipelines: a message, where it is (file:line:col), and a hint.
//!
//! Rendered in the style of rustc: a headline, a `-->` location line, the offending source line
//! with a caret underline, then the hint. The first line of the location is grep-able
//! (`file:line:col`), which is what editors and CI logs want.

use std::fmt;

/// Where a diagnostic points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// File name, or `--set` for a command-line override.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The text of that line, for the snippet.
    pub line_text: String,
    /// How many characters to underline.
    pub width: usize,
}

/// An error in a pipeline file or a flag, reported with its location and a hint.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// What is wrong, in one sentence.
    pub message: String,
    /// Where, when it can be said.
    pub location: Option<Box<Location>>,
    /// What to do about it.
    pub hint: Option<String>,
    /// Further context (for example where a duplicate was first defined).
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// A diagnostic with no location yet.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), location: None, hint: None, notes: Vec::new() }
    }

    /// Sets the location.
    pub fn at(mut self, location: Option<Location>) -> Self {
        self.location = location.map(Box::new);
        self
    }

    /// Sets the hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Sets the hint when there is one.
    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        if hint.is_some() {
            self.hint = hint;
        }
        self
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }
}

/// The most characters a message, hint or note shows; longer ones (a value pasted into the file by
/// mistake, say) are cut with a count of what was left out.
const MAX_TEXT: usize = 400;

/// The most characters of the offending line shown around the caret.
const MAX_LINE: usize = 120;

/// `text` cut to `max` characters, saying how many were left out.
pub fn excerpt(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => text.into(),
        Some((cut, _)) => {
            let rest = text[cut..].chars().count();
            format!("{}... ({rest} more characters)", &text[..cut]).into()
        }
    }
}

/// The part of a line shown in a snippet: at most [`MAX_LINE`] characters around the 1-based
/// `column`, marked with "..." where cut, and the caret's new column.
fn window(line: &str, column: usize) -> (String, usize) {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= MAX_LINE {
        return (line.to_string(), column);
    }
    let at = column.saturating_sub(1).min(chars.len());
    let start = at.saturating_sub(MAX_LINE / 4);
    let end = (start + MAX_LINE).min(chars.len());
    let mut shown: String = if start > 0 { "...".to_string() } else { String::new() };
    let lead = shown.chars().count();
    shown.extend(&chars[start..end]);
    if end < chars.len() {
        shown.push_str("...");
    }
    (shown, at - start + lead + 1)
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", excerpt(&self.message, MAX_TEXT))?;
        if let Some(loc) = &self.location {
            let gutter = loc.line.to_string().len();
            let pad = " ".repeat(gutter);
            writeln!(f, "{pad}--> {}:{}:{}", loc.file, loc.line, loc.column)?;
            writeln!(f, "{pad} |")?;
            let (line_text, column) = window(&loc.line_text, loc.column);
            writeln!(f, "{} | {}", loc.line, line_text)?;
            let lead: String =
                line_text.chars().take(column.saturating_sub(1)).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
            let room = line_text.chars().count().saturating_sub(column.saturating_sub(1)).max(1);
            writeln!(f, "{pad} | {lead}{}", "^".repeat(loc.width.clamp(1, room)))?;
        }
        for note in &self.notes {
            writeln!(f, "  = note: {}", excerpt(note, MAX_TEXT))?;
        }
        if let Some(hint) = &self.hint {
            writeln!(f, "  = hint: {}", excerpt(hint, MAX_TEXT))?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A hint for a serde error message: the closest allowed field or value, or the expected type.
pub fn hint_for_serde_message(message: &str) -> Option<String> {
    let backticked = |s: &str| -> Vec<String> { s.split('`').skip(1).step_by(2).map(str::to_string).collect() };
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let names = backticked(rest);
        let (word, allowed) = names.split_first()?;
        return Some(match closest(word, allowed.iter().map(String::as_str)) {
            Some(best) => format!("did you mean `{best}`?"),
            None => format!("allowed keys: {}", allowed.join(", ")),
        });
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let names = backticked(rest);
        let (word, allowed) = names.split_first()?;
        let list = allowed.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
        return Some(match closest(word, allowed.iter().map(String::as_str)) {
            Some(best) => format!("did you mean \"{best}\"? allowed values: {list}"),
            None => format!("allowed values: {list}"),
        });
    }
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        let expected = message.split(", expected ").nth(1)?;
        return Some(format!("expected {}", expected.trim()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_location_and_caret() {
        let d = Diagnostic::new("unknown plugin \"model.onx\"")
            .at(Some(Location {
                file: "p.toml".into(),
                line: 12,
                column: 8,
                line_text: "uses = \"model.onx\"".into(),
                width: 11,
            }))
            .hint("did you mean \"model.onnx\"?");
        let text = d.to_string();
        assert!(text.contains("--> p.toml:12:8"), "{text}");
        assert!(text.contains("   |        ^^^^^^^^^^^"), "{text}");
        assert!(text.contains("hint: did you mean \"model.onnx\"?"), "{text}");
    }

    #[test]
    fn long_values_are_quoted_as_bounded_excerpts() {
        let value = "a".repeat(1 << 20);
        let line_text = format!("prompt = \"{value}\"");
        let d = Diagnostic::new(format!("invalid value: string \"{value}\", expected a path"))
            .at(Some(Location { file: "p.toml".into(), line: 3, column: 10, line_text, width: value.len() + 2 }))
            .hint(value.clone());
        let text = d.to_string();
        assert!(text.len() < 2000, "{} bytes", text.len());
        assert!(text.contains("--> p.toml:3:10"), "{text}");
        assert!(text.contains("more characters)"), "{text}");
        // The caret still sits under the value's first character in the shown window.
        let lines: Vec<&str> = text.lines().collect();
        let (code, caret) = (lines[3], lines[4]);
        let at = caret.find('^').unwrap();
        assert_eq!(&code[at..at + 2], "\"a", "{code}\n{caret}");
        // A column far into a long line moves the window there.
        let long = format!("{}x = 1", " ".repeat(5000));
        let d = Diagnostic::new("m").at(Some(Location {
            file: "p.toml".into(),
            line: 1,
            column: 5001,
            line_text: long,
            width: 1,
        }));
        let text = d.to_string();
        let lines: Vec<&str> = text.lines().collect();
        let at = lines[4].find('^').unwrap();
        assert_eq!(&lines[3][at..at + 1], "x", "{text}");
        assert!(text.len() < 600, "{text}");
    }

    #[test]
    fn hints_from_serde_messages() {
        let h = hint_for_serde_message("unknown field `resise`, expected one of `size`, `resize`");
        assert_eq!(h.as_deref(), Some("did you mean `resize`?"));
        let h = hint_for_serde_message("unknown variant `txt`, expected one of `bytes`, `text`");
        assert_eq!(h.as_deref(), Some("did you mean \"text\"? allowed values: \"bytes\", \"text\""));
        let h = hint_for_serde_message("invalid type: string \"x\", expected u64");
        assert_eq!(h.as_deref(), Some("expected u64"));
    }
}
