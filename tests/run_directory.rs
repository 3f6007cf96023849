//! What `Trainer::new` does with its output directory: a run is never
//! started over another one, a start that failed before recording anything
//! does not block a corrected retry, a second process on a live run is
//! refused, a resume that would change a cosine schedule's length or
//! continue over changed lists is refused, and the best checkpoint survives
//! a failure between its two writes.

mod common;

use anyhow::Result;
use uniattack::schedule::Decay;
use uniattack::Trainer;

use common::error_of;

/// Writes the checkpoint at `path` again with its header changed by
/// `change`, as another version or another course of the run would have
/// written it (its checksum made anew).
fn rewrite_checkpoint(
    path: &std::path::Path,
    change: impl FnOnce(&mut uniattack::checkpoint::CheckpointMeta),
) -> Result<()> {
    use uniattack::tensor_data::TensorData;
    let mut checkpoint = uniattack::checkpoint::read_checkpoint(path)?;
    change(&mut checkpoint.meta);
    let tensors = checkpoint
        .tensors
        .into_iter()
        .map(|(name, tensor)| (name, TensorData::Tensor(tensor)))
        .collect();
    uniattack::checkpoint::write_checkpoint(path, checkpoint.meta, tensors)?;
    Ok(())
}

#[test]
fn a_run_is_never_started_over_another() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, out) = common::one_epoch(dir.path());
    Trainer::new(cfg.clone(), common::options(&out, false))?.train()?;
    let err = error_of(Trainer::new(cfg, common::options(&out, false)));
    assert!(err.contains("already holds a run"), "{err}");
    Ok(())
}

/// A batch larger than the train split fails once the directory exists;
/// the same directory then takes a corrected start (it used to be refused
/// as a run, and as another configuration on `--resume`): the failed
/// start's `config.json`, written at once for a retry, is no run.
#[test]
fn a_failed_start_does_not_block_a_corrected_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let out = dir.path().join("run");
    let mut too_large = common::experiment(&root);
    too_large.loader.batch_size = 1000;
    let err = error_of(Trainer::new(
        too_large.clone(),
        common::options(&out, false),
    ));
    assert!(err.contains("do not fill one batch"), "{err}");
    // Its settings are recorded, for a retry with `--resume --output` alone.
    assert_eq!(
        std::fs::read_to_string(out.join("config.json"))?,
        too_large.to_json()
    );

    let mut cfg = common::experiment(&root);
    cfg.training.epochs = 1;
    Trainer::new(cfg, common::options(&out, false))?.train()?;
    Ok(())
}

#[test]
fn a_second_process_on_a_live_run_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, out) = common::one_epoch(dir.path());
    let mut first = Trainer::new(cfg.clone(), common::options(&out, false))?;
    first.train()?;
    let err = error_of(Trainer::new(cfg.clone(), common::options(&out, true)));
    assert!(err.contains("in use by another training process"), "{err}");
    drop(first);
    // Released with the first trainer (also when a process dies).
    Trainer::new(cfg, common::options(&out, true))?;
    Ok(())
}

/// A refused resume leaves the run's `config.json` as it was.
#[test]
fn a_cosine_run_resumes_only_at_its_own_length() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = common::experiment(&root);
    cfg.schedule.decay = Decay::Cosine;
    cfg.training.epochs = 2;
    cfg.training.checkpoint_every = Some(1);
    let out = dir.path().join("run");
    Trainer::new(cfg.clone(), common::options(&out, false))?.train()?;

    let mut longer = cfg.clone();
    longer.training.epochs = 3;
    let saved = std::fs::read(out.join("config.json"))?;
    let err = error_of(Trainer::new(longer.clone(), common::options(&out, true)));
    assert!(
        err.contains("--epochs/--max-steps") && err.contains("4 steps long"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("config.json"))?, saved);
    // A constant schedule does not depend on the length: the run may grow.
    longer.schedule.decay = Decay::Constant;
    let mut constant = cfg.clone();
    constant.schedule.decay = Decay::Constant;
    let other = dir.path().join("constant");
    Trainer::new(constant, common::options(&other, false))?.train()?;
    let mut grown = Trainer::new(longer, common::options(&other, true))?;
    assert_eq!((grown.step(), grown.total_steps()), (4, 6));
    grown.train()?;
    Ok(())
}

/// A resume over a list that changed since the run was trained is
/// refused naming the list, whatever the schedule: a training list that
/// lost images, and a dev list with the same entries and one label changed.
#[test]
fn a_resume_over_changed_lists_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, out) = common::one_epoch(dir.path());
    Trainer::new(cfg.clone(), common::options(&out, false))?.train()?;
    let protocol = cfg.data.root.join("UniAttackData/protocol");

    let train = protocol.join("UniAttackData@p1_image_train.txt");
    let text = std::fs::read_to_string(&train)?;
    let fewer: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&train, fewer)?;
    let err = error_of(Trainer::new(cfg.clone(), common::options(&out, true)));
    assert!(
        err.contains("UniAttackData@p1_image_train.txt")
            && err.contains("changed since the run")
            && err.contains(" samples then, "),
        "{err}"
    );
    std::fs::write(&train, text)?;

    let dev = protocol.join("UniAttackData@p1_image_dev.txt");
    let text = std::fs::read_to_string(&dev)?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let (entry, label) = lines[0].rsplit_once(' ').expect("`entry label` lines");
    let other = if label == "0" { "1" } else { "0" };
    lines[0] = format!("{entry} {other}");
    std::fs::write(&dev, lines.join("\n") + "\n")?;
    let err = error_of(Trainer::new(cfg.clone(), common::options(&out, true)));
    assert!(
        err.contains("UniAttackData@p1_image_dev.txt") && err.contains("other entries or labels"),
        "{err}"
    );
    std::fs::write(&dev, text)?;

    // The lists as they were: the resume is accepted.
    Trainer::new(cfg, common::options(&out, true))?;
    Ok(())
}

/// Data that moved is taken on resume only where the checkpoint recorded
/// what its lists hold: a checkpoint from before that record, resumed over
/// another data root, is refused.
#[test]
fn moved_data_needs_the_checkpoints_record_of_its_lists() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, out) = common::one_epoch(dir.path());
    Trainer::new(cfg.clone(), common::options(&out, false))?.train()?;
    let moved = dir.path().join("moved");
    std::fs::rename(&cfg.data.root, &moved)?;
    let mut elsewhere = cfg.clone();
    elsewhere.data.root = moved;
    let latest = out.join("checkpoints/step-0000000002.safetensors");
    rewrite_checkpoint(&latest, |meta| meta.lists = None)?;
    let err = error_of(Trainer::new(elsewhere, common::options(&out, true)));
    assert!(err.contains("predates the record of its lists"), "{err}");
    Ok(())
}

/// The step checkpoint is written before the best checkpoint it records,
/// and a resume writes a missing or damaged best file again from those
/// weights: byte for byte the best file of a run that never failed.
#[test]
fn a_best_checkpoint_lost_after_its_step_checkpoint_is_written_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, straight) = common::one_epoch(dir.path());
    Trainer::new(cfg.clone(), common::options(&straight, false))?.train()?;
    let expected = std::fs::read(straight.join("checkpoints/best.safetensors"))?;

    // A directory where the best file goes makes its write fail, as a kill
    // between the two writes would leave things.
    let out = dir.path().join("failed");
    let best = out.join("checkpoints/best.safetensors");
    let mut failing = Trainer::new(cfg.clone(), common::options(&out, false))?;
    std::fs::create_dir_all(&best)?;
    assert!(
        failing.train().is_err(),
        "the best file's write did not fail"
    );
    drop(failing);
    assert!(
        out.join("checkpoints/step-0000000002.safetensors")
            .is_file(),
        "the step checkpoint that records the best was not written first"
    );
    std::fs::remove_dir(&best)?;
    Trainer::new(cfg.clone(), common::options(&out, true))?;
    assert!(
        std::fs::read(&best)? == expected,
        "written again, but not as the best of step 2"
    );

    // Damaged (cut short): set aside and written again.
    std::fs::write(&best, &expected[..expected.len() / 2])?;
    let mut resumed = Trainer::new(cfg, common::options(&out, true))?;
    assert!(
        std::fs::read(&best)? == expected,
        "a damaged best file was not replaced"
    );
    resumed.finish()?;
    Ok(())
}

/// When the recorded best is an earlier step than the resumed checkpoint
/// and its file is damaged, those weights are gone: the damaged file is set
/// aside (not overwritten) and the run chooses its best again among the
/// evaluations it still makes.
#[test]
fn a_damaged_best_of_an_earlier_step_is_set_aside_and_chosen_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut cfg, out) = common::one_epoch(dir.path());
    cfg.training.epochs = 2;
    cfg.training.checkpoint_every = Some(1);
    cfg.training.keep_last = 4;
    Trainer::new(cfg.clone(), common::options(&out, false))?.train()?;
    std::fs::remove_file(out.join("checkpoints/step-0000000004.safetensors"))?;
    let best = out.join("checkpoints/best.safetensors");
    let damaged = b"not a checkpoint".to_vec();
    std::fs::write(&best, &damaged)?;
    // An earlier incident's file stays as it is.
    std::fs::write(out.join("checkpoints/best.safetensors.damaged"), "earlier")?;

    let mut resumed = Trainer::new(cfg, common::options(&out, true))?;
    assert_eq!(resumed.step(), 3);
    assert_eq!(
        std::fs::read(out.join("checkpoints/best.safetensors.damaged-2"))?,
        damaged
    );
    assert_eq!(
        std::fs::read_to_string(out.join("checkpoints/best.safetensors.damaged"))?,
        "earlier"
    );
    assert!(!best.exists());
    resumed.train()?;
    let chosen = uniattack::checkpoint::verify_checkpoint(&best)?;
    assert_eq!(
        chosen.step, 4,
        "the evaluation of step 4 is the only one left"
    );
    assert_eq!(chosen.best.map(|b| b.step), Some(4));
    Ok(())
}

/// A run written before warmups longer than the run were refused resumes
/// as it was configured: its settings cannot change on resume, so refusing
/// it would strand it.
#[test]
fn an_older_run_with_a_long_warmup_still_resumes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut cfg, out) = common::one_epoch(dir.path());
    cfg.training.checkpoint_every = Some(1);
    cfg.training.keep_last = 4;
    Trainer::new(cfg.clone(), common::options(&out, false))?.train()?;
    // As an older version wrote it: a warmup of 3 in a run of 2 steps.
    cfg.schedule.warmup_steps = 3;
    std::fs::write(out.join("config.json"), cfg.to_json())?;
    std::fs::remove_file(out.join("checkpoints/step-0000000002.safetensors"))?;
    rewrite_checkpoint(
        &out.join("checkpoints/step-0000000001.safetensors"),
        |meta| meta.experiment.schedule.warmup_steps = 3,
    )?;

    let mut resumed = Trainer::new(cfg.clone(), common::options(&out, true))?;
    assert_eq!(resumed.step(), 1);
    resumed.train()?;
    // A new run with those settings is refused.
    let err = error_of(Trainer::new(
        cfg,
        common::options(&dir.path().join("new"), false),
    ));
    assert!(err.contains("--warmup-steps"), "{err}");
    Ok(())
}

/// A resume at the last step, already evaluated, whose recorded best (an
/// earlier step) is gone: the final evaluation makes the last step the best
/// and writes its file, without logging that step's evaluation a second
/// time (it used to append a duplicate record to `metrics.jsonl`).
#[test]
fn a_lost_earlier_best_at_the_last_step_is_not_logged_twice() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, out) = common::one_epoch(dir.path());
    Trainer::new(cfg.clone(), common::options(&out, false))?.train()?;
    // The last step's checkpoint as a run whose best was step 1 leaves it
    // (the written run evaluated step 2 only), and that best's file lost.
    rewrite_checkpoint(
        &out.join("checkpoints/step-0000000002.safetensors"),
        |meta| meta.best.as_mut().expect("step 2 records a best").step = 1,
    )?;
    std::fs::remove_file(out.join("checkpoints/best.safetensors"))?;
    let evals = |text: &str| {
        text.lines()
            .filter(|line| line.contains(r#""kind":"eval""#))
            .count()
    };
    let before = evals(&std::fs::read_to_string(out.join("metrics.jsonl"))?);
    assert_eq!(before, 1);

    let mut resumed = Trainer::new(cfg, common::options(&out, true))?;
    resumed.train()?;
    let report = resumed.finish()?;
    assert_eq!(report.step, Some(2));
    let chosen =
        uniattack::checkpoint::verify_checkpoint(&out.join("checkpoints/best.safetensors"))?;
    assert_eq!(chosen.best.map(|b| b.step), Some(2));
    let after = evals(&std::fs::read_to_string(out.join("metrics.jsonl"))?);
    assert_eq!(after, 1, "the last step's evaluation was logged again");
    Ok(())
}

/// `--resume` on a directory holding a run's best checkpoint and report but
/// no step checkpoint is refused (it would start over and replace them);
/// on an empty directory it starts a new run.
#[test]
fn a_resume_with_nothing_to_resume_never_replaces_a_run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, out) = common::one_epoch(dir.path());
    Trainer::new(cfg.clone(), common::options(&out, false))?.run()?;
    for (_, path) in uniattack::run_dir::RunDir::new(out.clone()).step_checkpoints()? {
        std::fs::remove_file(path)?;
    }
    let best = std::fs::read(out.join("checkpoints/best.safetensors"))?;
    let err = error_of(Trainer::new(cfg.clone(), common::options(&out, true)));
    assert!(err.contains("no step checkpoint to resume from"), "{err}");
    assert_eq!(
        std::fs::read(out.join("checkpoints/best.safetensors"))?,
        best
    );

    let fresh = dir.path().join("fresh");
    let mut trainer = Trainer::new(cfg, common::options(&fresh, true))?;
    assert_eq!(trainer.step(), 0);
    trainer.train()?;
    Ok(())
}

/// A directory holding someone else's `config.json` (a model directory
/// given as `--output`) is refused, and the file is left as it was.
#[test]
fn a_model_directory_is_not_an_output() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, _) = common::one_epoch(dir.path());
    let model = dir.path().join("clip-b16");
    std::fs::create_dir_all(&model)?;
    let config = r#"{"architectures": ["CLIPModel"], "vision_config": {}, "text_config": {}}"#;
    std::fs::write(model.join("config.json"), config)?;
    let err = error_of(Trainer::new(cfg, common::options(&model, false)));
    assert!(err.contains("not a uniattack experiment"), "{err}");
    assert_eq!(std::fs::read_to_string(model.join("config.json"))?, config);
    Ok(())
}

/// `--report` naming a directory, an input, a file of the run (its best
/// checkpoint, its scores), any file that is not a report (an image of
/// the dataset) or a path under a file is refused at the start, not after
/// the run, and every file is left as it was; an earlier report is
/// replaced.
#[test]
fn a_report_copy_over_anything_but_a_report_is_refused_at_the_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, first) = common::one_epoch(dir.path());
    Trainer::new(cfg.clone(), common::options(&first, false))?.run()?;
    let out = dir.path().join("second");
    let protocol = cfg.data.root.join("UniAttackData/protocol");
    let list = protocol.join("UniAttackData@p1_image_test.txt");
    let listed = std::fs::read_to_string(&list)?;
    let entry = listed.split_whitespace().next().unwrap();
    let image = cfg.data.root.join(entry);
    assert!(image.is_file(), "{}", image.display());
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "mine")?;
    // The second run's own directory exists once its start is under way;
    // an earlier run's files are guarded as files that are not reports.
    let cases = [
        (list.clone(), "it is the input"),
        (dir.path().to_path_buf(), "is a directory"),
        (
            out.join("checkpoints/best.safetensors"),
            "one of the files of the run",
        ),
        (
            out.join("../second/scores/dev.txt"),
            "one of the files of the run",
        ),
        (
            first.join("report.json"),
            "is the report of the run or evaluation",
        ),
        (
            first.join("checkpoints/best.safetensors"),
            "not a uniattack report",
        ),
        (first.join("scores/dev.txt"), "not a uniattack report"),
        (image.clone(), "not a uniattack report"),
        (notes.clone(), "not a uniattack report"),
        (notes.join("report.json"), "is not a directory"),
    ];
    let guarded = [
        &list,
        &image,
        &notes,
        &first.join("checkpoints/best.safetensors"),
    ];
    let before: Vec<Vec<u8>> = guarded.iter().map(|p| std::fs::read(p).unwrap()).collect();
    for (report, expected) in cases {
        let mut options = common::options(&out, false);
        options.report = Some(report.clone());
        let err = error_of(Trainer::new(cfg.clone(), options));
        assert!(
            err.contains("--report") && err.contains(expected),
            "{}: {err}",
            report.display()
        );
    }
    let after: Vec<Vec<u8>> = guarded.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(before == after);

    // A copy of an earlier report, elsewhere, is replaced.
    let copy = dir.path().join("results/p1.json");
    std::fs::create_dir_all(copy.parent().unwrap())?;
    std::fs::copy(first.join("report.json"), &copy)?;
    let mut options = common::options(&out, false);
    options.report = Some(copy.clone());
    Trainer::new(cfg, options)?.run()?;
    assert_eq!(
        std::fs::read_to_string(&copy)?,
        std::fs::read_to_string(out.join("report.json"))?
    );
    Ok(())
}

/// One list given for two splits, or two files listing the same samples,
/// is refused before anything trains: dev would choose the threshold and
/// the best checkpoint on test, or the model would be scored on what it
/// trained on. Lists that share only some entries are taken.
#[test]
fn splits_that_list_the_same_samples_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, out) = common::one_epoch(dir.path());
    let protocol = cfg.data.root.join("UniAttackData/protocol");
    let list = |split: &str| protocol.join(format!("UniAttackData@p1_image_{split}.txt"));
    let copy = dir.path().join("test-copy.txt");
    std::fs::copy(list("test"), &copy)?;
    let with_lists = |train: std::path::PathBuf, dev: std::path::PathBuf, test| {
        let mut cfg = cfg.clone();
        cfg.data.dataset = uniattack::experiment::Dataset::Lists {
            format: fas_data::ListFormat::UniattackProtocol,
            train,
            dev,
            test,
        };
        cfg
    };
    for (cfg, expected) in [
        (
            with_lists(list("train"), list("test"), list("test")),
            "chosen on the test samples",
        ),
        (
            with_lists(list("train"), copy.clone(), list("test")),
            "chosen on the test samples",
        ),
        (
            with_lists(list("test"), list("dev"), list("test")),
            "scored on the samples it trains on",
        ),
    ] {
        let err = error_of(Trainer::new(cfg, common::options(&out, false)));
        assert!(
            err.contains("same samples") && err.contains(expected),
            "{err}"
        );
    }
    // Selecting on test (reports say so) takes one list for dev and test.
    let mut test_selected = with_lists(list("train"), list("test"), list("test"));
    test_selected.eval.select_on = uniattack::experiment::Selection::Test;
    Trainer::new(test_selected, common::options(&out, false))?;
    // A dev list that also holds one test sample: taken (with a note).
    let dev = dir.path().join("dev-plus-one.txt");
    let test_text = std::fs::read_to_string(list("test"))?;
    let extra = test_text.lines().next().unwrap();
    std::fs::write(
        &dev,
        format!("{}{extra}\n", std::fs::read_to_string(list("dev"))?),
    )?;
    Trainer::new(
        with_lists(list("train"), dev, list("test")),
        common::options(&out, false),
    )?;
    Ok(())
}

/// A directory holding results the run would write over (a folder of
/// other results), the data root itself, and a file are refused as
/// `--output`, and nothing in them is touched; a directory holding only
/// other files (a job's log the shell created first) is taken.
#[test]
fn a_foreign_directory_is_not_an_output() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, _) = common::one_epoch(dir.path());
    let results = dir.path().join("results");
    std::fs::create_dir_all(results.join("scores"))?;
    std::fs::create_dir_all(results.join("plots"))?;
    std::fs::write(results.join("scores/test.txt"), "other detector's scores")?;
    std::fs::write(results.join("plots/roc.png"), "a plot")?;
    std::fs::write(results.join(".draft.tmp-notes"), "a person's notes")?;
    let listing = |dir: &std::path::Path| -> Vec<(std::path::PathBuf, Vec<u8>)> {
        common::files_under(dir)
            .into_iter()
            .map(|path| (path.clone(), std::fs::read(&path).unwrap()))
            .collect()
    };
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x")?;
    for (output, resume, expected) in [
        (results.clone(), false, "which this run would write over"),
        (results.clone(), true, "which this run would write over"),
        (cfg.data.root.clone(), false, "is the data root"),
        (file.clone(), false, "is not a directory"),
    ] {
        let before = listing(&results);
        let data_before = listing(&cfg.data.root);
        let err = error_of(Trainer::new(cfg.clone(), common::options(&output, resume)));
        assert!(
            err.contains("--output") && err.contains(expected),
            "{}: {err}",
            output.display()
        );
        assert!(listing(&results) == before && listing(&cfg.data.root) == data_before);
    }
    assert_eq!(std::fs::read_to_string(&file)?, "x");

    // Another program's log beside its results looks like a run's start to
    // `--resume`, which would start over: refused as well.
    std::fs::write(results.join("metrics.jsonl"), "{\"loss\": 1.0}\n")?;
    let before = listing(&results);
    let err = error_of(Trainer::new(cfg.clone(), common::options(&results, true)));
    assert!(err.contains("not a uniattack run"), "{err}");
    assert!(listing(&results) == before);

    // `train_uniattack --output runs/p1 > runs/p1/train.log`, empty result
    // folders made beforehand, and a person's file whose name looks like a
    // temporary: taken, and kept.
    let job = dir.path().join("job");
    std::fs::create_dir_all(job.join("scores"))?;
    std::fs::create_dir_all(job.join("plots"))?;
    std::fs::write(job.join("train.log"), "")?;
    std::fs::write(job.join(".draft.tmp-notes"), "a person's notes")?;
    Trainer::new(cfg, common::options(&job, false))?;
    assert_eq!(
        std::fs::read_to_string(job.join(".draft.tmp-notes"))?,
        "a person's notes"
    );
    Ok(())
}

/// A run resumed with a length shorter than its progress is refused; one
/// resumed with its checkpoint's step as the length evaluates that step
/// (its last evaluation was earlier), as a run of that length would.
#[test]
fn a_shortened_resume_evaluates_its_last_step_or_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut cfg, out) = common::one_epoch(dir.path());
    cfg.training.epochs = 2;
    cfg.training.checkpoint_every = Some(1);
    cfg.training.keep_last = 4;
    // A constant schedule may change length; a cosine may not (tested above).
    cfg.schedule.decay = Decay::Constant;
    Trainer::new(cfg.clone(), common::options(&out, false))?.train()?;
    std::fs::remove_file(out.join("checkpoints/step-0000000004.safetensors"))?;

    let mut shorter = cfg.clone();
    shorter.training.max_steps = Some(2);
    let err = error_of(Trainer::new(shorter, common::options(&out, true)));
    assert!(
        err.contains("at step 3, past this resume's length of 2"),
        "{err}"
    );

    let mut at_checkpoint = cfg;
    at_checkpoint.training.max_steps = Some(3);
    let mut trainer = Trainer::new(at_checkpoint, common::options(&out, true))?;
    trainer.train()?;
    let evaluated: Vec<u64> = std::fs::read_to_string(out.join("metrics.jsonl"))?
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|record| record["kind"] == "eval")
        .map(|record| record["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evaluated, [2, 3]);
    Ok(())
}

/// A resume may change what no weight depends on: the rolling checkpoints
/// kept, how often one is written between evaluations, and the evaluation
/// batch size (an evaluation that ran out of GPU memory). The resumed run
/// ends with the weights of one never stopped, keeps the new number of
/// checkpoints, and records the new settings.
#[test]
fn a_resume_may_change_checkpointing_and_the_evaluation_batch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut cfg, out) = common::one_epoch(dir.path());
    cfg.training.epochs = 2;
    // A constant schedule may change length (the first part stops early).
    cfg.schedule.decay = Decay::Constant;
    let whole = dir.path().join("whole");
    Trainer::new(cfg.clone(), common::options(&whole, false))?.train()?;

    let mut first = cfg.clone();
    first.training.max_steps = Some(2);
    Trainer::new(first, common::options(&out, false))?.train()?;
    let mut resumed = cfg.clone();
    resumed.training.keep_last = 1;
    resumed.training.checkpoint_every = Some(1);
    resumed.loader.eval_batch_size = 5;
    Trainer::new(resumed.clone(), common::options(&out, true))?.train()?;

    let steps: Vec<_> = std::fs::read_dir(out.join("checkpoints"))?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.as_ref().map_or(true, |n| n.starts_with("step-")))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(steps, ["step-0000000004.safetensors"]);
    let saved = uniattack::ExperimentConfig::from_file(&out.join("config.json"))?;
    assert_eq!(saved, resumed);
    let weights = |run: &std::path::Path| -> Result<Vec<(String, Vec<f32>)>> {
        let last = uniattack::checkpoint::read_checkpoint(
            &run.join("checkpoints/step-0000000004.safetensors"),
        )?;
        let mut tensors = Vec::new();
        for (name, tensor) in last.tensors {
            tensors.push((name, tensor.flatten_all()?.to_vec1::<f32>()?));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(tensors)
    };
    let (got, want) = (weights(&out)?, weights(&whole)?);
    assert!(!got.is_empty());
    assert_eq!(got, want);
    Ok(())
}

/// A write a killed process left in a directory that holds no run yet (a
/// first checkpoint) is removed when a run starts there.
#[test]
fn a_killed_first_write_is_cleaned_up() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, out) = common::one_epoch(dir.path());
    let stale = out.join("checkpoints/.step-0000000001.safetensors.tmp-123-0");
    std::fs::create_dir_all(stale.parent().unwrap())?;
    std::fs::write(&stale, "half a checkpoint")?;
    // This version's killed writes leave a directory, holding the file and
    // (safetensors') the writer's own temporary.
    let killed = out.join("checkpoints/.step-0000000001.safetensors.tmp-124-0");
    std::fs::create_dir_all(&killed)?;
    std::fs::write(killed.join(".tmpAb3dEf"), "half a checkpoint")?;
    let config = out.join(".config.json.tmp-124-1");
    std::fs::create_dir_all(&config)?;
    // An earlier version's leak: safetensors' own temporary, beside.
    let leaked = out.join("checkpoints/.tmpAb3dEf");
    std::fs::write(&leaked, "half a checkpoint")?;
    Trainer::new(cfg, common::options(&out, false))?;
    assert!(!stale.exists() && !killed.exists() && !config.exists() && !leaked.exists());
    Ok(())
}

/// Settings that would train nothing or not what they say are refused: a
/// run of 0 steps, more micro-batches per step than an epoch has, and a
/// warmup longer than the run (its peak learning rate never reached).
#[test]
fn runs_of_no_step_or_oversized_accumulation_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, out) = common::one_epoch(dir.path());
    let mut long_warmup = cfg.clone();
    long_warmup.schedule.warmup_steps = 3;
    let err = error_of(Trainer::new(long_warmup, common::options(&out, false)));
    assert!(
        err.contains("--warmup-steps") && err.contains("3 warmup steps exceed the run's 2"),
        "{err}"
    );
    // As long as the run: the peak is reached at the last step.
    let mut equal = cfg.clone();
    equal.schedule.warmup_steps = 2;
    Trainer::new(equal, common::options(&dir.path().join("equal"), false))?;
    let mut none = cfg.clone();
    none.training.max_steps = Some(0);
    let err = error_of(Trainer::new(none, common::options(&out, false)));
    assert!(
        err.contains("max_steps") && err.contains("at least 1"),
        "{err}"
    );
    let mut oversized = cfg;
    oversized.training.accumulation = 3;
    let err = error_of(Trainer::new(oversized, common::options(&out, false)));
    assert!(
        err.contains("--accumulate") && err.contains("batches of an epoch"),
        "{err}"
    );
    Ok(())
}

/// `--check-images` decodes every listed image at the start: a damaged
/// test image stops the run there, named, instead of after training
/// (without it, the start only checks that the file exists).
#[test]
fn check_images_finds_a_damaged_image_at_the_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, out) = common::one_epoch(dir.path());
    let list = cfg
        .data
        .root
        .join("UniAttackData/protocol/UniAttackData@p1_image_test.txt");
    let listed = std::fs::read_to_string(&list)?;
    let entry = listed.split_whitespace().next().unwrap();
    let image = cfg.data.root.join(entry);
    let bytes = std::fs::read(&image)?;
    std::fs::write(&image, &bytes[..bytes.len() / 2])?;

    Trainer::new(cfg.clone(), common::options(&out, false))?;
    let mut checked = common::options(&dir.path().join("checked"), false);
    checked.check_images = true;
    let err = error_of(Trainer::new(cfg, checked));
    let name = image.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name) && err.contains("truncated"), "{err}");
    Ok(())
}
