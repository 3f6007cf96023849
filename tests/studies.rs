//! `run_studies`' refusals and reuse, on the small set with one-epoch
//! variants: what it will not write over, what it checks before the first
//! variant trains, and which finished variants it reuses.

mod common;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clip_moe::MoeLayers;
use uniattack::studies::{run, Study, StudyOptions};
use uniattack::ExperimentConfig;

/// The small set under `dir/data` and a one-epoch base experiment on it.
fn base(dir: &Path) -> ExperimentConfig {
    let data = common::dataset(&dir.join("data"));
    let mut cfg = common::experiment(&data);
    cfg.training.epochs = 1;
    cfg
}

fn cpu() -> StudyOptions {
    StudyOptions {
        device: candle_core::Device::Cpu,
        check_images: false,
    }
}

fn error_of(result: uniattack::Result<String>) -> String {
    match result {
        Ok(table) => panic!("accepted:\n{table}"),
        Err(e) => e.to_string(),
    }
}

/// Whether anything trained under `out`: a logged record or a checkpoint.
fn trained_anything(out: &Path) -> bool {
    if !out.exists() {
        return false;
    }
    common::files_under(out).iter().any(|file: &PathBuf| {
        let name = file.file_name().unwrap().to_string_lossy();
        name.ends_with(".safetensors")
            || (name == "metrics.jsonl" && std::fs::metadata(file).unwrap().len() > 0)
    })
}

/// Removes the last entry of the P1 test list under `root`: other data.
fn drop_last_test_entry(root: &Path) -> Result<()> {
    let list = root.join("UniAttackData/protocol/UniAttackData@p1_image_test.txt");
    let listed = std::fs::read_to_string(&list)?;
    let mut lines: Vec<&str> = listed.lines().collect();
    lines.pop();
    std::fs::write(&list, lines.join("\n") + "\n")?;
    Ok(())
}

/// A `table.md` run_studies did not write, or the other study's, is
/// refused before anything trains, and left as it was.
#[test]
fn a_table_of_another_writer_is_not_replaced() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = base(dir.path());
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine)?;
    std::fs::write(mine.join("table.md"), "MINE\n")?;
    let err = error_of(run(Study::Moe, &base, &mine, &cpu()));
    assert!(err.contains("was not written by run_studies"), "{err}");
    assert_eq!(std::fs::read_to_string(mine.join("table.md"))?, "MINE\n");
    assert!(!mine.join("clip").exists());
    // A folder named table.md is said to be one.
    let folder = dir.path().join("folder");
    std::fs::create_dir_all(folder.join("table.md"))?;
    let err = error_of(run(Study::Moe, &base, &folder, &cpu()));
    assert!(
        err.contains("table.md is a directory, not a table"),
        "{err}"
    );

    let out = dir.path().join("moe");
    let table = run(Study::Moe, &base, &out, &cpu())?;
    assert!(table.starts_with(Study::Moe.heading()), "{table}");
    // Its own table it writes again.
    assert_eq!(run(Study::Moe, &base, &out, &cpu())?, table);
    let err = error_of(run(Study::Prompts, &base, &out, &cpu()));
    assert!(err.contains("holds the table of the moe study"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("table.md"))?, table);
    assert!(!out.join("T-1").exists());
    Ok(())
}

/// `--output` may be neither the data root (however spelled) nor a file.
#[test]
fn output_is_neither_the_data_root_nor_a_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = base(dir.path());
    let before = common::files_under(&base.data.root);
    let spelled = base.data.root.join("UniAttackData/..");
    let err = error_of(run(Study::Moe, &base, &spelled, &cpu()));
    assert!(err.contains("is the data root"), "{err}");
    assert_eq!(common::files_under(&base.data.root), before);

    let file = dir.path().join("afile");
    std::fs::write(&file, "x")?;
    let err = error_of(run(Study::Moe, &base, &file, &cpu()));
    assert!(err.contains("exists and is not a directory"), "{err}");
    Ok(())
}

/// `--check-images` reaches the variants: a damaged test image stops the
/// study at its start, named, instead of after the first variant trained.
#[test]
fn check_images_stops_the_study_at_its_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = base(dir.path());
    let list = base
        .data
        .root
        .join("UniAttackData/protocol/UniAttackData@p1_image_test.txt");
    let listed = std::fs::read_to_string(&list)?;
    let image = base
        .data
        .root
        .join(listed.split_whitespace().next().unwrap());
    let bytes = std::fs::read(&image)?;
    std::fs::write(&image, &bytes[..bytes.len() / 2])?;
    let out = dir.path().join("study");
    let options = StudyOptions {
        check_images: true,
        ..cpu()
    };
    let err = error_of(run(Study::Moe, &base, &out, &options));
    let name = image.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name) && err.contains("truncated"), "{err}");
    assert!(!trained_anything(&out));
    Ok(())
}

/// A MoE setting no MoE variant can take stops the study before the plain
/// variant trains; and the plain variant, which has no MoE, is reused when
/// only the MoE settings change.
#[test]
fn every_variant_is_checked_before_any_trains() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = base(dir.path());
    let out = dir.path().join("study");
    let mut beyond = base.clone();
    beyond.model.moe.layers = MoeLayers::List(vec![99]);
    let mut no_experts = base.clone();
    no_experts.model.moe.layer.as_mut().unwrap().num_experts = 0;
    let mut no_slots = base.clone();
    no_slots.model.moe.layer.as_mut().unwrap().slots_per_expert = 0;
    for (bad, field) in [
        (beyond, "moe.layers"),
        (no_experts, "num_experts"),
        (no_slots, "slots_per_expert"),
    ] {
        let err = error_of(run(Study::Moe, &bad, &out, &cpu()));
        assert!(err.contains(field), "{err}");
        assert!(!trained_anything(&out), "{err}");
    }

    let mut last = base.clone();
    last.model.moe.layers = MoeLayers::Last(1);
    run(Study::Moe, &last, &out, &cpu())?;
    let clip_report = out.join("clip/report.json");
    let written = std::fs::metadata(&clip_report)?.modified()?;
    let err = error_of(run(Study::Moe, &base, &out, &cpu()));
    assert!(
        err.contains("finished soft-moe run of other settings (differs in: model)"),
        "{err}"
    );
    for variant in ["soft-moe", "la-soft-moe"] {
        std::fs::remove_dir_all(out.join(variant))?;
    }
    run(Study::Moe, &base, &out, &cpu())?;
    assert_eq!(std::fs::metadata(&clip_report)?.modified()?, written);
    Ok(())
}

/// A finished variant is reused where a resume would continue it (its data
/// moved, its lists the same) and when only settings that do not change
/// its report differ; moved lists that changed, or another length, are
/// refused.
#[test]
fn finished_variants_are_reused_where_a_resume_allows() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = base(dir.path());
    let out = dir.path().join("study");
    let table = run(Study::Moe, &base, &out, &cpu())?;
    let reports: Vec<_> = ["clip", "soft-moe", "la-soft-moe"]
        .iter()
        .map(|v| std::fs::metadata(out.join(v).join("report.json")).and_then(|m| m.modified()))
        .collect::<std::io::Result<_>>()?;

    let moved = dir.path().join("moved");
    std::fs::rename(&base.data.root, &moved)?;
    let mut now = base.clone();
    now.data.root = moved.clone();
    now.training.keep_last = 3;
    now.training.checkpoint_every = Some(7);
    now.loader.eval_batch_size = 16;
    assert_eq!(run(Study::Moe, &now, &out, &cpu())?, table);
    for (variant, written) in ["clip", "soft-moe", "la-soft-moe"].iter().zip(&reports) {
        let modified = std::fs::metadata(out.join(variant).join("report.json"))?.modified()?;
        assert_eq!(&modified, written, "{variant}");
    }

    let mut longer = now.clone();
    longer.training.epochs = 2;
    let err = error_of(run(Study::Moe, &longer, &out, &cpu()));
    assert!(err.contains("training length"), "{err}");

    // The moved test list without its last entry is other data.
    drop_last_test_entry(&moved)?;
    let err = error_of(run(Study::Moe, &now, &out, &cpu()));
    assert!(
        err.contains("test split") && err.contains("differs from the list the finished clip run"),
        "{err}"
    );
    Ok(())
}

/// A finished variant's lists are compared with its checkpoint's record
/// even where the data did not move: a list edited in place is other data.
#[test]
fn a_list_edited_in_place_is_not_the_finished_variants_data() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = base(dir.path());
    let out = dir.path().join("study");
    run(Study::Moe, &base, &out, &cpu())?;
    drop_last_test_entry(&base.data.root)?;
    let err = error_of(run(Study::Moe, &base, &out, &cpu()));
    assert!(
        err.contains("test split") && err.contains("differs from the list the finished clip run"),
        "{err}"
    );
    Ok(())
}

/// An interrupted variant started with other settings is refused before an
/// earlier variant trains, not when its own turn comes.
#[test]
fn an_interrupted_variant_of_other_settings_is_refused_up_front() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = base(dir.path());
    let out = dir.path().join("study");
    run(Study::Moe, &base, &out, &cpu())?;
    // soft-moe trains first on the next run; la-soft-moe was interrupted
    // (no report yet) under the settings of the first run.
    std::fs::remove_dir_all(out.join("soft-moe"))?;
    std::fs::remove_file(out.join("la-soft-moe/report.json"))?;
    // Wider experts: plain CLIP's finished run stays reusable (it has no
    // branch), the interrupted la-soft-moe's settings differ.
    let mut now = base.clone();
    now.model.moe.expert_hidden_dim = Some(now.model.moe.expert_hidden_dim.unwrap_or(64) * 2);
    let err = error_of(run(Study::Moe, &now, &out, &cpu()));
    assert!(
        err.contains("la-soft-moe was started with other settings"),
        "{err}"
    );
    assert!(!trained_anything(&out.join("soft-moe")), "{err}");
    Ok(())
}
