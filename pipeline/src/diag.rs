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

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        if let Some(loc) = &self.location {
            let gutter = loc.line.to_string().len();
            let pad = " ".repeat(gutter);
            writeln!(f, "{pad}--> {}:{}:{}", loc.file, loc.line, loc.column)?;
            writeln!(f, "{pad} |")?;
            writeln!(f, "{} | {}", loc.line, loc.line_text)?;
            let lead: String = loc
                .line_text
                .chars()
                .take(loc.column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            writeln!(f, "{pad} | {lead}{}", "^".repeat(loc.width))?;
        }
        for note in &self.notes {
            writeln!(f, "  = note: {note}")?;
        }
        if let Some(hint) = &self.hint {
            writeln!(f, "  = hint: {hint}")?;
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
    fn hints_from_serde_messages() {
        let h = hint_for_serde_message("unknown field `resise`, expected one of `size`, `resize`");
        assert_eq!(h.as_deref(), Some("did you mean `resize`?"));
        let h = hint_for_serde_message("unknown variant `txt`, expected one of `bytes`, `text`");
        assert_eq!(h.as_deref(), Some("did you mean \"text\"? allowed values: \"bytes\", \"text\""));
        let h = hint_for_serde_message("invalid type: string \"x\", expected u64");
        assert_eq!(h.as_deref(), Some("expected u64"));
    }
}
