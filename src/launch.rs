//! One process per GPU for `train_uniattack --gpus N`, and how a process
//! learns its rank.
//!
//! The launcher re-runs this executable N times with the same arguments and
//! three environment variables, `UNIATTACK_RANK`, `UNIATTACK_WORLD_SIZE` and
//! `UNIATTACK_NCCL_ID` (the file through which rank 0 hands the NCCL id to
//! the others, in the run directory). Rank `i` trains on `cuda:i` unless
//! `UNIATTACK_LOCAL_RANK` names another GPU. Across machines, start one
//! process per GPU yourself (e.g. with `srun` or `torchrun`-style tooling)
//! with those variables set, the id file on a shared directory, and the
//! same `--output` on that shared directory.
//!
//! A rank that fails would leave the others waiting in NCCL forever, so the
//! launcher watches its children and stops all of them when one fails.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use candle_core::Device;

use crate::distributed::SyncHandle;
use crate::error::{Error, Result};
use crate::evaluator::EvalReport;

const RANK: &str = "UNIATTACK_RANK";
const WORLD: &str = "UNIATTACK_WORLD_SIZE";
const ID_FILE: &str = "UNIATTACK_NCCL_ID";
const LOCAL_RANK: &str = "UNIATTACK_LOCAL_RANK";

/// This process's place in a data-parallel run, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankEnv {
    /// `0..world`.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// The file that carries the NCCL id (`None`: `<output>/.nccl-id`).
    pub id_file: Option<PathBuf>,
    /// The GPU of this machine to use (`None`: `rank`).
    pub local_rank: Option<usize>,
}

/// Variable `name` as a number, read through `var`.
fn number(var: &impl Fn(&str) -> Option<OsString>, name: &str) -> Result<Option<usize>> {
    let Some(value) = var(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .and_then(|text| text.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            Error::config(
                name,
                format!("expected a non-negative integer, got {value:?}"),
            )
        })
}

impl RankEnv {
    /// `Some` when `UNIATTACK_RANK` is set (with `UNIATTACK_WORLD_SIZE`).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|name| std::env::var_os(name))
    }

    /// [`RankEnv::from_env`] over the variables `var` gives.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<Option<Self>> {
        let Some(rank) = number(&var, RANK)? else {
            return Ok(None);
        };
        let world = number(&var, WORLD)?
            .ok_or_else(|| Error::config(WORLD, format!("must be set when {RANK} is")))?;
        if rank >= world {
            return Err(Error::config(
                RANK,
                format!("({rank}) must be below {WORLD} ({world})"),
            ));
        }
        Ok(Some(Self {
            rank,
            world,
            id_file: var(ID_FILE).map(PathBuf::from),
            local_rank: number(&var, LOCAL_RANK)?,
        }))
    }

    /// The device and gradient synchronisation of this rank: `cuda:<local
    /// rank>` unless `--device` names one (`cuda` alone names none),
    /// joined to the NCCL group.
    pub fn join(
        &self,
        device: Option<&str>,
        output: &Path,
    ) -> Result<(Device, Option<SyncHandle>)> {
        let spec = match device {
            Some(spec) if spec != "cuda" => spec.to_string(),
            _ => format!("cuda:{}", self.local_rank.unwrap_or(self.rank)),
        };
        let device = crate::runtime::device(Some(&spec))?;
        let id_file = self
            .id_file
            .clone()
            .unwrap_or_else(|| output.join(".nccl-id"));
        let sync = join_group(&device, self, &id_file)?;
        Ok((device, Some(sync)))
    }
}

#[cfg(feature = "nccl")]
fn join_group(device: &Device, rank: &RankEnv, id_file: &Path) -> Result<SyncHandle> {
    let group = crate::nccl::NcclGroup::join(
        device,
        rank.rank,
        rank.world,
        id_file,
        Duration::from_secs(600),
    )?;
    Ok(SyncHandle(std::sync::Arc::new(group)))
}

#[cfg(not(feature = "nccl"))]
fn join_group(_: &Device, rank: &RankEnv, _: &Path) -> Result<SyncHandle> {
    Err(no_nccl(rank.world))
}

fn no_nccl(world: usize) -> Error {
    Error::config(
        "data parallel",
        format!(
            "{world} ranks need NCCL: rebuild with `--features nccl` (CUDA and NCCL on the \
             machine; see docs/gpu.md)"
        ),
    )
}

/// Runs `world` ranks of this executable with this process's arguments and
/// waits for them: the report rank 0 wrote, or the first failure (the other
/// ranks are then stopped). `add_output`: pass `--output output` to the
/// ranks (it was chosen here, not given).
pub fn launch_ranks(world: usize, output: &Path, add_output: bool) -> Result<EvalReport> {
    if !cfg!(feature = "nccl") {
        return Err(no_nccl(world));
    }
    std::fs::create_dir_all(output).map_err(|e| Error::io("creating", output, e))?;
    let id_file = output.join(".nccl-id");
    match std::fs::remove_file(&id_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io("removing the old", &id_file, e))
        }
        _ => {}
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("locating", "this executable", e))?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if add_output {
        args.push("--output".into());
        args.push(output.as_os_str().to_owned());
    }
    let mut children: Vec<Child> = Vec::with_capacity(world);
    for rank in 0..world {
        let child = Command::new(&exe)
            .args(&args)
            .env(RANK, rank.to_string())
            .env(WORLD, world.to_string())
            .env(ID_FILE, &id_file)
            // Rank 0 prints progress and the tables; the others only errors.
            .stdout(if rank == 0 {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn();
        match child {
            Ok(child) => children.push(child),
            Err(e) => {
                stop(&mut children);
                return Err(Error::io("starting a rank of", &exe, e));
            }
        }
    }
    let mut running = world;
    while running > 0 {
        running = 0;
        for (rank, child) in children.iter_mut().enumerate() {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => {
                    stop(&mut children);
                    return Err(Error::config(
                        "data parallel",
                        format!("rank {rank} failed ({status}); the other ranks were stopped"),
                    ));
                }
                Ok(None) => running += 1,
                Err(e) => {
                    stop(&mut children);
                    return Err(Error::io("waiting for a rank of", &exe, e));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = output.join("report.json");
    let text = std::fs::read_to_string(&report).map_err(|e| Error::io("reading", &report, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: report,
        source,
    })
}

/// Kills and reaps every child still running.
fn stop(children: &mut [Child]) {
    for child in children {
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<RankEnv>> {
        let pairs: Vec<(String, OsString)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        RankEnv::from_vars(|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn rank_variables_are_read_and_checked() {
        assert_eq!(env(&[]).unwrap(), None);
        let rank = env(&[
            (RANK, "1"),
            (WORLD, "4"),
            (ID_FILE, "/shared/id"),
            (LOCAL_RANK, "0"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            rank,
            RankEnv {
                rank: 1,
                world: 4,
                id_file: Some(PathBuf::from("/shared/id")),
                local_rank: Some(0),
            }
        );
        for (pairs, message) in [
            (&[(RANK, "0")][..], "UNIATTACK_WORLD_SIZE"),
            (&[(RANK, "4"), (WORLD, "4")][..], "must be below"),
            (&[(RANK, "one"), (WORLD, "4")][..], "non-negative integer"),
            (&[(RANK, "0"), (WORLD, "-2")][..], "non-negative integer"),
        ] {
            let err = env(pairs).unwrap_err().to_string();
            assert!(err.contains(message), "{pairs:?}: {err}");
        }
    }

    /// Without NCCL compiled in, more than one rank is a clear error, not a
    /// run that would wait for peers forever.
    #[cfg(not(feature = "nccl"))]
    #[test]
    fn ranks_without_nccl_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = launch_ranks(2, dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("--features nccl"), "{err}");
        let rank = env(&[(RANK, "0"), (WORLD, "2")]).unwrap().unwrap();
        let err = rank
            .join(Some("cpu"), dir.path())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--features nccl"), "{err}");
    }
}
