//! Loader: deterministic order and pixels for a seed regardless of worker
//! count, per-epoch shuffling, drop-last, balancing, video frames, bad images.

use fas_data::{
    AttackKind, BadInputPolicy, Balance, ClipTransform, Error, FrameNames, FrameSelection, Label,
    Loader, LoaderConfig, Media, Sample,
};
use std::path::Path;

fn sample(root: &Path, name: &str, label: Label, media: Media) -> Sample {
    Sample {
        path: root.join(name),
        entry: name.to_string(),
        label: Some(label),
        media,
        video_id: name.to_string(),
        origin: (root.join("list.txt"), 1),
    }
}

/// 10 images (3 live, 7 attacks) of different sizes and colours.
fn dataset(root: &Path) -> Vec<Sample> {
    (0..10)
        .map(|i| {
            let name = format!("img{i}.jpg");
            let (w, h) = (40 + 7 * i, 60 - 2 * i);
            image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 5) as u8, (y * 3 + i * 20) as u8, (i * 25) as u8])
            })
            .save(root.join(&name))
            .unwrap();
            let label = if i < 3 {
                Label::BonaFide
            } else {
                Label::Attack(AttackKind::Print)
            };
            sample(root, &name, label, Media::Image)
        })
        .collect()
}

fn config(workers: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 4,
        workers,
        transform: ClipTransform {
            size: 32,
            ..Default::default()
        },
        ..LoaderConfig::training(7)
    }
}

fn run(loader: &Loader, epoch: u64) -> Vec<(Vec<String>, Vec<f32>)> {
    loader
        .epoch(epoch)
        .map(|b| {
            let b = b.unwrap();
            (
                b.entries.clone(),
                b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect()
}

/// Resuming mid-epoch: `epoch_from(e, k)` yields exactly batches k.. of
/// `epoch(e)` (same entries, same augmented pixels, same indices).
#[test]
fn epoch_from_yields_the_tail_of_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dataset(dir.path());
    let loader = Loader::new(
        samples,
        LoaderConfig {
            drop_last: false,
            ..config(2)
        },
    )
    .unwrap();
    let whole = run(&loader, 3);
    assert_eq!(whole.len(), 3);
    for first in 0..=whole.len() {
        let mut epoch = loader.epoch_from(3, first);
        assert_eq!(epoch.next_index(), first);
        let mut tail = Vec::new();
        for batch in &mut epoch {
            let batch = batch.unwrap();
            assert_eq!(batch.index, first + tail.len());
            tail.push((
                batch.entries.clone(),
                batch
                    .images
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            ));
        }
        assert_eq!(tail, whole[first..].to_vec(), "first = {first}");
    }
    assert_eq!(loader.epoch_from(3, 99).count(), 0);
}

/// Data-parallel shards: the parts of every batch, concatenated in shard
/// order, are the unsharded batch (entries and augmented pixels alike).
#[test]
fn shards_of_a_batch_concatenate_to_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dataset(dir.path());
    let whole = run(&Loader::new(samples.clone(), config(1)).unwrap(), 2);
    let parts: Vec<Vec<(Vec<String>, Vec<f32>)>> = (0..2)
        .map(|i| {
            let sharded = LoaderConfig {
                shard: Some((i, 2)),
                ..config(2)
            };
            run(&Loader::new(samples.clone(), sharded).unwrap(), 2)
        })
        .collect();
    assert_eq!(whole.len(), parts[0].len());
    for (b, (entries, pixels)) in whole.iter().enumerate() {
        let mut joined_entries = parts[0][b].0.clone();
        joined_entries.extend(parts[1][b].0.clone());
        let mut joined_pixels = parts[0][b].1.clone();
        joined_pixels.extend(parts[1][b].1.clone());
        assert_eq!(&joined_entries, entries);
        assert_eq!(&joined_pixels, pixels);
        assert_eq!(parts[0][b].0.len(), 2);
    }
    let uneven = LoaderConfig {
        shard: Some((0, 3)),
        ..config(1)
    };
    assert!(Loader::new(samples, uneven).is_err());
}

/// Settings that would hang, drop every video or spread NaN are refused
/// when the loader is made: a shard of a loader that keeps an incomplete
/// last batch (it cannot be cut into equal parts), thread and prefetch
/// counts past the bounds (the window arithmetic overflowed at
/// `usize::MAX`), no frames per video, and normalisation statistics that
/// divide by zero or are not finite.
#[test]
fn settings_that_cannot_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dataset(dir.path());
    let refused = |config: LoaderConfig, expected: &str| match Loader::new(samples.clone(), config)
    {
        Ok(_) => panic!("accepted; expected {expected:?}"),
        Err(e) => assert!(e.to_string().contains(expected), "{e}"),
    };
    refused(
        LoaderConfig {
            shard: Some((0, 2)),
            drop_last: false,
            ..config(1)
        },
        "needs drop_last",
    );
    refused(
        LoaderConfig {
            prefetch: usize::MAX,
            ..config(1)
        },
        "prefetch",
    );
    refused(
        LoaderConfig {
            workers: usize::MAX / 2 + 1,
            ..config(1)
        },
        "workers",
    );
    refused(
        LoaderConfig {
            frames: FrameSelection::Evenly(0),
            ..config(1)
        },
        "evenly 0",
    );
    for (mean, std) in [([0.5; 3], [0.0; 3]), ([f32::NAN, 0.5, 0.5], [0.2; 3])] {
        refused(
            LoaderConfig {
                transform: ClipTransform {
                    size: 32,
                    normalization: fas_data::Normalization::Custom { mean, std },
                },
                ..config(1)
            },
            "normalization needs finite means",
        );
    }
    // At the bounds: accepted.
    Loader::new(
        samples,
        LoaderConfig {
            prefetch: fas_data::loader::MAX_PREFETCH,
            ..config(1)
        },
    )
    .unwrap();
}

#[test]
fn same_seed_same_batches_with_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dataset(dir.path());
    let one = Loader::new(samples.clone(), config(1)).unwrap();
    let three = Loader::new(
        samples.clone(),
        LoaderConfig {
            prefetch: 1,
            ..config(3)
        },
    )
    .unwrap();
    let a = run(&one, 0);
    assert_eq!(a, run(&three, 0));
    assert_eq!(a.len(), 2, "10 samples, batch 4, drop_last");
    assert_ne!(a, run(&one, 1), "each epoch is reshuffled and re-augmented");
    let other_seed = Loader::new(
        samples,
        LoaderConfig {
            seed: 8,
            ..config(2)
        },
    )
    .unwrap();
    assert_ne!(a, run(&other_seed, 0));
}

#[test]
fn evaluation_keeps_order_and_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dataset(dir.path());
    let config = LoaderConfig {
        batch_size: 4,
        transform: ClipTransform {
            size: 32,
            ..Default::default()
        },
        ..Default::default()
    };
    let loader = Loader::new(samples, config).unwrap();
    assert_eq!(loader.batches_per_epoch(), 3);
    let batches: Vec<_> = loader.epoch(0).map(Result::unwrap).collect();
    assert_eq!(batches[2].images.dims(), &[2, 3, 32, 32]);
    let names: Vec<String> = batches.iter().flat_map(|b| b.entries.clone()).collect();
    assert_eq!(
        names,
        (0..10).map(|i| format!("img{i}.jpg")).collect::<Vec<_>>()
    );
    assert_eq!(
        batches[0]
            .attack_targets()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap(),
        [0, 0, 0, 1]
    );
}

#[test]
fn balancing_oversamples_the_minority() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dataset(dir.path());
    let config = LoaderConfig {
        balance: Balance::LiveAttack,
        batch_size: 14,
        drop_last: false,
        ..config(2)
    };
    let loader = Loader::new(samples, config).unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    let live = batch
        .labels
        .iter()
        .filter(|l| **l == Some(Label::BonaFide))
        .count();
    assert_eq!((live, batch.len()), (7, 14));
}

/// The balanced order lists one class after the other; without shuffling
/// every batch would hold a single class, so the combination is refused.
#[test]
fn balancing_without_shuffle_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = LoaderConfig {
        balance: Balance::LiveAttack,
        shuffle: false,
        ..config(1)
    };
    let err = Loader::new(dataset(dir.path()), config).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("needs shuffle"), "{err}");
}

#[test]
fn absurd_image_size_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = LoaderConfig {
        transform: ClipTransform {
            size: 100_000,
            ..Default::default()
        },
        ..config(1)
    };
    let err = Loader::new(dataset(dir.path()), config).unwrap_err();
    assert!(err.to_string().contains("1 to 4096"), "{err}");
}

#[test]
fn frame_directories_expand_or_draw_frames() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("video");
    std::fs::create_dir_all(&video).unwrap();
    for f in 0..5 {
        image::RgbImage::from_pixel(30, 30, image::Rgb([f * 50, 0, 0]))
            .save(video.join(format!("{f:04}.jpg")))
            .unwrap();
    }
    let samples = vec![sample(
        dir.path(),
        "video",
        Label::BonaFide,
        Media::FrameDir(FrameNames::AnyImage),
    )];
    let eval = LoaderConfig {
        transform: ClipTransform {
            size: 16,
            ..Default::default()
        },
        ..Default::default()
    };
    let loader = Loader::new(samples.clone(), eval.clone()).unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(
        batch.paths,
        [video.join("0000.jpg"), video.join("0004.jpg")]
    );
    assert_eq!(batch.ids, ["video", "video"]);
    let random = LoaderConfig {
        frames: FrameSelection::Random,
        shuffle: true,
        ..eval
    };
    let loader = Loader::new(samples, random).unwrap();
    let drawn: std::collections::BTreeSet<_> = (0..12)
        .map(|e| loader.epoch(e).next().unwrap().unwrap().paths[0].clone())
        .collect();
    assert!(drawn.len() > 1, "random frames vary across epochs");
}

#[test]
fn bad_images_fail_or_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut samples = dataset(dir.path());
    std::fs::write(dir.path().join("bad.jpg"), b"not a jpeg").unwrap();
    samples.insert(
        1,
        sample(dir.path(), "bad.jpg", Label::BonaFide, Media::Image),
    );
    let base = LoaderConfig {
        batch_size: 4,
        transform: ClipTransform {
            size: 16,
            ..Default::default()
        },
        ..Default::default()
    };
    let failing = Loader::new(samples.clone(), base.clone()).unwrap();
    let results: Vec<_> = failing.epoch(0).collect();
    assert!(results[0]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("bad.jpg"));
    assert!(results[1].is_ok(), "later batches still come");
    let skipping = Loader::new(
        samples,
        LoaderConfig {
            on_bad_image: BadInputPolicy::Skip,
            ..base
        },
    )
    .unwrap();
    let first = skipping.epoch(0).next().unwrap().unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(first.skipped.len(), 1);
}

/// Dropping an epoch after its first batch cancels and joins its workers,
/// which by then wait on a full prefetch window. A drop that failed to
/// cancel them would block forever: it runs on a thread of its own, so
/// that shows as this test failing, not as a hung test run.
#[test]
fn dropping_an_epoch_early_stops_workers() {
    let dir = tempfile::tempdir().unwrap();
    let loader = Loader::new(
        dataset(dir.path()),
        LoaderConfig {
            batch_size: 1,
            ..config(2)
        },
    )
    .unwrap();
    let mut epoch = loader.epoch(0);
    assert!(epoch.next().is_some());
    // Long enough for the workers to fill the window before the drop.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(epoch);
        let _ = done.send(());
    });
    assert!(
        dropped
            .recv_timeout(std::time::Duration::from_secs(30))
            .is_ok(),
        "dropping the epoch did not stop its workers within 30 s"
    );
}
