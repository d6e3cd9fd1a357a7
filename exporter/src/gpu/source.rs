//! The interface between the sampler and NVML (or a fake of it).

use std::any::Any;
use std::fmt;

/// Why a read failed. The sampler only needs the text: the field is dropped either way.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// Who a GPU is: the values of `gpu_info`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GpuIdentity {
    /// The device UUID, `GPU-...`.
    pub uuid: String,
    /// The product name.
    pub name: String,
    /// The PCI bus id, `00000000:3B:00.0`.
    pub pci_bus_id: String,
}

/// The GPM (GPU Performance Monitoring) metrics the exporter reads, each one NVML metric id.
/// GPM computes them from two samples of a GPU's counters taken some time apart (Hopper and
/// newer GPUs only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GpmMetric {
    /// `NVML_GPM_METRIC_GRAPHICS_UTIL`: time the graphics or compute engine was busy, percent.
    GraphicsEngineActive,
    /// `NVML_GPM_METRIC_SM_UTIL`: time each SM had a warp resident, averaged over SMs, percent.
    SmActive,
    /// `NVML_GPM_METRIC_SM_OCCUPANCY`: resident warps over the SMs' maximum, percent.
    SmOccupancy,
    /// `NVML_GPM_METRIC_ANY_TENSOR_UTIL`: time the tensor pipes were busy, any type, percent.
    TensorActive,
    /// `NVML_GPM_METRIC_DRAM_BW_UTIL`: DRAM bandwidth used over its peak, percent.
    DramActive,
    /// `NVML_GPM_METRIC_PCIE_TX_PER_SEC`: PCIe traffic from the GPU, MiB/s.
    PcieTx,
    /// `NVML_GPM_METRIC_PCIE_RX_PER_SEC`: PCIe traffic to the GPU, MiB/s.
    PcieRx,
    /// `NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC`: NVLink traffic from the GPU, all links, MiB/s.
    NvlinkTx,
    /// `NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC`: NVLink traffic to the GPU, all links, MiB/s.
    NvlinkRx,
}

impl GpmMetric {
    /// Every metric, in the order they are asked for.
    pub const ALL: [GpmMetric; 9] = [
        GpmMetric::GraphicsEngineActive,
        GpmMetric::SmActive,
        GpmMetric::SmOccupancy,
        GpmMetric::TensorActive,
        GpmMetric::DramActive,
        GpmMetric::PcieTx,
        GpmMetric::PcieRx,
        GpmMetric::NvlinkTx,
        GpmMetric::NvlinkRx,
    ];

    /// The name its failures are counted under in `nvml_field_errors_total`: `gpm_` and
    /// NVML's own name for the metric, so that an error points at the NVML id that failed.
    pub fn field(self) -> &'static str {
        match self {
            GpmMetric::GraphicsEngineActive => "gpm_graphics_util",
            GpmMetric::SmActive => "gpm_sm_util",
            GpmMetric::SmOccupancy => "gpm_sm_occupancy",
            GpmMetric::TensorActive => "gpm_any_tensor_util",
            GpmMetric::DramActive => "gpm_dram_bw_util",
            GpmMetric::PcieTx => "gpm_pcie_tx_per_sec",
            GpmMetric::PcieRx => "gpm_pcie_rx_per_sec",
            GpmMetric::NvlinkTx => "gpm_nvlink_total_tx_per_sec",
            GpmMetric::NvlinkRx => "gpm_nvlink_total_rx_per_sec",
        }
    }
}

/// One GPM sample of one GPU, as its source took it. The sampler only keeps it until the next
/// pass and hands it back to the same source's [`GpuSource::gpm_metrics`]: what is inside
/// (for NVML, a sample buffer the driver filled) is the source's business.
pub struct GpmSnapshot(Box<dyn Any + Send>);

impl GpmSnapshot {
    /// Wraps a source's own sample.
    pub fn new<T: Any + Send>(sample: T) -> GpmSnapshot {
        GpmSnapshot(Box::new(sample))
    }

    /// The source's own sample, if it is of type `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl fmt::Debug for GpmSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GpmSnapshot")
    }
}

/// Each GPM metric's value between two samples, in NVML's unit, or why that one failed.
pub type GpmReadings = Vec<(GpmMetric, Result<f64, SourceError>)>;

/// One method per field NVML reports, in NVML's own units. Every method may fail on its own
/// (a driver too old or too new, a field the board lacks); the sampler then drops that field.
pub trait GpuSource: Send {
    /// Loads and initialises the library. Called until it succeeds.
    fn connect(&mut self) -> Result<(), SourceError>;
    /// The driver version.
    fn driver_version(&mut self) -> Result<String, SourceError>;
    /// How many GPUs there are.
    fn device_count(&mut self) -> Result<u32, SourceError>;
    /// UUID, name and PCI bus id.
    fn identity(&mut self, gpu: u32) -> Result<GpuIdentity, SourceError>;
    /// GPU and memory utilization, in percent.
    fn utilization_percent(&mut self, gpu: u32) -> Result<(u32, u32), SourceError>;
    /// Memory used, free and total, in bytes.
    fn memory_bytes(&mut self, gpu: u32) -> Result<(u64, u64, u64), SourceError>;
    /// Die temperature, in °C (signed, as NVML's newer call reports it).
    fn temperature_celsius(&mut self, gpu: u32) -> Result<i32, SourceError>;
    /// Power draw, in milliwatts.
    fn power_usage_milliwatts(&mut self, gpu: u32) -> Result<u32, SourceError>;
    /// Enforced power limit, in milliwatts.
    fn power_limit_milliwatts(&mut self, gpu: u32) -> Result<u32, SourceError>;
    /// Energy since the driver loaded, in millijoules.
    fn energy_millijoules(&mut self, gpu: u32) -> Result<u64, SourceError>;
    /// SM clock, in MHz.
    fn sm_clock_mhz(&mut self, gpu: u32) -> Result<u32, SourceError>;
    /// Memory clock, in MHz.
    fn memory_clock_mhz(&mut self, gpu: u32) -> Result<u32, SourceError>;
    /// Active clock-limit reasons, as NVML's bit mask.
    fn throttle_reasons(&mut self, gpu: u32) -> Result<u64, SourceError>;
    /// PCIe transmit and receive throughput, in KB/s. Blocks about 20 ms.
    fn pcie_kilobytes_per_second(&mut self, gpu: u32) -> Result<(u32, u32), SourceError>;
    /// Each fan's speed, in percent of its maximum.
    fn fan_speed_percent(&mut self, gpu: u32) -> Result<Vec<u32>, SourceError>;
    /// Corrected and uncorrected ECC errors since the driver loaded.
    fn ecc_errors(&mut self, gpu: u32) -> Result<(u64, u64), SourceError>;
    /// Performance state, 0 (P0, fastest) to 15.
    fn performance_state(&mut self, gpu: u32) -> Result<u32, SourceError>;
    /// Running compute processes: pid and GPU memory used in bytes, where known.
    fn compute_processes(&mut self, gpu: u32) -> Result<Vec<(u32, Option<u64>)>, SourceError>;
    /// Whether the GPU has GPM (Hopper and newer, with a driver from R520 on). `Ok(false)` for
    /// a GPU or driver without it: the sampler asks once per GPU and never samples it then.
    fn gpm_supported(&mut self, gpu: u32) -> Result<bool, SourceError>;
    /// A GPM sample of the whole GPU, now.
    fn gpm_sample(&mut self, gpu: u32) -> Result<GpmSnapshot, SourceError>;
    /// Every `GpmMetric` over the time from `earlier` to `later`, two samples this source
    /// took of one GPU, each in NVML's unit (percent, MiB/s). The call fails as a whole (a
    /// sample not this source's, a driver error) or per metric (one a board lacks: NVLink on a
    /// PCIe card).
    fn gpm_metrics(
        &mut self,
        earlier: &GpmSnapshot,
        later: &GpmSnapshot,
    ) -> Result<GpmReadings, SourceError>;
}
