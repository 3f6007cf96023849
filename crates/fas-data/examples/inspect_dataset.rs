//! Reads a list in any supported format, decodes every image, and reports
//! counts by split, category and attack kind, and every problem with file:line.
//!
//! `cargo run -p fas-data --example inspect_dataset -- --data ROOT --format FORMAT --list FILE [--json]`
//!
//! FORMAT is one of `uniattack-protocol`, `uniattack-protocol-video`,
//! `challenge`, `challenge-unlabelled`, `binary`, `jfsfdb`, or `folder`
//! (image-folder layout under ROOT; no `--list`). `--json` prints one object
//! `{"split", "samples", "duplicates", "counts": {live, physical, adversarial,
//! editing, unknown}, "kinds": {...}, "problems": [{file, line, message}],
//! "ignored": [...]}`.
//! The exit status is 1 when any problem was found, or the report could not
//! be written (a closed pipe, `... | head`, is not a failure).

use anyhow::{bail, Context, Result};
use clap::Parser;
use fas_data::{read_folder, read_list, BadInputPolicy, FileCheck, ListFormat, ListOptions};
use std::path::PathBuf;

mod common;
use common::outln;

/// Read a dataset list (or an image-folder layout), decode every image, and
/// report counts and every problem with its file and line.
///
/// Baseline JPEGs are also walked block by block, so damaged scan data that
/// the lenient decoder would turn into wrong pixels is reported (JPEG has no
/// checksum: damage that still decodes as a valid scan cannot be seen).
///
/// Conventions: blank lines are skipped, CRLF and a UTF-8 byte-order mark
/// are accepted, there are no comment lines (a `#` line is an entry and
/// fails as a missing file), entries are normalised (`./a` = `a`, `a//b` =
/// `a/b`) and must stay below --data unless --allow-outside-data. An empty
/// list is an error. Exit status 1 when any problem was found or the report
/// could not be written (a closed pipe is no failure), 2 on usage.
#[derive(Parser)]
#[command(name = "inspect_dataset", version)]
struct Args {
    /// The directory list entries are relative to (or the folder layout's root).
    #[arg(long)]
    data: PathBuf,
    /// uniattack-protocol, uniattack-protocol-video, challenge,
    /// challenge-unlabelled, binary, jfsfdb, or folder (no --list).
    #[arg(long, value_parser = parse_format)]
    format: String,
    /// The list file.
    #[arg(long)]
    list: Option<PathBuf>,
    /// Accept entries that lead out of --data with `..`.
    #[arg(long)]
    allow_outside_data: bool,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// A format name this tool reads (a usage error, status 2, otherwise).
fn parse_format(name: &str) -> std::result::Result<String, String> {
    if name == "folder" || ListFormat::from_name(name).is_some() {
        Ok(name.to_string())
    } else {
        Err(format!(
            "unknown format {name}; use folder or one of {}",
            ListFormat::NAMES.join(", ")
        ))
    }
}

fn main() -> Result<()> {
    let Args {
        data,
        format,
        list,
        allow_outside_data,
        json,
    } = Args::parse();
    // Usage errors (status 2), not problems found in the data (status 1).
    let usage = |message: &str| -> ! {
        use clap::CommandFactory;
        Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit()
    };
    match (format.as_str(), &list) {
        ("folder", Some(_)) => {
            usage("--format folder reads the folder layout under --data: give no --list")
        }
        ("folder", None) if allow_outside_data => {
            usage("--allow-outside-data applies to list entries; --format folder reads no list")
        }
        ("folder", None) => {}
        (_, None) => usage("--list FILE is required for list formats"),
        _ => {}
    }
    // One clear error, not every entry reported missing.
    match std::fs::metadata(&data) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => bail!(
            "the data root {} (--data) is not a directory",
            data.display()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            bail!("the data root {} (--data) does not exist", data.display())
        }
        Err(error) => bail!(
            "cannot read the data root {} (--data): {error}",
            data.display()
        ),
    }
    let options = ListOptions {
        policy: BadInputPolicy::Skip,
        check: FileCheck::Decode,
        allow_outside_root: allow_outside_data,
    };
    let listing = if format == "folder" {
        read_folder(&data, &options)?
    } else {
        let parsed = ListFormat::from_name(&format).context("checked when parsed")?;
        let list = list.as_ref().context("checked above")?;
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
            "ignored": serde_json::to_value(&listing.ignored)?,
        });
        outln!("{report}")?;
    } else {
        outln!(
            "split {split}: {} valid samples, {} duplicate lines",
            listing.samples.len(),
            listing.duplicates
        )?;
        for (category, n) in &counts {
            outln!("  {:<12} {n}", category.name())?;
        }
        outln!("by kind:")?;
        for (kind, n) in &kinds {
            outln!("  {kind:<24} {n}")?;
        }
        if !listing.ignored.is_empty() {
            outln!("{} passed over (not listed)", listing.ignored.len())?;
            for ignored in &listing.ignored {
                outln!("  {ignored}")?;
            }
        }
        outln!("{} problem(s)", listing.problems.len())?;
        for problem in &listing.problems {
            outln!("  {problem}")?;
        }
    }
    if !listing.problems.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
