//! Renders a contact sheet of synthetic subjects: one row per subject with its
//! live frames, print (indoor, outdoor), replay, adversarial and face-swap images.
//!
//! `cargo run -p fas-data --example synth_contact_sheet -- --output sheet.png [--subjects 4] [--size 128] [--seed 0]`

use anyhow::{Context, Result};
use clap::Parser;
use fas_data::synth::{contact_sheet, SynthConfig};
use std::path::PathBuf;

mod common;
use common::outln;

/// Render a contact sheet (PNG) of synthetic subjects and their attacks.
#[derive(Parser)]
#[command(name = "synth_contact_sheet", version)]
struct Args {
    /// PNG file to write (atomically); its name must end in `.png`.
    #[arg(long, alias = "out", value_parser = png_path)]
    output: PathBuf,
    /// Rows (subjects), at least 1.
    #[arg(long, default_value_t = 4)]
    subjects: usize,
    /// Image side in pixels, 32 to 4096; the sheet may hold at most 2^28
    /// pixels (checked before anything is drawn).
    #[arg(long, default_value_t = 128)]
    size: u32,
    /// Seed of everything.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Strength of the digital attacks' traces, 1 to 8.
    #[arg(long, default_value_t = 1.0)]
    digital_strength: f32,
}

/// An output path naming a PNG file: the sheet is always PNG, and PNG bytes
/// under another extension mislead every program that opens them.
fn png_path(text: &str) -> std::result::Result<PathBuf, String> {
    let path = PathBuf::from(text);
    let is_png = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("png"));
    if is_png {
        Ok(path)
    } else {
        Err(format!(
            "the contact sheet is written as PNG: name a .png file, not {text}"
        ))
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = SynthConfig {
        subjects: SynthConfig::default().subjects.max(args.subjects),
        image_size: args.size,
        seed: args.seed,
        digital_strength: args.digital_strength,
        ..SynthConfig::default()
    };
    let sheet = contact_sheet(&config, args.subjects)?;
    let mut png = Vec::new();
    sheet
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .context("encoding the PNG")?;
    atomic_io::write_bytes(&args.output, &png)
        .with_context(|| format!("writing {}", args.output.display()))?;
    outln!("wrote {}", args.output.display())?;
    Ok(())
}
