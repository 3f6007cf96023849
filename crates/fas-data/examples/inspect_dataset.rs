//! Reads a list in any supported format, decodes every image, and reports
//! counts by split, category and attack kind, and every problem with file:line.
//!
//! `cargo run -p fas-data --example inspect_dataset -- --data ROOT --format FORMAT --list FILE [--json]`
//!
//! FORMAT is one of `uniattack-protocol`, `uniattack-protocol-video`,
//! `challenge`, `challenge-unlabelled`, `binary`, `jfsfdb`, or `folder`
//! (image-folder layout under ROOT; no `--list`). `--json` prints one object
//! `{"split", "samples", "duplicates", "counts": {live, physical, adversarial,
//! editing, unknown}, "kinds": {...}, "problems": [{file, line, message}]}`.
//! The exit status is 1 when any problem was found.

use anyhow::{anyhow, bail, Context, Result};
use fas_data::{read_folder, read_list, BadInputPolicy, FileCheck, ListFormat, ListOptions};
use std::ffi::OsString;
use std::path::PathBuf;

fn main() -> Result<()> {
    let (mut data, mut format, mut list, mut json) = (None, None, None, false);
    let mut args = std::env::args_os().skip(1);
    while let Some(flag) = args.next() {
        let flag = text(flag)?;
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--data" => data = Some(PathBuf::from(value()?)),
            "--format" => format = Some(text(value()?)?),
            "--list" => list = Some(PathBuf::from(value()?)),
            "--json" => json = true,
            other => bail!(
                "unknown argument {other}; usage: --data ROOT --format FORMAT --list FILE [--json]"
            ),
        }
    }
    let data = data.context("--data ROOT is required")?;
    let format = format.context("--format is required")?;
    let options = ListOptions {
        policy: BadInputPolicy::Skip,
        check: FileCheck::Decode,
        ..Default::default()
    };
    let listing = if format == "folder" {
        read_folder(&data, &options)?
    } else {
        let parsed = ListFormat::from_name(&format).with_context(|| {
            format!(
                "unknown format {format}; use folder or one of {}",
                ListFormat::NAMES.join(", ")
            )
        })?;
        let list = list
            .as_ref()
            .context("--list FILE is required for list formats")?;
        read_list(list, &data, &parsed, &options)?
    };
    let split = list
        .as_ref()
        .and_then(|l| l.file_stem())
        .map(|s| s.to_string_lossy().to_lowercase())
        .and_then(|stem| {
            ["train", "dev", "test"]
                .into_iter()
                .find(|s| stem.contains(s))
        })
        .unwrap_or("unknown");
    let counts = listing.counts_by_category();
    let kinds = listing.counts_by_label();
    if json {
        let counts: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(c, n)| (c.name().to_string(), (*n).into()))
            .collect();
        let report = serde_json::json!({
            "split": split,
            "samples": listing.samples.len(),
            "duplicates": listing.duplicates,
            "counts": counts,
            "kinds": serde_json::to_value(&kinds)?,
            "problems": serde_json::to_value(&listing.problems)?,
        });
        println!("{report}");
    } else {
        println!(
            "split {split}: {} valid samples, {} duplicate lines",
            listing.samples.len(),
            listing.duplicates
        );
        for (category, n) in &counts {
            println!("  {:<12} {n}", category.name());
        }
        println!("by kind:");
        for (kind, n) in &kinds {
            println!("  {kind:<24} {n}");
        }
        println!("{} problem(s)", listing.problems.len());
        for problem in &listing.problems {
            println!("  {problem}");
        }
    }
    if !listing.problems.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// An argument as UTF-8 text (paths stay `OsString`s and need not be UTF-8).
fn text(arg: OsString) -> Result<String> {
    arg.into_string()
        .map_err(|a| anyhow!("argument {} is not valid UTF-8", a.to_string_lossy()))
}
