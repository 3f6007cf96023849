//! The command-line contract of `train_uniattack`, `eval_uniattack` and
//! `detect`, through the library functions the examples call: outputs,
//! JSON, several checkpoints, an unreadable image among good ones, and
//! usage errors (exit status 2).

mod common;

use std::path::Path;

use anyhow::Result;
use clap::Parser;
use uniattack::cli::detect::DetectArgs;
use uniattack::cli::eval::EvalArgs;
use uniattack::cli::train::TrainArgs;
use uniattack::Trainer;

/// A one-epoch run on the small set, seeded `seed`; returns its directory.
fn trained(dir: &Path, data: &Path, seed: u64) -> Result<std::path::PathBuf> {
    let mut cfg = common::experiment(data);
    cfg.training.epochs = 1;
    cfg.seed = seed;
    let out = dir.join(format!("run-{seed}"));
    Trainer::new(cfg, common::options(&out, false))?.run()?;
    Ok(out)
}

fn scores(path: &Path) -> Vec<(String, f64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let (entry, score) = l.rsplit_once(' ').unwrap();
            (entry.to_string(), score.parse().unwrap())
        })
        .collect()
}

/// `detect` on a directory with a truncated JPEG among good images: an
/// error line for it, scores for the others equal to the run's test scores
/// of the same images, and one failure counted (exit status 1).
#[test]
fn detect_reports_a_broken_image_and_scores_the_rest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = common::dataset(&dir.path().join("data"));
    let run = trained(dir.path(), &data, 0)?;
    let test = scores(&run.join("scores/test.txt"));
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images)?;
    let picked: Vec<&(String, f64)> = test.iter().step_by(7).take(4).collect();
    for (i, (entry, _)) in picked.iter().enumerate() {
        std::fs::copy(data.join(entry), images.join(format!("{i}.jpg")))?;
    }
    let good = std::fs::read(images.join("0.jpg"))?;
    std::fs::write(images.join("9-broken.jpg"), &good[..good.len() / 2])?;

    // The same batch size as the run's evaluation, so each image meets the
    // same arithmetic.
    let args = DetectArgs::try_parse_from([
        "detect",
        "--checkpoint",
        run.to_str().unwrap(),
        "--json",
        "--batch-size",
        "32",
        images.to_str().unwrap(),
    ])?;
    let mut out = Vec::new();
    let failed = uniattack::cli::detect::run(&args, &mut out)?;
    assert_eq!(failed, 1);
    let lines: Vec<serde_json::Value> = String::from_utf8(out)?
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for (i, (_, expected)) in picked.iter().enumerate() {
        let line = &lines[i];
        assert!(line["path"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{i}.jpg")));
        let p = line["attack_probability"].as_f64().unwrap();
        assert!(
            (p - expected).abs() < 1e-6,
            "{line}: eval scored {expected}"
        );
        assert!(line["attack"].is_boolean());
    }
    let broken = &lines[4];
    assert!(broken["path"].as_str().unwrap().ends_with("9-broken.jpg"));
    assert!(
        broken["error"].as_str().unwrap().contains("truncated"),
        "{broken}"
    );

    // CSV: a header, then one row per image.
    let args = DetectArgs::try_parse_from([
        "detect",
        "--checkpoint",
        run.to_str().unwrap(),
        images.join("1.jpg").to_str().unwrap(),
        dir.path().join("absent.jpg").to_str().unwrap(),
    ])?;
    let mut out = Vec::new();
    assert_eq!(uniattack::cli::detect::run(&args, &mut out)?, 1);
    let text = String::from_utf8(out)?;
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows[0], "path,attack_probability,decision,error");
    assert!(
        rows[1].contains("1.jpg,0.") || rows[1].contains("1.jpg,1"),
        "{text}"
    );
    assert!(
        rows[2].contains("absent.jpg,,,") && rows[2].contains("not found"),
        "{text}"
    );
    Ok(())
}

/// `eval_uniattack --json --output`: one JSON report with the protocol
/// metrics, and report.json, report.csv, scores/{dev,test}.txt, plots/;
/// its test scores equal the training run's.
#[test]
fn eval_writes_the_report_and_score_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = common::dataset(&dir.path().join("data"));
    let run = trained(dir.path(), &data, 0)?;
    let out = dir.path().join("eval");
    let args = EvalArgs::try_parse_from([
        "eval_uniattack",
        "--checkpoint",
        run.to_str().unwrap(),
        "--json",
        "--output",
        out.to_str().unwrap(),
        "--batch-size",
        "32",
    ])?;
    let json: serde_json::Value = serde_json::from_str(&uniattack::cli::eval::run(&args)?)?;
    for key in [
        "threshold",
        "acer",
        "apcer",
        "bpcer",
        "hter",
        "acc",
        "auc",
        "eer",
    ] {
        assert!(json[key].is_number(), "{key} in {json}");
    }
    assert_eq!(json["protocol"], "p1");
    assert!(json["per_attack_type"].as_array().unwrap().len() >= 3);
    assert_eq!(json["bpcer_at_apcer"].as_array().unwrap().len(), 3);
    assert_eq!(
        scores(&out.join("scores/test.txt")),
        scores(&run.join("scores/test.txt"))
    );
    assert!(out.join("scores/dev.txt").is_file() && out.join("plots/roc.png").is_file());
    let csv = std::fs::read_to_string(out.join("report.csv"))?;
    assert!(csv.starts_with("checkpoint,step,threshold,acer"), "{csv}");
    // The run's own report was made the same way.
    let trained_report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json"))?)?;
    assert_eq!(trained_report["acer"], json["acer"]);
    assert_eq!(trained_report["auc"], json["auc"]);

    // Again into the same directory at the checkpoint's threshold: dev is
    // not scored, and the earlier evaluation's dev scores do not stay.
    let eval_again = |out: &std::path::Path| {
        EvalArgs::try_parse_from([
            "eval_uniattack",
            "--checkpoint",
            run.to_str().unwrap(),
            "--threshold",
            "checkpoint",
            "--output",
            out.to_str().unwrap(),
        ])
        .map(|args| uniattack::cli::eval::run(&args))
    };
    eval_again(&out)??;
    assert!(out.join("scores/test.txt").is_file());
    assert!(!out.join("scores/dev.txt").exists());
    // The training run's own directory is refused: its report and scores
    // are the record of the run.
    let report_before = std::fs::read(run.join("report.json"))?;
    let err = eval_again(&run)?.unwrap_err().to_string();
    assert!(err.contains("holds a training run"), "{err}");
    assert_eq!(std::fs::read(run.join("report.json"))?, report_before);
    Ok(())
}

/// `eval_uniattack --output` replaces an earlier evaluation in the same
/// directory whole: after one checkpoint, then two, then one again, only
/// the last evaluation's files are there. A directory holding anything
/// else is refused and left as it was.
#[test]
fn an_evaluation_directory_holds_one_evaluation() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = common::dataset(&dir.path().join("data"));
    let runs = [
        trained(dir.path(), &data, 0)?,
        trained(dir.path(), &data, 1)?,
    ];
    let out = dir.path().join("eval");
    let eval = |checkpoints: usize| -> Result<String> {
        let mut argv = vec!["eval_uniattack", "--output", out.to_str().unwrap()];
        for run in &runs[..checkpoints] {
            argv.extend(["--checkpoint", run.to_str().unwrap()]);
        }
        Ok(uniattack::cli::eval::run(&EvalArgs::try_parse_from(argv)?)?)
    };
    let files = |dir: &Path| -> Vec<String> {
        common::files_under(dir)
            .iter()
            .map(|path| path.strip_prefix(dir).unwrap().display().to_string())
            .collect()
    };
    let single = [
        "plots/det.png",
        "plots/roc.png",
        "plots/scores.png",
        "report.csv",
        "report.json",
        "scores/dev.txt",
        "scores/test.txt",
    ];
    eval(1)?;
    assert_eq!(files(&out), single);
    eval(2)?;
    let mut double: Vec<String> = (0..2)
        .flat_map(|i| {
            [
                "plots/det.png",
                "plots/roc.png",
                "plots/scores.png",
                "scores/dev.txt",
                "scores/test.txt",
            ]
            .map(|f| format!("checkpoint-{i}/{f}"))
        })
        .collect();
    double.extend(["report.csv".to_string(), "report.json".to_string()]);
    double.sort();
    assert_eq!(files(&out), double);
    eval(1)?;
    assert_eq!(files(&out), single);
    // A write a killed evaluation left is no one else's: removed.
    std::fs::write(out.join("scores/.test.txt.tmp-1-0"), "half")?;
    eval(1)?;
    assert_eq!(files(&out), single);
    // This version's killed writes leave a directory (with whatever the
    // writer had made inside it).
    for killed in ["scores/.dev.txt.tmp-1-1", ".report.json.tmp-1-2"] {
        std::fs::create_dir(out.join(killed))?;
        std::fs::write(out.join(killed).join("half"), "half")?;
    }
    eval(1)?;
    assert_eq!(files(&out), single);

    let file = dir.path().join("a-file");
    std::fs::write(&file, "x")?;
    let argv = [
        "eval_uniattack",
        "--output",
        file.to_str().unwrap(),
        "--checkpoint",
        runs[0].to_str().unwrap(),
    ];
    let err = uniattack::cli::eval::run(&EvalArgs::try_parse_from(argv)?)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a directory"), "{err}");

    std::fs::write(out.join("notes.txt"), "mine")?;
    let err = eval(1).unwrap_err().to_string();
    assert!(
        err.contains("notes.txt") && err.contains("not from an earlier evaluation"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(out.join("notes.txt"))?, "mine");
    Ok(())
}

/// Two seeds: one report each and the mean and sample standard deviation
/// per metric.
#[test]
fn several_checkpoints_give_mean_and_deviation() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = common::dataset(&dir.path().join("data"));
    let (a, b) = (
        trained(dir.path(), &data, 1)?,
        trained(dir.path(), &data, 2)?,
    );
    let args = EvalArgs::try_parse_from([
        "eval_uniattack",
        "--checkpoint",
        a.to_str().unwrap(),
        "--checkpoint",
        b.to_str().unwrap(),
        "--json",
    ])?;
    let json: serde_json::Value = serde_json::from_str(&uniattack::cli::eval::run(&args)?)?;
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let (x, y) = (
        runs[0]["auc"].as_f64().unwrap(),
        runs[1]["auc"].as_f64().unwrap(),
    );
    // Two seeds that scored alike would let any deviation formula pass.
    assert_ne!(x, y, "the two runs' AUCs are equal");
    let summary = &json["summary"]["auc"];
    assert!((summary["mean"].as_f64().unwrap() - (x + y) / 2.0).abs() < 1e-12);
    // Sample standard deviation of two values: |x - y| / sqrt(2).
    assert!((summary["std"].as_f64().unwrap() - (x - y).abs() / 2f64.sqrt()).abs() < 1e-12);

    // No seeds of one result: one run given twice (a spread of 0), and a
    // run on other data (another copy of the dataset, with other lists).
    let other_data = common::dataset(&dir.path().join("other-data"));
    let c = trained(&dir.path().join("other"), &other_data, 3)?;
    let b_again = dir.path().join("run-2/./");
    // A copy of a run's directory is the same training under another path.
    let b_copy = dir.path().join("copy-of-run-2");
    std::fs::create_dir_all(b_copy.join("checkpoints"))?;
    std::fs::copy(
        b.join("checkpoints/best.safetensors"),
        b_copy.join("checkpoints/best.safetensors"),
    )?;
    for (second, expected) in [
        (&b_again, "the same checkpoint"),
        (
            &b_copy,
            "hold the same training (one experiment with seed 2, at step 2): a copy of one run, \
             or a rerun of its seed",
        ),
        (&c, "the lists scored"),
    ] {
        let args = EvalArgs::try_parse_from([
            "eval_uniattack",
            "--checkpoint",
            b.to_str().unwrap(),
            "--checkpoint",
            second.to_str().unwrap(),
        ])?;
        let err = uniattack::cli::eval::run(&args).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
    Ok(())
}

/// A checkpoint's stored threshold is applied only to scores like those it
/// was chosen on: not to a step checkpoint written between evaluations (its
/// threshold belongs to the weights of the last evaluation), not at another
/// scoring level, not to another protocol. Such a step checkpoint reports
/// no selection, and the report says which way its score files point.
/// Checkpoints that differ in selection are not averaged.
#[test]
fn a_stored_threshold_is_used_only_where_it_belongs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = common::dataset(&dir.path().join("data"));
    let mut cfg = common::experiment(&data);
    cfg.training.epochs = 2;
    cfg.training.checkpoint_every = Some(1);
    cfg.training.keep_last = 4;
    let run = dir.path().join("run");
    Trainer::new(cfg, common::options(&run, false))?.run()?;
    let step3 = run.join("checkpoints/step-0000000003.safetensors");
    let eval = |extra: &[&str]| -> Result<Result<serde_json::Value, String>> {
        let mut argv = vec!["eval_uniattack", "--json"];
        argv.extend_from_slice(extra);
        let args = EvalArgs::try_parse_from(argv)?;
        Ok(uniattack::cli::eval::run(&args)
            .map(|json| serde_json::from_str(&json).unwrap())
            .map_err(|e| e.to_string()))
    };
    let (run_arg, step3_arg) = (run.to_str().unwrap(), step3.to_str().unwrap());

    let err = eval(&["--checkpoint", step3_arg, "--threshold", "checkpoint"])?.unwrap_err();
    assert!(err.contains("calibrated at step 2"), "{err}");
    let detect = |extra: &[&str]| -> Result<Result<usize, String>> {
        let mut argv = vec!["detect", "--checkpoint", step3_arg];
        argv.extend_from_slice(extra);
        argv.push(data.to_str().unwrap());
        let args = DetectArgs::try_parse_from(argv)?;
        let mut out = Vec::new();
        Ok(uniattack::cli::detect::run(&args, &mut out).map_err(|e| e.to_string()))
    };
    let err = detect(&[])?.unwrap_err();
    assert!(err.contains("calibrated at step 2"), "{err}");
    detect(&["--threshold", "0.5"])?.map_err(anyhow::Error::msg)?;

    let err = eval(&[
        "--checkpoint",
        run_arg,
        "--threshold",
        "checkpoint",
        "--video-level",
    ])?
    .unwrap_err();
    assert!(err.contains("chosen on per-image scores"), "{err}");
    let err = eval(&[
        "--checkpoint",
        run_arg,
        "--threshold",
        "checkpoint",
        "--protocol",
        "p2.1",
    ])?
    .unwrap_err();
    assert!(err.contains("dev split of p1"), "{err}");
    // Out of [0, 1]: a usage error, before anything is scored.
    assert!(EvalArgs::try_parse_from([
        "eval_uniattack",
        "--checkpoint",
        run_arg,
        "--threshold",
        "50"
    ])
    .is_err());

    let best = eval(&["--checkpoint", run_arg, "--threshold", "checkpoint"])?
        .map_err(anyhow::Error::msg)?;
    assert_eq!(best["selected_on"], "dev");
    assert_eq!(best["threshold_source"], "fixed");
    assert!(best["score_files"].is_null(), "no files were written");
    let out = dir.path().join("eval");
    let step = eval(&[
        "--checkpoint",
        step3_arg,
        "--output",
        out.to_str().unwrap(),
        "--score-polarity",
        "live",
    ])?
    .map_err(anyhow::Error::msg)?;
    assert!(step["selected_on"].is_null(), "{}", step["selected_on"]);
    assert_eq!(step["score_files"], "live-probability");
    assert_eq!(step["threshold_source"], "dev");

    // Refused from the headers, before anything is scored or written.
    let mixed = dir.path().join("mixed");
    let err = eval(&[
        "--checkpoint",
        run_arg,
        "--checkpoint",
        step3_arg,
        "--output",
        mixed.to_str().unwrap(),
    ])?
    .unwrap_err();
    assert!(
        err.contains("differ in checkpoint selection (selected on dev vs a step checkpoint)"),
        "{err}"
    );
    assert!(!mixed.exists(), "files were written before the refusal");
    Ok(())
}

/// A wrong flag or value is a usage error with exit status 2, for every tool.
#[test]
fn wrong_flags_are_usage_errors() {
    let cases: [(&str, Vec<&str>); 11] = [
        ("train", vec!["train_uniattack", "--demo", "--epochz", "3"]),
        ("train", vec!["train_uniattack", "--protocol", "p9"]),
        ("train", vec!["train_uniattack", "--prompt", "T-12"]),
        // --resume needs the run's directory: the default one is new on
        // every start, so it would silently train from scratch.
        ("train", vec!["train_uniattack", "--demo", "--resume"]),
        // Lists without --train-list would be ignored for the protocol's.
        (
            "train",
            vec![
                "train_uniattack",
                "--data",
                "d",
                "--dev-list",
                "a",
                "--test-list",
                "b",
            ],
        ),
        (
            "train",
            vec!["train_uniattack", "--data", "d", "--format", "binary"],
        ),
        ("eval", vec!["eval_uniattack", "--json"]),
        ("detect", vec!["detect", "--checkpoint", "x"]),
        // A NaN threshold decides nothing; 50 is a percentage.
        (
            "detect",
            vec!["detect", "--checkpoint", "x", "--threshold", "nan", "a.jpg"],
        ),
        (
            "detect",
            vec!["detect", "--checkpoint", "x", "--threshold", "50", "a.jpg"],
        ),
        (
            "detect",
            vec![
                "detect",
                "--checkpoint",
                "x",
                "--threshold",
                "-0.1",
                "a.jpg",
            ],
        ),
    ];
    for (tool, argv) in cases {
        let err = match tool {
            "train" => TrainArgs::try_parse_from(&argv).err(),
            "eval" => EvalArgs::try_parse_from(&argv).err(),
            _ => DetectArgs::try_parse_from(&argv).err(),
        }
        .unwrap_or_else(|| panic!("{argv:?} parsed"));
        assert_eq!(err.exit_code(), 2, "{argv:?}: {err}");
    }
    // Their valid forms parse.
    let threshold =
        DetectArgs::try_parse_from(["detect", "--checkpoint", "x", "--threshold", "0.3", "a.jpg"])
            .expect("a threshold in [0, 1]");
    assert_eq!(threshold.threshold, Some(0.3));
    for argv in [
        vec![
            "train_uniattack",
            "--demo",
            "--resume",
            "--output",
            "runs/a",
        ],
        vec![
            "train_uniattack",
            "--data",
            "d",
            "--train-list",
            "t",
            "--dev-list",
            "a",
            "--test-list",
            "b",
            "--format",
            "binary",
        ],
    ] {
        TrainArgs::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    }
    // --help and --version exist (exit status 0).
    for argv in [["train_uniattack", "--help"], ["detect", "--version"]] {
        let err = match argv[0] {
            "detect" => DetectArgs::try_parse_from(argv).unwrap_err(),
            _ => TrainArgs::try_parse_from(argv).unwrap_err(),
        };
        assert_eq!(err.exit_code(), 0);
    }
}

/// Without --data and --demo the training command says what to give.
#[test]
fn training_without_data_says_what_to_give() {
    let args = TrainArgs::try_parse_from(["train_uniattack"]).unwrap();
    let err = args.experiment().unwrap_err().to_string();
    assert!(err.contains("--data") && err.contains("--demo"), "{err}");
}

/// `--resume --output RUN` alone continues with the run's own settings
/// (its `config.json`); a flag beside it changes them as it changes a
/// preset; a directory without a `config.json` is an error saying what to
/// give. The resumed run finishes and writes its report.
#[test]
fn resume_alone_takes_the_runs_own_settings() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, out) = common::one_epoch(dir.path());
    Trainer::new(cfg.clone(), common::options(&out, false))?.train()?;
    // `train_uniattack --resume --output <run> <extra>`.
    let resume_in = |run: &Path, extra: &[&str]| {
        TrainArgs::try_parse_from(
            [
                &[
                    "train_uniattack",
                    "--resume",
                    "--output",
                    run.to_str().unwrap(),
                ][..],
                extra,
            ]
            .concat(),
        )
    };
    let resume = |extra: &[&str]| resume_in(&out, extra);
    assert_eq!(resume(&[])?.experiment()?, cfg);
    assert_eq!(resume(&["--seed", "99"])?.experiment()?.seed, 99);
    let report = uniattack::cli::train::run(&resume(&[])?)?.expect("a run of one process");
    assert_eq!(report.step, Some(2));
    assert!(out.join("report.json").is_file());

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let args = resume_in(&empty, &[])?;
    let err = args.experiment().unwrap_err().to_string();
    assert!(
        err.contains("holds no config.json") && err.contains("original command"),
        "{err}"
    );

    // A model directory's config.json is no run to resume.
    std::fs::write(
        empty.join("config.json"),
        r#"{"architectures": ["CLIPModel"], "vision_config": {}}"#,
    )?;
    let err = args.experiment().unwrap_err().to_string();
    assert!(err.contains("not a uniattack experiment"), "{err}");

    // A run trained from lists takes no protocol.
    let lists = dir.path().join("lists-run");
    std::fs::create_dir_all(&lists)?;
    let mut from_lists = cfg.clone();
    let list = |split: &str| dir.path().join(format!("{split}.txt"));
    from_lists.data.dataset = uniattack::experiment::Dataset::Lists {
        format: fas_data::ListFormat::UniattackProtocol,
        train: list("train"),
        dev: list("dev"),
        test: list("test"),
    };
    std::fs::write(lists.join("config.json"), from_lists.to_json())?;
    let resume_lists = |extra: &[&str]| resume_in(&lists, extra);
    assert_eq!(resume_lists(&[])?.experiment()?, from_lists);
    let err = resume_lists(&["--protocol", "p2.1"])?
        .experiment()
        .unwrap_err()
        .to_string();
    assert!(err.contains("--protocol") && err.contains("not a"), "{err}");
    Ok(())
}

/// A relative `--data` is stored absolute (the run resumes and evaluates
/// from any working directory), and a run whose data moved resumes with
/// `--resume --output <run> --data <new root>` alone: its own settings,
/// the new root, the lists' contents checked against the checkpoint.
#[test]
fn a_run_resumes_from_anywhere_and_over_moved_data() -> Result<()> {
    let relative = TrainArgs::try_parse_from(["train_uniattack", "--data", "some/data"])?;
    assert_eq!(
        relative.experiment()?.data.root,
        std::env::current_dir()?.join("some/data")
    );

    let dir = tempfile::tempdir()?;
    let (mut cfg, out) = common::one_epoch(dir.path());
    cfg.training.epochs = 2;
    cfg.training.checkpoint_every = Some(1);
    cfg.schedule.decay = uniattack::schedule::Decay::Constant;
    Trainer::new(cfg.clone(), common::options(&out, false))?.train()?;
    std::fs::remove_file(out.join("checkpoints/step-0000000004.safetensors"))?;
    let before_move = dir.path().join("before-move.safetensors");
    std::fs::copy(
        out.join("checkpoints/step-0000000003.safetensors"),
        &before_move,
    )?;
    let moved = dir.path().join("moved-data");
    std::fs::rename(&cfg.data.root, &moved)?;
    let args = TrainArgs::try_parse_from([
        "train_uniattack",
        "--resume",
        "--output",
        out.to_str().unwrap(),
        "--data",
        moved.to_str().unwrap(),
    ])?;
    let resumed = args.experiment()?;
    assert_eq!(resumed.data.root, moved);
    let mut expected = cfg.clone();
    expected.data.root = moved.clone();
    assert_eq!(resumed, expected);
    let report = uniattack::cli::train::run(&args)?.expect("a run of one process");
    assert_eq!(report.step, Some(4));
    let saved = uniattack::experiment::ExperimentConfig::from_file(&out.join("config.json"))?;
    assert_eq!(saved.data.root, moved);
    // A checkpoint from before the move names the old root: the error says
    // to give the new one.
    let args = EvalArgs::try_parse_from([
        "eval_uniattack",
        "--checkpoint",
        before_move.to_str().unwrap(),
        "--threshold",
        "0.5",
    ])?;
    let err = uniattack::cli::eval::run(&args).unwrap_err().to_string();
    assert!(err.contains("moved? give --data"), "{err}");
    Ok(())
}

/// A demo run with settings of its own resumes with `--demo` (which writes
/// removed demo data again) and no other flag: the run's settings, not
/// the demo's defaults.
#[test]
fn a_demo_run_resumes_with_its_own_settings() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let out = dir.path().join("run");
    let (root_arg, out_arg) = (root.to_str().unwrap(), out.to_str().unwrap());
    let started = TrainArgs::try_parse_from([
        "train_uniattack",
        "--demo",
        "--data",
        root_arg,
        "--output",
        out_arg,
        "--seed",
        "5",
        "--epochs",
        "3",
    ])?
    .experiment()?;
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("config.json"), started.to_json())?;
    let resumed = TrainArgs::try_parse_from([
        "train_uniattack",
        "--resume",
        "--demo",
        "--data",
        root_arg,
        "--output",
        out_arg,
    ])?
    .experiment()?;
    assert_eq!(resumed, started);
    // Its data still there: used as it is, not the demo cache's.
    let alone =
        TrainArgs::try_parse_from(["train_uniattack", "--resume", "--demo", "--output", out_arg])?
            .experiment()?;
    assert_eq!(alone, started);
    Ok(())
}

/// A run whose `config.json` was damaged resumes with `--resume --output`
/// alone from the settings its checkpoint records, and gets its
/// `config.json` back; without a checkpoint the damage is named.
#[test]
fn a_damaged_config_is_taken_from_the_checkpoint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut cfg, out) = common::one_epoch(dir.path());
    cfg.training.epochs = 2;
    cfg.schedule.decay = uniattack::schedule::Decay::Constant;
    cfg.training.checkpoint_every = Some(1);
    Trainer::new(cfg.clone(), common::options(&out, false))?.train()?;
    std::fs::remove_file(out.join("checkpoints/step-0000000004.safetensors"))?;
    let config = out.join("config.json");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, &text[..text.len() / 2])?;
    let resume = |run: &Path| {
        TrainArgs::try_parse_from([
            "train_uniattack",
            "--resume",
            "--output",
            run.to_str().unwrap(),
        ])
    };
    assert_eq!(resume(&out)?.experiment()?, cfg);
    uniattack::cli::train::run(&resume(&out)?)?;
    assert_eq!(std::fs::read_to_string(&config)?, text);

    let failed = dir.path().join("failed-start");
    std::fs::create_dir_all(&failed)?;
    std::fs::write(failed.join("config.json"), &text[..10])?;
    let err = resume(&failed)?.experiment().unwrap_err().to_string();
    assert!(
        err.contains("is damaged") && err.contains("original command"),
        "{err}"
    );
    // ... and the original command's flags are then taken, and the run
    // starts there (its lock says the directory is a run's of ours).
    std::fs::write(failed.join(".lock"), "")?;
    let with_flags = TrainArgs::try_parse_from([
        "train_uniattack",
        "--resume",
        "--demo",
        "--output",
        failed.to_str().unwrap(),
        "--data",
        cfg.data.root.to_str().unwrap(),
    ])?;
    let flags_cfg = with_flags.experiment()?;
    assert_eq!(flags_cfg.data.root, cfg.data.root);
    Trainer::new(flags_cfg.clone(), common::options(&failed, true))?;
    assert_eq!(
        std::fs::read_to_string(failed.join("config.json"))?,
        flags_cfg.to_json()
    );
    Ok(())
}

/// Flag combinations that would be ignored or do nothing are refused,
/// naming the flag: `--modality` with lists, a MoE branch on no block, a
/// model with every part frozen, a device named for every launched rank,
/// and `train_uniattack` flags a study cannot honour.
#[test]
fn flags_that_would_do_nothing_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = common::dataset(&dir.path().join("data"));
    let lists = data.join("UniAttackData/protocol");
    let list = |split: &str| lists.join(format!("UniAttackData@p1_image_{split}.txt"));
    let (train, dev, test) = (list("train"), list("dev"), list("test"));
    let args = TrainArgs::try_parse_from([
        "train_uniattack",
        "--data",
        data.to_str().unwrap(),
        "--train-list",
        train.to_str().unwrap(),
        "--dev-list",
        dev.to_str().unwrap(),
        "--test-list",
        test.to_str().unwrap(),
        "--modality",
        "video",
    ])?;
    let err = args.experiment().unwrap_err().to_string();
    assert!(
        err.contains("--modality") && err.contains("list format decides"),
        "{err}"
    );

    let parse = |argv: &[&str]| {
        TrainArgs::try_parse_from([&["train_uniattack", "--demo"], argv].concat()).unwrap()
    };
    let nowhere = dir.path().join("nowhere");
    let err = uniattack::cli::train::run(&parse(&[
        "--moe-layers",
        "last:0",
        "--output",
        nowhere.to_str().unwrap(),
    ]))
    .unwrap_err()
    .to_string();
    assert!(err.contains("no block"), "{err}");

    let out = dir.path().join("frozen");
    let frozen = parse(&[
        "--moe",
        "none",
        "--freeze",
        "text",
        "--freeze",
        "vision-backbone",
        "--freeze",
        "logit-scale",
        "--output",
        out.to_str().unwrap(),
    ]);
    let err = uniattack::cli::train::run(&frozen).unwrap_err().to_string();
    assert!(err.contains("nothing to train"), "{err}");
    // A study's frozen baseline (the plain variant beside MoE ones that
    // train) is accepted through the library.
    let mut options = common::options(&dir.path().join("baseline"), false);
    options.frozen_baseline = true;
    Trainer::new(frozen.experiment()?, options)?;

    let err = uniattack::cli::train::run(&parse(&["--gpus", "2", "--device", "cuda:1"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--device") && err.contains("every rank"),
        "{err}"
    );

    // `--gpus N` checks --output before the launcher writes its NCCL id
    // file there: the data root is refused untouched (this is checked
    // before, and so also without, NCCL).
    let data = common::dataset(&dir.path().join("gpus-data"));
    let before = common::files_under(&data);
    let err = uniattack::cli::train::run(&parse(&[
        "--data",
        data.to_str().unwrap(),
        "--gpus",
        "2",
        "--output",
        data.to_str().unwrap(),
    ]))
    .unwrap_err()
    .to_string();
    assert!(err.contains("is the data root"), "{err}");
    assert_eq!(common::files_under(&data), before);

    for flag in [
        &["--resume", "--output", "x"][..],
        &["--report", "r.json"],
        &["--gpus", "1"],
    ] {
        let err = uniattack::studies::refuse_run_flags(&parse(flag))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(flag[0]) && err.contains("not a run_studies flag"),
            "{err}"
        );
    }
    Ok(())
}

/// A build without NCCL refuses `--gpus 2` before the launcher fetches the
/// model for its ranks: no download (here: an attempt at a hub that cannot
/// be reached) for a run that cannot start.
#[cfg(not(feature = "nccl"))]
#[test]
fn gpus_without_nccl_are_refused_before_the_model_is_fetched() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = common::dataset(&dir.path().join("data"));
    let out = dir.path().join("run");
    let args = TrainArgs::try_parse_from([
        "train_uniattack",
        "--data",
        data.to_str().unwrap(),
        "--protocol",
        "p1",
        "--model",
        "nobody-here/no-such-model",
        "--gpus",
        "2",
        "--output",
        out.to_str().unwrap(),
    ])?;
    let err = uniattack::cli::train::run(&args).unwrap_err().to_string();
    assert!(err.contains("--features nccl"), "{err}");
    assert!(!out.exists());
    Ok(())
}

/// `--moe` switches the branch and keeps its other settings; `--experts` and
/// `--slots` apply to it, and without a branch they are refused, not lost.
#[test]
fn moe_flags_set_the_branch() {
    let parse = |argv: &[&str]| {
        let argv = [&["train_uniattack", "--demo"], argv].concat();
        TrainArgs::try_parse_from(argv).unwrap().experiment()
    };
    let soft = parse(&["--moe", "soft", "--experts", "8"])
        .unwrap()
        .model
        .moe;
    assert_eq!(soft.kind(), clip_moe::MoeKind::SoftMoe);
    let options = soft.layer.expect("a branch");
    // 8 from the flag, 16 slots from the demo preset.
    assert_eq!((options.num_experts, options.slots_per_expert), (8, 16));
    let plain = parse(&["--moe", "none"]).unwrap().model.moe;
    assert_eq!(plain, clip_moe::MoeConfig::none());
    let err = parse(&["--moe", "none", "--slots", "4"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--experts/--slots"), "{err}");
}

/// The MoE study on the small set: three runs, one table row each; a second
/// call reads the finished runs instead of training them again.
#[test]
fn moe_study_tabulates_three_runs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = common::dataset(&dir.path().join("data"));
    let mut base = common::experiment(&data);
    base.training.epochs = 1;
    let out = dir.path().join("study");
    let options = uniattack::studies::StudyOptions {
        device: candle_core::Device::Cpu,
        check_images: false,
    };
    let table = uniattack::studies::run(uniattack::studies::Study::Moe, &base, &out, &options)?;
    for name in ["| clip |", "| soft-moe |", "| la-soft-moe |"] {
        assert!(table.contains(name), "{table}");
    }
    let report = out.join("clip/report.json");
    let written = std::fs::metadata(&report)?.modified()?;
    let again = uniattack::studies::run(uniattack::studies::Study::Moe, &base, &out, &options)?;
    assert_eq!(again, table);
    assert_eq!(std::fs::metadata(&report)?.modified()?, written);
    assert_eq!(std::fs::read_to_string(out.join("table.md"))?, table);
    assert!(
        table.contains("checkpoints selected on dev; metrics on test") && !table.contains("TEST"),
        "{table}"
    );

    // Rows whose checkpoint was selected on test, or whose threshold was
    // not chosen on dev, are named.
    use uniattack::evaluator::{EvalReport, ThresholdOrigin};
    use uniattack::experiment::Selection;
    let report: EvalReport = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
    let mut test_selected = report.clone();
    test_selected.selected_on = Some(Selection::Test);
    let mut fixed = report.clone();
    fixed.threshold_origin = ThresholdOrigin::Fixed;
    let flagged = uniattack::studies::table(
        "p1",
        &[
            ("a".into(), report),
            ("b".into(), test_selected),
            ("c".into(), fixed),
        ],
    );
    for expected in [
        "except c (stored or given threshold)",
        "selected on dev, except b",
        "NOTE: the checkpoint of b was selected on TEST",
    ] {
        assert!(flagged.contains(expected), "{flagged}");
    }

    // Finished runs of other settings are not rows of this table.
    let mut other = base.clone();
    other.seed += 1;
    let err = uniattack::studies::run(uniattack::studies::Study::Moe, &other, &out, &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("clip run of other settings") && err.contains("seed"),
        "{err}"
    );
    Ok(())
}
