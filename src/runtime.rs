//! Process set-up shared by the command-line tools: logging, the allocator
//! settings candle's training loop needs, and the device.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::Device;

use crate::error::{Error, Result};

/// Prints `text` and a newline on standard output. A closed or failing
/// stdout (`eval_uniattack --json | head -1`) is not an error: `println!`
/// would panic there, after all the work, and training would die with it;
/// what the tools print is also in their files. Once a write has failed,
/// later lines are not attempted.
///
/// Until a binary calls [`tolerate_closed_stdout`], lines go through
/// `println!`, which a test harness captures.
pub fn say(text: &str) {
    use std::sync::atomic::Ordering::Relaxed;
    if !DIRECT.load(Relaxed) {
        println!("{text}");
        return;
    }
    if CLOSED.load(Relaxed) {
        return;
    }
    if say_to(&mut std::io::stdout().lock(), text).is_err() {
        CLOSED.store(true, Relaxed);
    }
}

static DIRECT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes [`say`] write to standard output itself, so a closed stdout ends
/// the printing, not the process. The command-line binaries call it first.
pub fn tolerate_closed_stdout() {
    DIRECT.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// [`say`] into `out`; the write's outcome.
pub fn say_to(out: &mut dyn std::io::Write, text: &str) -> std::io::Result<()> {
    writeln!(out, "{text}")?;
    out.flush()
}

/// Once per process, before any thread starts: `tracing` output filtered by
/// `RUST_LOG` (default: warnings), and the allocator settings.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    tune_allocator();
}

/// Keeps freed large buffers in the heap for reuse (glibc only; set
/// `UNIATTACK_DEFAULT_MALLOC` to opt out).
///
/// candle allocates a fresh buffer per operation and per gradient. glibc
/// serves blocks above its (adaptive, at most 32 MiB) mmap threshold with
/// fresh mappings and returns them on free, so every large activation of a
/// training step is page-faulted in and unmapped again; raising the mmap
/// and trim thresholds lets the heap recycle them (`docs/benchmarks.md`
/// measures the difference on the training step).
pub fn tune_allocator() {
    if std::env::var_os("UNIATTACK_DEFAULT_MALLOC").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called at
    // start-up, before the process starts threads of its own.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// The device `spec` names: `cpu`, `cuda` (GPU 0) or `cuda:N`; `None`:
/// GPU 0 in a build with `cuda`, else the CPU.
pub fn device(spec: Option<&str>) -> Result<Device> {
    match spec {
        None => default_device(cfg!(feature = "cuda"), || {
            Device::new_cuda(0).map_err(|e| e.to_string())
        }),
        Some(spec) => named_device(spec),
    }
}

/// Prints `text` on standard error, for notes beside results that go to
/// standard output. Like [`say`], it goes through the test harness's
/// capture until [`tolerate_closed_stdout`], and a failed write is ignored.
pub fn note(text: &str) {
    if !DIRECT.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{text}");
        return;
    }
    let _ = say_to(&mut std::io::stderr().lock(), text);
}

/// `cpu` or `cuda:N`, as `--device` takes it.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The device of a command without `--device`: GPU 0 in a CUDA build
/// (`open_gpu`), the CPU otherwise. A CUDA build whose GPU cannot be opened
/// (none present, a driver older than the toolkit) is an error, not a
/// silent run on the CPU: a training run there is hundreds of times slower.
fn default_device(
    cuda_build: bool,
    open_gpu: impl FnOnce() -> std::result::Result<Device, String>,
) -> Result<Device> {
    if !cuda_build {
        return Ok(Device::Cpu);
    }
    open_gpu().map_err(|reason| Error::Device {
        device: "cuda:0 (the default of a CUDA build)".into(),
        reason: format!("{reason}; pass --device cpu to run on the CPU"),
    })
}

fn named_device(spec: &str) -> Result<Device> {
    let fail = |reason: String| Error::Device {
        device: spec.to_string(),
        reason,
    };
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| fail("expected cpu, cuda or cuda:N".into()))?,
    };
    if !cfg!(feature = "cuda") {
        return Err(fail(
            "this build has no CUDA support; rebuild with `--features cuda` (needs the CUDA \
             toolkit, see the README's GPU section)"
                .into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| fail(e.to_string()))
}

/// `runs/<name>-<UTC date>-<time>` below the current directory, for a run
/// started without `--output`.
pub fn default_run_dir(name: &str) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    PathBuf::from("runs").join(format!(
        "{name}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    ))
}

/// Gregorian (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without `--device`: the CPU build never tries a GPU; a CUDA build
    /// whose GPU does not open fails, naming the reason and `--device cpu`.
    #[test]
    fn the_default_device_never_falls_back_silently() {
        let cpu = default_device(false, || panic!("a CPU build tried the GPU")).unwrap();
        assert!(cpu.is_cpu());
        let err = default_device(true, || Err("CUDA_ERROR_NO_DEVICE".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CUDA_ERROR_NO_DEVICE") && err.contains("--device cpu"),
            "{err}"
        );
        assert!(default_device(true, || Ok(Device::Cpu)).unwrap().is_cpu());
    }

    #[test]
    fn calendar_dates_of_day_counts() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        // 2026-12-02 is day 20_789 since the epoch.
        assert_eq!(civil_from_days(20_789), (2026, 12, 2));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn device_names() {
        assert!(matches!(device(Some("cpu")), Ok(Device::Cpu)));
        let err = device(Some("gpu0")).unwrap_err().to_string();
        assert!(err.contains("cuda:N"), "{err}");
        if !cfg!(feature = "cuda") {
            let err = device(Some("cuda:1")).unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}

#[cfg(test)]
mod say_tests {
    use super::*;

    /// A reader that has gone away.
    struct Closed;

    impl std::io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_output_is_an_error_value_not_a_panic() {
        let err = say_to(&mut Closed, "report").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
        let mut open = Vec::new();
        say_to(&mut open, "report").unwrap();
        assert_eq!(open, b"report\n");
    }
}
