//! A [`GpuSource`] with fixed values, for tests on machines without a GPU. Any field can be
//! made to fail, and NVML can be made missing altogether.
//!
//! GPM is faked as NVML does it: [`GpuSource::gpm_sample`] captures the device's GPM values and
//! a sequence number, and [`GpuSource::gpm_metrics`] answers the later sample's values, refusing
//! two samples out of order or of different GPUs; [`FakeGpuSource::gpm_pairs`] lists which
//! samples each call was given.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use super::{GpmMetric, GpmReadings, GpmSnapshot, GpuIdentity, GpuSource, SourceError};

/// One fake GPU's values, in NVML's units.
#[derive(Clone, Debug)]
pub struct FakeDevice {
    /// UUID, name, PCI bus id.
    pub identity: GpuIdentity,
    /// GPU and memory utilization, percent.
    pub utilization_percent: (u32, u32),
    /// Used, free, total bytes.
    pub memory_bytes: (u64, u64, u64),
    /// °C.
    pub temperature_celsius: i32,
    /// mW.
    pub power_usage_milliwatts: u32,
    /// mW.
    pub power_limit_milliwatts: u32,
    /// mJ.
    pub energy_millijoules: u64,
    /// MHz.
    pub sm_clock_mhz: u32,
    /// MHz.
    pub memory_clock_mhz: u32,
    /// NVML bit mask.
    pub throttle_reasons: u64,
    /// KB/s transmit and receive.
    pub pcie_kilobytes_per_second: (u32, u32),
    /// Percent per fan.
    pub fan_speed_percent: Vec<u32>,
    /// Corrected, uncorrected.
    pub ecc_errors: (u64, u64),
    /// 0 to 15.
    pub performance_state: u32,
    /// Pid and bytes.
    pub compute_processes: Vec<(u32, Option<u64>)>,
    /// GPM metrics in NVML's units (percent, MiB/s), or `None` for a GPU without GPM (before
    /// Hopper). A metric left out fails with "Not Supported", as NVLink does on a PCIe card.
    pub gpm: Option<Vec<(GpmMetric, f64)>>,
}

impl FakeDevice {
    /// A plausible H100 numbered `index`.
    pub fn h100(index: u32) -> FakeDevice {
        FakeDevice {
            identity: GpuIdentity {
                uuid: format!("GPU-00000000-0000-0000-0000-00000000000{index}"),
                name: "NVIDIA H100 80GB HBM3".into(),
                pci_bus_id: format!("00000000:{:02X}:00.0", 0x18 + index),
            },
            utilization_percent: (75, 40),
            memory_bytes: (20 << 30, 60 << 30, 80 << 30),
            temperature_celsius: 55,
            power_usage_milliwatts: 350_000,
            power_limit_milliwatts: 700_000,
            energy_millijoules: 1_234_567,
            sm_clock_mhz: 1_980,
            memory_clock_mhz: 2_619,
            throttle_reasons: 0x4,
            pcie_kilobytes_per_second: (1_000, 2_000),
            fan_speed_percent: vec![30],
            ecc_errors: (2, 0),
            performance_state: 0,
            compute_processes: Vec::new(),
            gpm: Some(vec![
                (GpmMetric::GraphicsEngineActive, 80.0),
                (GpmMetric::SmActive, 62.5),
                (GpmMetric::SmOccupancy, 25.0),
                (GpmMetric::TensorActive, 12.5),
                (GpmMetric::DramActive, 40.0),
                (GpmMetric::PcieTx, 100.0),
                (GpmMetric::PcieRx, 250.0),
                (GpmMetric::NvlinkTx, 1_024.0),
                (GpmMetric::NvlinkRx, 512.0),
            ]),
        }
    }

    /// A plausible A100 numbered `index`: an Ampere GPU, which has no GPM.
    pub fn a100(index: u32) -> FakeDevice {
        let mut d = FakeDevice::h100(index);
        d.identity.uuid = format!("GPU-a1000000-0000-0000-0000-00000000000{index}");
        d.identity.name = "NVIDIA A100-SXM4-80GB".into();
        d.gpm = None;
        d
    }
}

/// A fake GPM sample: whose, when (in sample order) and the values it saw.
#[derive(Debug)]
struct FakeGpmSample {
    gpu: u32,
    seq: u64,
    values: Vec<(GpmMetric, f64)>,
}

#[derive(Debug, Default)]
struct State {
    missing: bool,
    failing: BTreeSet<&'static str>,
    devices: Vec<FakeDevice>,
    /// GPM samples taken so far.
    gpm_samples: u64,
    /// Each `gpm_metrics` call's GPU and samples' sequence numbers.
    gpm_pairs: Vec<(u32, u64, u64)>,
}

/// A fake NVML. Clones share their state, so a test keeps one clone to change the values
/// while the sampler thread owns another.
#[derive(Clone, Debug, Default)]
pub struct FakeGpuSource {
    state: Arc<Mutex<State>>,
}

impl FakeGpuSource {
    /// NVML with these GPUs.
    pub fn with_devices(devices: Vec<FakeDevice>) -> FakeGpuSource {
        let fake = FakeGpuSource::default();
        fake.lock().devices = devices;
        fake
    }

    /// No NVML at all: `connect` fails, as on a host without the driver.
    pub fn missing() -> FakeGpuSource {
        let fake = FakeGpuSource::default();
        fake.lock().missing = true;
        fake
    }

    /// Makes one field fail (by its method name, e.g. `temperature_celsius`) or succeed again.
    pub fn set_failing(&self, field: &'static str, failing: bool) {
        let mut s = self.lock();
        if failing {
            s.failing.insert(field);
        } else {
            s.failing.remove(field);
        }
    }

    /// Changes a device's values.
    pub fn update(&self, gpu: usize, f: impl FnOnce(&mut FakeDevice)) {
        if let Some(d) = self.lock().devices.get_mut(gpu) {
            f(d);
        }
    }

    /// For each `gpm_metrics` call so far: the GPU and the sequence numbers (1, 2, ... in the
    /// order they were taken, over all GPUs) of the earlier and the later sample.
    pub fn gpm_pairs(&self) -> Vec<(u32, u64, u64)> {
        self.lock().gpm_pairs.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read<T>(
        &self,
        field: &'static str,
        gpu: u32,
        f: impl FnOnce(&FakeDevice) -> T,
    ) -> Result<T, SourceError> {
        let s = self.lock();
        if s.missing {
            return Err(SourceError("NVML shared library not found".into()));
        }
        if s.failing.contains(field) {
            return Err(SourceError(format!("{field}: Not Supported")));
        }
        let d = usize::try_from(gpu).ok().and_then(|i| s.devices.get(i));
        d.map(f).ok_or_else(|| SourceError(format!("no GPU {gpu}")))
    }
}

impl GpuSource for FakeGpuSource {
    fn connect(&mut self) -> Result<(), SourceError> {
        if self.lock().missing {
            return Err(SourceError("NVML shared library not found".into()));
        }
        Ok(())
    }

    fn driver_version(&mut self) -> Result<String, SourceError> {
        let s = self.lock();
        match (s.missing, s.failing.contains("driver_version")) {
            (false, false) => Ok("550.54.15".into()),
            _ => Err(SourceError("driver_version: Not Supported".into())),
        }
    }

    fn device_count(&mut self) -> Result<u32, SourceError> {
        let s = self.lock();
        if s.missing || s.failing.contains("device_count") {
            return Err(SourceError("device_count failed".into()));
        }
        u32::try_from(s.devices.len()).map_err(|e| SourceError(e.to_string()))
    }

    fn identity(&mut self, gpu: u32) -> Result<GpuIdentity, SourceError> {
        self.read("identity", gpu, |d| d.identity.clone())
    }

    fn utilization_percent(&mut self, gpu: u32) -> Result<(u32, u32), SourceError> {
        self.read("utilization_percent", gpu, |d| d.utilization_percent)
    }

    fn memory_bytes(&mut self, gpu: u32) -> Result<(u64, u64, u64), SourceError> {
        self.read("memory_bytes", gpu, |d| d.memory_bytes)
    }

    fn temperature_celsius(&mut self, gpu: u32) -> Result<i32, SourceError> {
        self.read("temperature_celsius", gpu, |d| d.temperature_celsius)
    }

    fn power_usage_milliwatts(&mut self, gpu: u32) -> Result<u32, SourceError> {
        self.read("power_usage_milliwatts", gpu, |d| d.power_usage_milliwatts)
    }

    fn power_limit_milliwatts(&mut self, gpu: u32) -> Result<u32, SourceError> {
        self.read("power_limit_milliwatts", gpu, |d| d.power_limit_milliwatts)
    }

    fn energy_millijoules(&mut self, gpu: u32) -> Result<u64, SourceError> {
        self.read("energy_millijoules", gpu, |d| d.energy_millijoules)
    }

    fn sm_clock_mhz(&mut self, gpu: u32) -> Result<u32, SourceError> {
        self.read("sm_clock_mhz", gpu, |d| d.sm_clock_mhz)
    }

    fn memory_clock_mhz(&mut self, gpu: u32) -> Result<u32, SourceError> {
        self.read("memory_clock_mhz", gpu, |d| d.memory_clock_mhz)
    }

    fn throttle_reasons(&mut self, gpu: u32) -> Result<u64, SourceError> {
        self.read("throttle_reasons", gpu, |d| d.throttle_reasons)
    }

    fn pcie_kilobytes_per_second(&mut self, gpu: u32) -> Result<(u32, u32), SourceError> {
        self.read("pcie_kilobytes_per_second", gpu, |d| {
            d.pcie_kilobytes_per_second
        })
    }

    fn fan_speed_percent(&mut self, gpu: u32) -> Result<Vec<u32>, SourceError> {
        self.read("fan_speed_percent", gpu, |d| d.fan_speed_percent.clone())
    }

    fn ecc_errors(&mut self, gpu: u32) -> Result<(u64, u64), SourceError> {
        self.read("ecc_errors", gpu, |d| d.ecc_errors)
    }

    fn performance_state(&mut self, gpu: u32) -> Result<u32, SourceError> {
        self.read("performance_state", gpu, |d| d.performance_state)
    }

    fn compute_processes(&mut self, gpu: u32) -> Result<Vec<(u32, Option<u64>)>, SourceError> {
        self.read("compute_processes", gpu, |d| d.compute_processes.clone())
    }

    fn gpm_supported(&mut self, gpu: u32) -> Result<bool, SourceError> {
        self.read("gpm_supported", gpu, |d| d.gpm.is_some())
    }

    fn gpm_sample(&mut self, gpu: u32) -> Result<GpmSnapshot, SourceError> {
        let values = self
            .read("gpm_sample", gpu, |d| d.gpm.clone())?
            .ok_or_else(|| SourceError("gpm_sample: Not Supported".into()))?;
        let mut s = self.lock();
        s.gpm_samples += 1;
        let seq = s.gpm_samples;
        Ok(GpmSnapshot::new(FakeGpmSample { gpu, seq, values }))
    }

    fn gpm_metrics(
        &mut self,
        earlier: &GpmSnapshot,
        later: &GpmSnapshot,
    ) -> Result<GpmReadings, SourceError> {
        let mut s = self.lock();
        if s.failing.contains("gpm_metrics") {
            return Err(SourceError("gpm_metrics: Unknown Error".into()));
        }
        let (Some(a), Some(b)) = (earlier.get::<FakeGpmSample>(), later.get::<FakeGpmSample>())
        else {
            return Err(SourceError("gpm_metrics: not this source's samples".into()));
        };
        if a.gpu != b.gpu || a.seq >= b.seq {
            return Err(SourceError(format!(
                "gpm_metrics: samples {} (GPU {}) and {} (GPU {}) are not one GPU's, in order",
                a.seq, a.gpu, b.seq, b.gpu
            )));
        }
        s.gpm_pairs.push((b.gpu, a.seq, b.seq));
        Ok(GpmMetric::ALL
            .into_iter()
            .map(|m| {
                let value = if s.failing.contains(m.field()) {
                    None
                } else {
                    b.values.iter().find(|(id, _)| *id == m).map(|(_, v)| *v)
                };
                let value =
                    value.ok_or_else(|| SourceError(format!("{}: Not Supported", m.field())));
                (m, value)
            })
            .collect())
    }
}
