//! Data parallelism on the CPU (in-process ranks): two ranks of batch 8
//! take the same steps as one rank of batch 16 and log its losses, each
//! rank ends with identical parameters, a group of one equals the plain run
//! exactly (parameters and logged losses), and ranks resumed from a
//! checkpoint end as ranks run straight through.

mod common;

use std::sync::Arc;

use anyhow::Result;
use uniattack::distributed::{GradientSync, InProcessGroup, SyncHandle};
use uniattack::experiment::LossKind;
use uniattack::{ExperimentConfig, Trainer};

use common::{parameters, Params};

/// Cross-entropy (a mean over images, so a mean of equal shards' means is
/// the global mean; the CLIP loss contrasts a batch's images with each
/// other and is per rank), 2 epochs of 2 global batches of 16.
fn config(root: &std::path::Path, batch: usize) -> ExperimentConfig {
    let mut cfg = common::experiment(root);
    cfg.prompts.loss = LossKind::CrossEntropy;
    cfg.loader.batch_size = batch;
    cfg.training.epochs = 2;
    // Adam with eps 1 moves each weight by about lr * m / (sqrt(v) + 1),
    // linear in its gradient. With eps 1e-8 a near-zero gradient moves its
    // weight by lr * sign(g), and a sign that the summation order flips
    // turns rounding noise into a step of lr: nothing left to compare.
    cfg.optim.eps = 1.0;
    cfg
}

fn run_ranks(cfg: &ExperimentConfig, out: &std::path::Path, world: usize) -> Vec<Params> {
    run_ranks_resuming(cfg, out, world, false)
}

/// [`run_ranks`], every rank resuming from the run's latest checkpoint
/// (rank 0's) when `resume`.
fn run_ranks_resuming(
    cfg: &ExperimentConfig,
    out: &std::path::Path,
    world: usize,
    resume: bool,
) -> Vec<Params> {
    let group = InProcessGroup::new(world);
    std::thread::scope(|scope| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|rank| {
                let cfg = cfg.clone();
                scope.spawn(move || {
                    let mut options = common::options(out, resume);
                    options.sync = Some(SyncHandle(Arc::new(rank)));
                    let mut trainer = Trainer::new(cfg, options).unwrap();
                    trainer.train().unwrap();
                    parameters(&trainer)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn two_ranks_of_eight_take_the_steps_of_one_rank_of_sixteen() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));

    let mut single = Trainer::new(
        config(&root, 16),
        common::options(&dir.path().join("one"), false),
    )?;
    single.train()?;
    let single = parameters(&single);

    // A group of one: the same run, bit for bit.
    let alone = run_ranks(&config(&root, 16), &dir.path().join("alone"), 1);
    assert!(
        alone[0] == single,
        "a group of one differs from the plain run"
    );
    assert_eq!(
        train_losses(&dir.path().join("alone"))?,
        train_losses(&dir.path().join("one"))?,
        "a group of one logs other losses than the plain run"
    );

    let ranks = run_ranks(&config(&root, 8), &dir.path().join("two"), 2);
    assert!(ranks[0] == ranks[1], "the ranks' parameters differ");
    // Against one rank of 16: the same steps up to the order of float sums
    // (a batch-16 matmul against two batch-8 ones averaged). Measured
    // largest relative difference 1.1e-7 here (about one f32 ulp); the
    // bound leaves room for other CPUs' kernels.
    let mut worst = 0f32;
    for (name, values) in &single {
        for (a, b) in values.iter().zip(&ranks[0][name]) {
            worst = worst.max((a - b).abs() / a.abs().max(1.0));
        }
    }
    assert!(worst < 1e-5, "largest relative difference {worst:e}");

    // Rank 0 logs the mean loss over both shards (a mean of equal shards'
    // means: the global batch's loss), step for step as the single run.
    let one = train_losses(&dir.path().join("one"))?;
    let two = train_losses(&dir.path().join("two"))?;
    assert_eq!(one.len(), two.len(), "logged steps differ");
    assert!(!one.is_empty(), "no training loss logged");
    for ((step, a), (_, b)) in one.iter().zip(&two) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "step {step}: loss {a} logged by one rank of 16, {b} by two of 8"
        );
    }
    Ok(())
}

/// Two ranks resumed from rank 0's checkpoint of step 2 (of 4) end
/// bit-identical to two ranks run straight through: the checkpoint holds
/// the global loader position, and each rank takes its own shard of the
/// remaining batches again. The interruption is made by deleting the later
/// checkpoints of a finished run, which leaves what a crash right after
/// step 2's checkpoint leaves (the schedule's length unchanged; stopping
/// with `max_steps` would shorten it).
#[test]
fn resumed_ranks_end_as_ranks_run_straight_through() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = config(&root, 8);
    cfg.training.checkpoint_every = Some(1);
    cfg.training.keep_last = 4;
    let out = dir.path().join("run");
    let straight = run_ranks(&cfg, &out, 2);

    let checkpoints = out.join("checkpoints");
    let mut removed = 0;
    for entry in std::fs::read_dir(&checkpoints)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let step = name
            .strip_prefix("step-")
            .and_then(|rest| rest.strip_suffix(".safetensors"))
            .and_then(|digits| digits.parse::<u64>().ok());
        if step.is_some_and(|step| step > 2) {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    assert_eq!(removed, 2, "expected the checkpoints of steps 3 and 4");

    let resumed = run_ranks_resuming(&cfg, &out, 2, true);
    assert!(
        resumed[0] == resumed[1],
        "the resumed ranks' parameters differ"
    );
    assert!(
        resumed[0] == straight[0],
        "resumed ranks differ from ranks run straight through"
    );
    // Rank 0's log holds every step once: the resumed run replaced steps
    // 3 and 4.
    let steps: Vec<u64> = train_losses(&out)?.iter().map(|(step, _)| *step).collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    Ok(())
}

/// A run of two ranks resumed on one is refused, naming `--gpus`: the
/// world size sets the global batch and each rank's shard.
#[test]
fn a_resume_at_another_world_size_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = config(&root, 8);
    cfg.training.epochs = 1;
    cfg.training.checkpoint_every = Some(1);
    let out = dir.path().join("run");
    run_ranks(&cfg, &out, 2);
    let saved = std::fs::read(out.join("config.json"))?;
    let err = common::error_of(Trainer::new(cfg, common::options(&out, true)));
    assert!(
        err.contains("--gpus") && err.contains("trained on 2 rank(s) and this resume runs 1"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("config.json"))?, saved);
    Ok(())
}

/// Runs `world` ranks on threads of their own and returns each rank's
/// outcome, failing the test if any takes longer than a minute (a rank
/// left waiting for another in an all-reduce never returns).
fn outcomes(
    cfg: &ExperimentConfig,
    out: &std::path::Path,
    world: usize,
    resume: bool,
) -> Vec<Result<(), String>> {
    let (send, receive) = std::sync::mpsc::channel();
    for rank in InProcessGroup::new(world) {
        let (cfg, out, send) = (cfg.clone(), out.to_path_buf(), send.clone());
        std::thread::spawn(move || {
            let index = rank.rank();
            let mut options = common::options(&out, resume);
            options.sync = Some(SyncHandle(Arc::new(rank)));
            let outcome = Trainer::new(cfg, options)
                .and_then(|mut trainer| trainer.train())
                .map_err(|e| e.to_string());
            let _ = send.send((index, outcome));
        });
    }
    let mut results: Vec<Option<Result<(), String>>> = vec![None; world];
    for _ in 0..world {
        let (rank, outcome) = receive
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a rank hung waiting for the others");
        results[rank] = Some(outcome);
    }
    results.into_iter().map(Option::unwrap).collect()
}

/// Rank 0 refusing the output directory (it holds a finished run) stops
/// rank 1 at the start, instead of leaving it waiting in the first
/// all-reduce.
#[test]
fn a_rank_that_fails_to_start_stops_the_others() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = config(&root, 8);
    cfg.training.epochs = 1;
    let out = dir.path().join("run");
    run_ranks(&cfg, &out, 2);
    let results = outcomes(&cfg, &out, 2, false);
    let rank0 = results[0].as_ref().expect_err("rank 0 started over a run");
    assert!(rank0.contains("already holds a run"), "{rank0}");
    let rank1 = results[1].as_ref().expect_err("rank 1 trained alone");
    assert!(rank1.contains("another rank failed to start"), "{rank1}");
    Ok(())
}

/// A damaged training image fails the rank whose shard holds it, and the
/// other rank stops at the same step instead of waiting for it.
#[test]
fn a_rank_that_fails_mid_run_stops_the_others() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = config(&root, 8);
    cfg.training.epochs = 1;
    let list = root.join("UniAttackData/protocol/UniAttackData@p1_image_train.txt");
    let text = std::fs::read_to_string(&list)?;
    let entry = text
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().next())
        .expect("a list entry");
    std::fs::write(root.join(entry), b"not an image")?;
    let results = outcomes(&cfg, &dir.path().join("run"), 2, false);
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(errors.len(), 2, "{results:?}");
    let own = errors.iter().filter(|e| e.contains(entry)).count();
    let stopped = errors
        .iter()
        .filter(|e| e.contains("another rank failed to compute"))
        .count();
    assert_eq!((own, stopped), (1, 1), "{errors:?}");
    Ok(())
}

/// `(step, loss)` of each training record in a run's `metrics.jsonl`.
fn train_losses(run: &std::path::Path) -> Result<Vec<(u64, f64)>> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl"))?;
    let mut losses = Vec::new();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line)?;
        if record["kind"] == "train" {
            losses.push((
                record["step"].as_u64().unwrap_or(0),
                record["loss"].as_f64().unwrap_or(f64::NAN),
            ));
        }
    }
    Ok(losses)
}

/// A rank that records which agreements it was asked to make patiently.
struct Recording {
    rank: InProcessGroup,
    agreements: std::sync::Mutex<Vec<&'static str>>,
}

impl GradientSync for Recording {
    fn rank(&self) -> usize {
        self.rank.rank()
    }
    fn world_size(&self) -> usize {
        self.rank.world_size()
    }
    fn all_reduce_sum(&self, buffer: &candle_core::Tensor) -> uniattack::Result<()> {
        self.rank.all_reduce_sum(buffer)
    }
    fn all_ok(&self, ok: bool, device: &candle_core::Device) -> uniattack::Result<bool> {
        self.agreements.lock().unwrap().push("limited");
        self.rank.all_ok(ok, device)
    }
    fn all_ok_patiently(&self, ok: bool, device: &candle_core::Device) -> uniattack::Result<bool> {
        self.agreements.lock().unwrap().push("patient");
        self.rank.all_ok(ok, device)
    }
}

/// The agreements after which the others may wait long for rank 0 (the
/// start, whose resume may evaluate; each step rank 0 evaluates or writes
/// a checkpoint after) are made patiently, lifting a time limit on waits
/// (NCCL's watchdog); every other step's is limited.
#[test]
fn the_ranks_wait_patiently_where_rank_0_evaluates_or_writes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    // 3 epochs of 2 steps, an evaluation per epoch (steps 2, 4, 6), a
    // step checkpoint every 3 steps (step 3; step 6 evaluates).
    let mut cfg = config(&root, 16);
    cfg.training.epochs = 3;
    cfg.training.checkpoint_every = Some(3);
    let sync = Arc::new(Recording {
        rank: InProcessGroup::new(1).remove(0),
        agreements: Default::default(),
    });
    let mut options = common::options(&dir.path().join("run"), false);
    options.sync = Some(SyncHandle(sync.clone()));
    let mut trainer = Trainer::new(cfg, options)?;
    trainer.train()?;
    assert_eq!(trainer.step(), 6);
    let agreements = sync.agreements.lock().unwrap().clone();
    let expected = [
        "patient", // start
        "limited", "patient", // steps 1, 2 (evaluation)
        "patient", "patient", // steps 3 (checkpoint), 4 (evaluation)
        "limited", "patient", // steps 5, 6 (evaluation)
    ];
    assert_eq!(agreements, expected);
    Ok(())
}

/// With gradient accumulation a step's loss is an f64 mean over its
/// micro-batches: a group of one still logs exactly the plain run's losses
/// and ends with its parameters.
#[test]
fn a_group_of_one_with_accumulation_logs_the_plain_runs_losses() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = common::dataset(&dir.path().join("data"));
    let mut cfg = config(&root, 8);
    cfg.training.accumulation = 2;
    let mut plain = Trainer::new(cfg.clone(), common::options(&dir.path().join("one"), false))?;
    plain.train()?;
    let alone = run_ranks(&cfg, &dir.path().join("alone"), 1);
    assert!(alone[0] == parameters(&plain), "a group of one differs");
    let (one, group) = (
        train_losses(&dir.path().join("one"))?,
        train_losses(&dir.path().join("alone"))?,
    );
    assert!(!one.is_empty());
    assert_eq!(one, group, "a group of one logs other losses");
    Ok(())
}
