//! [`GradientSync`] over NCCL, one process per GPU (`--features nccl`).
//!
//! Rank 0 creates the NCCL unique id and writes it, atomically, to a file
//! every rank can read (the run's output directory on one machine, a shared
//! directory across machines); the other ranks wait for that file, then all
//! join one communicator on the stream candle computes on, so the
//! all-reduce is ordered with the step's kernels. Each step's buffer
//! ([`crate::gradient_exchange`]: every gradient, already divided by the
//! world size, and each rank's success, loss and images) is summed in
//! place by one `ncclAllReduce`: the same sum on every rank, so every rank
//! takes the same Adam step.
//!
//! Not yet run on a GPU (no GPU was available while it was written): the
//! CPU test of the data-parallel logic (`tests/data_parallel.rs`) covers the
//! trainer's side through [`crate::distributed::InProcessGroup`], and
//! `scripts/device/gpu_checks.sh` is where a world of one must be checked
//! against the plain run.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Tensor};

use crate::distributed::GradientSync;
use crate::error::{Error, Result};
use crate::watchdog::Watchdog;

/// An NCCL communicator, used by one thread at a time. Never dropped:
/// cudarc's `Drop` for `Comm` aborts the communicator and panics when that
/// fails (after a CUDA error, the likely moment), which would end the
/// process before it prints the error that stopped the run. The process
/// exits right after its communicator's last use, and exit frees it.
struct CommCell(std::mem::ManuallyDrop<Comm>);

// SAFETY: NCCL allows a communicator to be used from any thread as long as
// calls on it do not overlap; every use goes through the `Mutex` below.
unsafe impl Send for CommCell {}

/// This process's rank of an NCCL data-parallel group.
pub struct NcclGroup {
    comm: Arc<Mutex<CommCell>>,
    device: Device,
    rank: usize,
    world: usize,
    /// Ends the process when a collective waits too long for the others.
    watchdog: Watchdog,
    /// The agreements' flag and the values it takes, allocated once: a rank
    /// that could not allocate a flag would skip the collective.
    flag: Tensor,
    one: Tensor,
    zero: Tensor,
}

impl std::fmt::Debug for NcclGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclGroup(rank {} of {})", self.rank, self.world)
    }
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::config("nccl", format!("{what}: {e:?}"))
}

impl NcclGroup {
    /// Joins rank `rank` of `world` on `device` (a CUDA device), the group's
    /// id exchanged through `id_file`: rank 0 writes it, the others wait up
    /// to `timeout` for it to appear. A collective that waits longer than
    /// `collective_timeout` for the other ranks ends this process with a
    /// message (exit status 1).
    pub fn join(
        device: &Device,
        rank: usize,
        world: usize,
        id_file: &Path,
        timeout: Duration,
        collective_timeout: Duration,
    ) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            return Err(Error::config(
                "nccl",
                format!("rank {rank} needs a CUDA device, got {device:?}"),
            ));
        };
        if rank >= world {
            return Err(Error::config(
                "nccl",
                format!("rank {rank} is outside a world of {world}"),
            ));
        }
        // Non-blocking communicators launch from NCCL's own thread, whose
        // per-thread stream is not the one candle computes on: the
        // all-reduce would no longer be ordered with the step's kernels.
        if std::env::var_os("NCCL_COMM_BLOCKING").is_some_and(|v| v == "0") {
            return Err(Error::config(
                "NCCL_COMM_BLOCKING",
                "0 (non-blocking communicators) is not supported: unset it",
            ));
        }
        let id = if rank == 0 {
            let id = Id::new().map_err(|e| nccl_error("cannot create the NCCL id", e))?;
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            crate::evaluator::write_bytes(id_file, &bytes)?;
            id
        } else {
            let start = Instant::now();
            let bytes = loop {
                match std::fs::read(id_file) {
                    Ok(bytes) if bytes.len() == 128 => break bytes,
                    _ if start.elapsed() > timeout => {
                        return Err(Error::config(
                            "nccl",
                            format!(
                                "rank {rank}: no NCCL id in {} after {} s (did rank 0 start?)",
                                id_file.display(),
                                timeout.as_secs()
                            ),
                        ))
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            let mut internal = [0 as std::ffi::c_char; 128];
            for (dst, src) in internal.iter_mut().zip(bytes) {
                *dst = src as std::ffi::c_char;
            }
            Id::uninit(internal)
        };
        // Rank 0 removes the id file once the join is over, joined or not,
        // and when the join times out: a file left behind would send the
        // ranks of the next start by hand, those that read it before rank 0
        // writes a new one, to a group that is gone.
        let join_over = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stale_id = (rank == 0).then(|| (id_file.to_path_buf(), Arc::clone(&join_over)));
        let watchdog = Watchdog::new(collective_timeout, move |what| {
            if let Some((file, join_over)) = &stale_id {
                if !join_over.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = std::fs::remove_file(file);
                }
            }
            // Not eprintln!: a panic on a closed stderr would end this
            // thread instead of the process.
            let _ = writeln!(
                std::io::stderr().lock(),
                "error: rank {rank}: {what} waited more than {} s for the other ranks: one of \
                 them is stuck or gone (its own output may say why). This rank stops; \
                 --collective-timeout sets the limit",
                collective_timeout.as_secs()
            );
            // The waiting thread is inside the CUDA driver and cannot be
            // woken; exit handlers could wait on it too.
            unsafe { libc::_exit(1) }
        });
        // Joining waits for every rank: one that never starts (on another
        // machine, say) would hold this one here.
        let joining = watchdog.watch(if rank == 0 {
            "joining the NCCL group".to_string()
        } else {
            format!(
                "joining the NCCL group with the id in {} (an id an earlier start left there \
                 would send this rank to a group that is gone: delete the file and start again)",
                id_file.display()
            )
        });
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, world, id);
        join_over.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(joining);
        if rank == 0 {
            // A successful join returns once every rank joined, so each has
            // read the id; a failed one leaves an id no rank can use.
            let _ = std::fs::remove_file(id_file);
        }
        let comm = comm.map_err(|e| {
            if rank == 0 {
                nccl_error("cannot join the NCCL group", e)
            } else {
                nccl_error(
                    &format!(
                        "rank {rank} cannot join the NCCL group with the id in {} (if an earlier \
                         start left that file, this rank may have read it before rank 0 wrote \
                         a new one: delete it and start again)",
                        id_file.display()
                    ),
                    e,
                )
            }
        })?;
        Ok(Self {
            comm: Arc::new(Mutex::new(CommCell(std::mem::ManuallyDrop::new(comm)))),
            device: device.clone(),
            rank,
            world,
            watchdog,
            flag: Tensor::zeros(1, DType::F32, device)?,
            one: Tensor::ones(1, DType::F32, device)?,
            zero: Tensor::zeros(1, DType::F32, device)?,
        })
    }
}

/// Sums a contiguous F32 CUDA tensor over the ranks, in place.
///
/// Ordered with the step's kernels only because both run on the thread
/// that joined: candle computes on that thread's per-thread default
/// stream, the communicator was made with it, and cudarc tracks no events
/// between streams here. A collective made from another thread would race
/// with the gradients it sums.
struct AllReduceSum(Arc<Mutex<CommCell>>);

impl InplaceOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("nccl-all-reduce-sum: the tensor must be on a CUDA device")
    }

    fn cuda_fwd(
        &self,
        storage: &mut candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("nccl-all-reduce-sum: the tensor must be contiguous")
        };
        let mut values = storage.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
        let comm = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::msg("nccl-all-reduce-sum: lock poisoned"))?;
        comm.0
            .all_reduce_in_place(&mut values, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::msg(format!("ncclAllReduce: {e:?}")))?;
        Ok(())
    }
}

impl GradientSync for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, buffer: &Tensor) -> Result<()> {
        self.sum(buffer, true)
    }

    fn all_ok(&self, ok: bool, _: &Device) -> Result<bool> {
        self.agree(ok, true)
    }

    fn all_ok_patiently(&self, ok: bool, _: &Device) -> Result<bool> {
        self.agree(ok, false)
    }
}

impl NcclGroup {
    /// [`GradientSync::all_reduce_sum`], under the watchdog when `watched`.
    fn sum(&self, buffer: &Tensor, watched: bool) -> Result<()> {
        if let Some(reason) = crate::distributed::unsummable(buffer) {
            return Err(Error::config("nccl", reason));
        }
        // Under watch until the sum is there: the all-reduce only queues
        // the work, and the wait for the other ranks happens on the GPU.
        // The callers read the sum right away, so waiting here costs
        // nothing.
        let _watch = watched.then(|| {
            self.watchdog
                .watch(format!("the all-reduce of {} values", buffer.elem_count()))
        });
        buffer.inplace_op1(&AllReduceSum(Arc::clone(&self.comm)))?;
        self.device.synchronize()?;
        Ok(())
    }

    /// The trait's agreement, without allocating on the GPU; its wait
    /// under the watchdog when `watched`.
    fn agree(&self, ok: bool, watched: bool) -> Result<bool> {
        let written = self
            .flag
            .slice_set(if ok { &self.one } else { &self.zero }, 0, 0);
        // Made whatever happened above. A flag not written holds the last
        // sum, the world size, and the sum is then not the world size.
        self.sum(&self.flag, watched)?;
        written?;
        let count = self.flag.to_vec1::<f32>()?;
        Ok(count.len() == 1 && count[0] == self.world as f32)
    }
}
