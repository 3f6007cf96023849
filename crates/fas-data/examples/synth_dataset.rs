//! Writes a synthetic unified-attack dataset in UniAttackData's layout, with
//! protocol lists for P1, P2.1 and P2.2.
//!
//! `cargo run -p fas-data --example synth_dataset -- --out DIR [--subjects 15] [--size 224] [--seed 0]`

use anyhow::{anyhow, bail, Context, Result};
use fas_data::synth::{write_dataset, SynthConfig};
use std::ffi::OsString;
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut out = None;
    let mut config = SynthConfig {
        image_size: 224,
        ..SynthConfig::default()
    };
    let mut args = std::env::args_os().skip(1);
    while let Some(flag) = args.next() {
        let flag = text(flag)?;
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--subjects" => config.subjects = text(value()?)?.parse()?,
            "--size" => config.image_size = text(value()?)?.parse()?,
            "--seed" => config.seed = text(value()?)?.parse()?,
            other => bail!(
                "unknown argument {other}; usage: --out DIR [--subjects N] [--size PX] [--seed N]"
            ),
        }
    }
    let out = out.context("--out DIR is required")?;
    let summary = write_dataset(&out, &config)?;
    println!("wrote {} images under {}", summary.images, out.display());
    for (list, lines) in &summary.lists {
        println!("  {list}: {lines} lines");
    }
    Ok(())
}

/// An argument as UTF-8 text (paths stay `OsString`s and need not be UTF-8).
fn text(arg: OsString) -> Result<String> {
    arg.into_string()
        .map_err(|a| anyhow!("argument {} is not valid UTF-8", a.to_string_lossy()))
}
