//! With `--features cuda`, compiles `cuda/fused_ops.cu` to PTX for the
//! compute capability in `CUDA_COMPUTE_CAP` (`90`; unset, the lowest
//! `nvidia-smi` lists, else 80, whose PTX newer GPUs compile at load time)
//! with `nvcc` (`$NVCC`, else on `PATH`). candle's own kernels read the same
//! variable but take only the `90` form, and the first GPU listed. With
//! `--features cuda-emulation`, compiles the same file as C++ with the CPU
//! emulator of `cuda/emulation/` (a C++17 compiler, no CUDA toolkit).
//! Without either it does nothing, so the default build needs neither.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=cuda/fused_ops.cu");
    println!("cargo:rerun-if-changed=cuda/emulation");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo::rustc-check-cfg=cfg(cuda_kernels)");
    let cuda = std::env::var_os("CARGO_FEATURE_CUDA").is_some();
    let emulation = std::env::var_os("CARGO_FEATURE_CUDA_EMULATION").is_some();
    if cuda || emulation {
        // The CUDA ops' host code, shared by both.
        println!("cargo:rustc-cfg=cuda_kernels");
    }
    #[cfg(feature = "cuda-emulation")]
    compile_emulator();
    if cuda {
        compile_ptx();
    }
}

/// The kernels and the emulator's scheduler as one static library.
#[cfg(feature = "cuda-emulation")]
fn compile_emulator() {
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .include("cuda/emulation")
        .file("cuda/emulation/emulator.cpp")
        .file("cuda/emulation/kernels.cpp")
        .file("cuda/emulation/self_test_kernels.cpp")
        .warnings(true)
        // `#pragma unroll` is for nvcc.
        .flag("-Wno-unknown-pragmas")
        // a * b + c stays two roundings, as nvcc keeps `__fmul_rn` and
        // `__fadd_rn` (GCC would fuse them where the CPU has FMA).
        .flag("-ffp-contract=off")
        // The kernels register themselves with the launcher from static
        // initialisers that nothing else refers to: keep them linked.
        .link_lib_modifier("+whole-archive")
        .compile("fused_ops_emulation");
}

/// `CUDA_COMPUTE_CAP`'s digits; unset, the lowest of the GPUs
/// `nvidia-smi` lists (PTX for one capability loads on that one and newer
/// GPUs only: an sm_75 card cannot load compute_80 PTX); else 80. (candle's
/// build needs `nvidia-smi` or the variable, so a CUDA build of this
/// workspace never reaches the fallback.)
fn compute_cap() -> String {
    let digits = |text: &str| -> String { text.chars().filter(char::is_ascii_digit).collect() };
    if let Ok(cap) = std::env::var("CUDA_COMPUTE_CAP") {
        if !digits(&cap).is_empty() {
            return digits(&cap);
        }
    }
    let listed = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|line| digits(line).parse::<u32>().ok())
                .min()
        });
    match listed {
        Some(cap) => cap.to_string(),
        None => {
            println!(
                "cargo:warning=fused-ops: CUDA_COMPUTE_CAP unset and no GPU listed by \
                 nvidia-smi; building PTX for compute capability 8.0"
            );
            "80".to_string()
        }
    }
}

fn compile_ptx() {
    let cap = compute_cap();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("fused_ops.ptx");
    let nvcc = std::env::var_os("NVCC").unwrap_or_else(|| "nvcc".into());
    let status = Command::new(&nvcc)
        .args([
            "--ptx",
            "-O3",
            "-std=c++17",
            &format!("-arch=compute_{cap}"),
        ])
        .arg("cuda/fused_ops.cu")
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("nvcc failed on cuda/fused_ops.cu ({s})"),
        Err(e) => panic!(
            "cannot run {} for --features cuda: {e} (install the CUDA toolkit or set NVCC)",
            nvcc.to_string_lossy()
        ),
    }
}
