//! Finding a model's files: a local directory, the Hugging Face cache, or
//! the hub (hf-hub's blocking API).
//!
//! A model argument that is an existing directory is used as is: it must
//! hold `config.json`, the weights (`model.safetensors`, or else PyTorch's
//! `pytorch_model.bin`) and `tokenizer.json`. Anything else is a hub
//! repository id. Each file is looked for at every revision of
//! [`HubOptions::revisions`] in turn (`main`), then, for
//! `openai/clip-vit-base-patch16` only, at `refs/pr/4`, the pull request
//! that added its safetensors weights, as candle-based projects use (any
//! other repository's pull requests are anyone's and are not looked at),
//! first in the cache, then, unless offline, downloaded; when no revision has `model.safetensors`, `pytorch_model.bin`
//! is looked for the same way. `HF_HUB_CACHE` (or `HUGGINGFACE_HUB_CACHE`,
//! or `HF_HOME`) and `HF_ENDPOINT` are honoured, `HF_HUB_OFFLINE=1`
//! switches to the cache only, and a hub that cannot be reached falls back
//! to a cache holding the model whole, as in Python.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::api::Progress;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};
pub use crate::files::TOKENIZER_FILE;
use crate::files::{CONFIG_FILE, LEGACY_WEIGHTS_FILE, WEIGHTS_FILE};

/// The paper's backbone.
pub const DEFAULT_MODEL_ID: &str = "openai/clip-vit-base-patch16";

/// Pull requests known to hold a repository's own weights as safetensors,
/// tried after [`HubOptions::revisions`] for that repository only.
const KNOWN_WEIGHT_PRS: [(&str, &str); 1] = [(DEFAULT_MODEL_ID, "refs/pr/4")];

/// The three files a model needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// `model.safetensors`, or `pytorch_model.bin` where only that exists.
    pub weights: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
}

impl ModelFiles {
    /// The files of a local model directory; an error names the first one
    /// absent. The weights are `model.safetensors`, else `pytorch_model.bin`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let file = |names: &[&str]| {
            names
                .iter()
                .map(|name| dir.join(name))
                .find(|path| path.is_file())
                .ok_or_else(|| {
                    Error::Hub(format!(
                        "model directory {} has no {}: it needs {CONFIG_FILE}, {WEIGHTS_FILE} \
                         (or {LEGACY_WEIGHTS_FILE}) and {TOKENIZER_FILE}",
                        dir.display(),
                        names.join(" nor ")
                    ))
                })
        };
        Ok(Self {
            config: file(&[CONFIG_FILE])?,
            weights: file(&[WEIGHTS_FILE, LEGACY_WEIGHTS_FILE])?,
            tokenizer: file(&[TOKENIZER_FILE])?,
        })
    }
}

/// Where and how to look for hub files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// Use the cache only, never the network.
    pub offline: bool,
    /// The hub cache (`.../hub`, holding `models--owner--name`); `None`:
    /// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    pub cache_dir: Option<PathBuf>,
    /// Hub URL; `None`: `$HF_ENDPOINT`, else `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// Revisions to try, in order, for every file.
    pub revisions: Vec<String>,
    /// How long the hub may take to answer, and how long a download may go
    /// without receiving [`MIN_PROGRESS_BYTES`], before the model is
    /// reported unreachable. hf-hub's client has no timeouts of its own, so
    /// a server that accepts the connection and never answers, stalls in
    /// the middle of a file, or trickles a byte now and then, would hang the
    /// caller: the hub is asked first with this deadline, and every download
    /// runs on a worker thread that is given up when less than that much
    /// data has arrived for this long (the partial file stays in the cache's
    /// temporary file, and the next attempt resumes it). The default, 16 KiB
    /// per 30 s, is about 550 bytes/s: any working line, however slow,
    /// delivers more; a transfer slower than that would take days for the
    /// ViT-B/16 weights.
    pub timeout: std::time::Duration,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            offline: false,
            cache_dir: None,
            endpoint: None,
            revisions: vec!["main".into()],
            timeout: std::time::Duration::from_secs(30),
        }
    }
}

impl HubOptions {
    /// Defaults, offline when `HF_HUB_OFFLINE` is `1`, `true`, `yes` or `on`.
    pub fn from_env() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        Self {
            offline,
            ..Self::default()
        }
    }
}

/// The hub cache of the environment, as Python's `huggingface_hub` finds
/// it: `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`,
/// else `~/.cache/huggingface/hub` (hf-hub itself reads only `HF_HOME`).
fn hub_cache_from_env() -> Cache {
    ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"]
        .iter()
        .find_map(|var| std::env::var_os(var).filter(|v| !v.is_empty()))
        .map_or_else(Cache::from_env, |dir| Cache::new(PathBuf::from(dir)))
}

/// The files of `model`: a local directory, else a hub id (see the module
/// docs).
pub fn resolve(model: &str, options: &HubOptions) -> Result<ModelFiles> {
    let mut options = options.clone();
    if let Some((_, pr)) = KNOWN_WEIGHT_PRS.iter().find(|(id, _)| *id == model) {
        if !options.revisions.iter().any(|rev| rev == pr) {
            options.revisions.push(pr.to_string());
        }
    }
    let options = &options;
    if Path::new(model).is_dir() {
        return ModelFiles::from_dir(model);
    }
    // Hub ids are `owner/name`; anything else was meant as a directory (a
    // bare `clip-b16` run from the wrong folder must not ask the hub).
    let hub_id = model
        .split_once('/')
        .is_some_and(|(owner, name)| !owner.is_empty() && !name.is_empty() && !name.contains('/'));
    if model.starts_with(['/', '.', '~']) || !hub_id {
        return Err(Error::Hub(format!(
            "model directory {model} does not exist (a hub id looks like owner/name)"
        )));
    }
    let cache = match &options.cache_dir {
        Some(dir) => Cache::new(dir.clone()),
        None => hub_cache_from_env(),
    };
    if !options.offline {
        if let Err(unreachable) = probe(model, options) {
            // As Python's hub client does: a model the cache holds whole is
            // used without the network, saying so.
            let cached = HubOptions {
                offline: true,
                cache_dir: Some(cache.path().clone()),
                ..options.clone()
            };
            return match resolve(model, &cached) {
                Ok(files) => {
                    tracing::warn!(%model, "the hub cannot be reached; using the cached files");
                    Ok(files)
                }
                Err(_) => Err(unreachable),
            };
        }
    }
    let fetch = |file: &str| -> Result<PathBuf> {
        if options.offline {
            fetch_cached(&cache, model, file, options)
        } else {
            fetch_online(&cache, model, file, options)
        }
    };
    let config = fetch(CONFIG_FILE)?;
    // Safetensors at any revision first; the pickle only when none has it.
    let weights = match fetch(WEIGHTS_FILE) {
        Ok(path) => path,
        Err(first) => fetch(LEGACY_WEIGHTS_FILE).map_err(|_| first)?,
    };
    Ok(ModelFiles {
        config,
        weights,
        tokenizer: fetch(TOKENIZER_FILE)?,
    })
}

fn repo(model: &str, revision: &str) -> Repo {
    Repo::with_revision(model.to_string(), RepoType::Model, revision.to_string())
}

fn fetch_cached(cache: &Cache, model: &str, file: &str, options: &HubOptions) -> Result<PathBuf> {
    options
        .revisions
        .iter()
        .find_map(|rev| cache.repo(repo(model, rev)).get(file))
        .ok_or_else(|| {
            Error::Hub(format!(
                "offline: {file} of {model} is not in the Hugging Face cache {} (revisions {}). \
                 {}",
                cache.path().display(),
                options.revisions.join(", "),
                how_to_download(model)
            ))
        })
}

fn fetch_online(cache: &Cache, model: &str, file: &str, options: &HubOptions) -> Result<PathBuf> {
    let endpoint = endpoint(options);
    let api = ApiBuilder::from_cache(cache.clone())
        .with_progress(false)
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| Error::Hub(format!("cannot set up the Hugging Face hub client: {e}")))?;
    let mut failures = Vec::new();
    for rev in &options.revisions {
        if let Some(path) = cache.repo(repo(model, rev)).get(file) {
            return Ok(path);
        }
        match download_watched(api.repo(repo(model, rev)), file, options.timeout) {
            Ok(path) => return Ok(path),
            // Another revision would stall the same way: stop here.
            Err(Download::Stalled(idle)) => {
                return Err(Error::Hub(format!(
                    "downloading {file} of {model} (revision {rev}) from {}: less than {} KiB \
                     in {:.1} s, the transfer stalled (HubOptions::timeout). Run again to resume \
                     it. {}",
                    endpoint,
                    MIN_PROGRESS_BYTES / 1024,
                    idle.as_secs_f64(),
                    how_to_download(model)
                )))
            }
            Err(Download::Failed(e)) => failures.push(format!("{rev}: {e}")),
        }
    }
    Err(Error::Hub(format!(
        "could not fetch {file} of {model} from {} ({}). {}",
        endpoint,
        failures.join("; "),
        how_to_download(model)
    )))
}

/// Why [`download_watched`] returned without a file.
enum Download {
    /// Less than [`MIN_PROGRESS_BYTES`] arrived for this long.
    Stalled(Duration),
    /// hf-hub's error.
    Failed(String),
}

/// The data a download must deliver per [`HubOptions::timeout`] to count
/// as alive.
pub const MIN_PROGRESS_BYTES: usize = 16 * 1024;

/// hf-hub progress that records when the download last made progress: a
/// (re)connection, or [`MIN_PROGRESS_BYTES`] more since the last progress.
#[derive(Clone)]
struct LastProgress(Arc<Mutex<(Instant, usize)>>);

impl LastProgress {
    fn new() -> Self {
        Self(Arc::new(Mutex::new((Instant::now(), 0))))
    }

    fn received(&self, bytes: Option<usize>) {
        if let Ok(mut last) = self.0.lock() {
            let pending = last.1;
            match bytes {
                Some(n) if pending + n < MIN_PROGRESS_BYTES => last.1 = pending + n,
                _ => *last = (Instant::now(), 0),
            }
        }
    }

    fn idle(&self) -> Duration {
        self.0
            .lock()
            .map(|last| last.0.elapsed())
            .unwrap_or_default()
    }
}

impl Progress for LastProgress {
    fn init(&mut self, _size: usize, _filename: &str) {
        self.received(None);
    }
    fn update(&mut self, size: usize) {
        self.received(Some(size));
    }
    fn finish(&mut self) {
        self.received(None);
    }
}

/// Downloads `file` into the cache on a worker thread and waits as long as
/// data keeps arriving: [`Download::Stalled`] once less than
/// [`MIN_PROGRESS_BYTES`] has arrived for `stall` (the metadata request
/// included). The abandoned thread holds only
/// its connection and the cache's temporary file and lock, which the
/// process's exit releases.
fn download_watched(
    repo: ApiRepo,
    file: &str,
    stall: Duration,
) -> std::result::Result<PathBuf, Download> {
    let activity = LastProgress::new();
    let (done, result) = mpsc::channel();
    let (progress, name) = (activity.clone(), file.to_owned());
    std::thread::Builder::new()
        .name(format!("hub download {file}"))
        .spawn(move || {
            let outcome = repo
                .download_with_progress(&name, progress)
                .map_err(|e| e.to_string());
            // The receiver is gone only when the download was given up.
            let _ = done.send(outcome);
        })
        .map_err(|e| Download::Failed(format!("cannot start the download thread: {e}")))?;
    let poll = (stall / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        match result.recv_timeout(poll) {
            Ok(outcome) => return outcome.map_err(Download::Failed),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let idle = activity.idle();
                if idle >= stall {
                    return Err(Download::Stalled(idle));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Download::Failed("the download thread panicked".into()))
            }
        }
    }
}

/// The endpoint in use: the option, `$HF_ENDPOINT`, or the public hub.
fn endpoint(options: &HubOptions) -> String {
    options
        .endpoint
        .clone()
        .or_else(|| std::env::var("HF_ENDPOINT").ok())
        .unwrap_or_else(|| "https://huggingface.co".to_string())
}

/// Asks the hub for the first file's headers within `options.timeout`: any
/// HTTP answer (even an error status) shows the server responds; no answer
/// in time, or no connection, is an error that says how to proceed.
fn probe(model: &str, options: &HubOptions) -> Result<()> {
    let endpoint = endpoint(options);
    let revision = options.revisions.first().map_or("main", String::as_str);
    let url = format!("{endpoint}/{model}/resolve/{revision}/{CONFIG_FILE}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(options.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    match agent.head(&url).call() {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::Hub(format!(
            "could not fetch {CONFIG_FILE} of {model} from {endpoint}: no answer within {} s \
             ({e}). {}",
            options.timeout.as_secs_f64(),
            how_to_download(model)
        ))),
    }
}

fn how_to_download(model: &str) -> String {
    format!(
        "On a machine with network access, download {CONFIG_FILE}, {WEIGHTS_FILE} and \
         {TOKENIZER_FILE} (e.g. `huggingface-cli download {model} {CONFIG_FILE} {WEIGHTS_FILE} \
         {TOKENIZER_FILE} --local-dir DIR`, adding `--revision refs/pr/4` if main lacks the \
         safetensors file), then pass DIR as the model, or copy a Hugging Face cache that holds \
         them, point HF_HOME at it and set HF_HUB_OFFLINE=1."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `HF_HUB_CACHE` names the cache as in Python (hf-hub reads only
    /// `HF_HOME`). The only test of this binary that sets the variable.
    #[test]
    fn the_cache_variable_python_reads_is_honoured() {
        let dir = std::env::temp_dir().join("uniattack-hf-hub-cache-test");
        std::env::set_var("HF_HUB_CACHE", &dir);
        let cache = hub_cache_from_env();
        std::env::remove_var("HF_HUB_CACHE");
        assert_eq!(cache.path(), &dir);
    }
}
