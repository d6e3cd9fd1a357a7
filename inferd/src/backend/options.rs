//! What a backend is told besides the model: the device, and how it will be driven.

use std::fmt;
use std::str::FromStr;

/// Where a backend runs the model: `auto`, `cpu`, `cuda` (device 0) or `cuda:N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The backend's own choice: a GPU backend takes device 0, torch takes CUDA device 0 when
    /// libtorch sees one and the CPU otherwise.
    #[default]
    Auto,
    /// The host CPU.
    Cpu,
    /// A CUDA device, by ordinal.
    Cuda(usize),
}

/// A `--device` that names no [`Device`]; it holds the text as given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown device {0:?}; expected auto, cpu, cuda or cuda:N")]
pub struct UnknownDevice(pub String);

impl FromStr for Device {
    type Err = UnknownDevice;

    fn from_str(s: &str) -> Result<Device, UnknownDevice> {
        let bad = || UnknownDevice(s.to_owned());
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(bad),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How the server will drive a backend, so that it can size its per-worker resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendOptions {
    /// Where to run.
    pub device: Device,
    /// Compute workers calling [`Backend::infer`](crate::Backend::infer) at once; a GPU
    /// backend keeps one stream (and its buffers) per worker.
    pub workers: usize,
    /// The most rows one batch holds; device buffers are sized for it.
    pub max_batch_rows: usize,
    /// Batches of up to this many rows replay a CUDA graph captured at load (one per batch
    /// size) instead of launching each kernel; 0 turns graphs off.
    pub cuda_graph_max_batch: usize,
}

impl Default for BackendOptions {
    fn default() -> BackendOptions {
        BackendOptions {
            device: Device::Auto,
            workers: 1,
            max_batch_rows: 32,
            cuda_graph_max_batch: 16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_back() {
        for (text, device) in [
            ("auto", Device::Auto),
            ("CPU", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(device));
        }
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        assert_eq!("cuda:3".parse::<Device>().unwrap().to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let err = bad.parse::<Device>().unwrap_err().to_string();
            assert!(
                err.contains("expected auto, cpu, cuda or cuda:N"),
                "{bad}: {err}"
            );
        }
    }
}
