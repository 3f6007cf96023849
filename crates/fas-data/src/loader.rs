//! The batch loader: decode, augment and preprocess on worker threads, with
//! bounded prefetch, yielding `(B, 3, S, S)` tensors in a deterministic order.
//!
//! Determinism: the epoch's order is a function of (seed, epoch) only, each
//! sample's randomness (frame choice, augmentation) a function of (seed,
//! epoch, position in the epoch), and batches are handed out in index order
//! whatever order the workers finish them in. Two runs with the same seed
//! therefore produce identical batches with any number of workers.

use crate::augment::AugmentConfig;
use crate::error::{Error, Problem, Result};
use crate::image_io::load_image;
use crate::label::{Category, Label};
use crate::preprocess::ClipTransform;
use crate::protocol::BadInputPolicy;
use crate::sample::{Media, Sample};
use crate::video::{list_frames, FrameSelection};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Whether to rebalance bona fide and attack samples each epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Default: every sample once per epoch.
    #[default]
    None,
    /// Oversample the smaller of live / attack (random draws with
    /// replacement, new each epoch) until both have as many samples, as FA3
    /// does; UniAttackData has about three attacks per live image. Needs
    /// [`LoaderConfig::shuffle`]: the balanced order lists one class after
    /// the other, so unshuffled batches would hold a single class.
    LiveAttack,
}

/// The most worker threads a loader starts.
pub const MAX_WORKERS: usize = 1024;
/// The most batches a loader prepares ahead.
pub const MAX_PREFETCH: usize = 1 << 16;

/// Loader settings. [`Default`] is an evaluation loader; see [`LoaderConfig::training`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Samples per batch; default 32.
    pub batch_size: usize,
    /// Worker threads; 0 (default) = one per available core.
    pub workers: usize,
    /// Batches prepared ahead of the consumer; 0 (default) = twice the workers.
    pub prefetch: usize,
    /// Shuffle each epoch with (seed, epoch); default false.
    pub shuffle: bool,
    /// Seed of every random choice; default 0.
    pub seed: u64,
    /// Drop a last, incomplete batch; default false.
    pub drop_last: bool,
    /// Live/attack rebalancing; default none. Balancing requires `shuffle`.
    pub balance: Balance,
    /// Frames used from frame-directory samples; default first and last (CFB's evaluation).
    pub frames: FrameSelection,
    /// Final transform (size, normalisation); default CLIP at 224.
    pub transform: ClipTransform,
    /// Training augmentation; `None` (default) applies the plain CLIP transform.
    pub augment: Option<AugmentConfig>,
    /// Undecodable images: fail the batch (default) or drop them from it and report.
    pub on_bad_image: BadInputPolicy,
    /// Data-parallel shard `(index, count)`: every batch of `batch_size`
    /// (the global batch) is cut into `count` equal parts and only part
    /// `index` is loaded, with exactly the pixels the unsharded batch has
    /// there (randomness follows the global position). `batch_size` must
    /// be a multiple of `count`. `None` (default): the whole batch.
    #[serde(default)]
    pub shard: Option<(usize, usize)>,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 32,
            workers: 0,
            prefetch: 0,
            shuffle: false,
            seed: 0,
            drop_last: false,
            balance: Balance::None,
            frames: FrameSelection::FirstAndLast,
            transform: ClipTransform::default(),
            augment: None,
            on_bad_image: BadInputPolicy::Fail,
            shard: None,
        }
    }
}

impl LoaderConfig {
    /// Training defaults: shuffled, one random frame per video per epoch,
    /// default augmentation, incomplete last batch dropped.
    pub fn training(seed: u64) -> Self {
        Self {
            shuffle: true,
            seed,
            drop_last: true,
            frames: FrameSelection::Random,
            augment: Some(AugmentConfig::default()),
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        if self.balance != Balance::None && !self.shuffle {
            return Err(Error::Config(
                "live/attack balancing needs shuffle: without it every batch would hold one class"
                    .into(),
            ));
        }
        if let Some((index, count)) = self.shard {
            if count == 0 || index >= count || !self.batch_size.is_multiple_of(count) {
                return Err(Error::Config(format!(
                    "shard {index} of {count} needs 0 <= index < count and a batch size ({}) \
                     that count divides",
                    self.batch_size
                )));
            }
            if !self.drop_last {
                return Err(Error::Config(
                    "sharded loading needs drop_last: a last, incomplete batch cannot be cut \
                     into equal parts (some ranks would get fewer images, or none)"
                        .into(),
                ));
            }
        }
        // Thread counts beyond any machine's cores, and windows beyond any
        // epoch, are configuration mistakes (and would overflow the
        // window arithmetic).
        if self.workers > MAX_WORKERS || self.prefetch > MAX_PREFETCH {
            return Err(Error::Config(format!(
                "workers ({}) must be at most {MAX_WORKERS} and prefetch ({}) at most \
                 {MAX_PREFETCH}",
                self.workers, self.prefetch
            )));
        }
        if self.frames == FrameSelection::Evenly(0) {
            return Err(Error::Config(
                "frames: evenly 0 would take no frame of any video (every video sample dropped)"
                    .into(),
            ));
        }
        self.transform.validate()?;
        self.augment
            .as_ref()
            .map_or(Ok(()), AugmentConfig::validate)
    }
}

/// One batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Position of the batch in its epoch.
    pub index: usize,
    /// `(B, 3, size, size)` `f32` on the CPU, normalised.
    pub images: Tensor,
    /// Ground truth per image (kind included); `None` for unlabelled samples.
    pub labels: Vec<Option<Label>>,
    /// Video id per image, for video-level score aggregation.
    pub ids: Vec<String>,
    /// List entry per image (the name to write in score files).
    pub entries: Vec<String>,
    /// The image file read per image (a frame, for frame directories).
    pub paths: Vec<PathBuf>,
    /// Per image, the index of its sample in the loader's list: tells a
    /// list's repeated entries apart, and a frame directory's frames
    /// together.
    pub samples: Vec<usize>,
    /// Images dropped under [`BadInputPolicy::Skip`], with the reason.
    pub skipped: Vec<Problem>,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when every image of the batch was skipped.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Coarse category per image.
    pub fn categories(&self) -> Vec<Category> {
        self.labels
            .iter()
            .map(|l| l.as_ref().map_or(Category::Unknown, Label::category))
            .collect()
    }

    /// Binary targets `(B,)` `u32` with the project's polarity, 1 = attack;
    /// an error for unlabelled samples.
    pub fn attack_targets(&self) -> Result<Tensor> {
        let targets = self
            .labels
            .iter()
            .zip(&self.entries)
            .map(|(label, entry)| {
                label
                    .as_ref()
                    .map(Label::attack_target)
                    .ok_or_else(|| Error::Unlabelled(entry.clone()))
            })
            .collect::<Result<Vec<u32>>>()?;
        let n = targets.len();
        Ok(Tensor::from_vec(targets, n, &Device::Cpu)?)
    }
}

/// Where one item's pixels come from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    /// A frame drawn per epoch from these (sorted) frames.
    AnyFrameOf(Vec<PathBuf>),
}

#[derive(Debug, Clone)]
struct Item {
    sample: usize,
    source: Source,
}

/// A dataset ready to be iterated in batches.
#[derive(Debug)]
pub struct Loader {
    shared: Arc<Shared>,
    skipped: Vec<Problem>,
}

#[derive(Debug)]
struct Shared {
    samples: Vec<Sample>,
    items: Vec<Item>,
    config: LoaderConfig,
}

impl Loader {
    /// Prepares `samples`: frame directories are listed now (once), and
    /// expanded into one item per frame for fixed frame selections.
    pub fn new(samples: Vec<Sample>, config: LoaderConfig) -> Result<Self> {
        config.validate()?;
        if config.balance == Balance::LiveAttack && samples.iter().any(|s| s.label.is_none()) {
            let entry = samples
                .iter()
                .find(|s| s.label.is_none())
                .map_or_else(String::new, |s| s.entry.clone());
            return Err(Error::Unlabelled(format!(
                "{entry} (live/attack balancing needs labelled samples)"
            )));
        }
        let mut items = Vec::with_capacity(samples.len());
        let mut problems = Vec::new();
        for (index, sample) in samples.iter().enumerate() {
            let names = match sample.media {
                Media::Image => {
                    items.push(Item {
                        sample: index,
                        source: Source::File(sample.path.clone()),
                    });
                    continue;
                }
                Media::FrameDir(names) => names,
            };
            let frames = match list_frames(&sample.path, names) {
                Ok(frames) => frames,
                Err(e) => {
                    problems.push(Problem::in_file(&sample.path, e.to_string()));
                    continue;
                }
            };
            match config.frames.fixed_indices(frames.len()) {
                Some(chosen) => items.extend(chosen.into_iter().map(|i| Item {
                    sample: index,
                    source: Source::File(frames[i].clone()),
                })),
                None => items.push(Item {
                    sample: index,
                    source: Source::AnyFrameOf(frames),
                }),
            }
        }
        if !problems.is_empty() && config.on_bad_image == BadInputPolicy::Fail {
            return Err(Error::FrameDirectories { problems });
        }
        Ok(Self {
            shared: Arc::new(Shared {
                samples,
                items,
                config,
            }),
            skipped: problems,
        })
    }

    /// Items per epoch before balancing (images, or frames of frame directories).
    pub fn items(&self) -> usize {
        self.shared.items.len()
    }

    /// Frame directories dropped at construction under [`BadInputPolicy::Skip`].
    pub fn skipped(&self) -> &[Problem] {
        &self.skipped
    }

    /// The item order of `epoch` (indices into the items), after balancing and shuffling.
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let shared = &self.shared;
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[shared.config.seed, epoch]));
        let mut order: Vec<usize> = (0..shared.items.len()).collect();
        if shared.config.balance == Balance::LiveAttack {
            let is_attack = |i: &usize| {
                let sample = &shared.samples[shared.items[*i].sample];
                sample.label.as_ref().is_some_and(Label::is_attack)
            };
            let (attacks, lives): (Vec<usize>, Vec<usize>) =
                order.iter().partition(|i| is_attack(i));
            let (small, large) = if lives.len() < attacks.len() {
                (lives, attacks)
            } else {
                (attacks, lives)
            };
            order = large.clone();
            order.extend(&small);
            if !small.is_empty() {
                order.extend(
                    (small.len()..large.len()).map(|_| small[rng.random_range(0..small.len())]),
                );
            }
        }
        if shared.config.shuffle {
            order.shuffle(&mut rng);
        }
        order
    }

    /// Batches per epoch (the same for every epoch).
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.epoch_order(0).len();
        let b = self.shared.config.batch_size;
        if self.shared.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Starts the worker threads for `epoch`; iterate the result for batches.
    /// Dropping it early stops the workers.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `first` on: exactly the batches
    /// [`Loader::epoch`] yields at those positions (same images, same
    /// augmentation), without decoding the ones before. This is how a
    /// training run resumes mid-epoch. `first` past the end gives an empty
    /// epoch.
    pub fn epoch_from(&self, epoch: u64, first: usize) -> Epoch {
        let config = &self.shared.config;
        let order = self.epoch_order(epoch);
        let mut batches: Vec<Vec<usize>> = order
            .chunks(config.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        if config.drop_last && batches.last().is_some_and(|b| b.len() < config.batch_size) {
            batches.pop();
        }
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(MAX_WORKERS);
        let prefetch = if config.prefetch == 0 {
            2 * workers
        } else {
            config.prefetch
        };
        let total = batches.len();
        let first = first.min(total);
        let window = Arc::new(Window {
            state: Mutex::new(WindowState {
                next_to_start: first,
                consumed: first,
                cancelled: false,
            }),
            changed: Condvar::new(),
        });
        let plan = Arc::new(EpochPlan {
            shared: Arc::clone(&self.shared),
            batches,
            epoch,
        });
        let (sender, receiver) = channel();
        let handles = (0..workers.min((total - first).max(1)))
            .map(|_| {
                let (plan, window, sender) =
                    (Arc::clone(&plan), Arc::clone(&window), sender.clone());
                std::thread::spawn(move || {
                    while let Some(index) = window.claim(total, prefetch) {
                        if sender.send((index, plan.build_caught(index))).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Epoch {
            receiver,
            window,
            handles,
            pending: BTreeMap::new(),
            next: first,
            total,
        }
    }
}

/// One epoch's batches and item order.
struct EpochPlan {
    shared: Arc<Shared>,
    batches: Vec<Vec<usize>>,
    epoch: u64,
}

impl EpochPlan {
    fn build(&self, index: usize) -> Result<Batch> {
        let shared = &self.shared;
        let config = &shared.config;
        let size = config.transform.size as usize;
        let items = &self.batches[index];
        // The positions of the batch this shard loads.
        let positions = match config.shard {
            Some((part, parts)) => {
                let per = config.batch_size / parts;
                (part * per).min(items.len())..((part + 1) * per).min(items.len())
            }
            None => 0..items.len(),
        };
        let mut pixels = Vec::with_capacity(positions.len() * 3 * size * size);
        let (mut labels, mut ids, mut entries, mut paths, mut samples, mut skipped) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for (k, &item_index) in items.iter().enumerate() {
            if !positions.contains(&k) {
                continue;
            }
            let position = (index * config.batch_size + k) as u64;
            let mut rng =
                ChaCha8Rng::seed_from_u64(derive_seed(&[config.seed, self.epoch, position]));
            let item = &shared.items[item_index];
            let path = match &item.source {
                Source::File(path) => path.clone(),
                Source::AnyFrameOf(frames) => frames[rng.random_range(0..frames.len())].clone(),
            };
            let processed = load_image(&path).and_then(|image| match &config.augment {
                Some(augment) => augment.apply(&image, &config.transform, &mut rng),
                None => config.transform.apply(&image),
            });
            match processed {
                Ok(values) => pixels.extend_from_slice(&values),
                Err(e) if config.on_bad_image == BadInputPolicy::Skip => {
                    skipped.push(Problem::in_file(&path, e.to_string()));
                    continue;
                }
                Err(e) => return Err(e),
            }
            let sample = &shared.samples[item.sample];
            labels.push(sample.label.clone());
            ids.push(sample.video_id.clone());
            entries.push(sample.entry.clone());
            paths.push(path);
            samples.push(item.sample);
        }
        let images = Tensor::from_vec(pixels, (labels.len(), 3, size, size), &Device::Cpu)?;
        Ok(Batch {
            index,
            images,
            labels,
            ids,
            entries,
            paths,
            samples,
            skipped,
        })
    }

    /// [`EpochPlan::build`], with a panic (a decoder bug) turned into an error
    /// so the consumer is never left waiting for a batch that will not come.
    fn build_caught(&self, index: usize) -> Result<Batch> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.build(index))).unwrap_or_else(
            |_| {
                Err(Error::Worker(format!(
                    "batch {index}: image decoding panicked"
                )))
            },
        )
    }
}

/// Which batches workers may start: those below `consumed + prefetch`.
struct Window {
    state: Mutex<WindowState>,
    changed: Condvar,
}

#[derive(Default)]
struct WindowState {
    next_to_start: usize,
    consumed: usize,
    cancelled: bool,
}

impl Window {
    /// The next batch index to build, waiting while the prefetch window is
    /// full; `None` when the epoch is done or cancelled.
    fn claim(&self, total: usize, prefetch: usize) -> Option<usize> {
        let mut state = self.state.lock().ok()?;
        loop {
            if state.cancelled || state.next_to_start >= total {
                return None;
            }
            if state.next_to_start < state.consumed + prefetch {
                state.next_to_start += 1;
                return Some(state.next_to_start - 1);
            }
            state = self.changed.wait(state).ok()?;
        }
    }

    fn update(&self, change: impl FnOnce(&mut WindowState)) {
        if let Ok(mut state) = self.state.lock() {
            change(&mut state);
        }
        self.changed.notify_all();
    }
}

/// The batches of one epoch, in order. Yields `Err` for a batch that failed
/// (under [`BadInputPolicy::Fail`]) and continues with the next.
pub struct Epoch {
    receiver: Receiver<(usize, Result<Batch>)>,
    window: Arc<Window>,
    handles: Vec<JoinHandle<()>>,
    pending: BTreeMap<usize, Result<Batch>>,
    next: usize,
    total: usize,
}

impl Epoch {
    /// Batches in this epoch, those before [`Loader::epoch_from`]'s `first`
    /// included.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Index of the batch the next call to `next` yields.
    pub fn next_index(&self) -> usize {
        self.next
    }

    /// True for an epoch without batches.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        let batch = loop {
            if let Some(batch) = self.pending.remove(&self.next) {
                break batch;
            }
            match self.receiver.recv() {
                Ok((index, batch)) => {
                    self.pending.insert(index, batch);
                }
                Err(_) => {
                    self.next = self.total;
                    return Some(Err(Error::Worker(
                        "loader worker threads stopped unexpectedly".into(),
                    )));
                }
            }
        };
        self.next += 1;
        let consumed = self.next;
        self.window.update(|s| s.consumed = consumed);
        Some(batch)
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.window.update(|s| s.cancelled = true);
        for handle in self.handles.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = handle.join();
        }
    }
}

/// SplitMix64 over the parts: independent, well-mixed seeds for (seed, epoch, position).
fn derive_seed(parts: &[u64]) -> u64 {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for &part in parts {
        state ^= part;
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        state = z ^ (z >> 31);
    }
    state
}
