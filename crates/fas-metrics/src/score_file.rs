//! Score files: one sample per line, `<score> <label>` or
//! `<id> <score> <label>`, the format of the challenge submissions
//! (`<path> <score>`) with a label added.
//!
//! Labels:
//! - `0` = bona fide, `1` = attack (the challenge's live = 0, fake = 1; any
//!   number equal to 0 or 1, such as `1.0` from `np.savetxt`, counts);
//! - `bonafide`, `bona_fide`, `bona-fide`, `live`, `real`, `genuine` (any
//!   case) = bona fide;
//! - any other word made of letters, digits and `_ - . /` (starting with a
//!   letter) = an attack of that type (e.g. `print`, `adversarial/alma`);
//!   anything else (`live,`, `"print"`) is an error, not a new attack type.
//!
//! Each id may appear once: a repeated id would count one sample twice.
//! Any other number is an error, not an attack type: it is what a line
//! without a label (`000123 0.87`) or with swapped columns (`1 0.87`) looks
//! like. Multi-class numeric labels (CFD's 2 = adversarial, 3 = digital) must
//! be written as names.
//!
//! Fields are separated by spaces or tabs, so ids cannot contain whitespace.
//! A token starting with `#` starts a comment; blank lines are skipped; LF and
//! CRLF line endings are accepted, and a UTF-8 byte order mark at the start of
//! the file is ignored.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use crate::error::{MetricsError, Result};
use crate::label::{Label, ScoredSample};
use atomic_io::{read_regular_file, ReadRefused};

/// Label words read as bona fide, compared ignoring ASCII case.
const BONAFIDE_WORDS: [&str; 6] = [
    "bonafide",
    "bona_fide",
    "bona-fide",
    "live",
    "real",
    "genuine",
];

/// Longest line text an error message echoes.
const ECHO_LIMIT: usize = 200;

/// `text`, or its first [`ECHO_LIMIT`] characters and its length: a
/// message about a 20 MB line should not be 20 MB.
pub(crate) fn shortened(text: &str) -> String {
    if text.len() <= ECHO_LIMIT {
        return text.to_owned();
    }
    let mut end = ECHO_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// What a line must hold, for [`MetricsError::MalformedLine`].
const EXPECTED_LAYOUT: &str = "\"<score> <label>\" or \"<id> <score> <label>\"";

/// Parses score-file `text`; `file` names it in error messages.
///
/// Errors: [`MetricsError::MalformedLine`] for a line with the wrong number
/// of fields, a score that is not a number, or a label that is a number other
/// than 0 and 1; [`MetricsError::NonFiniteScoreInFile`] for a NaN or infinite
/// score.
pub fn parse_score_file(file: &str, text: &str) -> Result<Vec<ScoredSample>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut samples = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let tokens: Vec<&str> = raw
            .split_whitespace()
            .take_while(|token| !token.starts_with('#'))
            .collect();
        let malformed = |expected: String| MetricsError::MalformedLine {
            file: file.to_owned(),
            line,
            expected,
            got: shortened(raw.trim_end_matches('\r')),
        };
        let (id, score, label) = match tokens.as_slice() {
            [] => continue,
            [score, label] => (None, *score, *label),
            [id, score, label] => (Some((*id).to_owned()), *score, *label),
            _ => return Err(malformed(EXPECTED_LAYOUT.to_owned())),
        };
        let score: f64 = score
            .parse()
            .map_err(|_| malformed(EXPECTED_LAYOUT.to_owned()))?;
        if !score.is_finite() {
            return Err(MetricsError::NonFiniteScoreInFile {
                file: file.to_owned(),
                line,
                got: shortened(tokens[tokens.len() - 2]),
            });
        }
        let label = match parse_label(label) {
            Some(label) => label,
            None if label.parse::<f64>().is_ok() => {
                return Err(malformed(format!(
                    "label 0 (bona fide), 1 (attack), a bona fide word ({}) or an attack-type \
                     name, not the number \"{label}\" (is the label column missing, or are the \
                     columns swapped?)",
                    BONAFIDE_WORDS.join(", ")
                )))
            }
            None => {
                return Err(malformed(format!(
                    "label 0, 1, a bona fide word ({}) or an attack-type name of letters, \
                     digits and _ - . / starting with a letter, not \"{}\"",
                    BONAFIDE_WORDS.join(", "),
                    shortened(label)
                )))
            }
        };
        if let Some(id) = &id {
            if let Some(&first_line) = seen.get(id) {
                return Err(MetricsError::DuplicateId {
                    file: file.to_owned(),
                    line,
                    first_line,
                    id: shortened(id),
                });
            }
            seen.insert(id.clone(), line);
        }
        samples.push(ScoredSample { id, score, label });
    }
    Ok(samples)
}

/// Whether `token` can name an attack type.
fn is_attack_type_name(token: &str) -> bool {
    token.starts_with(|c: char| c.is_ascii_alphabetic())
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

/// The label a token names; `None` for a number other than 0 and 1, and
/// for a word that cannot be an attack-type name.
fn parse_label(token: &str) -> Option<Label> {
    if let Ok(number) = token.parse::<f64>() {
        return if number == 0.0 {
            Some(Label::Bonafide)
        } else if number == 1.0 {
            Some(Label::attack())
        } else {
            None
        };
    }
    if BONAFIDE_WORDS
        .iter()
        .any(|word| word.eq_ignore_ascii_case(token))
    {
        Some(Label::Bonafide)
    } else if is_attack_type_name(token) {
        Some(Label::attack_of(token))
    } else {
        None
    }
}

/// The most bytes [`read_score_file`] reads. A score file holds one short
/// line per sample (some 20 to 60 bytes), so 1 GiB is tens of millions of
/// samples, far beyond any face anti-spoofing test set; the cap keeps a
/// wrong path (a video, a disk image, `/dev/zero` behind a symlink) from
/// taking all memory before the first malformed line is reported.
pub const MAX_SCORE_FILE_BYTES: u64 = 1 << 30;

/// Reads and parses a score file; errors name the file as given. Errors as
/// [`parse_score_file`], plus [`MetricsError::ScoreFileNotRegular`] when the
/// path (symlinks followed) is not a regular file (a FIFO, a device, a
/// directory), [`MetricsError::ScoreFileTooLarge`] when the file holds more
/// than [`MAX_SCORE_FILE_BYTES`], and [`MetricsError::ReadScoreFile`] when it
/// cannot be read or is not UTF-8.
pub fn read_score_file(path: impl AsRef<Path>) -> Result<Vec<ScoredSample>> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let read_error = |source| MetricsError::ReadScoreFile {
        file: file.clone(),
        source,
    };
    let bytes = read_regular_file(path, MAX_SCORE_FILE_BYTES).map_err(|refused| match refused {
        ReadRefused::Io(source) => read_error(source),
        ReadRefused::NotRegular(kind) => MetricsError::ScoreFileNotRegular {
            file: file.clone(),
            kind,
        },
        ReadRefused::TooLarge => MetricsError::ScoreFileTooLarge {
            file: file.clone(),
            limit: MAX_SCORE_FILE_BYTES,
        },
    })?;
    let text = String::from_utf8(bytes).map_err(|error| {
        read_error(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 text ({})", error.utf8_error()),
        ))
    })?;
    parse_score_file(&file, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_layouts_comments_and_crlf() {
        let text = "# header\r\n0.25 0\r\n\r\nvid/1.jpg 0.75 1 # trailing\r\n  0.5\tprint\n";
        let samples = parse_score_file("s.txt", text).unwrap();
        assert_eq!(
            samples,
            vec![
                ScoredSample {
                    id: None,
                    score: 0.25,
                    label: Label::Bonafide
                },
                ScoredSample {
                    id: Some("vid/1.jpg".into()),
                    score: 0.75,
                    label: Label::attack()
                },
                ScoredSample {
                    id: None,
                    score: 0.5,
                    label: Label::attack_of("print")
                },
            ]
        );
    }

    #[test]
    fn bonafide_words_numeric_zero_one_and_bom() {
        let text = "\u{feff}0.1 bonafide\n0.2 Bona_Fide\n0.3 BONA-FIDE\n0.4 Live\n\
                    0.5 real\n0.6 genuine\n0.7 1.0\n0.8 0.0\n0.9 spoof\n";
        let labels: Vec<Label> = parse_score_file("s.txt", text)
            .unwrap()
            .into_iter()
            .map(|s| s.label)
            .collect();
        let mut expected = vec![Label::Bonafide; 6];
        expected.extend([Label::attack(), Label::Bonafide, Label::attack_of("spoof")]);
        assert_eq!(labels, expected);
        // Only a leading BOM is stripped; the first line's score parses.
        let first = parse_score_file("s.txt", "\u{feff}img.jpg 0.5 0\n").unwrap();
        assert_eq!(first[0].id.as_deref(), Some("img.jpg"));
    }

    /// `<id> <score>` lines with numeric ids and swapped columns are errors,
    /// not attacks of type "0.87".
    #[test]
    fn numeric_labels_other_than_zero_one_are_errors() {
        for (text, got) in [
            ("0.1 0\n000123 0.87\n", "000123 0.87"),
            ("0.1 0\n1 0.87\n", "1 0.87"),
            ("0.1 0\nimg.jpg 0.5 2\n", "img.jpg 0.5 2"),
            ("0.1 0\n0.5 nan\n", "0.5 nan"),
        ] {
            let err = parse_score_file("dev.txt", text).unwrap_err();
            assert!(
                matches!(&err, MetricsError::MalformedLine { line: 2, got: g, .. } if g == got),
                "{err}"
            );
            let message = err.to_string();
            assert!(
                message.starts_with(
                    "score file dev.txt line 2: expected label 0 (bona fide), 1 (attack)"
                ),
                "{message}"
            );
            assert!(message.ends_with(&format!("got \"{got}\"")), "{message}");
        }
    }

    #[test]
    fn errors_name_file_and_line() {
        let err = parse_score_file("dev.txt", "0.1 0\nfoo\r\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "score file dev.txt line 2: expected \"<score> <label>\" or \"<id> <score> <label>\", got \"foo\""
        );
        let err = parse_score_file("dev.txt", "a b c d\n").unwrap_err();
        assert!(matches!(err, MetricsError::MalformedLine { line: 1, .. }));
        let err = parse_score_file("dev.txt", "x nan 1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "score file dev.txt line 1: score \"nan\" is not a finite number"
        );
        let err = read_score_file("/nonexistent/scores.txt").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("cannot read score file /nonexistent/scores.txt"));
    }

    /// A repeated id is an error naming both lines; ids are compared as
    /// written.
    #[test]
    fn repeated_ids_are_errors() {
        let err = parse_score_file("t.txt", "a.jpg 0.1 0\nb.jpg 0.2 1\na.jpg 0.3 0\n").unwrap_err();
        assert!(
            matches!(&err, MetricsError::DuplicateId { line: 3, first_line: 1, id, .. } if id == "a.jpg"),
            "{err}"
        );
        // Lines without ids cannot be checked and are kept.
        assert_eq!(
            parse_score_file("t.txt", "0.1 0\n0.1 0\n").unwrap().len(),
            2
        );
    }

    /// `live,` (a CSV remnant) and quoted words are not new attack types.
    #[test]
    fn labels_that_are_no_names_are_errors() {
        for label in ["live,", "\"print\"", "9lives", "a|b"] {
            let err = parse_score_file("t.txt", &format!("x.jpg 0.5 {label}\n")).unwrap_err();
            assert!(
                err.to_string().contains("attack-type name"),
                "{label}: {err}"
            );
        }
        let ok =
            parse_score_file("t.txt", "x.jpg 0.5 adversarial/alma\ny.jpg 0.4 print-2.a\n").unwrap();
        assert_eq!(ok[0].label, Label::attack_of("adversarial/alma"));
    }

    /// An error about a huge line quotes its start and its size only.
    #[test]
    fn errors_do_not_echo_huge_lines() {
        let line = "é".repeat(5_000_000);
        let err = parse_score_file("t.txt", &line).unwrap_err().to_string();
        assert!(err.len() < 1_000, "{} bytes", err.len());
        assert!(err.contains("(10000000 bytes)"), "{}", &err[..300]);
    }
}
