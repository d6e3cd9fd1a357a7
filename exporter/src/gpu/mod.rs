//! GPUs: what NVML reports, read on a background thread so that a scrape never waits on it.
//!
//! [`GpuSource`] is one method per NVML field; [`NvmlSource`] implements it with
//! nvml-wrapper and [`FakeGpuSource`] with fixed values for tests. The [`GpuSampler`] thread
//! asks the source for every field at each interval, drops the fields that fail (counting
//! them), and publishes an immutable [`GpuSample`] that scrapes read with one atomic load.
//!
//! GPM (Hopper and newer) needs two samples of a GPU some time apart: the sampler keeps each
//! GPU's last [`GpmSnapshot`] from one pass to the next and asks the source for the metrics
//! between it and the new one, so the window is one sampling interval and no pass waits.

mod fake;
mod nvml;
mod sample;
mod sampler;
mod source;

pub use fake::{FakeDevice, FakeGpuSource};
pub use nvml::NvmlSource;
pub use sample::{GpmStats, GpuProcess, GpuSample, GpuStats, THROTTLE_REASONS};
pub use sampler::GpuSampler;
pub use source::{GpmMetric, GpmReadings, GpmSnapshot, GpuIdentity, GpuSource, SourceError};
