//! Renders a contact sheet of synthetic subjects: one row per subject with its
//! live frames, print (indoor, outdoor), replay, adversarial and face-swap images.
//!
//! `cargo run -p fas-data --example synth_contact_sheet -- --out sheet.png [--subjects 4] [--size 128] [--seed 0]`

use anyhow::{anyhow, bail, Context, Result};
use fas_data::synth::{contact_sheet, SynthConfig};
use std::ffi::OsString;
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut out = None;
    let mut subjects = 4usize;
    let mut config = SynthConfig::default();
    let mut args = std::env::args_os().skip(1);
    while let Some(flag) = args.next() {
        let flag = text(flag)?;
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--subjects" => subjects = text(value()?)?.parse()?,
            "--size" => config.image_size = text(value()?)?.parse()?,
            "--seed" => config.seed = text(value()?)?.parse()?,
            other => bail!("unknown argument {other}; usage: --out FILE.png [--subjects N] [--size PX] [--seed N]"),
        }
    }
    let out = out.context("--out FILE.png is required")?;
    config.subjects = config.subjects.max(subjects);
    contact_sheet(&config, subjects)?
        .save(&out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// An argument as UTF-8 text (paths stay `OsString`s and need not be UTF-8).
fn text(arg: OsString) -> Result<String> {
    arg.into_string()
        .map_err(|a| anyhow!("argument {} is not valid UTF-8", a.to_string_lossy()))
}
