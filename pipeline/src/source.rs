//! The texts a pipeline is read from, so that any byte offset maps back to a file, line and column.
//!
//! The pipeline file and each `--set` argument are laid end to end in one offset space. Values that
//! come from `--set` are parsed from the argument's own text and their spans shifted into that space,
//! so one span type serves every diagnostic, whatever the value's origin.

use std::ops::Range;

use crate::diag::{Diagnostic, Location};

/// One named text: the pipeline file, or a `--set` argument.
#[derive(Debug, Clone)]
pub struct Source {
    /// Shown in diagnostics: the file's path, or `--set` for an override.
    pub name: String,
    /// The whole text.
    pub text: &'static str,
    /// Where this text starts in the shared offset space.
    pub base: usize,
}

/// All texts of one pipeline, in one offset space.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    items: Vec<Source>,
}

impl Sources {
    /// Adds a text and returns the offset at which it starts.
    ///
    /// The text is leaked on purpose: the parsed configuration borrows from it for the whole
    /// process, and a process reads one pipeline.
    pub fn add(&mut self, name: impl Into<String>, text: String) -> usize {
        let base = self.items.last().map_or(0, |s| s.base + s.text.len() + 1);
        let text: &'static str = Box::leak(text.into_boxed_str());
        self.items.push(Source { name: name.into(), text, base });
        base
    }

    /// The source that holds this offset, if any.
    pub fn find(&self, offset: usize) -> Option<&Source> {
        self.items.iter().rev().find(|s| offset >= s.base && offset <= s.base + s.text.len())
    }

    /// The first source (the pipeline file).
    pub fn file(&self) -> Option<&Source> {
        self.items.first()
    }

    /// Maps a span to a location: file name, 1-based line and column, the line's text.
    pub fn locate(&self, span: Range<usize>) -> Option<Location> {
        let source = self.find(span.start)?;
        let start = span.start - source.base;
        let end = span.end.saturating_sub(source.base).clamp(start, source.text.len());
        let line_start = source.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source.text[start..].find('\n').map_or(source.text.len(), |i| start + i);
        let line_text = source.text[line_start..line_end].trim_end_matches('\r');
        let line = source.text[..start].matches('\n').count() + 1;
        let column = source.text[line_start..start].chars().count() + 1;
        let width = source.text[start..end.min(line_end).max(start)].chars().count().max(1);
        Some(Location { file: source.name.clone(), line, column, line_text: line_text.to_string(), width })
    }

    /// A diagnostic pointing at `span`.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(message).at(self.locate(span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines_and_columns_across_sources() {
        let mut sources = Sources::default();
        sources.add("p.toml", "a = 1\nbb = \"x\"\n".to_string());
        let base = sources.add("--set", "gen.steps=20".to_string());
        let loc = sources.locate(11..14).unwrap();
        assert_eq!((loc.file.as_str(), loc.line, loc.column, loc.width), ("p.toml", 2, 6, 3));
        assert_eq!(loc.line_text, "bb = \"x\"");
        let loc = sources.locate(base + 10..base + 12).unwrap();
        assert_eq!((loc.file.as_str(), loc.line, loc.column), ("--set", 1, 11));
    }
}
