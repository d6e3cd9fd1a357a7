//! The real [`GpuSource`]: nvml-wrapper, which loads `libnvidia-ml.so` at run time, so the
//! exporter builds and starts on hosts without a driver (where `connect` fails).

use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PcieUtilCounter, PerformanceState, TemperatureSensor,
};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::{Device, Nvml};

use super::{GpuIdentity, GpuSource, SourceError};

/// NVML through nvml-wrapper.
#[derive(Default)]
pub struct NvmlSource {
    nvml: Option<Nvml>,
}

impl NvmlSource {
    /// A source that has not loaded NVML yet.
    pub fn new() -> NvmlSource {
        NvmlSource::default()
    }

    fn device(&self, gpu: u32) -> Result<Device<'_>, SourceError> {
        let nvml = self
            .nvml
            .as_ref()
            .ok_or_else(|| SourceError("not connected".into()))?;
        nvml.device_by_index(gpu).map_err(err)
    }
}

fn err(e: nvml_wrapper::error::NvmlError) -> SourceError {
    SourceError(e.to_string())
}

impl GpuSource for NvmlSource {
    fn connect(&mut self) -> Result<(), SourceError> {
        if self.nvml.is_none() {
            self.nvml = Some(Nvml::init().map_err(err)?);
        }
        Ok(())
    }

    fn driver_version(&mut self) -> Result<String, SourceError> {
        let nvml = self
            .nvml
            .as_ref()
            .ok_or_else(|| SourceError("not connected".into()))?;
        nvml.sys_driver_version().map_err(err)
    }

    fn device_count(&mut self) -> Result<u32, SourceError> {
        let nvml = self
            .nvml
            .as_ref()
            .ok_or_else(|| SourceError("not connected".into()))?;
        nvml.device_count().map_err(err)
    }

    fn identity(&mut self, gpu: u32) -> Result<GpuIdentity, SourceError> {
        let d = self.device(gpu)?;
        Ok(GpuIdentity {
            uuid: d.uuid().map_err(err)?,
            name: d.name().map_err(err)?,
            pci_bus_id: d.pci_info().map_err(err)?.bus_id,
        })
    }

    fn utilization_percent(&mut self, gpu: u32) -> Result<(u32, u32), SourceError> {
        let u = self.device(gpu)?.utilization_rates().map_err(err)?;
        Ok((u.gpu, u.memory))
    }

    fn memory_bytes(&mut self, gpu: u32) -> Result<(u64, u64, u64), SourceError> {
        let m = self.device(gpu)?.memory_info().map_err(err)?;
        Ok((m.used, m.free, m.total))
    }

    fn temperature_celsius(&mut self, gpu: u32) -> Result<u32, SourceError> {
        self.device(gpu)?
            .temperature(TemperatureSensor::Gpu)
            .map_err(err)
    }

    fn power_usage_milliwatts(&mut self, gpu: u32) -> Result<u32, SourceError> {
        self.device(gpu)?.power_usage().map_err(err)
    }

    fn power_limit_milliwatts(&mut self, gpu: u32) -> Result<u32, SourceError> {
        self.device(gpu)?.enforced_power_limit().map_err(err)
    }

    fn energy_millijoules(&mut self, gpu: u32) -> Result<u64, SourceError> {
        self.device(gpu)?.total_energy_consumption().map_err(err)
    }

    fn sm_clock_mhz(&mut self, gpu: u32) -> Result<u32, SourceError> {
        self.device(gpu)?.clock_info(Clock::SM).map_err(err)
    }

    fn memory_clock_mhz(&mut self, gpu: u32) -> Result<u32, SourceError> {
        self.device(gpu)?.clock_info(Clock::Memory).map_err(err)
    }

    fn throttle_reasons(&mut self, gpu: u32) -> Result<u64, SourceError> {
        Ok(self
            .device(gpu)?
            .current_throttle_reasons()
            .map_err(err)?
            .bits())
    }

    fn pcie_kilobytes_per_second(&mut self, gpu: u32) -> Result<(u32, u32), SourceError> {
        let d = self.device(gpu)?;
        let tx = d.pcie_throughput(PcieUtilCounter::Send).map_err(err)?;
        let rx = d.pcie_throughput(PcieUtilCounter::Receive).map_err(err)?;
        Ok((tx, rx))
    }

    fn fan_speed_percent(&mut self, gpu: u32) -> Result<Vec<u32>, SourceError> {
        let d = self.device(gpu)?;
        let fans = d.num_fans().map_err(err)?;
        (0..fans).map(|fan| d.fan_speed(fan).map_err(err)).collect()
    }

    fn ecc_errors(&mut self, gpu: u32) -> Result<(u64, u64), SourceError> {
        let d = self.device(gpu)?;
        let corrected = d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile);
        let uncorrected = d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile);
        Ok((corrected.map_err(err)?, uncorrected.map_err(err)?))
    }

    fn performance_state(&mut self, gpu: u32) -> Result<u32, SourceError> {
        let state = self.device(gpu)?.performance_state().map_err(err)?;
        let p = [
            PerformanceState::Zero,
            PerformanceState::One,
            PerformanceState::Two,
            PerformanceState::Three,
            PerformanceState::Four,
            PerformanceState::Five,
            PerformanceState::Six,
            PerformanceState::Seven,
            PerformanceState::Eight,
            PerformanceState::Nine,
            PerformanceState::Ten,
            PerformanceState::Eleven,
            PerformanceState::Twelve,
            PerformanceState::Thirteen,
            PerformanceState::Fourteen,
            PerformanceState::Fifteen,
        ]
        .iter()
        .position(|s| *s == state);
        p.and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| SourceError("unknown performance state".into()))
    }

    fn compute_processes(&mut self, gpu: u32) -> Result<Vec<(u32, Option<u64>)>, SourceError> {
        let procs = self.device(gpu)?.running_compute_processes().map_err(err)?;
        Ok(procs
            .into_iter()
            .map(|p| {
                let bytes = match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                };
                (p.pid, bytes)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_before_connect_fail_instead_of_panicking() {
        let mut s = NvmlSource::new();
        assert!(s.device_count().is_err());
        assert!(s.temperature_celsius(0).is_err());
    }
}
