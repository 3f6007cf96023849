//! Evaluate checkpoints on a protocol: threshold on dev, metrics on test.
//!
//! ```text
//! cargo run --release --example eval_uniattack -- --checkpoint runs/p1 --json
//! cargo run --release --example eval_uniattack -- --checkpoint runs/seed0 \
//!     --checkpoint runs/seed1 --data /data/CASIA-FAS --protocol p2.1 --output eval/p2.1
//! ```
//!
//! `--help` lists every flag; the logic lives in `uniattack::cli::eval`.

use clap::Parser;
use uniattack::cli::eval::{run, EvalArgs};

fn main() -> anyhow::Result<()> {
    uniattack::runtime::tolerate_closed_stdout();
    run(&EvalArgs::parse())?;
    Ok(())
}
