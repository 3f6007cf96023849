//! Train a La-SoftMoE CLIP face attack detector.
//!
//! ```text
//! cargo run --release --example train_uniattack -- --demo
//! cargo run --release --example train_uniattack --features cuda -- \
//!     --data /data/CASIA-FAS --protocol p1 --output runs/p1
//! ```
//!
//! `--help` lists every flag; the logic lives in `uniattack::cli::train`.

use clap::Parser;
use uniattack::cli::train::{run, TrainArgs};

fn main() -> anyhow::Result<()> {
    uniattack::runtime::tolerate_closed_stdout();
    run(&TrainArgs::parse())?;
    Ok(())
}
