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
//! launcher watches its children: when one fails, the others get
//! [`GRACE`] to stop on their own (they learn of the failure where the
//! ranks agree, after each phase, and exit with their own messages, while
//! the failing rank prints its error), and those still running then are
//! killed. The ranks die with the launcher (Linux: a parent-death signal),
//! so a launcher killed by a scheduler does not leave them holding the GPUs.

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
/// Set by the launcher: rank 0 leaves the lines the launcher prints (the
/// run directory, the final table) to it.
const LAUNCHED: &str = "UNIATTACK_LAUNCHED";

/// How long the other ranks get to stop on their own once one failed.
pub const GRACE: Duration = Duration::from_secs(30);

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
    /// Started by `train_uniattack --gpus N` (which prints the run
    /// directory and the final table itself), not by hand.
    pub launched: bool,
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
            launched: var(LAUNCHED).is_some(),
        }))
    }

    /// The device and gradient synchronisation of this rank: `cuda:<local
    /// rank>` unless `--device` names one (`cuda` alone names none),
    /// joined to the NCCL group, whose waits for the other ranks last at
    /// most `collective_timeout` each.
    pub fn join(
        &self,
        device: Option<&str>,
        output: &Path,
        collective_timeout: Duration,
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
        let sync = join_group(&device, self, &id_file, collective_timeout)?;
        Ok((device, Some(sync)))
    }
}

#[cfg(feature = "nccl")]
fn join_group(
    device: &Device,
    rank: &RankEnv,
    id_file: &Path,
    collective_timeout: Duration,
) -> Result<SyncHandle> {
    let group = crate::nccl::NcclGroup::join(
        device,
        rank.rank,
        rank.world,
        id_file,
        Duration::from_secs(600),
        collective_timeout,
    )?;
    Ok(SyncHandle(std::sync::Arc::new(group)))
}

#[cfg(not(feature = "nccl"))]
fn join_group(_: &Device, rank: &RankEnv, _: &Path, _: Duration) -> Result<SyncHandle> {
    Err(no_nccl(rank.world))
}

/// An error unless this build can run `world` ranks (NCCL compiled in).
pub fn require_nccl(world: usize) -> Result<()> {
    if cfg!(feature = "nccl") {
        Ok(())
    } else {
        Err(no_nccl(world))
    }
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
    require_nccl(world)?;
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
        match rank_command(&exe, &args, rank, world, &id_file).spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                stop(&mut children);
                return Err(Error::io("starting a rank of", &exe, e));
            }
        }
    }
    match supervise(&mut children, GRACE) {
        Ok(()) => {}
        Err(Failed::Rank {
            rank,
            status,
            killed,
        }) => {
            let others = if killed.is_empty() {
                "the other ranks stopped on their own".to_string()
            } else {
                let killed: Vec<String> = killed.iter().map(usize::to_string).collect();
                format!(
                    "rank(s) {} still ran {} s later and were killed",
                    killed.join(", "),
                    GRACE.as_secs()
                )
            };
            return Err(Error::config(
                "data parallel",
                format!("rank {rank} failed ({status}; its error is above); {others}"),
            ));
        }
        Err(Failed::Wait(e)) => return Err(Error::io("waiting for a rank of", &exe, e)),
    }
    let report = output.join("report.json");
    let text = std::fs::read_to_string(&report).map_err(|e| Error::io("reading", &report, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: report,
        source,
    })
}

/// The command that starts rank `rank` of `world`: this executable's
/// arguments, the rank's variables (an inherited `UNIATTACK_LOCAL_RANK`
/// removed: it would put every rank on one GPU), standard output for rank
/// 0 only, and death with the launcher.
fn rank_command(
    exe: &Path,
    args: &[OsString],
    rank: usize,
    world: usize,
    id_file: &Path,
) -> Command {
    let mut command = Command::new(exe);
    command
        .args(args)
        .env(RANK, rank.to_string())
        .env(WORLD, world.to_string())
        .env(ID_FILE, id_file)
        .env(LAUNCHED, "1")
        .env_remove(LOCAL_RANK)
        // Rank 0 prints progress and the tables; the others only errors.
        .stdout(if rank == 0 {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    die_with_parent(&mut command);
    command
}

/// Makes the child receive SIGTERM when the launcher dies (killed by a
/// scheduler, `kill PID`), instead of training on alone. Ctrl-C reaches
/// every rank anyway (one foreground process group).
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure calls only prctl and
    // getppid, both async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher died before the signal was armed.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other("the launcher exited"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut Command) {}

/// Why [`supervise`] returned early.
#[derive(Debug)]
enum Failed {
    /// Rank `rank` exited with `status`; `killed` lists the ranks that had
    /// not stopped within the grace period.
    Rank {
        rank: usize,
        status: std::process::ExitStatus,
        killed: Vec<usize>,
    },
    /// A child's status could not be read (all were then killed).
    Wait(std::io::Error),
}

/// Waits for every child to exit. When one fails, the others get `grace`
/// to stop by themselves, then those still running are killed; every
/// child is reaped.
fn supervise(children: &mut [Child], grace: Duration) -> std::result::Result<(), Failed> {
    let mut failed: Option<(usize, std::process::ExitStatus, std::time::Instant)> = None;
    loop {
        let mut running = 0;
        for (rank, child) in children.iter_mut().enumerate() {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => {
                    if failed.is_none() {
                        failed = Some((rank, status, std::time::Instant::now()));
                    }
                }
                Ok(None) => running += 1,
                Err(e) => {
                    stop(children);
                    return Err(Failed::Wait(e));
                }
            }
        }
        match failed {
            None if running == 0 => return Ok(()),
            Some((rank, status, _)) if running == 0 => {
                return Err(Failed::Rank {
                    rank,
                    status,
                    killed: Vec::new(),
                })
            }
            Some((rank, status, since)) if since.elapsed() >= grace => {
                let killed = children
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(rank, child)| {
                        matches!(child.try_wait(), Ok(None)).then_some(rank)
                    })
                    .collect();
                stop(children);
                return Err(Failed::Rank {
                    rank,
                    status,
                    killed,
                });
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
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
                launched: false,
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
            .join(Some("cpu"), dir.path(), Duration::from_secs(1))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--features nccl"), "{err}");
    }

    fn shell(script: &str) -> Child {
        Command::new("sh").args(["-c", script]).spawn().unwrap()
    }

    /// When a rank fails, the others stop on their own within the grace
    /// period (as ranks do once they agree that one failed) and are not
    /// killed, so each prints its own error; one still running after the
    /// grace period (stuck in a collective) is killed.
    #[cfg(unix)]
    #[test]
    fn a_failed_rank_gives_the_others_time_then_stops_them() {
        use std::os::unix::process::ExitStatusExt;
        let start = std::time::Instant::now();
        let mut children = vec![
            shell("exit 3"),
            shell("sleep 0.5; exit 1"),
            shell("exec sleep 30"),
        ];
        let failed = supervise(&mut children, Duration::from_secs(2));
        let Err(Failed::Rank {
            rank,
            status,
            killed,
        }) = failed
        else {
            panic!("{failed:?}")
        };
        assert_eq!((rank, status.code()), (0, Some(3)));
        assert_eq!(killed, [2]);
        // Rank 1 exited by itself; rank 2 was killed.
        assert_eq!(children[1].wait().unwrap().code(), Some(1));
        assert_eq!(children[2].wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(start.elapsed() < Duration::from_secs(20));

        let mut children = vec![shell("exit 0"), shell("sleep 0.2")];
        assert!(supervise(&mut children, Duration::from_secs(2)).is_ok());
        let mut children = vec![shell("exit 0"), shell("sleep 0.2; exit 4")];
        let failed = supervise(&mut children, Duration::from_secs(2));
        assert!(
            matches!(&failed, Err(Failed::Rank { rank: 1, killed, .. }) if killed.is_empty()),
            "{failed:?}"
        );
    }

    /// A rank's command drops an inherited `UNIATTACK_LOCAL_RANK` (every
    /// rank would take that one GPU) and marks the rank as launched.
    #[test]
    fn rank_commands_carry_their_own_variables() {
        let command = rank_command(
            Path::new("/bin/true"),
            &["--demo".into()],
            1,
            2,
            Path::new("/run/.nccl-id"),
        );
        let envs: Vec<(String, Option<String>)> = command
            .get_envs()
            .map(|(k, v)| {
                let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
                (text(k), v.map(text))
            })
            .collect();
        for (name, value) in [
            (RANK, Some("1")),
            (WORLD, Some("2")),
            (ID_FILE, Some("/run/.nccl-id")),
            (LAUNCHED, Some("1")),
            (LOCAL_RANK, None),
        ] {
            let found = envs.iter().find(|(k, _)| k == name);
            assert_eq!(
                found.map(|(_, v)| v.as_deref()),
                Some(value),
                "{name}: {envs:?}"
            );
        }
        let env = |pairs: &[(&str, &str)]| env(pairs).unwrap().unwrap();
        assert!(env(&[(RANK, "0"), (WORLD, "2"), (LAUNCHED, "1")]).launched);
        assert!(!env(&[(RANK, "0"), (WORLD, "2")]).launched);
    }

    const ORPHAN_PID_FILE: &str = "UNIATTACK_TEST_RANK_PID_FILE";

    /// Entry point of the launcher process that
    /// `ranks_die_with_their_launcher` kills: starts a "rank" (`sleep 60`)
    /// as the launcher does, writes its process id, and waits.
    #[test]
    #[ignore = "run by ranks_die_with_their_launcher only"]
    fn orphan_launcher() {
        let Some(pid_file) = std::env::var_os(ORPHAN_PID_FILE) else {
            panic!("run by ranks_die_with_their_launcher only");
        };
        let mut command = Command::new("sleep");
        command.arg("60");
        die_with_parent(&mut command);
        let mut child = command.spawn().unwrap();
        std::fs::write(pid_file, child.id().to_string()).unwrap();
        // Killed while waiting, by the test.
        let _ = child.wait();
    }

    /// A launcher killed with SIGKILL (nothing of it runs any more) takes
    /// its ranks with it.
    #[cfg(target_os = "linux")]
    #[test]
    fn ranks_die_with_their_launcher() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("rank.pid");
        let mut launcher = Command::new(std::env::current_exe().unwrap())
            .args([
                "launch::tests::orphan_launcher",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(ORPHAN_PID_FILE, &pid_file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|text| text.trim().parse::<i32>().ok())
            {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "no rank started");
            std::thread::sleep(Duration::from_millis(20));
        };
        launcher.kill().unwrap();
        launcher.wait().unwrap();
        // Gone, or a zombie waiting for whoever adopted it.
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z') && !state.starts_with('X')
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let alive = running();
        if alive {
            // SAFETY: signalling a process id this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        assert!(!alive, "rank {pid} outlived its launcher");
    }
}
