//! `--device auto|cpu|cuda:N`.

use std::str::FromStr;

use candle_core::Device;

use crate::error::ArtifactError;

/// Which device runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The first CUDA device when built with `cuda` and one is usable, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("invalid device {s:?}: expected auto, cpu or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// Opens the device. `auto` falls back to the CPU; an explicit `cuda:N` fails
    /// when CUDA support is not built in or the device cannot be opened.
    pub fn open(self) -> Result<Device, ArtifactError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => {
                if candle_core::utils::cuda_is_available() {
                    if let Ok(device) = Device::new_cuda(0) {
                        return Ok(device);
                    }
                }
                Ok(Device::Cpu)
            }
            DeviceChoice::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(ArtifactError::Device {
                        device: self.to_string(),
                        reason: "this binary was built without the `cuda` feature".into(),
                    });
                }
                Device::new_cuda(n).map_err(|e| ArtifactError::Device {
                    device: self.to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }
}

impl DeviceChoice {
    /// Whether this choice runs on the CPU (`auto` does when CUDA is not built in).
    pub fn is_cpu(self) -> bool {
        match self {
            DeviceChoice::Cpu => true,
            DeviceChoice::Auto => !candle_core::utils::cuda_is_available(),
            DeviceChoice::Cuda(_) => false,
        }
    }

    /// Model threads when none are configured: on a CPU one per available core
    /// (each running its matmuls single-threaded, see [`configure_cpu_threads`]);
    /// on a GPU one.
    pub fn auto_model_threads(self) -> usize {
        if self.is_cpu() {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            1
        }
    }

    /// The planner's cost of one forward pass (see `BatchConfig::pass_overhead_tokens`).
    pub fn auto_pass_overhead(self) -> usize {
        if self.is_cpu() {
            crate::grouping::CPU_PASS_OVERHEAD
        } else {
            crate::grouping::GPU_PASS_OVERHEAD
        }
    }
}

/// Lets cuBLAS run f32 matmuls on the tensor cores in TF32 (10-bit mantissa
/// inputs, f32 accumulation): several times the f32 matmul rate on Ampere and
/// later GPUs, at about 1e-3 relative error per product. No effect on a CPU.
pub fn allow_tf32(on: bool) {
    candle_core::cuda::set_gemm_reduced_precision_f32(on);
}

/// With several CPU model threads, candle's matmuls must not each fan out over
/// every core as well: unless the operator chose `RAYON_NUM_THREADS` (which candle
/// reads for its matmul threads), it is set to 1. Call it before any thread starts.
pub fn configure_cpu_threads(device: DeviceChoice, model_threads: usize) {
    if device.is_cpu() && model_threads > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

/// A short name of an opened device, for logs and `/health`.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda:1".parse(), Ok(DeviceChoice::Cuda(1)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cpu_build_refuses_cuda_and_auto_picks_cpu() {
        let err = DeviceChoice::Cuda(0).open().unwrap_err();
        assert!(err.to_string().contains("without the `cuda` feature"));
        assert!(DeviceChoice::Auto.open().unwrap().is_cpu());
    }
}
