//! Diagnostics that point into a chain file: `file:line:col: what is wrong` plus a hint.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A position in a source file, 1-based, columns counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

impl Position {
    /// The line and column of byte offset `offset` in `text`.
    pub fn of(text: &str, offset: usize) -> Self {
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        Position { line, col }
    }
}

/// How bad a diagnostic is: an error fails the file, a warning is only printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// Positions of many offsets of one text: the line starts, found once (a large file's
/// diagnostics, or the places of 100,000 rules, without rescanning the text for each).
pub struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// The position of byte offset `offset` (as [`Position::of`] gives it).
    pub fn position(&self, offset: usize) -> Position {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        Position { line, col }
    }
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub position: Position,
    pub severity: Severity,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.position.line,
            self.position.col,
            match self.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            },
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in a file, sorted by position, reported at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// Sorts by file (the order files were first reported in) and position in it.
    pub fn sort(&mut self) {
        let mut files: Vec<PathBuf> = Vec::new();
        for d in &self.0 {
            if !files.contains(&d.file) {
                files.push(d.file.clone());
            }
        }
        self.0.sort_by_key(|d| {
            let file = files.iter().position(|f| *f == d.file).unwrap_or(0);
            (file, d.position)
        });
    }

    /// The errors only (warnings left out).
    pub fn errors(&self) -> usize {
        self.0
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics for one source text, turning byte spans into positions.
pub struct Reporter<'a> {
    file: &'a Path,
    /// The text's line starts, found once: a file with many problems must not be rescanned
    /// for each (that took minutes for a few MiB of them). Shared with the kinds' settings
    /// ([`Reporter::lines`]).
    lines: Rc<LineIndex<'a>>,
    found: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Reporter {
            file,
            lines: Rc::new(LineIndex::new(text)),
            found: Vec::new(),
        }
    }

    /// The position of byte offset `offset` of the text.
    pub fn position(&self, offset: usize) -> Position {
        self.lines.position(offset)
    }

    /// The positions of the text, for a message that names another place in it.
    pub fn lines(&self) -> Rc<LineIndex<'a>> {
        self.lines.clone()
    }

    /// Records a problem at `span` (a byte range of the source text).
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>, hint: Option<String>) {
        self.report(Severity::Error, span, message.into(), hint);
    }

    /// Records a warning at `span`: printed with the errors, never failing the file.
    pub fn warning(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.report(Severity::Warning, span, message.into(), hint);
    }

    fn report(
        &mut self,
        severity: Severity,
        span: Range<usize>,
        message: String,
        hint: Option<String>,
    ) {
        self.found.push(Diagnostic {
            file: self.file.to_path_buf(),
            position: self.lines.position(span.start),
            severity,
            message,
            hint,
        });
    }

    /// Records a diagnostic at a position of another file (one the chain file names, such as a
    /// firewall's rules file).
    pub fn elsewhere(
        &mut self,
        severity: Severity,
        file: &Path,
        position: Position,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.found.push(Diagnostic {
            file: file.to_path_buf(),
            position,
            severity,
            message: message.into(),
            hint,
        });
    }

    pub fn has_errors(&self) -> bool {
        self.found.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn finish(self) -> Diagnostics {
        let mut d = Diagnostics(self.found);
        d.sort();
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_index_gives_the_same_positions() {
        let text = "a = 1\nbé = 2\n\nlast";
        let index = LineIndex::new(text);
        for offset in 0..=text.len() + 2 {
            if text.is_char_boundary(offset.min(text.len())) {
                assert_eq!(
                    index.position(offset),
                    Position::of(text, offset),
                    "{offset}"
                );
            }
        }
    }

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(Position::of(text, 0), Position { line: 1, col: 1 });
        assert_eq!(Position::of(text, 6), Position { line: 2, col: 1 });
        // 'é' is two bytes but one column.
        assert_eq!(Position::of(text, 9), Position { line: 2, col: 3 });
    }
}
