//! The walk every kind's settings share: a table taken apart key by key. Each value is checked
//! for the type the kind wants and, when it is not that, reported at its own place in plain
//! words (`` `src` must be a prefix or a list of prefixes, found 42 `` with an example); a key
//! the kind needs and does not find is reported at its table; every key the kind did not ask
//! for is reported at the key, with the keys it did ask for and the closest one. Nothing stops
//! at the first problem: a wrong value is reported and read as absent, and the walk goes on.
//!
//! It lives in core, next to [`Settings`](super::Settings), because it is the same walk core
//! does over the chain file's own tables (`spec::raw`), with the same words and the same
//! did-you-mean; every kind reaches it through the seam.

use std::fmt::Display;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::SettingError;
use crate::spec::raw::{a_type, unknown_key_hint};

/// A value of a kind's settings as written, with its span in the file.
pub type Value<'i> = Spanned<DeValue<'i>>;

/// What a key takes, in words ("a prefix or a list of prefixes"), and an example value as TOML
/// writes it (`["10.0.0.0/8", "192.0.2.1"]`): the two halves of a wrong-type report.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub what: &'static str,
    pub example: &'static str,
}

/// The problems found in a kind's settings, in the order found (the file's diagnostics are
/// sorted by position later).
#[derive(Debug, Default)]
pub struct Problems(pub Vec<SettingError>);

impl Problems {
    pub fn error(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) {
        self.0.push(SettingError::new(span, message, hint.into()));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when no problem was found, else every problem.
    pub fn result<T>(self, value: T) -> Result<T, Vec<SettingError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }

    /// Reports that `value`, at `key`, is not what `want` says; `None`, for chaining.
    pub fn wrong<T>(&mut self, value: &Value<'_>, key: &str, want: Want) -> Option<T> {
        self.wrong_at(value.span(), key, want, found(value.get_ref()));
        None
    }

    /// Reports that `key`, at `span`, is not what `want` says but `found` (a number out of
    /// range): "`size` must be a whole number from 1 to 16777216, found -1".
    pub fn wrong_at(&mut self, span: Range<usize>, key: &str, want: Want, found: impl Display) {
        self.error(
            span,
            format!("`{key}` must be {}, found {found}", want.what),
            format!("e.g. `{key} = {}`", want.example),
        );
    }
}

/// How a message shows a value it did not want: short strings and numbers as written, other
/// values by their type.
fn found(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) if s.chars().count() <= 40 => format!("{s:?}"),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        other => a_type(other).to_string(),
    }
}

/// A string value, or the problem that it is not one.
pub fn string(
    value: Value<'_>,
    key: &str,
    want: Want,
    out: &mut Problems,
) -> Option<Spanned<String>> {
    match value.get_ref() {
        DeValue::String(s) => Some(Spanned::new(value.span(), s.to_string())),
        _ => out.wrong(&value, key, want),
    }
}

/// A whole number (within i64), or the problem that it is not one.
pub fn integer(
    value: Value<'_>,
    key: &str,
    want: Want,
    out: &mut Problems,
) -> Option<Spanned<i64>> {
    let parsed = match value.get_ref() {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
        _ => None,
    };
    match parsed {
        Some(n) => Some(Spanned::new(value.span(), n)),
        None => out.wrong(&value, key, want),
    }
}

/// A number, whole or not, or the problem that it is not one.
pub fn number(value: Value<'_>, key: &str, want: Want, out: &mut Problems) -> Option<Spanned<f64>> {
    let parsed = match value.get_ref() {
        DeValue::Float(f) => f.as_str().parse::<f64>().ok().filter(|f| f.is_finite()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .map(|n| n as f64),
        _ => None,
    };
    match parsed {
        Some(n) => Some(Spanned::new(value.span(), n)),
        None => out.wrong(&value, key, want),
    }
}

/// A table of a kind's settings, taken apart key by key.
pub struct Fields<'i> {
    span: Range<usize>,
    table: DeTable<'i>,
    /// How messages name the table: "[[chain.function.rule]]", "`conntrack`", "a backend".
    place: String,
    /// The keys asked for so far: those an unknown key is told to choose from.
    asked: Vec<&'static str>,
}

impl<'i> Fields<'i> {
    pub fn new(table: Spanned<DeTable<'i>>, place: impl Into<String>) -> Self {
        Fields {
            span: table.span(),
            table: table.into_inner(),
            place: place.into(),
            asked: Vec::new(),
        }
    }

    /// Counts `keys` as known without reading them (core's own `name` and `kind`).
    pub(super) fn knowing(mut self, keys: &[&'static str]) -> Self {
        self.asked.extend_from_slice(keys);
        self
    }

    /// Where the table starts (its header, or its `{`).
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// The value of `key` as written, whatever its type (taken out of the table).
    pub fn get(&mut self, key: &'static str) -> Option<Value<'i>> {
        if !self.asked.contains(&key) {
            self.asked.push(key);
        }
        self.table.remove(key)
    }

    /// Reports each of `keys` the table lacks, at the table, with an example.
    pub fn required(&mut self, keys: &[(&'static str, Want)], out: &mut Problems) {
        for (key, want) in keys {
            if !self.table.contains_key(*key) {
                out.error(
                    self.span(),
                    format!("{} has no `{key}`", self.place),
                    format!("add {}, e.g. `{key} = {}`", want.what, want.example),
                );
            }
        }
    }

    pub fn string(
        &mut self,
        key: &'static str,
        want: Want,
        out: &mut Problems,
    ) -> Option<Spanned<String>> {
        string(self.get(key)?, key, want, out)
    }

    pub fn integer(
        &mut self,
        key: &'static str,
        want: Want,
        out: &mut Problems,
    ) -> Option<Spanned<i64>> {
        integer(self.get(key)?, key, want, out)
    }

    pub fn number(
        &mut self,
        key: &'static str,
        want: Want,
        out: &mut Problems,
    ) -> Option<Spanned<f64>> {
        number(self.get(key)?, key, want, out)
    }

    /// An inline or dotted table, walked in its turn (its unknown keys are "in `key`").
    pub fn table(&mut self, key: &'static str, want: Want, out: &mut Problems) -> Option<Self> {
        let value = self.get(key)?;
        let span = value.span();
        match value.into_inner() {
            DeValue::Table(t) => Some(Fields::new(Spanned::new(span, t), format!("`{key}`"))),
            other => out.wrong(&Spanned::new(span, other), key, want),
        }
    }

    /// A list's items as written (each still to check), with the list's span.
    pub fn list(
        &mut self,
        key: &'static str,
        want: Want,
        out: &mut Problems,
    ) -> Option<Spanned<Vec<Value<'i>>>> {
        let value = self.get(key)?;
        let span = value.span();
        match value.into_inner() {
            DeValue::Array(items) => Some(Spanned::new(span, items.into_iter().collect())),
            other => out.wrong(&Spanned::new(span, other), key, want),
        }
    }

    /// A list of strings (each item checked).
    pub fn strings(
        &mut self,
        key: &'static str,
        want: Want,
        out: &mut Problems,
    ) -> Option<Spanned<Vec<Spanned<String>>>> {
        let items = self.list(key, want, out)?;
        let span = items.span();
        let strings = items
            .into_inner()
            .into_iter()
            .filter_map(|item| string(item, key, want, out))
            .collect();
        Some(Spanned::new(span, strings))
    }

    /// A list's items, or one value standing for a list of one (`src = "10.0.0.0/8"`); a table
    /// is neither.
    pub fn one_or_many(
        &mut self,
        key: &'static str,
        want: Want,
        out: &mut Problems,
    ) -> Option<Spanned<Vec<Value<'i>>>> {
        let value = self.get(key)?;
        let span = value.span();
        match value.into_inner() {
            DeValue::Array(items) => Some(Spanned::new(span, items.into_iter().collect())),
            DeValue::Table(t) => out.wrong(&Spanned::new(span, DeValue::Table(t)), key, want),
            one => Some(Spanned::new(span.clone(), vec![Spanned::new(span, one)])),
        }
    }

    /// A list of tables (`[[chain.function.rule]]` sections, or `[{ … }, { … }]`), each walked
    /// in its turn as `place`; a list item that is not a table is reported and left out.
    pub fn tables(
        &mut self,
        key: &'static str,
        place: &str,
        want: Want,
        out: &mut Problems,
    ) -> Option<Spanned<Vec<Self>>> {
        let items = self.list(key, want, out)?;
        let span = items.span();
        let tables = items
            .into_inner()
            .into_iter()
            .filter_map(|item| {
                let at = item.span();
                match item.into_inner() {
                    DeValue::Table(t) => Some(Fields::new(Spanned::new(at, t), place)),
                    other => out.wrong(&Spanned::new(at, other), key, want),
                }
            })
            .collect();
        Some(Spanned::new(span, tables))
    }

    /// Reports every key the kind did not ask for, at the key.
    pub fn finish(self, out: &mut Problems) {
        for (key, _) in self.table {
            let span = key.span();
            let key: DeString<'_> = key.into_inner();
            out.error(
                span,
                format!("unknown key `{key}` in {}", self.place),
                unknown_key_hint(&key, &self.asked),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The problems of walking `text` as a table with `walk`.
    fn walked(text: &str, walk: impl FnOnce(&mut Fields<'_>, &mut Problems)) -> Vec<String> {
        let table = DeTable::parse(text).expect("TOML");
        let mut fields = Fields::new(table, "[t]");
        let mut out = Problems::default();
        walk(&mut fields, &mut out);
        fields.finish(&mut out);
        out.0.into_iter().map(|e| e.message).collect()
    }

    const N: Want = Want {
        what: "a whole number",
        example: "8",
    };

    #[test]
    fn integers_are_read_as_written_and_other_values_are_named() {
        let mut got = Vec::new();
        let problems = walked(
            "a = 65_536\nb = 0x10\nc = -1\nd = \"8\"\ne = [1]\nf = 1.5\ng = 1\n",
            |t, out| {
                for key in ["a", "b", "c", "d", "e", "f"] {
                    got.push(t.integer(key, N, out).map(Spanned::into_inner));
                }
            },
        );
        assert_eq!(got, [Some(65_536), Some(16), Some(-1), None, None, None]);
        assert_eq!(
            problems,
            [
                "`d` must be a whole number, found \"8\"",
                "`e` must be a whole number, found an array",
                "`f` must be a whole number, found 1.5",
                "unknown key `g` in [t]",
            ]
        );
    }

    #[test]
    fn missing_keys_are_reported_once_and_one_value_reads_as_a_list() {
        let mut items = 0;
        let problems = walked("src = \"10.0.0.0/8\"\n", |t, out| {
            t.required(&[("src", N), ("action", N)], out);
            items = t
                .one_or_many("src", N, out)
                .map_or(0, |v| v.get_ref().len());
        });
        assert_eq!(items, 1);
        assert_eq!(problems, ["[t] has no `action`"]);
    }
}
