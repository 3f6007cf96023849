//! The one line parser behind every list format.

use crate::error::quote;
use crate::label::{Label, LabelConvention};

/// A parsed, non-blank list line.
#[derive(Debug, Clone, PartialEq)]
pub struct ListLine {
    /// The path column, with any leading `/` removed (FA3 `lstrip('/')`):
    /// entries are always relative to the data root.
    pub entry: String,
    /// The label column mapped through the convention; `None` when unlabelled.
    pub label: Option<Label>,
}

/// Parses one line: `<path> <label>` when the convention has labels, `<path>`
/// otherwise. Fields are separated by runs of spaces or tabs; a trailing `\r`
/// (CRLF files) is ignored. Returns `Ok(None)` for blank lines, and an error
/// message naming what was expected otherwise.
pub fn parse_line(text: &str, convention: &LabelConvention) -> Result<Option<ListLine>, String> {
    let text = text.strip_suffix('\r').unwrap_or(text);
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.is_empty() {
        return Ok(None);
    }
    let expected = if convention.has_labels() {
        "<path> <label>"
    } else {
        "<path>"
    };
    let wanted_fields = if convention.has_labels() { 2 } else { 1 };
    if fields.len() != wanted_fields {
        return Err(format!(
            "expected \"{expected}\", got \"{}\"",
            quote(text.trim())
        ));
    }
    let entry = fields[0].trim_start_matches('/');
    if entry.is_empty() {
        return Err(format!(
            "expected \"{expected}\", got \"{}\" (empty path)",
            quote(text.trim())
        ));
    }
    let label = if convention.has_labels() {
        let value: i64 = fields[1].parse().map_err(|_| {
            format!(
                "label \"{}\" is not an integer; {}",
                quote(fields[1]),
                convention.describe()
            )
        })?;
        Some(convention.label(value)?)
    } else {
        None
    };
    Ok(Some(ListLine {
        entry: entry.to_string(),
        label,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::AttackKind;

    #[test]
    fn parses_every_shape() {
        let c = LabelConvention::UniattackDetailed;
        let line = parse_line("a/b.jpg 1\r", &c).unwrap().unwrap();
        assert_eq!(line.entry, "a/b.jpg");
        assert_eq!(line.label, Some(Label::Attack(AttackKind::Physical)));
        assert_eq!(parse_line("  \r", &c), Ok(None));
        assert_eq!(
            parse_line("/abs/x.jpg\t0", &c).unwrap().unwrap().entry,
            "abs/x.jpg"
        );
        assert_eq!(
            parse_line("foo", &c).unwrap_err(),
            "expected \"<path> <label>\", got \"foo\""
        );
        assert!(parse_line("a.jpg x", &c)
            .unwrap_err()
            .contains("not an integer"));
        assert!(parse_line("a.jpg 7", &c)
            .unwrap_err()
            .contains("unknown label 7"));
        let u = LabelConvention::Unlabelled;
        assert_eq!(
            parse_line("p1/dev/000001.jpg", &u).unwrap().unwrap().label,
            None
        );
        assert!(parse_line("p1/dev/000001.jpg 1", &u).is_err());
    }
}
