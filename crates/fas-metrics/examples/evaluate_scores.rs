//! Evaluates score files the way UniAttackData papers report results:
//! threshold at the dev EER (organiser grid), APCER/BPCER/ACER/ACC on test at
//! it, AUC and EER on test. A thin wrapper around [`fas_metrics::cli::run`].
//!
//! ```text
//! cargo run -p fas-metrics --example evaluate_scores -- \
//!     [--dev DEV] --test TEST --higher attack|bonafide [--json] [--name P1]
//! cargo run -p fas-metrics --features plot --example evaluate_scores -- ... --plot-dir out/
//! ```
//!
//! Score files: one sample per line, `<score> <label>` or `<id> <score> <label>`
//! (label 0 = bona fide, 1 = attack, a bona fide word such as `live`, or an
//! attack-type name). Without `--dev` the threshold is the test set's own EER;
//! `--dev` naming the test file, or a copy of it, is refused.

use std::io::{self, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let (stdout, stderr) = (io::stdout(), io::stderr());
    let (mut out, mut log) = (stdout.lock(), stderr.lock());
    match fas_metrics::cli::run(std::env::args_os().skip(1), &mut out, &mut log) {
        Ok(()) => ExitCode::SUCCESS,
        // Nothing more can be reported if stderr itself is gone.
        // A usage error (clap's message, already prefixed) exits 2, as
        // every tool of the workspace does.
        Err(error @ fas_metrics::cli::CliError::Usage(_)) => {
            let _ = write!(log, "{error}");
            ExitCode::from(2)
        }
        Err(error) => {
            let _ = writeln!(log, "error: {error}");
            ExitCode::FAILURE
        }
    }
}
