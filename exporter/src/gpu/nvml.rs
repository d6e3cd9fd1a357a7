//! The real [`GpuSource`]: nvml-wrapper, which loads `libnvidia-ml.so` at run time, so the
//! exporter builds and starts on hosts without a driver (where `connect` fails).
//!
//! NVML 13 deprecates `nvmlDeviceGetTemperature` and `nvmlDeviceGetCurrentClocksThrottleReasons`,
//! which nvml-wrapper 0.13 still calls, in favour of `nvmlDeviceGetTemperatureV` and
//! `nvmlDeviceGetCurrentClocksEventReasons`, which older drivers lack. Those two reads call the
//! newer symbol through nvml-wrapper-sys and fall back to the wrapper's older call, so that both
//! old and new drivers report them; where neither works, the sampler drops and counts the field.
//!
//! GPM samples (`nvmlGpmSampleGet`) borrow the [`Nvml`] they came from, and the sampler keeps
//! one per GPU from one pass to the next; so the one `Nvml` is leaked once loaded, which gives
//! the samples a `'static` borrow instead of a struct that refers to itself. It would live as
//! long as the sampler thread anyway, which lives as long as the process; the driver releases
//! what NVML held when the process exits. GPM is sampled per whole GPU, not per MIG instance
//! (`nvmlGpmMigSampleGet`): the exporter has no MIG devices.

use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PcieUtilCounter, PerformanceState, TemperatureSensor,
};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::{nvml_sym, nvml_try, NvmlError};
use nvml_wrapper::gpm::gpm_metrics_get;
use nvml_wrapper::{Device, GpmSample, Nvml};
use nvml_wrapper_sys::bindings::nvmlTemperature_t;

use super::{GpmMetric, GpmReadings, GpmSnapshot, GpuIdentity, GpuSource, SourceError};

/// NVML through nvml-wrapper.
#[derive(Default)]
pub struct NvmlSource {
    /// Leaked once loaded, so that GPM samples can outlive a pass (see the module docs).
    nvml: Option<&'static Nvml>,
}

/// One GPU's GPM sample, as this source keeps it inside a [`GpmSnapshot`].
struct NvmlGpmSample {
    gpu: u32,
    sample: GpmSample<'static>,
}

/// NVML's id for each metric the exporter reads.
fn gpm_id(metric: GpmMetric) -> GpmMetricId {
    match metric {
        GpmMetric::GraphicsEngineActive => GpmMetricId::GraphicsUtil,
        GpmMetric::SmActive => GpmMetricId::SmUtil,
        GpmMetric::SmOccupancy => GpmMetricId::SmOccupancy,
        GpmMetric::TensorActive => GpmMetricId::AnyTensorUtil,
        GpmMetric::DramActive => GpmMetricId::DramBwUtil,
        GpmMetric::PcieTx => GpmMetricId::PcieTxPerSec,
        GpmMetric::PcieRx => GpmMetricId::PcieRxPerSec,
        GpmMetric::NvlinkTx => GpmMetricId::NvlinkTotalTxPerSec,
        GpmMetric::NvlinkRx => GpmMetricId::NvlinkTotalRxPerSec,
    }
}

/// Whether an error means "this GPU or driver has no GPM" rather than a failed read: a driver
/// older than R520 lacks the symbols, and a GPU older than Hopper answers Not Supported.
fn means_no_gpm(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound | NvmlError::NotSupported
    )
}

impl NvmlSource {
    /// A source that has not loaded NVML yet.
    pub fn new() -> NvmlSource {
        NvmlSource::default()
    }

    fn nvml(&self) -> Result<&'static Nvml, SourceError> {
        self.nvml.ok_or_else(|| SourceError("not connected".into()))
    }

    fn device(&self, gpu: u32) -> Result<Device<'static>, SourceError> {
        self.nvml()?.device_by_index(gpu).map_err(err)
    }
}

fn err(e: NvmlError) -> SourceError {
    SourceError(e.to_string())
}

/// `nvmlTemperature_v1`, i.e. `NVML_STRUCT_VERSION(Temperature, 1)`: the struct's size with the
/// version number in the top byte.
const TEMPERATURE_V1: u32 = std::mem::size_of::<nvmlTemperature_t>() as u32 | (1 << 24);

/// Tries the newer NVML call and, if it fails for any reason (a symbol the driver lacks, a
/// struct version it refuses), the older one. When both fail the older call's error is the
/// answer, unless the older call is the one missing from this driver.
fn newer_or_older<T>(
    newer: impl FnOnce() -> Result<T, NvmlError>,
    older: impl FnOnce() -> Result<T, NvmlError>,
) -> Result<T, NvmlError> {
    newer().or_else(|first| {
        older().map_err(|second| match second {
            NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound => first,
            other => other,
        })
    })
}

/// The GPU die's temperature through `nvmlDeviceGetTemperatureV` (NVML 12.5 and later).
fn temperature_v(d: &Device<'_>) -> Result<i32, NvmlError> {
    let sym = nvml_sym(d.nvml().lib().nvmlDeviceGetTemperatureV.as_ref())?;
    let mut reading = nvmlTemperature_t {
        version: TEMPERATURE_V1,
        sensorType: TemperatureSensor::Gpu.as_c(),
        temperature: 0,
    };
    // SAFETY: `sym` is NVML's own nvmlDeviceGetTemperatureV, loaded by the library that `d`'s
    // handle came from and which outlives `d`; `reading` is a live, versioned struct of the
    // type the function writes, and NVML keeps no pointer to it after returning.
    nvml_try(unsafe { sym(d.handle(), &mut reading) })?;
    Ok(reading.temperature)
}

/// The clock-limit reason mask through `nvmlDeviceGetCurrentClocksEventReasons` (NVML 12.2
/// and later), raw, so that bits newer than nvml-wrapper's flags survive.
fn clocks_event_reasons(d: &Device<'_>) -> Result<u64, NvmlError> {
    let sym = nvml_sym(
        d.nvml()
            .lib()
            .nvmlDeviceGetCurrentClocksEventReasons
            .as_ref(),
    )?;
    let mut mask = 0;
    // SAFETY: as in `temperature_v`: NVML's own symbol, a handle from the same library, and a
    // live u64 for it to write.
    nvml_try(unsafe { sym(d.handle(), &mut mask) })?;
    Ok(mask)
}

impl GpuSource for NvmlSource {
    fn connect(&mut self) -> Result<(), SourceError> {
        if self.nvml.is_none() {
            let nvml = Nvml::init().map_err(err)?;
            self.nvml = Some(Box::leak(Box::new(nvml)));
        }
        Ok(())
    }

    fn driver_version(&mut self) -> Result<String, SourceError> {
        self.nvml()?.sys_driver_version().map_err(err)
    }

    fn device_count(&mut self) -> Result<u32, SourceError> {
        self.nvml()?.device_count().map_err(err)
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

    fn temperature_celsius(&mut self, gpu: u32) -> Result<i32, SourceError> {
        let d = self.device(gpu)?;
        newer_or_older(
            || temperature_v(&d),
            || {
                let celsius = d.temperature(TemperatureSensor::Gpu)?;
                i32::try_from(celsius).map_err(|_| NvmlError::UnexpectedVariant(celsius))
            },
        )
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
        let d = self.device(gpu)?;
        newer_or_older(
            || clocks_event_reasons(&d),
            || Ok(d.current_throttle_reasons()?.bits()),
        )
        .map_err(err)
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

    fn gpm_supported(&mut self, gpu: u32) -> Result<bool, SourceError> {
        match self.device(gpu)?.gpm_support() {
            Ok(supported) => Ok(supported),
            Err(e) if means_no_gpm(&e) => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    fn gpm_sample(&mut self, gpu: u32) -> Result<GpmSnapshot, SourceError> {
        let sample = self.device(gpu)?.gpm_sample().map_err(err)?;
        Ok(GpmSnapshot::new(NvmlGpmSample { gpu, sample }))
    }

    fn gpm_metrics(
        &mut self,
        earlier: &GpmSnapshot,
        later: &GpmSnapshot,
    ) -> Result<GpmReadings, SourceError> {
        let nvml = self.nvml()?;
        let (Some(a), Some(b)) = (earlier.get::<NvmlGpmSample>(), later.get::<NvmlGpmSample>())
        else {
            return Err(SourceError("not samples of this NVML source".into()));
        };
        if a.gpu != b.gpu {
            return Err(SourceError(format!(
                "samples of GPU {} and GPU {}",
                a.gpu, b.gpu
            )));
        }
        let ids = GpmMetric::ALL.map(gpm_id);
        let results = gpm_metrics_get(nvml, &a.sample, &b.sample, &ids).map_err(err)?;
        // One result per id asked for, in order; zip stops short rather than misattribute if
        // the wrapper ever answered fewer.
        Ok(GpmMetric::ALL
            .into_iter()
            .zip(results)
            .map(|(metric, r)| (metric, r.map(|m| m.value).map_err(err)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_older_call_answers_when_the_newer_fails() {
        let missing = || Err::<u64, _>(NvmlError::FailedToLoadSymbol("newer".into()));
        assert_eq!(newer_or_older(missing, || Ok(7)).ok(), Some(7));
        let refused = || Err::<u64, _>(NvmlError::Unknown);
        assert_eq!(newer_or_older(refused, || Ok(7)).ok(), Some(7));
        let never = || -> Result<u64, NvmlError> { panic!("the older call ran") };
        assert_eq!(newer_or_older(|| Ok(3), never).ok(), Some(3));
    }

    #[test]
    fn when_both_fail_the_error_is_the_one_that_explains() {
        let unsupported = || Err::<u64, _>(NvmlError::NotSupported);
        let gone = || Err::<u64, _>(NvmlError::FailedToLoadSymbol("older".into()));
        assert!(matches!(
            newer_or_older(unsupported, gone),
            Err(NvmlError::NotSupported)
        ));
        let missing = || Err::<u64, _>(NvmlError::FailedToLoadSymbol("newer".into()));
        assert!(matches!(
            newer_or_older(missing, || Err(NvmlError::GpuLost)),
            Err(NvmlError::GpuLost)
        ));
    }

    #[test]
    fn temperature_struct_version_matches_nvml_h() {
        // nvml.h: NVML_STRUCT_VERSION(Temperature, 1) over a 12-byte struct.
        assert_eq!(TEMPERATURE_V1, 0x0100_000C);
    }

    #[test]
    fn reads_before_connect_fail_instead_of_panicking() {
        let mut s = NvmlSource::new();
        assert!(s.device_count().is_err());
        assert!(s.temperature_celsius(0).is_err());
        assert!(s.throttle_reasons(0).is_err());
        assert!(s.gpm_supported(0).is_err());
        assert!(s.gpm_sample(0).is_err());
        let foreign = GpmSnapshot::new(7u8);
        assert!(s.gpm_metrics(&foreign, &foreign).is_err());
    }

    #[test]
    fn each_gpm_metric_asks_for_its_nvml_id() {
        use nvml_wrapper_sys::bindings as b;
        let want = [
            (
                GpmMetric::GraphicsEngineActive,
                b::nvmlGpmMetricId_t_NVML_GPM_METRIC_GRAPHICS_UTIL,
            ),
            (
                GpmMetric::SmActive,
                b::nvmlGpmMetricId_t_NVML_GPM_METRIC_SM_UTIL,
            ),
            (
                GpmMetric::SmOccupancy,
                b::nvmlGpmMetricId_t_NVML_GPM_METRIC_SM_OCCUPANCY,
            ),
            (
                GpmMetric::TensorActive,
                b::nvmlGpmMetricId_t_NVML_GPM_METRIC_ANY_TENSOR_UTIL,
            ),
            (
                GpmMetric::DramActive,
                b::nvmlGpmMetricId_t_NVML_GPM_METRIC_DRAM_BW_UTIL,
            ),
            (
                GpmMetric::PcieTx,
                b::nvmlGpmMetricId_t_NVML_GPM_METRIC_PCIE_TX_PER_SEC,
            ),
            (
                GpmMetric::PcieRx,
                b::nvmlGpmMetricId_t_NVML_GPM_METRIC_PCIE_RX_PER_SEC,
            ),
            (
                GpmMetric::NvlinkTx,
                b::nvmlGpmMetricId_t_NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC,
            ),
            (
                GpmMetric::NvlinkRx,
                b::nvmlGpmMetricId_t_NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC,
            ),
        ];
        assert_eq!(want.len(), GpmMetric::ALL.len());
        for (metric, id) in want {
            assert_eq!(gpm_id(metric).as_c(), id, "{metric:?}");
            // The field its errors are counted under is NVML's own name for the id:
            // `SmUtil` (NVML_GPM_METRIC_SM_UTIL) is `gpm_sm_util`.
            let mut snake = String::from("gpm");
            for c in format!("{:?}", gpm_id(metric)).chars() {
                if c.is_ascii_uppercase() {
                    snake.push('_');
                }
                snake.push(c.to_ascii_lowercase());
            }
            assert_eq!(metric.field(), snake, "{metric:?}");
        }
    }

    #[test]
    fn a_gpu_or_driver_without_gpm_is_unsupported_not_an_error() {
        assert!(means_no_gpm(&NvmlError::NotSupported));
        assert!(means_no_gpm(&NvmlError::FunctionNotFound));
        assert!(means_no_gpm(&NvmlError::FailedToLoadSymbol(
            "nvmlGpmQueryDeviceSupport".into()
        )));
        assert!(!means_no_gpm(&NvmlError::GpuLost));
        assert!(!means_no_gpm(&NvmlError::Unknown));
    }
}
