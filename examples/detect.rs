//! Attack probabilities and decisions for images, directories and lists.
//!
//! ```text
//! cargo run --release --example detect -- --checkpoint runs/p1 face.jpg faces/ --json
//! ```
//!
//! Exit status 1 when an input could not be scored (its line says why).
//! `--help` lists every flag; the logic lives in `uniattack::cli::detect`.

use std::process::ExitCode;

use clap::Parser;
use uniattack::cli::detect::{run, DetectArgs};

fn main() -> anyhow::Result<ExitCode> {
    uniattack::runtime::tolerate_closed_stdout();
    let failed = run(&DetectArgs::parse(), &mut std::io::stdout().lock())?;
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
