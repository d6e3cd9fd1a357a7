//! What one NVML sampling pass saw: plain values, immutable once published.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use super::{GpmMetric, GpuIdentity};

/// NVML's clock-limit reason bits and their label names (`nvmlClocksEventReason*`).
pub const THROTTLE_REASONS: [(u64, &str); 9] = [
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

/// One GPU's values, in base units. `None` is a field that failed this time.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GpuStats {
    /// NVML's index.
    pub index: u32,
    /// UUID, name and PCI bus id.
    pub identity: GpuIdentity,
    /// GPU utilization, 0 to 1.
    pub utilization_ratio: Option<f64>,
    /// Memory-controller utilization, 0 to 1.
    pub memory_utilization_ratio: Option<f64>,
    /// Memory used, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Memory free, bytes.
    pub memory_free_bytes: Option<u64>,
    /// Memory total, bytes.
    pub memory_total_bytes: Option<u64>,
    /// Die temperature, °C.
    pub temperature_celsius: Option<f64>,
    /// Power draw, watts.
    pub power_watts: Option<f64>,
    /// Enforced power limit, watts.
    pub power_limit_watts: Option<f64>,
    /// Energy since the driver loaded, joules.
    pub energy_joules: Option<f64>,
    /// SM clock, Hz.
    pub sm_clock_hertz: Option<f64>,
    /// Memory clock, Hz.
    pub memory_clock_hertz: Option<f64>,
    /// Active clock-limit reasons, NVML's bit mask.
    pub throttle_reasons: Option<u64>,
    /// PCIe transmit throughput, bytes per second (only with `--nvml-pcie`).
    pub pcie_tx_bytes_per_second: Option<f64>,
    /// PCIe receive throughput, bytes per second (only with `--nvml-pcie`).
    pub pcie_rx_bytes_per_second: Option<f64>,
    /// Each fan's speed, 0 to 1.
    pub fan_speed_ratios: Option<Vec<f64>>,
    /// Corrected ECC errors since the driver loaded.
    pub ecc_corrected_errors: Option<u64>,
    /// Uncorrected ECC errors since the driver loaded.
    pub ecc_uncorrected_errors: Option<u64>,
    /// Performance state, 0 (P0) to 15.
    pub performance_state: Option<u32>,
    /// What GPM measured since the previous pass (Hopper and newer).
    pub gpm: GpmStats,
}

/// A GPU's GPM metrics, in base units, each averaged over the time between the sampler's last
/// two GPM samples of it. All `None` on a GPU without GPM, before its second sample, and after
/// a failed sample; one is `None` alone when NVML refused that metric.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GpmStats {
    /// Time the graphics or compute engine was busy, 0 to 1.
    pub graphics_engine_active_ratio: Option<f64>,
    /// Time each SM had at least one warp resident, averaged over the SMs, 0 to 1.
    pub sm_active_ratio: Option<f64>,
    /// Resident warps over the SMs' maximum, averaged over the SMs, 0 to 1.
    pub sm_occupancy_ratio: Option<f64>,
    /// Time the tensor pipes were busy (any type), 0 to 1.
    pub tensor_active_ratio: Option<f64>,
    /// DRAM bandwidth used over its peak, 0 to 1.
    pub dram_active_ratio: Option<f64>,
    /// PCIe traffic from the GPU, bytes per second.
    pub pcie_tx_bytes_per_second: Option<f64>,
    /// PCIe traffic to the GPU, bytes per second.
    pub pcie_rx_bytes_per_second: Option<f64>,
    /// NVLink traffic from the GPU over all its links, bytes per second.
    pub nvlink_tx_bytes_per_second: Option<f64>,
    /// NVLink traffic to the GPU over all its links, bytes per second.
    pub nvlink_rx_bytes_per_second: Option<f64>,
}

impl GpmStats {
    /// Sets one metric from NVML's value: percent becomes a ratio, MiB/s bytes per second.
    pub fn set(&mut self, metric: GpmMetric, nvml_value: f64) {
        let ratio = nvml_value / 100.0;
        let bytes_per_second = nvml_value * MIB;
        let (slot, value) = match metric {
            GpmMetric::GraphicsEngineActive => (&mut self.graphics_engine_active_ratio, ratio),
            GpmMetric::SmActive => (&mut self.sm_active_ratio, ratio),
            GpmMetric::SmOccupancy => (&mut self.sm_occupancy_ratio, ratio),
            GpmMetric::TensorActive => (&mut self.tensor_active_ratio, ratio),
            GpmMetric::DramActive => (&mut self.dram_active_ratio, ratio),
            GpmMetric::PcieTx => (&mut self.pcie_tx_bytes_per_second, bytes_per_second),
            GpmMetric::PcieRx => (&mut self.pcie_rx_bytes_per_second, bytes_per_second),
            GpmMetric::NvlinkTx => (&mut self.nvlink_tx_bytes_per_second, bytes_per_second),
            GpmMetric::NvlinkRx => (&mut self.nvlink_rx_bytes_per_second, bytes_per_second),
        };
        *slot = Some(value);
    }
}

/// Bytes in a MiB: NVML's GPM rates are MiB/s (`nvml.h`: "PCIe traffic from this GPU in
/// MiB/sec").
const MIB: f64 = 1_048_576.0;

/// A compute process on a GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuProcess {
    /// NVML's index of the GPU.
    pub gpu: u32,
    /// The GPU's UUID.
    pub uuid: String,
    /// Process id (in the host's pid namespace).
    pub pid: u32,
    /// GPU memory it holds, bytes; `None` where the driver does not say.
    pub memory_bytes: Option<u64>,
}

/// Everything one sampling pass saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GpuSample {
    /// When the pass ran; `None` before the first.
    #[serde(skip)]
    pub taken_at: Option<SystemTime>,
    /// Whether NVML could be loaded and initialised.
    pub nvml_up: bool,
    /// Why not, when it could not.
    pub nvml_error: Option<String>,
    /// The driver version, when known.
    pub driver_version: Option<String>,
    /// Each GPU.
    pub gpus: Vec<GpuStats>,
    /// Running compute processes on every GPU.
    pub processes: Vec<GpuProcess>,
    /// Failed reads since the exporter started, by field name.
    pub field_errors: BTreeMap<&'static str, u64>,
}

impl GpuSample {
    /// Seconds since the pass ran, at `now`; `None` before the first pass.
    pub fn age_seconds(&self, now: SystemTime) -> Option<f64> {
        let taken = self.taken_at?;
        Some(
            now.duration_since(taken)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        )
    }

    /// The active clock-limit reasons of a mask, by label name.
    pub fn throttle_reason_names(mask: u64) -> impl Iterator<Item = (&'static str, bool)> {
        THROTTLE_REASONS
            .into_iter()
            .map(move |(bit, name)| (name, mask & bit != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn age_is_none_before_the_first_pass_and_never_negative() {
        let now = SystemTime::now();
        assert_eq!(GpuSample::default().age_seconds(now), None);
        let s = GpuSample {
            taken_at: Some(now - Duration::from_secs(2)),
            ..Default::default()
        };
        assert_eq!(s.age_seconds(now), Some(2.0));
        let future = GpuSample {
            taken_at: Some(now + Duration::from_secs(2)),
            ..Default::default()
        };
        assert_eq!(future.age_seconds(now), Some(0.0));
    }

    #[test]
    fn gpm_percent_becomes_a_ratio_and_mib_per_second_bytes() {
        let mut g = GpmStats::default();
        g.set(GpmMetric::SmActive, 62.5);
        g.set(GpmMetric::PcieRx, 3.0);
        g.set(GpmMetric::NvlinkTx, 0.5);
        assert_eq!(g.sm_active_ratio, Some(0.625));
        assert_eq!(g.pcie_rx_bytes_per_second, Some(3.0 * 1024.0 * 1024.0));
        assert_eq!(g.nvlink_tx_bytes_per_second, Some(524_288.0));
        assert_eq!(g.tensor_active_ratio, None, "only what was set");
        // Every metric lands in a field of its own.
        let mut all = GpmStats::default();
        for (i, m) in GpmMetric::ALL.into_iter().enumerate() {
            all.set(m, i as f64 + 1.0);
        }
        let json = serde_json::to_value(&all).unwrap();
        let set: Vec<_> = json.as_object().unwrap().values().collect();
        assert!(set.iter().all(|v| v.is_number()), "{json}");
        assert_eq!(set.len(), GpmMetric::ALL.len());
    }

    #[test]
    fn throttle_mask_decodes_by_bit() {
        let active: Vec<_> = GpuSample::throttle_reason_names(0x4 | 0x40)
            .filter(|(_, on)| *on)
            .collect();
        assert_eq!(
            active,
            vec![("sw_power_cap", true), ("hw_thermal_slowdown", true)]
        );
    }
}
