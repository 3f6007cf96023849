//! Writes a synthetic unified-attack dataset in UniAttackData's layout, with
//! protocol lists for P1, P2.1 and P2.2.
//!
//! `cargo run -p fas-data --example synth_dataset -- --output DIR [--subjects 15] [--size 224] [--seed 0]`

use anyhow::Result;
use clap::Parser;
use fas_data::synth::{write_dataset, write_dataset_over, SynthConfig};
use std::path::PathBuf;

mod common;
use common::outln;

/// Write a synthetic UniAttackData-style dataset (live, print, replay,
/// adversarial and face-swap images of procedurally drawn subjects).
///
/// A non-empty --output directory is refused unless --force (its protocol
/// lists would be replaced), and so is an --output that is not a directory.
/// The settings are checked before anything is written.
#[derive(Parser)]
#[command(name = "synth_dataset", version)]
struct Args {
    /// Directory to write (it receives UniAttackData/Data and UniAttackData/protocol).
    #[arg(long, alias = "out")]
    output: PathBuf,
    /// Number of subjects, 5 to 10000 (2 of every 5 train, 1 dev, 2 test;
    /// 10 images each). All images together may hold at most 2^33 pixels
    /// (several GB of JPEGs): at --size 224 that is 10000 subjects, at
    /// 4096 px 51.
    #[arg(long, default_value_t = 15)]
    subjects: usize,
    /// Image side in pixels (32 to 4096).
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// Seed of everything.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Strength of the digital attacks' traces, 1 to 8.
    #[arg(long, default_value_t = 1.0)]
    digital_strength: f32,
    /// Write into a non-empty directory, replacing files of the same names.
    #[arg(long)]
    force: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = SynthConfig {
        subjects: args.subjects,
        image_size: args.size,
        seed: args.seed,
        digital_strength: args.digital_strength,
        ..SynthConfig::default()
    };
    let summary = if args.force {
        write_dataset_over(&args.output, &config)?
    } else {
        write_dataset(&args.output, &config)?
    };
    outln!(
        "wrote {} images under {}",
        summary.images,
        args.output.display()
    )?;
    for (list, lines) in &summary.lists {
        outln!("  {list}: {lines} lines")?;
    }
    Ok(())
}
