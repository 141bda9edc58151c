//! A function's settings as the chain file wrote them, handed to its kind's `parse`: the table
//! with spans into the file, the directory the file's relative paths start from, and a sink for
//! warnings. The kind walks the table with [`Fields`]; problems come back as [`SettingError`]s,
//! located in the chain file by span or, for a file the settings name (a firewall's rules
//! file), by that file's line and column.

use std::cell::RefCell;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use toml::Spanned;
use toml::de::DeTable;

use super::{Fields, HostNames};
use crate::spec::diag::LineIndex;

/// A place in a file other than the chain file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub file: PathBuf,
    /// 1-based, like the chain file's diagnostics.
    pub line: usize,
    pub col: usize,
}

/// One problem in a function's settings: at a byte span of the chain file, or (`elsewhere`) in
/// a file the settings name, reached from that span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub span: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
    pub elsewhere: Option<Located>,
}

impl SettingError {
    pub fn new(span: Range<usize>, message: impl Into<String>, hint: Option<String>) -> Self {
        SettingError {
            span,
            message: message.into(),
            hint,
            elsewhere: None,
        }
    }
}

/// A function's settings as written in the chain file, with spans into the file.
pub struct Settings<'i> {
    table: Spanned<DeTable<'i>>,
    base_dir: PathBuf,
    warnings: Rc<RefCell<Vec<SettingError>>>,
    lines: Rc<LineIndex<'i>>,
    host_names: HostNames,
}

impl<'i> Settings<'i> {
    /// `base_dir` is where the chain file's relative paths start (its directory); warnings the
    /// kind reports land in `warnings`; `lines` are the chain file's positions; `host_names`
    /// turns the names the settings write into addresses, or does not.
    pub fn new(
        table: Spanned<DeTable<'i>>,
        base_dir: &Path,
        warnings: Rc<RefCell<Vec<SettingError>>>,
        lines: Rc<LineIndex<'i>>,
        host_names: HostNames,
    ) -> Self {
        Settings {
            table,
            base_dir: base_dir.to_path_buf(),
            warnings,
            lines,
            host_names,
        }
    }

    /// Where the function's table starts in the file.
    pub fn span(&self) -> Range<usize> {
        self.table.span()
    }

    pub fn is_empty(&self) -> bool {
        self.table.get_ref().is_empty()
    }

    /// The positions of the chain file: the line and column of a span, for a message that names
    /// another place of it than the one it stands at ("already used by the rule at line 17").
    pub fn lines(&self) -> Rc<LineIndex<'i>> {
        self.lines.clone()
    }

    /// How the host names the settings write become addresses ([`HostNames`]).
    pub fn host_names(&self) -> HostNames {
        self.host_names.clone()
    }

    /// The directory relative paths in the settings start from.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// A handle that reports warnings (a rule another one shadows): printed with the file's
    /// diagnostics, never failing the file.
    pub fn warnings(&self) -> Warnings {
        Warnings(self.warnings.clone())
    }

    /// The settings, to walk key by key ([`Fields`]): its unknown keys are "in
    /// [[chain.function]]", where `name` and `kind` (core's) are known keys too.
    pub fn fields(self) -> Fields<'i> {
        Fields::new(self.table, "[[chain.function]]").knowing(&["name", "kind"])
    }
}

/// Where a kind reports warnings about its settings.
#[derive(Clone)]
pub struct Warnings(Rc<RefCell<Vec<SettingError>>>);

impl Warnings {
    pub fn warn(&self, warning: SettingError) {
        self.0.borrow_mut().push(warning);
    }
}
