//! With `--features cuda`, compiles `cuda/fused_ops.cu` to PTX for the
//! compute capability in `CUDA_COMPUTE_CAP` (e.g. `90` or `9.0`; default
//! 80, whose PTX newer GPUs compile at load time) with `nvcc` (`$NVCC`, else
//! on `PATH`). Without the feature it does nothing, so the default build
//! needs no CUDA toolkit.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=cuda/fused_ops.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let digits: String = std::env::var("CUDA_COMPUTE_CAP")
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let cap = if digits.is_empty() {
        "80".to_string()
    } else {
        digits
    };
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
