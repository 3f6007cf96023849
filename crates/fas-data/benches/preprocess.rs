//! Decode + CLIP preprocessing throughput on one thread, on 640x480 JPEGs,
//! and the augmented training loader on every core.
//!
//! The images are generated at start into `$TMPDIR/fas-data-bench-jpegs/`
//! (nothing large is committed); `scripts/fas_data/bench_pil.py` times PIL +
//! torchvision on the same files. Results: `docs/benchmarks.md`.
//!
//! `cargo bench -p fas-data --bench preprocess`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fas_data::image_io::load_image;
use fas_data::synth::face::{render, Capture, Identity};
use fas_data::{ClipTransform, Label, Loader, LoaderConfig, Media, Sample};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::path::PathBuf;

const IMAGES: usize = 32;

/// 640x480 JPEGs (quality 90): a 480 px synthetic face with mirrored margins.
fn bench_images() -> Vec<PathBuf> {
    let dir = std::env::temp_dir().join("fas-data-bench-jpegs");
    std::fs::create_dir_all(&dir).expect("create bench image folder");
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    (0..IMAGES)
        .map(|i| {
            let path = dir.join(format!("bench_{i:02}.jpg"));
            let face =
                render(&Identity::random(&mut rng), &Capture::random(&mut rng), 480).to_rgb8();
            let image = image::RgbImage::from_fn(640, 480, |x, y| {
                let fx = (x as i64 - 80)
                    .unsigned_abs()
                    .min(479 * 2 - (x as i64 - 80).unsigned_abs()) as u32;
                *face.get_pixel(fx.min(479), y)
            });
            let mut bytes = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
                .encode_image(&image)
                .expect("encode bench JPEG");
            std::fs::write(&path, bytes).expect("write bench JPEG");
            path
        })
        .collect()
}

fn preprocess(c: &mut Criterion) {
    let paths = bench_images();
    let transform = ClipTransform::default();
    let mut group = c.benchmark_group("cpu_preprocess");
    group.sample_size(20);
    group.throughput(Throughput::Elements(IMAGES as u64));
    group.bench_function("decode_clip224_640x480_jpeg_x32", |b| {
        b.iter(|| {
            for path in &paths {
                let image = load_image(path).expect("decode");
                black_box(transform.apply(&image).expect("preprocess"));
            }
        })
    });
    let decoded: Vec<_> = paths
        .iter()
        .map(|p| load_image(p).expect("decode"))
        .collect();
    group.bench_function("clip224_only_640x480_x32", |b| {
        b.iter(|| {
            for image in &decoded {
                black_box(transform.apply(image).expect("preprocess"));
            }
        })
    });
    group.bench_function("decode_only_640x480_jpeg_x32", |b| {
        b.iter(|| {
            for path in &paths {
                black_box(load_image(path).expect("decode"));
            }
        })
    });
    let samples: Vec<Sample> = paths
        .iter()
        .map(|p| Sample {
            path: p.clone(),
            entry: p.display().to_string(),
            label: Some(Label::BonaFide),
            media: Media::Image,
            video_id: p.display().to_string(),
            origin: (p.clone(), 0),
        })
        .collect();
    // The training loader as `train_uniattack` configures it: shuffled,
    // augmented (random resized crop, flip, colour jitter), one worker.
    let training = Loader::new(
        samples.clone(),
        LoaderConfig {
            batch_size: IMAGES,
            workers: 1,
            drop_last: false,
            ..LoaderConfig::training(0)
        },
    )
    .expect("training loader");
    let loader = Loader::new(
        samples.clone(),
        LoaderConfig {
            batch_size: IMAGES,
            workers: 1,
            ..Default::default()
        },
    )
    .expect("loader");
    group.bench_function("loader_1_worker_batch32", |b| {
        b.iter(|| {
            for batch in loader.epoch(0) {
                black_box(batch.expect("batch"));
            }
        })
    });
    group.bench_function("training_loader_augmented_1_worker_batch32", |b| {
        let mut epoch = 0;
        b.iter(|| {
            epoch += 1;
            for batch in training.epoch(epoch) {
                black_box(batch.expect("batch"));
            }
        })
    });
    group.finish();

    // The training loader on every core of the machine (as `train_uniattack
    // --workers $(nproc)`): whether the input pipeline keeps a GPU's step
    // fed. Four batches per worker, so every worker has work.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let many: Vec<Sample> = (0..workers * 4).flat_map(|_| samples.clone()).collect();
    let mut group = c.benchmark_group("cpu_preprocess_all_cores");
    group.sample_size(10);
    group.throughput(Throughput::Elements(many.len() as u64));
    let parallel = Loader::new(
        many,
        LoaderConfig {
            batch_size: IMAGES,
            workers,
            drop_last: false,
            ..LoaderConfig::training(0)
        },
    )
    .expect("training loader");
    group.bench_function(
        format!("training_loader_augmented_{workers}_workers_batch32"),
        |b| {
            let mut epoch = 0;
            b.iter(|| {
                epoch += 1;
                for batch in parallel.epoch(epoch) {
                    black_box(batch.expect("batch"));
                }
            })
        },
    );
    group.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
