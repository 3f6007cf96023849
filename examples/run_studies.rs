//! The paper's ablations: MoE none / Soft / La (Table 6) or prompts T-1 to
//! T-8 (Table 5), each trained with the same flags as `train_uniattack`
//! (except `--resume`, `--report` and `--gpus`), collected into
//! `<output>/table.md`.
//!
//! ```text
//! cargo run --release --example run_studies -- --study moe --demo --output runs/moe-study
//! cargo run --release --example run_studies --features cuda -- --study prompts \
//!     --data /data/CASIA-FAS --protocol p1 --output runs/prompt-study
//! ```

use clap::Parser;
use uniattack::studies::Study;

/// Train every variant of a study and tabulate the test metrics.
#[derive(Parser)]
#[command(name = "run_studies", version)]
struct Args {
    /// Which study.
    #[arg(long, value_enum)]
    study: Study,
    /// The base run's settings (every `train_uniattack` flag).
    #[command(flatten)]
    train: uniattack::cli::train::TrainArgs,
}

fn main() -> anyhow::Result<()> {
    uniattack::runtime::tolerate_closed_stdout();
    let args = Args::parse();
    uniattack::studies::refuse_run_flags(&args.train)?;
    uniattack::runtime::init();
    let base = args.train.experiment()?;
    let device = uniattack::runtime::device(args.train.device.as_deref())?;
    let out = args.train.output.clone().unwrap_or_else(|| {
        uniattack::runtime::default_run_dir(&format!("{:?}-study", args.study).to_lowercase())
    });
    let options = uniattack::studies::StudyOptions {
        device,
        check_images: args.train.check_images,
    };
    let table = uniattack::studies::run(args.study, &base, &out, &options)?;
    uniattack::runtime::say(&table);
    Ok(())
}
