//! Training end to end on the tiny demo model and a small synthetic set:
//! the loss falls, every trainable parameter learns, checkpoints reload to
//! the same scores, a damaged checkpoint is refused while the previous one
//! stays usable, and bad data or settings stop the run with an error that
//! names the file, line or tensor.

mod common;

use std::collections::HashMap;

use anyhow::Result;
use candle_core::Device;
use fas_data::protocol::uniattack::Split;
use uniattack::checkpoint::read_checkpoint;
use uniattack::data::read_split;
use uniattack::evaluator::score_split;
use uniattack::progress::MetricsRecord;
use uniattack::{Detector, Trainer};

fn losses(metrics: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .filter_map(
            |l| match serde_json::from_str::<MetricsRecord>(l).unwrap() {
                MetricsRecord::Train { loss, .. } => Some(loss),
                MetricsRecord::Eval { .. } => None,
            },
        )
        .collect()
}

/// Six steps on the same 40 images (no augmentation): the mean loss of the
/// last two steps is below that of the first two.
#[test]
fn a_few_steps_lower_the_loss() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = common::experiment(&root);
    cfg.loader.augment = None;
    cfg.prompts.loss = uniattack::experiment::LossKind::CrossEntropy;
    let out = dir.path().join("run");
    let mut trainer = Trainer::new(cfg, common::options(&out, false))?;
    trainer.train()?;
    let l = losses(&out.join("metrics.jsonl"));
    assert_eq!(l.len(), 6, "{l:?}");
    let (first, last) = ((l[0] + l[1]) / 2.0, (l[4] + l[5]) / 2.0);
    assert!(last < first - 0.05, "losses {l:?}");
    Ok(())
}

/// After one step (the MoE branches start with zero output weights, so at
/// step 0 no gradient reaches their routers and first layers), every
/// trainable parameter receives a non-zero gradient.
#[test]
fn every_trainable_parameter_gets_a_gradient() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = common::experiment(&root);
    cfg.training.max_steps = Some(1);
    let mut trainer = Trainer::new(cfg, common::options(&dir.path().join("run"), false))?;
    trainer.train()?;
    let gradients = trainer.gradients_of_batch(0, 1)?.grads;
    assert!(gradients.len() > 50, "{} parameters", gradients.len());
    for (name, grad) in gradients {
        let grad = grad.unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = grad.sqr()?.sum_all()?.to_scalar::<f32>()?;
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name}: gradient norm² {norm}"
        );
    }
    Ok(())
}

/// A step of two accumulated micro-batches logs the mean of their losses
/// and the norm of the mean of their gradients, each batch's computed on
/// its own beforehand (at the same weights). The losses are read from the
/// device in the same read as the gradient norms: a slip there mixes a
/// loss into the norm or a norm into the loss.
#[test]
fn an_accumulated_step_logs_its_batches_mean_loss_and_gradient_norm() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = common::experiment(&root);
    cfg.loader.augment = None;
    cfg.loader.batch_size = 8;
    cfg.training.accumulation = 2;
    cfg.training.max_steps = Some(1);
    cfg.training.clip_grad_norm = None;
    let out = dir.path().join("run");
    let mut trainer = Trainer::new(cfg, common::options(&out, false))?;
    let first = trainer.gradients_of_batch(0, 0)?;
    let second = trainer.gradients_of_batch(0, 1)?;
    let mut sum_sq = 0.0f64;
    for ((name, a), (_, b)) in first.grads.iter().zip(&second.grads) {
        let mean = match (a, b) {
            (Some(a), Some(b)) => ((a + b)? * 0.5)?,
            (Some(g), None) | (None, Some(g)) => (g * 0.5)?,
            (None, None) => continue,
        };
        let sq = mean
            .to_dtype(candle_core::DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()?;
        assert!(sq.is_finite(), "{name}: {sq}");
        sum_sq += f64::from(sq);
    }
    let (loss, norm) = ((first.loss + second.loss) / 2.0, sum_sq.sqrt());
    trainer.train()?;
    let text = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    let logged: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| match serde_json::from_str::<MetricsRecord>(l).ok()? {
            MetricsRecord::Train {
                loss, grad_norm, ..
            } => Some((loss, grad_norm)),
            MetricsRecord::Eval { .. } => None,
        })
        .collect();
    assert_eq!(logged.len(), 1, "{text}");
    let (logged_loss, logged_norm) = logged[0];
    // Through JSON as the log went: serde_json's default parsing of a
    // shortest representation may land an ulp off.
    let loss: f64 = serde_json::from_str(&serde_json::to_string(&loss)?)?;
    assert_eq!(
        logged_loss, loss,
        "loss: logged {logged_loss}, batches' mean {loss}"
    );
    assert!(
        (logged_norm - norm).abs() <= 1e-5 * norm,
        "gradient norm: logged {logged_norm}, of the batches' mean {norm}"
    );
    Ok(())
}

/// An entry a list repeats (CFD's lists repeat a few paths) is scored once
/// per line, as the list and the reference count it, not merged into one
/// sample.
#[test]
fn a_repeated_list_entry_is_scored_once_per_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = common::experiment(&root);
    cfg.training.epochs = 1;
    let data = cfg.data.clone();
    let trainer = Trainer::new(cfg, common::options(&dir.path().join("run"), false))?;
    let mut test = read_split(&data, Split::Test)?;
    let listed = test.samples.len();
    test.samples.insert(2, test.samples[0].clone());
    let scores = score_split(&trainer.detector()?, &test, 8, 2)?;
    assert_eq!(scores.entries.len(), listed + 1);
    assert_eq!(scores.scores.len(), listed + 1);
    assert_eq!(scores.entries[2], scores.entries[0]);
    assert_eq!(scores.scores[2], scores.scores[0]);
    assert_eq!(scores.score_set(false)?.len(), listed + 1);
    Ok(())
}

/// The best checkpoint, read back, scores the test split exactly as the
/// trained model in memory does, and as the run's score file says.
#[test]
fn saved_checkpoint_gives_identical_scores() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = common::experiment(&root);
    cfg.training.epochs = 1;
    let data = cfg.data.clone();
    let out = dir.path().join("run");
    let mut trainer = Trainer::new(cfg, common::options(&out, false))?;
    let report = trainer.run()?;
    // One epoch, one evaluation: the best checkpoint is the final model.
    let test = read_split(&data, Split::Test)?;
    let live = score_split(&trainer.detector()?, &test, 32, 2)?;
    let best = read_checkpoint(&out.join("checkpoints/best.safetensors"))?;
    let loaded = score_split(
        &Detector::from_checkpoint(&best, &Device::Cpu)?,
        &test,
        32,
        2,
    )?;
    assert_eq!(live.scores, loaded.scores);
    // The library call on files read one by one scores them as the
    // loader's batches do.
    let detector = Detector::from_checkpoint(&best, &Device::Cpu)?;
    let files = test.samples[..3]
        .iter()
        .map(|sample| fas_data::image_io::load_image(&sample.path))
        .collect::<fas_data::Result<Vec<_>>>()?;
    let one_by_one = detector.score_images(&files)?;
    for (a, b) in one_by_one.iter().zip(&loaded.scores[..3]) {
        assert!(
            (a - b).abs() < 1e-6,
            "{one_by_one:?} vs {:?}",
            &loaded.scores[..3]
        );
    }
    let written: Vec<f64> = std::fs::read_to_string(out.join("scores/test.txt"))?
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(written, loaded.scores);
    assert_eq!(report.step, Some(2));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json"))?)?;
    for key in [
        "threshold",
        "apcer",
        "bpcer",
        "acer",
        "hter",
        "acc",
        "auc",
        "eer",
    ] {
        assert!(json[key].is_number(), "report.json lacks {key}: {json}");
    }
    assert_eq!(json["selected_on"], "dev");
    assert_eq!(json["threshold_origin"], "dev");
    for plot in ["roc.png", "det.png", "scores.png"] {
        assert!(out.join("plots").join(plot).is_file(), "{plot}");
    }
    Ok(())
}

/// A checkpoint with one flipped byte is refused on resume, naming the file
/// and the checksum; the previous checkpoint still reads and resumes.
#[test]
fn damaged_checkpoint_is_refused_and_the_previous_one_is_kept() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = common::experiment(&root);
    cfg.training.epochs = 2;
    let out = dir.path().join("run");
    Trainer::new(cfg.clone(), common::options(&out, false))?.train()?;
    let run = uniattack::run_dir::RunDir::new(out.clone());
    let steps = run.step_checkpoints()?;
    assert_eq!(
        steps.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![2, 4]
    );
    let (_, latest) = steps.last().unwrap().clone();
    let mut bytes = std::fs::read(&latest)?;
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&latest, &bytes)?;
    let err = match Trainer::new(cfg.clone(), common::options(&out, true)) {
        Ok(_) => panic!("a damaged checkpoint was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("checksum") && err.contains(&latest.display().to_string()),
        "{err}"
    );
    // The previous one is intact, and resuming from it works.
    read_checkpoint(&steps[0].1)?;
    std::fs::remove_file(&latest)?;
    let trainer = Trainer::new(cfg, common::options(&out, true))?;
    assert_eq!(trainer.step(), 2);
    // A truncated file is refused too.
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &std::fs::read(&steps[0].1)?[..1000])?;
    let err = read_checkpoint(&cut)
        .err()
        .expect("truncated accepted")
        .to_string();
    assert!(err.contains("cut.safetensors"), "{err}");
    Ok(())
}

/// A checkpoint whose tensors do not fit the model, and a resumed run with
/// other settings, are refused with the tensor or setting named.
#[test]
fn checkpoint_of_another_shape_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = common::experiment(&root);
    cfg.training.epochs = 1;
    let out = dir.path().join("run");
    Trainer::new(cfg.clone(), common::options(&out, false))?.train()?;
    // Other MoE settings: the resumed run is refused before anything loads.
    let mut other = cfg.clone();
    other
        .model
        .moe
        .layer
        .as_mut()
        .expect("a MoE branch")
        .slots_per_expert = 8;
    let err = Trainer::new(other, common::options(&out, true))
        .err()
        .expect("resumed with other settings")
        .to_string();
    assert!(err.contains("model"), "{err}");
    // A checkpoint whose header says one shape and whose tensor another.
    let best = read_checkpoint(&out.join("checkpoints/best.safetensors"))?;
    let name = "vision_model.post_layernorm.weight";
    let mut tensors = Vec::new();
    for (n, t) in best.tensors {
        let t = if n == name {
            candle_core::Tensor::zeros(7, candle_core::DType::F32, &Device::Cpu)?
        } else {
            t
        };
        tensors.push((n, uniattack::checkpoint::TensorData::Tensor(t)));
    }
    let bad = dir.path().join("bad.safetensors");
    uniattack::checkpoint::write_checkpoint(&bad, best.meta.clone(), tensors)?;
    let loaded = read_checkpoint(&bad)?;
    let err = Detector::from_checkpoint(&loaded, &Device::Cpu)
        .expect_err("mismatched tensor accepted")
        .to_string();
    assert!(
        err.contains(name) && err.contains("bad.safetensors"),
        "{err}"
    );
    Ok(())
}

fn rewrite_list(root: &std::path::Path, split: &str, edit: impl Fn(&str) -> String) {
    let path = root.join(format!(
        "UniAttackData/protocol/UniAttackData@p1_image_{split}.txt"
    ));
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(&text)).unwrap();
}

/// Empty and single-class splits, and a line naming a missing image, stop
/// the run before training with the file (and line) named.
#[test]
fn bad_splits_are_refused_naming_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let cfg = common::experiment(&root);
    let start = |name: &str| {
        Trainer::new(cfg.clone(), common::options(&dir.path().join(name), false))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let original: HashMap<&str, String> = ["dev", "test"]
        .into_iter()
        .map(|s| {
            let p = root.join(format!(
                "UniAttackData/protocol/UniAttackData@p1_image_{s}.txt"
            ));
            (s, std::fs::read_to_string(p).unwrap())
        })
        .collect();

    rewrite_list(&root, "dev", |_| "\n \n".into());
    let err = start("empty");
    assert!(
        err.contains("p1_image_dev.txt") && err.contains("no entries"),
        "{err}"
    );

    rewrite_list(&root, "dev", |_| {
        original["dev"]
            .lines()
            .filter(|l| !l.ends_with(" 0"))
            .map(|l| format!("{l}\n"))
            .collect()
    });
    let err = start("one-class");
    assert!(
        err.contains("p1_image_dev.txt") && err.contains("0 bona fide"),
        "{err}"
    );
    rewrite_list(&root, "dev", |_| original["dev"].clone());

    rewrite_list(&root, "test", |t| {
        format!("{t}UniAttackData/Data/live/nowhere/0001.jpg 0\n")
    });
    let lines = original["test"].lines().count() + 1;
    let err = start("missing");
    assert!(
        err.contains("p1_image_test.txt")
            && err.contains(&format!("line {lines}"))
            && err.contains("not found"),
        "{err}"
    );
    Ok(())
}

/// A non-finite loss stops the run naming the step; nothing is written as
/// a checkpoint for that step.
#[test]
fn non_finite_loss_stops_the_run_naming_the_step() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = common::experiment(&root);
    cfg.optim.lr = 1e30;
    cfg.training.checkpoint_every = Some(1);
    let out = dir.path().join("run");
    let mut trainer = Trainer::new(cfg, common::options(&out, false))?;
    let err = trainer
        .train()
        .expect_err("trained through NaN")
        .to_string();
    // The advice is one the run can follow: a resume refuses a changed
    // learning rate, and would replay the same steps anyway.
    assert!(
        err.contains("step") && err.contains("not finite") && err.contains("another --output"),
        "{err}"
    );
    let step: u64 = err
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.trim_end_matches(':').parse().ok())
        .expect("step number");
    let run = uniattack::run_dir::RunDir::new(out);
    for (s, path) in run.step_checkpoints()? {
        assert!(s < step, "checkpoint of step {s} written");
        read_checkpoint(&path)?;
    }
    Ok(())
}

/// With the text tower frozen, its parameters and the projection keep
/// their values, the vision tower and the MoE branches train.
#[test]
fn frozen_text_tower_keeps_its_weights() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = common::experiment(&root);
    cfg.training.max_steps = Some(3);
    cfg.model.frozen = vec![uniattack::experiment::FrozenPart::Text];
    let mut trainer = Trainer::new(cfg, common::options(&dir.path().join("run"), false))?;
    let before = common::parameters(&trainer);
    trainer.train()?;
    let vars = trainer.varmap().data().lock().unwrap();
    let mut moved = 0;
    for (name, var) in vars.iter() {
        let now = var.flatten_all()?.to_vec1::<f32>()?;
        let changed = now != before[name];
        if name.starts_with("text_model.") || name.starts_with("text_projection.") {
            assert!(!changed, "{name} moved although frozen");
        } else if changed {
            moved += 1;
        }
    }
    assert!(moved > 20, "only {moved} parameters moved");
    Ok(())
}

/// BF16 compute keeps F32 master weights: one step at the paper's learning
/// rate (1e-6) moves the vision weights by about 1e-6 each, a change far
/// below BF16's spacing at their size (at least 6e-5 for |w| >= 0.01), so a
/// BF16 copy could not have moved at all; every parameter stays F32.
#[test]
fn bf16_steps_move_the_f32_master_weights() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = common::experiment(&root);
    cfg.training.max_steps = Some(1);
    cfg.model.precision = uniattack::experiment::Precision::Bf16;
    cfg.optim.lr = 1e-6;
    cfg.optim.weight_decay = 0.0;
    cfg.schedule.decay = uniattack::schedule::Decay::Constant;
    let mut trainer = Trainer::new(cfg, common::options(&dir.path().join("run"), false))?;
    let before = common::parameters(&trainer);
    trainer.train()?;
    for (name, var) in trainer.varmap().data().lock().unwrap().iter() {
        assert_eq!(var.dtype(), candle_core::DType::F32, "{name}");
    }
    let after = common::parameters(&trainer);
    let name = "vision_model.encoder.layers.0.mlp.fc1.weight";
    let (old, new) = (&before[name], &after[name]);
    let (mut moved, mut large) = (0, 0);
    for (&a, &b) in old.iter().zip(new) {
        // Adam's first step is at most lr per element; the F32 store rounds
        // by up to one spacing of the weight.
        let step = (b - a).abs();
        let bound = 1e-6 + a.abs() * f32::EPSILON;
        assert!(
            step <= bound,
            "{name}: a step of {step} from {a} exceeds Adam's bound {bound}"
        );
        if step > 0.5e-6 {
            moved += 1;
            if a.abs() >= 0.01 {
                large += 1;
            }
        }
    }
    assert!(
        moved * 2 > old.len(),
        "{name}: {moved} of {} moved by ~lr",
        old.len()
    );
    assert!(large > 100, "{name}: only {large} weights >= 0.01 moved");
    // The step's loss is finite and close to what F32 computes.
    let bf16 = losses(&dir.path().join("run/metrics.jsonl"));
    let mut cfg = common::experiment(&root);
    cfg.training.max_steps = Some(1);
    cfg.optim.lr = 1e-6;
    let mut f32_trainer = Trainer::new(cfg, common::options(&dir.path().join("f32"), false))?;
    f32_trainer.train()?;
    let f32 = losses(&dir.path().join("f32/metrics.jsonl"));
    assert!(
        !bf16.is_empty() && bf16.len() == f32.len(),
        "{bf16:?} {f32:?}"
    );
    let (a, b) = (bf16[0], f32[0]);
    // Close, but not equal: the step really ran in BF16.
    assert!(
        a.is_finite() && (a - b).abs() <= 0.02 * b.abs() && a != b,
        "bf16 loss {a} vs f32 loss {b}"
    );
    eprintln!("first-step loss: bf16 {a}, f32 {b}");
    Ok(())
}

/// `--profile-phases`: every training record says where its step's time
/// went, each phase of a single-rank CPU step measured (no exchange), and
/// the phases together take no more than the training did. Without it only
/// the loader's wait is recorded.
#[test]
fn profiled_steps_record_where_their_time_goes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, out) = common::one_epoch(dir.path());
    let mut options = common::options(&out, false);
    options.profile_phases = true;
    let mut trainer = Trainer::new(cfg.clone(), options)?;
    let started = std::time::Instant::now();
    trainer.train()?;
    let wall = started.elapsed().as_secs_f64();
    let records = train_records(&out.join("metrics.jsonl"))?;
    assert_eq!(records.len(), 2, "{records:?}");
    let mut total = 0.0;
    for (data_wait_s, phases) in &records {
        let p = phases.expect("a profiled step without phases");
        for (name, seconds) in [
            ("forward", p.forward),
            ("backward", p.backward),
            ("clip", p.clip),
            ("update", p.update),
        ] {
            assert!(seconds > 0.0 && seconds.is_finite(), "{name}: {p:?}");
        }
        assert_eq!(p.exchange, 0.0, "an exchange without ranks: {p:?}");
        assert!(
            p.data >= 0.0 && p.data == *data_wait_s,
            "{p:?} {data_wait_s}"
        );
        total += p.data + p.forward + p.backward + p.exchange + p.clip + p.update;
    }
    assert!(total <= wall, "phases {total} s in a training of {wall} s");

    let plain = dir.path().join("plain");
    Trainer::new(cfg, common::options(&plain, false))?.train()?;
    for (data_wait_s, phases) in train_records(&plain.join("metrics.jsonl"))? {
        assert!(phases.is_none() && data_wait_s >= 0.0);
    }
    Ok(())
}

/// Each training record's `data_wait_s` and `phases`.
fn train_records(
    metrics: &std::path::Path,
) -> Result<Vec<(f64, Option<uniattack::progress::PhaseSeconds>)>> {
    let mut out = Vec::new();
    for line in std::fs::read_to_string(metrics)?.lines() {
        if let MetricsRecord::Train {
            data_wait_s,
            phases,
            ..
        } = serde_json::from_str(line)?
        {
            out.push((data_wait_s, phases));
        }
    }
    Ok(out)
}
