//! The background thread that samples a [`GpuSource`] and publishes [`GpuSample`]s.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use super::{GpuIdentity, GpuProcess, GpuSample, GpuSource, GpuStats, SourceError};
use crate::{Error, Result};

/// How long to wait before trying to load NVML again after it failed: loading can take
/// seconds on a host whose driver is wedged, and the driver rarely appears by itself.
const RECONNECT_AFTER: Duration = Duration::from_secs(30);

/// Samples NVML on its own thread; scrapes read the latest sample without waiting.
pub struct GpuSampler {
    latest: Arc<ArcSwap<GpuSample>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl GpuSampler {
    /// Starts the thread: one pass at once, then one every `interval`.
    pub fn spawn(source: Box<dyn GpuSource>, interval: Duration, pcie: bool) -> Result<GpuSampler> {
        let latest = Arc::new(ArcSwap::from_pointee(GpuSample::default()));
        let (stop, stopped) = mpsc::channel();
        let publish = Arc::clone(&latest);
        let thread = std::thread::Builder::new()
            .name("nvml-sampler".into())
            .spawn(move || run(source, interval, pcie, &publish, &stopped))
            .map_err(|source| Error::Start {
                what: "the NVML sampler thread",
                source,
            })?;
        Ok(GpuSampler {
            latest,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The latest sample: one atomic load, never a wait on NVML.
    pub fn latest(&self) -> Arc<GpuSample> {
        self.latest.load_full()
    }
}

impl Drop for GpuSampler {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread at once.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    mut source: Box<dyn GpuSource>,
    interval: Duration,
    pcie: bool,
    publish: &ArcSwap<GpuSample>,
    stopped: &mpsc::Receiver<()>,
) {
    let mut sampler = Pass::default();
    loop {
        let sample = catch_unwind(AssertUnwindSafe(|| sampler.sample(source.as_mut(), pcie)))
            .unwrap_or_else(|_| {
                log::error!("the NVML sampler panicked; reporting NVML down");
                sampler.connected = false;
                GpuSample {
                    taken_at: Some(SystemTime::now()),
                    nvml_error: Some("sampler panicked".into()),
                    field_errors: sampler.field_errors.clone(),
                    ..GpuSample::default()
                }
            });
        publish.store(Arc::new(sample));
        match stopped.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The state kept from one pass to the next.
#[derive(Default)]
pub(crate) struct Pass {
    connected: bool,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    field_errors: BTreeMap<&'static str, u64>,
}

impl Pass {
    /// Reads every field of every GPU once. A field that fails is left out and counted.
    pub(crate) fn sample(&mut self, src: &mut dyn GpuSource, pcie: bool) -> GpuSample {
        let taken_at = Some(SystemTime::now());
        if !self.connect_if_due(src) {
            return self.down(taken_at, self.last_error.clone());
        }
        let count = match src.device_count() {
            Ok(n) => n,
            Err(e) => {
                self.count("device_count", &e);
                return self.down(taken_at, Some(e.0));
            }
        };
        let driver_version = self.field("driver_version", src.driver_version());
        let mut gpus = Vec::new();
        let mut processes = Vec::new();
        for gpu in 0..count {
            let Some(identity) = self.field("identity", src.identity(gpu)) else {
                continue;
            };
            let uuid = identity.uuid.clone();
            gpus.push(self.stats(src, gpu, identity, pcie));
            processes.extend(self.processes(src, gpu, &uuid));
        }
        GpuSample {
            taken_at,
            nvml_up: true,
            nvml_error: None,
            driver_version,
            gpus,
            processes,
            field_errors: self.field_errors.clone(),
        }
    }

    /// Whether NVML is connected, trying to load it first when it is not and the last attempt
    /// is [`RECONNECT_AFTER`] old: a failing load is slow, and logged only when its error
    /// changes.
    fn connect_if_due(&mut self, src: &mut dyn GpuSource) -> bool {
        if self.connected {
            return true;
        }
        let due = self
            .last_attempt
            .map_or(true, |t| t.elapsed() >= RECONNECT_AFTER);
        if !due {
            return false;
        }
        self.last_attempt = Some(Instant::now());
        match src.connect() {
            Ok(()) => {
                log::info!("NVML loaded");
                self.connected = true;
                self.last_error = None;
            }
            Err(e) => {
                if self.last_error.as_ref() != Some(&e.0) {
                    log::warn!("NVML unavailable, serving without GPU metrics: {e}");
                }
                self.last_error = Some(e.0);
            }
        }
        self.connected
    }

    /// A sample with NVML down: no GPUs, why, and the field errors counted so far.
    fn down(&self, taken_at: Option<SystemTime>, nvml_error: Option<String>) -> GpuSample {
        GpuSample {
            taken_at,
            nvml_error,
            field_errors: self.field_errors.clone(),
            ..GpuSample::default()
        }
    }

    /// One GPU's values, in base units; a field that fails is `None`.
    fn stats(
        &mut self,
        src: &mut dyn GpuSource,
        gpu: u32,
        identity: GpuIdentity,
        pcie: bool,
    ) -> GpuStats {
        let util = self.field("utilization_percent", src.utilization_percent(gpu));
        let mem = self.field("memory_bytes", src.memory_bytes(gpu));
        let pcie_kb = if pcie {
            self.field(
                "pcie_kilobytes_per_second",
                src.pcie_kilobytes_per_second(gpu),
            )
        } else {
            None
        };
        let ecc = self.field("ecc_errors", src.ecc_errors(gpu));
        GpuStats {
            index: gpu,
            identity,
            utilization_ratio: util.map(|u| ratio(u.0)),
            memory_utilization_ratio: util.map(|u| ratio(u.1)),
            memory_used_bytes: mem.map(|m| m.0),
            memory_free_bytes: mem.map(|m| m.1),
            memory_total_bytes: mem.map(|m| m.2),
            temperature_celsius: self
                .field("temperature_celsius", src.temperature_celsius(gpu))
                .map(f64::from),
            power_watts: self
                .field("power_usage_milliwatts", src.power_usage_milliwatts(gpu))
                .map(watts),
            power_limit_watts: self
                .field("power_limit_milliwatts", src.power_limit_milliwatts(gpu))
                .map(watts),
            energy_joules: self
                .field("energy_millijoules", src.energy_millijoules(gpu))
                .map(|mj| mj as f64 / 1e3),
            sm_clock_hertz: self.field("sm_clock_mhz", src.sm_clock_mhz(gpu)).map(hertz),
            memory_clock_hertz: self
                .field("memory_clock_mhz", src.memory_clock_mhz(gpu))
                .map(hertz),
            throttle_reasons: self.field("throttle_reasons", src.throttle_reasons(gpu)),
            pcie_tx_bytes_per_second: pcie_kb.map(|p| f64::from(p.0) * 1e3),
            pcie_rx_bytes_per_second: pcie_kb.map(|p| f64::from(p.1) * 1e3),
            fan_speed_ratios: self
                .field("fan_speed_percent", src.fan_speed_percent(gpu))
                .map(|fans| fans.into_iter().map(ratio).collect()),
            ecc_corrected_errors: ecc.map(|e| e.0),
            ecc_uncorrected_errors: ecc.map(|e| e.1),
            performance_state: self.field("performance_state", src.performance_state(gpu)),
        }
    }

    /// The compute processes running on one GPU (none when the read fails).
    fn processes(&mut self, src: &mut dyn GpuSource, gpu: u32, uuid: &str) -> Vec<GpuProcess> {
        let procs = self.field("compute_processes", src.compute_processes(gpu));
        procs
            .into_iter()
            .flatten()
            .map(|(pid, memory_bytes)| GpuProcess {
                gpu,
                uuid: uuid.to_owned(),
                pid,
                memory_bytes,
            })
            .collect()
    }

    fn field<T>(&mut self, name: &'static str, r: Result<T, SourceError>) -> Option<T> {
        r.map_err(|e| self.count(name, &e)).ok()
    }

    fn count(&mut self, name: &'static str, e: &SourceError) {
        let n = self.field_errors.entry(name).or_insert(0);
        if *n == 0 {
            // Log a field's first failure only: an unsupported field fails at every pass.
            log::warn!("NVML field {name} failed, leaving it out: {e}");
        }
        *n += 1;
    }
}

/// NVML's percent as a ratio from 0 to 1.
fn ratio(percent: u32) -> f64 {
    f64::from(percent) / 100.0
}

/// NVML's milliwatts as watts.
fn watts(milliwatts: u32) -> f64 {
    f64::from(milliwatts) / 1e3
}

/// NVML's MHz as hertz.
fn hertz(mhz: u32) -> f64 {
    f64::from(mhz) * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{FakeDevice, FakeGpuSource};

    #[test]
    fn converts_to_base_units() {
        let mut fake = FakeGpuSource::with_devices(vec![FakeDevice::h100(0)]);
        let s = Pass::default().sample(&mut fake, true);
        assert!(s.nvml_up);
        let g = &s.gpus[0];
        assert_eq!(g.utilization_ratio, Some(0.75));
        assert_eq!(g.power_watts, Some(350.0));
        assert_eq!(g.energy_joules, Some(1_234.567));
        assert_eq!(g.sm_clock_hertz, Some(1.98e9));
        assert_eq!(g.pcie_rx_bytes_per_second, Some(2e6));
        assert_eq!(g.fan_speed_ratios, Some(vec![0.3]));
        assert!(s.field_errors.is_empty());
    }

    #[test]
    fn a_failing_field_drops_alone_and_is_counted_each_pass() {
        let mut fake = FakeGpuSource::with_devices(vec![FakeDevice::h100(0)]);
        fake.set_failing("temperature_celsius", true);
        let mut pass = Pass::default();
        pass.sample(&mut fake, false);
        let s = pass.sample(&mut fake, false);
        assert_eq!(s.gpus[0].temperature_celsius, None);
        assert_eq!(s.gpus[0].power_watts, Some(350.0));
        assert_eq!(s.field_errors.get("temperature_celsius"), Some(&2));
        assert_eq!(s.gpus[0].pcie_tx_bytes_per_second, None, "PCIe is opt-in");
    }

    #[test]
    fn missing_nvml_is_down_and_not_retried_every_pass() {
        let mut fake = FakeGpuSource::missing();
        let mut pass = Pass::default();
        let s = pass.sample(&mut fake, false);
        assert!(!s.nvml_up && s.gpus.is_empty());
        assert!(s.nvml_error.is_some());
        let first = pass.last_attempt;
        pass.sample(&mut fake, false);
        assert_eq!(pass.last_attempt, first);
    }

    #[test]
    fn thread_publishes_and_stops_promptly() {
        let fake = FakeGpuSource::with_devices(vec![FakeDevice::h100(0)]);
        let sampler = GpuSampler::spawn(Box::new(fake), Duration::from_secs(3600), false).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sampler.latest().nvml_up && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(sampler.latest().nvml_up);
        let t = Instant::now();
        drop(sampler);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
