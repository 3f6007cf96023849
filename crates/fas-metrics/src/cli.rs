//! The `evaluate_scores` command line (`examples/evaluate_scores.rs` is a thin
//! wrapper around [`run`]): score files in, the UniAttackData protocol report
//! out, as markdown or JSON.
//!
//! Threshold at the dev EER (organiser grid; the test set's own EER without
//! `--dev`), APCER/BPCER/ACER/ACC on test at it, AUC and EER (organiser grid)
//! on test. Score files are read by [`read_score_file`].

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::MetricsError;
use crate::label::Polarity;
use crate::report::{evaluate_protocol, ProtocolConfig, ProtocolReport};
use crate::score_file::read_score_file;
use crate::score_set::ScoreSet;

/// The usage line, printed by `--help` and after every argument error.
pub const USAGE: &str = "usage: evaluate_scores [--dev DEV] --test TEST --higher attack|bonafide \
[--json] [--name PROTOCOL] [--plot-dir DIR (feature plot)]";

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// Bad command-line arguments; the message ends with [`USAGE`].
    #[error("{0}\n{USAGE}")]
    Usage(String),
    /// A parsed score file that holds no valid score set (e.g. one class only).
    #[error("score file {file}: {source}")]
    ScoreSet {
        /// The file as given.
        file: String,
        /// What is wrong with its scores.
        source: MetricsError,
    },
    /// Reading a score file, evaluating or plotting failed (the error names
    /// the file where there is one).
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Writing the report failed (other than a closed pipe, which is success).
    #[error("cannot write output: {0}")]
    Write(#[source] io::Error),
}

/// Parsed arguments.
struct Args {
    dev: Option<PathBuf>,
    test: PathBuf,
    polarity: Polarity,
    json: bool,
    name: String,
    #[cfg(feature = "plot")]
    plot_dir: Option<PathBuf>,
}

/// `Some(args)`, or `None` for `--help`.
fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Option<Args>, CliError> {
    let mut args = args.into_iter();
    let (mut dev, mut test, mut polarity) = (None, None, None);
    let (mut json, mut name) = (false, "test".to_owned());
    #[cfg(feature = "plot")]
    let mut plot_dir = None;
    while let Some(flag) = args.next() {
        let Some(flag) = flag.to_str().map(str::to_owned) else {
            return Err(CliError::Usage(format!("unknown argument {flag:?}")));
        };
        let mut value = || {
            args.next()
                .ok_or_else(|| CliError::Usage(format!("{flag} needs a value")))
        };
        let text = |value: OsString| {
            value.into_string().map_err(|value| {
                CliError::Usage(format!("{flag} {value:?}: the value must be UTF-8"))
            })
        };
        match flag.as_str() {
            "--dev" => dev = Some(PathBuf::from(value()?)),
            "--test" => test = Some(PathBuf::from(value()?)),
            "--higher" => {
                polarity = Some(match text(value()?)?.as_str() {
                    "attack" => Polarity::HigherIsAttack,
                    "bonafide" => Polarity::HigherIsBonafide,
                    other => {
                        return Err(CliError::Usage(format!(
                            "--higher takes attack or bonafide, got {other:?}"
                        )))
                    }
                })
            }
            "--json" => json = true,
            "--name" => name = text(value()?)?,
            #[cfg(feature = "plot")]
            "--plot-dir" => plot_dir = Some(PathBuf::from(value()?)),
            #[cfg(not(feature = "plot"))]
            "--plot-dir" => {
                return Err(CliError::Usage(
                    "--plot-dir needs the plot feature: cargo run -p fas-metrics --features plot \
                     --example evaluate_scores -- ..."
                        .to_owned(),
                ))
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(CliError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    Ok(Some(Args {
        dev,
        test: test.ok_or_else(|| CliError::Usage("--test is required".to_owned()))?,
        polarity: polarity.ok_or_else(|| {
            CliError::Usage(
                "--higher is required: say whether a high score means attack or bonafide"
                    .to_owned(),
            )
        })?,
        json,
        name,
        #[cfg(feature = "plot")]
        plot_dir,
    }))
}

fn load(path: &Path, polarity: Polarity) -> Result<ScoreSet, CliError> {
    let samples = read_score_file(path)?;
    ScoreSet::from_samples(&samples, polarity).map_err(|source| CliError::ScoreSet {
        file: path.display().to_string(),
        source,
    })
}

/// The JSON document: the protocol name (`--name`, default `"test"`) and the
/// report's fields.
#[derive(Serialize)]
struct NamedReport<'a> {
    protocol: &'a str,
    #[serde(flatten)]
    report: &'a ProtocolReport,
}

/// Writes the report as markdown (protocol row named `name`) or JSON.
fn write_report(
    out: &mut impl Write,
    report: &ProtocolReport,
    name: &str,
    json: bool,
) -> io::Result<()> {
    if json {
        let named = NamedReport {
            protocol: name,
            report,
        };
        serde_json::to_writer_pretty(&mut *out, &named)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.to_markdown(name))?;
    }
    out.flush()
}

/// Success for a closed pipe (`evaluate_scores ... | head`): nobody reads
/// the rest.
fn written(result: io::Result<()>) -> Result<(), CliError> {
    match result {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => Err(CliError::Write(error)),
        _ => Ok(()),
    }
}

/// Runs the command on `args` (without the program name): the report goes to
/// `out`, notes (the plots written) to `log`.
///
/// Arguments: `[--dev DEV] --test TEST --higher attack|bonafide [--json]
/// [--name PROTOCOL] [--plot-dir DIR]`; `--help` writes [`USAGE`] to `out`.
/// `--name` names the protocol: the markdown table's first column and the
/// JSON's `"protocol"` key. The JSON holds the [`ProtocolReport`] fields
/// (`threshold`, `apcer`, `bpcer`, `acer`, `acc`, `auc`, `eer`, `hter`,
/// `per_attack_type`, ...; an infinite threshold is `"inf"` or `"-inf"`).
/// `--plot-dir` writes ROC, DET and histogram PNGs of the test set with the
/// `plot` feature and is an argument error without it.
///
/// Arguments are checked before anything is read or written. A closed output
/// pipe ends the output early and still counts as success.
pub fn run(
    args: impl IntoIterator<Item = OsString>,
    out: &mut impl Write,
    log: &mut impl Write,
) -> Result<(), CliError> {
    let Some(args) = parse_args(args)? else {
        return written(writeln!(out, "{USAGE}").and_then(|()| out.flush()));
    };
    let test = load(&args.test, args.polarity)?;
    let dev = args
        .dev
        .as_deref()
        .map(|path| load(path, args.polarity))
        .transpose()?;
    let report = evaluate_protocol(dev.as_ref(), &test, ProtocolConfig::default())?;
    for warning in &report.warnings {
        written(writeln!(log, "warning: {warning}"))?;
    }
    written(write_report(out, &report, &args.name, args.json))?;
    #[cfg(feature = "plot")]
    if let Some(dir) = &args.plot_dir {
        for path in crate::plot::write_all(&test, dir)? {
            written(writeln!(log, "wrote {}", path.display()))?;
        }
    }
    written(log.flush())
}
