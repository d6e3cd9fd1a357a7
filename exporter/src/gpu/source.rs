//! The interface between the sampler and NVML (or a fake of it).

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
}
