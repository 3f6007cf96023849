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
use crate::label::{Label, Polarity, ScoredSample};
use crate::report::{evaluate_protocol, ProtocolConfig, ProtocolReport};
use crate::score_file::read_score_file;
use crate::score_set::ScoreSet;

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// Bad command-line arguments: clap's message, with the usage line.
    #[error("{0}")]
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
    /// `--dev` and `--test` name one file, or two files of the same scores
    /// (in any order):
    /// the threshold would be chosen on the test scores themselves, which the
    /// protocol forbids (threshold and model selection on dev, never test).
    #[error(
        "--dev {dev} and --test {test} {how}: the threshold would be chosen on the test scores \
         themselves, and the protocol chooses it on dev only; give the dev split's scores to \
         --dev, or leave --dev out to take the test set's own EER threshold (reported as \
         \"chosen on test\")"
    )]
    DevIsTest {
        /// The `--dev` file as given.
        dev: String,
        /// The `--test` file as given.
        test: String,
        /// `"are the same file"` or `"hold the same scores"`.
        how: &'static str,
    },
    /// Writing the report failed (other than a closed pipe, which is success).
    #[error("cannot write output: {0}")]
    Write(#[source] io::Error),
}

/// What a high score means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Higher {
    /// A high score means attack (this project's detectors).
    Attack,
    /// A high score means bona fide (live = 1, as FLIP and FA3-CLIP write).
    Bonafide,
}

/// Metrics of face anti-spoofing score files, as UniAttackData papers
/// report them: threshold at the dev EER (organisers' grid; the test set's
/// own EER without --dev), APCER/BPCER/ACER/ACC on test at it, AUC and EER
/// on test.
///
/// Score files hold one sample per line, `<score> <label>` or `<id> <score>
/// <label>`; label 0 = bona fide, 1 = attack, a bona fide word such as
/// `live`, or an attack-type name. `#` starts a comment.
#[derive(Debug, clap::Parser)]
#[command(name = "evaluate_scores", version)]
struct Args {
    /// Dev score file: the threshold is its EER point. Must not be the test
    /// file, nor hold the same scores.
    #[arg(long, value_name = "FILE")]
    dev: Option<PathBuf>,
    /// Test score file: the metrics are computed on it.
    #[arg(long, value_name = "FILE")]
    test: PathBuf,
    /// What a high score means: attack or bonafide.
    #[arg(long, value_enum)]
    higher: Higher,
    /// Print the report as JSON instead of a markdown table.
    #[arg(long)]
    json: bool,
    /// The protocol's name: the table's first column, the JSON's "protocol".
    #[arg(long, value_name = "PROTOCOL", default_value = "test")]
    name: String,
    /// Write ROC, DET and score-histogram PNGs of the test set here, as
    /// roc.png, det.png and scores.png, replacing files of those names
    /// (needs the crate's `plot` feature).
    #[arg(long, value_name = "DIR")]
    plot_dir: Option<PathBuf>,
}

impl Args {
    fn polarity(&self) -> Polarity {
        match self.higher {
            Higher::Attack => Polarity::HigherIsAttack,
            Higher::Bonafide => Polarity::HigherIsBonafide,
        }
    }
}

/// What the command line asks for: a report, or text clap has ready
/// (`--help`, `--version`).
enum Parsed {
    Run(Args),
    Print(String),
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, CliError> {
    use clap::error::ErrorKind;
    use clap::Parser;
    let argv = std::iter::once(OsString::from("evaluate_scores")).chain(args);
    match Args::try_parse_from(argv) {
        Ok(args) => {
            if cfg!(not(feature = "plot")) && args.plot_dir.is_some() {
                return Err(CliError::Usage(
                    "--plot-dir needs the plot feature: cargo run -p fas-metrics --features plot \
                     --example evaluate_scores -- ..."
                        .to_owned(),
                ));
            }
            Ok(Parsed::Run(args))
        }
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            Ok(Parsed::Print(error.render().to_string()))
        }
        Err(error) => Err(CliError::Usage(error.render().to_string())),
    }
}

/// The score file at `path`: its samples, and their score set.
fn load(path: &Path, polarity: Polarity) -> Result<(Vec<ScoredSample>, ScoreSet), CliError> {
    let samples = read_score_file(path)?;
    let set = ScoreSet::from_samples(&samples, polarity).map_err(|source| CliError::ScoreSet {
        file: path.display().to_string(),
        source,
    })?;
    Ok((samples, set))
}

/// Whether `a` and `b` hold the same scored samples, in any order.
fn same_scores(a: &[ScoredSample], b: &[ScoredSample]) -> bool {
    /// Id, score bits, and label (`None`: bona fide; else the attack type).
    type Key<'a> = (Option<&'a str>, u64, Option<Option<&'a str>>);
    fn sorted(samples: &[ScoredSample]) -> Vec<Key<'_>> {
        let mut keys: Vec<_> = samples
            .iter()
            .map(|s| {
                let label = match &s.label {
                    Label::Bonafide => None,
                    Label::Attack(kind) => Some(kind.as_deref()),
                };
                (s.id.as_deref(), s.score.to_bits(), label)
            })
            .collect();
        keys.sort_unstable();
        keys
    }
    a.len() == b.len() && sorted(a) == sorted(b)
}

/// Whether `a` and `b` name one file (symlinks and `..` resolved); paths
/// that cannot be resolved are left for reading to report.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
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
/// [--name PROTOCOL] [--plot-dir DIR]`, parsed by clap; `--help` and
/// `--version` write their text to `out`.
/// `--name` names the protocol: the markdown table's first column and the
/// JSON's `"protocol"` key. The JSON holds the [`ProtocolReport`] fields
/// (`threshold`, `apcer`, `bpcer`, `acer`, `acc`, `auc`, `eer`, `hter`,
/// `per_attack_type`, ...; an infinite threshold is `"inf"` or `"-inf"`).
/// `--plot-dir` writes ROC, DET and histogram PNGs of the test set with the
/// `plot` feature and is an argument error without it.
///
/// `--dev` naming the `--test` file (by any path) or a file of the same
/// scores is [`CliError::DevIsTest`]: the threshold is never chosen on test
/// behind the user's back; leaving `--dev` out says so openly.
///
/// Arguments are checked before anything is read or written, `--plot-dir`
/// included ([`MetricsError::PlotPathTaken`]). A closed output pipe ends the
/// output early and still counts as success.
pub fn run(
    args: impl IntoIterator<Item = OsString>,
    out: &mut impl Write,
    log: &mut impl Write,
) -> Result<(), CliError> {
    let args = match parse_args(args)? {
        Parsed::Run(args) => args,
        Parsed::Print(text) => return written(write!(out, "{text}").and_then(|()| out.flush())),
    };
    #[cfg(feature = "plot")]
    if let Some(dir) = &args.plot_dir {
        crate::plot::check_plot_dir(dir)?;
    }
    let dev_is_test = |dev: &Path, how| CliError::DevIsTest {
        dev: dev.display().to_string(),
        test: args.test.display().to_string(),
        how,
    };
    if let Some(dev) = &args.dev {
        if same_file(dev, &args.test) {
            return Err(dev_is_test(dev, "are the same file"));
        }
    }
    let polarity = args.polarity();
    let (test_samples, test) = load(&args.test, polarity)?;
    let dev = match &args.dev {
        Some(path) => {
            let (samples, set) = load(path, polarity)?;
            // A copy (or a hard link) is the same scores under another
            // path; so is a copy in another order (sorted or shuffled).
            if same_scores(&samples, &test_samples) {
                return Err(dev_is_test(path, "hold the same scores"));
            }
            Some(set)
        }
        None => None,
    };
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
