//! The background thread that samples a [`GpuSource`] and publishes [`GpuSample`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use super::{
    GpmSnapshot, GpmStats, GpuIdentity, GpuProcess, GpuSample, GpuSource, GpuStats, SourceError,
};
use crate::{Error, Result};

/// How long to wait before trying to load NVML again after it failed: loading can take
/// seconds on a host whose driver is wedged, and the driver rarely appears by itself.
const RECONNECT_AFTER: Duration = Duration::from_secs(30);

/// The shortest time between two GPM samples of a GPU that NVML computes metrics from: its
/// counters refresh every 100 ms ("The interval between these two nvmlGpmSampleGet() calls
/// should be greater than 100ms due to the internal sample refresh rate"). With a shorter
/// `--nvml-interval-ms` a pass this close to the last GPM sample takes none and serves the
/// last values again.
pub(crate) const GPM_MIN_INTERVAL: Duration = Duration::from_millis(100);

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
                // A pass cut short may have left a GPU's GPM state half updated.
                sampler.gpm.clear();
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
    /// Each GPU's GPM state, by UUID.
    gpm: BTreeMap<String, GpmState>,
}

/// What the sampler keeps of one GPU's GPM between passes.
#[derive(Default)]
struct GpmState {
    /// Whether it has GPM, once the source answered.
    supported: Option<bool>,
    /// The last GPM sample and when it was taken: the start of the next window.
    previous: Option<(GpmSnapshot, Instant)>,
    /// The values computed at that sample, served again by a pass too soon for a new one.
    last: GpmStats,
}

impl Pass {
    /// Reads every field of every GPU once. A field that fails is left out and counted.
    pub(crate) fn sample(&mut self, src: &mut dyn GpuSource, pcie: bool) -> GpuSample {
        self.sample_at(src, pcie, Instant::now())
    }

    /// [`Pass::sample`] as of `now`, which times the GPM windows.
    fn sample_at(&mut self, src: &mut dyn GpuSource, pcie: bool, now: Instant) -> GpuSample {
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
        let mut seen = BTreeSet::new();
        for gpu in 0..count {
            let Some(identity) = self.field("identity", src.identity(gpu)) else {
                continue;
            };
            let uuid = identity.uuid.clone();
            let mut stats = self.stats(src, gpu, identity, pcie);
            stats.gpm = self.gpm(src, gpu, &uuid, now);
            gpus.push(stats);
            processes.extend(self.processes(src, gpu, &uuid));
            seen.insert(uuid);
        }
        // A GPU gone (or unreadable this pass) starts over when it is back.
        self.gpm.retain(|uuid, _| seen.contains(uuid));
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
            gpm: GpmStats::default(),
        }
    }

    /// One GPU's GPM metrics over the window from its previous GPM sample to one taken now.
    fn gpm(&mut self, src: &mut dyn GpuSource, gpu: u32, uuid: &str, now: Instant) -> GpmStats {
        let mut state = self.gpm.remove(uuid).unwrap_or_default();
        let stats = self.gpm_window(src, gpu, &mut state, now);
        self.gpm.insert(uuid.to_owned(), state);
        stats
    }

    fn gpm_window(
        &mut self,
        src: &mut dyn GpuSource,
        gpu: u32,
        state: &mut GpmState,
        now: Instant,
    ) -> GpmStats {
        if state.supported.is_none() {
            // Asked until it answers, then never again: support is the board's and driver's.
            state.supported = self.field("gpm_supported", src.gpm_supported(gpu));
        }
        if state.supported != Some(true) {
            return GpmStats::default();
        }
        if let Some((_, at)) = &state.previous {
            if now.saturating_duration_since(*at) < GPM_MIN_INTERVAL {
                return state.last.clone();
            }
        }
        let Some(current) = self.field("gpm_sample", src.gpm_sample(gpu)) else {
            // No window ends here, and none starts: the next good sample is the next start.
            state.previous = None;
            state.last = GpmStats::default();
            return GpmStats::default();
        };
        let mut stats = GpmStats::default();
        if let Some((earlier, _)) = state.previous.take() {
            let readings = self.field("gpm_metrics", src.gpm_metrics(&earlier, &current));
            for (metric, value) in readings.into_iter().flatten() {
                let value = value.and_then(|v| {
                    if v.is_finite() && v >= 0.0 {
                        Ok(v)
                    } else {
                        Err(SourceError(format!("{v} is not a rate or a percentage")))
                    }
                });
                if let Some(v) = self.field(metric.field(), value) {
                    stats.set(metric, v);
                }
            }
        }
        state.previous = Some((current, now));
        state.last = stats.clone();
        stats
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
    use crate::gpu::{FakeDevice, FakeGpuSource, GpmMetric};

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

    /// An H100 (GPM) and an A100 (none), sampled as of `t0 + at` for each of `at`.
    fn gpm_passes(fake: &mut FakeGpuSource, pass: &mut Pass, at: &[Duration]) -> Vec<GpuSample> {
        let t0 = Instant::now();
        at.iter()
            .map(|d| pass.sample_at(fake, false, t0 + *d))
            .collect()
    }

    fn hopper_and_ampere() -> FakeGpuSource {
        FakeGpuSource::with_devices(vec![FakeDevice::h100(0), FakeDevice::a100(1)])
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn gpm_is_absent_on_the_first_pass_and_converted_from_the_second() {
        let mut fake = hopper_and_ampere();
        let s = gpm_passes(&mut fake, &mut Pass::default(), &[Duration::ZERO, SECOND]);
        assert_eq!(
            s[0].gpus[0].gpm,
            GpmStats::default(),
            "one sample is no window"
        );
        let (h100, a100) = (&s[1].gpus[0].gpm, &s[1].gpus[1].gpm);
        assert_eq!(h100.graphics_engine_active_ratio, Some(0.8));
        assert_eq!(h100.sm_active_ratio, Some(0.625));
        assert_eq!(h100.sm_occupancy_ratio, Some(0.25));
        assert_eq!(h100.tensor_active_ratio, Some(0.125));
        assert_eq!(h100.dram_active_ratio, Some(0.4));
        assert_eq!(h100.pcie_tx_bytes_per_second, Some(104_857_600.0));
        assert_eq!(h100.pcie_rx_bytes_per_second, Some(262_144_000.0));
        assert_eq!(h100.nvlink_tx_bytes_per_second, Some(1_073_741_824.0));
        assert_eq!(h100.nvlink_rx_bytes_per_second, Some(536_870_912.0));
        assert_eq!(*a100, GpmStats::default(), "no GPM before Hopper");
        assert_eq!(
            s[1].gpus[1].power_watts,
            Some(350.0),
            "the A100's other fields"
        );
        assert!(s[1].field_errors.is_empty(), "{:?}", s[1].field_errors);
        assert_eq!(fake.gpm_pairs(), [(0, 1, 2)], "the A100 is never sampled");
    }

    #[test]
    fn each_gpm_window_runs_from_the_previous_pass_to_this_one() {
        let mut fake = hopper_and_ampere();
        let mut pass = Pass::default();
        gpm_passes(&mut fake, &mut pass, &[Duration::ZERO, SECOND]);
        fake.update(0, |d| d.gpm = Some(vec![(GpmMetric::SmActive, 10.0)]));
        let s = gpm_passes(&mut fake, &mut pass, &[3 * SECOND]);
        assert_eq!(fake.gpm_pairs(), [(0, 1, 2), (0, 2, 3)]);
        assert_eq!(s[0].gpus[0].gpm.sm_active_ratio, Some(0.1));
        // A metric the GPU no longer reports is absent, and counted.
        assert_eq!(s[0].gpus[0].gpm.dram_active_ratio, None);
        assert_eq!(s[0].field_errors.get("gpm_dram_bw_util"), Some(&1));
    }

    #[test]
    fn gpm_support_is_asked_once_per_gpu() {
        let mut fake = hopper_and_ampere();
        let mut pass = Pass::default();
        gpm_passes(&mut fake, &mut pass, &[Duration::ZERO]);
        // Were it asked again, this would count errors and drop the H100's metrics.
        fake.set_failing("gpm_supported", true);
        let s = gpm_passes(&mut fake, &mut pass, &[SECOND]);
        assert_eq!(s[0].gpus[0].gpm.sm_active_ratio, Some(0.625));
        assert_eq!(s[0].field_errors.get("gpm_supported"), None);
    }

    #[test]
    fn a_failed_support_query_is_retried_at_the_next_pass() {
        let mut fake = hopper_and_ampere();
        fake.set_failing("gpm_supported", true);
        let mut pass = Pass::default();
        let s = gpm_passes(&mut fake, &mut pass, &[Duration::ZERO]);
        assert_eq!(
            s[0].field_errors.get("gpm_supported"),
            Some(&2),
            "both GPUs"
        );
        fake.set_failing("gpm_supported", false);
        let s = gpm_passes(&mut fake, &mut pass, &[SECOND, 2 * SECOND]);
        assert_eq!(s[1].gpus[0].gpm.sm_active_ratio, Some(0.625));
        assert_eq!(s[1].gpus[1].gpm, GpmStats::default());
    }

    #[test]
    fn a_failing_gpm_read_leaves_its_metrics_out_and_the_sampler_going() {
        let mut fake = hopper_and_ampere();
        let mut pass = Pass::default();
        gpm_passes(&mut fake, &mut pass, &[Duration::ZERO]);
        fake.set_failing("gpm_metrics", true);
        let s = gpm_passes(&mut fake, &mut pass, &[SECOND]);
        assert_eq!(s[0].gpus[0].gpm, GpmStats::default());
        assert_eq!(s[0].gpus[0].power_watts, Some(350.0));
        assert_eq!(s[0].field_errors.get("gpm_metrics"), Some(&1));
        fake.set_failing("gpm_metrics", false);
        // The failed call's later sample starts the next window.
        let s = gpm_passes(&mut fake, &mut pass, &[2 * SECOND]);
        assert_eq!(s[0].gpus[0].gpm.sm_active_ratio, Some(0.625));

        fake.set_failing("gpm_sample", true);
        let s = gpm_passes(&mut fake, &mut pass, &[3 * SECOND]);
        assert_eq!(s[0].gpus[0].gpm, GpmStats::default());
        assert_eq!(s[0].field_errors.get("gpm_sample"), Some(&1));
        fake.set_failing("gpm_sample", false);
        // No sample at the last pass, so none to start a window from: absent once more.
        let s = gpm_passes(&mut fake, &mut pass, &[4 * SECOND, 5 * SECOND]);
        assert_eq!(s[0].gpus[0].gpm, GpmStats::default());
        assert_eq!(s[1].gpus[0].gpm.sm_active_ratio, Some(0.625));

        // One metric failing drops that one alone.
        fake.set_failing("gpm_nvlink_total_tx_per_sec", true);
        let s = gpm_passes(&mut fake, &mut pass, &[6 * SECOND]);
        let g = &s[0].gpus[0].gpm;
        assert_eq!(g.nvlink_tx_bytes_per_second, None);
        assert_eq!(g.nvlink_rx_bytes_per_second, Some(536_870_912.0));
        assert_eq!(
            s[0].field_errors.get("gpm_nvlink_total_tx_per_sec"),
            Some(&1)
        );
    }

    #[test]
    fn a_gpm_value_that_is_no_rate_is_left_out() {
        let mut fake = hopper_and_ampere();
        fake.update(0, |d| {
            d.gpm = Some(vec![
                (GpmMetric::SmActive, f64::NAN),
                (GpmMetric::PcieTx, -1.0),
            ]);
        });
        let s = gpm_passes(&mut fake, &mut Pass::default(), &[Duration::ZERO, SECOND]);
        assert_eq!(s[1].gpus[0].gpm.sm_active_ratio, None);
        assert_eq!(s[1].gpus[0].gpm.pcie_tx_bytes_per_second, None);
        assert_eq!(s[1].field_errors.get("gpm_sm_util"), Some(&1));
        assert_eq!(s[1].field_errors.get("gpm_pcie_tx_per_sec"), Some(&1));
    }

    #[test]
    fn a_pass_sooner_than_gpm_allows_serves_the_last_values_without_sampling() {
        let mut fake = hopper_and_ampere();
        let soon = SECOND + GPM_MIN_INTERVAL / 2;
        let s = gpm_passes(
            &mut fake,
            &mut Pass::default(),
            &[Duration::ZERO, SECOND, soon, SECOND + GPM_MIN_INTERVAL],
        );
        assert_eq!(s[2].gpus[0].gpm, s[1].gpus[0].gpm);
        assert_eq!(s[2].gpus[0].gpm.sm_active_ratio, Some(0.625));
        // The too-soon pass took no sample: the next window starts at the second pass.
        assert_eq!(fake.gpm_pairs(), [(0, 1, 2), (0, 2, 3)]);
    }

    #[test]
    fn metrics_md_quotes_the_gpm_minimum_interval() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let ms = GPM_MIN_INTERVAL.as_millis();
        let said = [
            format!("refresh every {ms} ms"),
            format!("`--nvml-interval-ms {ms}`"),
            format!("within {ms} ms of the last GPM sample"),
        ];
        for s in said {
            assert!(doc.contains(&s), "docs/metrics.md no longer says {s:?}");
        }
    }

    #[test]
    fn a_gpu_that_disappears_starts_over() {
        let mut fake = hopper_and_ampere();
        let mut pass = Pass::default();
        gpm_passes(&mut fake, &mut pass, &[Duration::ZERO, SECOND]);
        fake.set_failing("identity", true);
        gpm_passes(&mut fake, &mut pass, &[2 * SECOND]);
        assert!(pass.gpm.is_empty());
        fake.set_failing("identity", false);
        let s = gpm_passes(&mut fake, &mut pass, &[3 * SECOND]);
        assert_eq!(
            s[0].gpus[0].gpm,
            GpmStats::default(),
            "a first sample again"
        );
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
