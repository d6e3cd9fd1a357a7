//! GPU metrics from the latest NVML sample. Collecting is one atomic load: NVML itself is
//! only ever called on the sampler's thread.

use super::Collector;
use crate::catalog::{self, MetricDef};
use crate::gpu::{GpuSample, GpuSampler, GpuStats};
use crate::scrape::Scrape;
use crate::text::MetricsWriter;
use crate::Result;

/// Serves the [`GpuSampler`]'s latest sample.
pub(crate) struct NvmlCollector {
    sampler: GpuSampler,
}

impl NvmlCollector {
    pub(crate) fn new(sampler: GpuSampler) -> NvmlCollector {
        NvmlCollector { sampler }
    }
}

impl Collector for NvmlCollector {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn collect(&self, scrape: &mut Scrape) -> Result<()> {
        scrape.gpu = self.sampler.latest();
        match (&scrape.gpu.nvml_up, &scrape.gpu.nvml_error) {
            (false, Some(e)) => Err(crate::Error::Nvml(e.clone())),
            _ => Ok(()),
        }
    }

    fn render(&self, scrape: &Scrape, out: &mut MetricsWriter) {
        let s = &scrape.gpu;
        out.family_def(&catalog::NVML_UP);
        out.sample(&[], s.nvml_up);
        out.family_def(&catalog::GPU_SAMPLE_AGE_SECONDS);
        if let Some(age) = s.age_seconds(scrape.at) {
            out.sample(&[], age);
        }
        out.family_def(&catalog::NVML_FIELD_ERRORS_TOTAL);
        for (field, n) in &s.field_errors {
            out.sample(&[("field", field)], *n);
        }
        render_info(s, out);
        render_gauges(s, out);
        render_processes(scrape, out);
    }
}

fn render_info(s: &GpuSample, out: &mut MetricsWriter) {
    out.family_def(&catalog::GPU_INFO);
    let driver = s.driver_version.as_deref().unwrap_or_default();
    for g in &s.gpus {
        let index = g.index.to_string();
        let labels = [
            ("gpu", index.as_str()),
            ("uuid", &g.identity.uuid),
            ("name", &g.identity.name),
            ("pci_bus_id", &g.identity.pci_bus_id),
            ("driver_version", driver),
        ];
        out.sample(&labels, 1u64);
    }
}

type Field = fn(&GpuStats) -> Option<f64>;

/// Every per-GPU family with one value: its definition and how to read it.
const PER_GPU: [(&MetricDef, Field); 14] = [
    (&catalog::GPU_UTILIZATION_RATIO, |g| g.utilization_ratio),
    (&catalog::GPU_MEMORY_UTILIZATION_RATIO, |g| {
        g.memory_utilization_ratio
    }),
    (&catalog::GPU_MEMORY_USED_BYTES, |g| {
        g.memory_used_bytes.map(|b| b as f64)
    }),
    (&catalog::GPU_MEMORY_FREE_BYTES, |g| {
        g.memory_free_bytes.map(|b| b as f64)
    }),
    (&catalog::GPU_MEMORY_TOTAL_BYTES, |g| {
        g.memory_total_bytes.map(|b| b as f64)
    }),
    (&catalog::GPU_TEMPERATURE_CELSIUS, |g| g.temperature_celsius),
    (&catalog::GPU_POWER_WATTS, |g| g.power_watts),
    (&catalog::GPU_POWER_LIMIT_WATTS, |g| g.power_limit_watts),
    (&catalog::GPU_ENERGY_JOULES_TOTAL, |g| g.energy_joules),
    (&catalog::GPU_SM_CLOCK_HERTZ, |g| g.sm_clock_hertz),
    (&catalog::GPU_MEMORY_CLOCK_HERTZ, |g| g.memory_clock_hertz),
    (&catalog::GPU_ECC_CORRECTED_ERRORS_TOTAL, |g| {
        g.ecc_corrected_errors.map(|n| n as f64)
    }),
    (&catalog::GPU_ECC_UNCORRECTED_ERRORS_TOTAL, |g| {
        g.ecc_uncorrected_errors.map(|n| n as f64)
    }),
    (&catalog::GPU_PERFORMANCE_STATE, |g| {
        g.performance_state.map(f64::from)
    }),
];

fn render_gauges(s: &GpuSample, out: &mut MetricsWriter) {
    let ids: Vec<String> = s.gpus.iter().map(|g| g.index.to_string()).collect();
    for (def, field) in PER_GPU {
        out.family_def(def);
        for (g, id) in s.gpus.iter().zip(&ids) {
            if let Some(v) = field(g) {
                out.sample(&[("gpu", id), ("uuid", &g.identity.uuid)], v);
            }
        }
    }
    out.family_def(&catalog::GPU_THROTTLE_REASONS);
    for (g, id) in s.gpus.iter().zip(&ids) {
        let Some(mask) = g.throttle_reasons else {
            continue;
        };
        for (reason, on) in GpuSample::throttle_reason_names(mask) {
            out.sample(
                &[("gpu", id), ("uuid", &g.identity.uuid), ("reason", reason)],
                on,
            );
        }
    }
    out.family_def(&catalog::GPU_FAN_SPEED_RATIO);
    for (g, id) in s.gpus.iter().zip(&ids) {
        for (fan, ratio) in g.fan_speed_ratios.iter().flatten().enumerate() {
            let fan = fan.to_string();
            out.sample(
                &[("gpu", id), ("uuid", &g.identity.uuid), ("fan", &fan)],
                *ratio,
            );
        }
    }
    out.family_def(&catalog::GPU_PCIE_THROUGHPUT_BYTES_PER_SECOND);
    for (g, id) in s.gpus.iter().zip(&ids) {
        let dirs = [
            ("tx", g.pcie_tx_bytes_per_second),
            ("rx", g.pcie_rx_bytes_per_second),
        ];
        for (dir, v) in dirs {
            if let Some(v) = v {
                out.sample(
                    &[("gpu", id), ("uuid", &g.identity.uuid), ("direction", dir)],
                    v,
                );
            }
        }
    }
    render_gpm(s, &ids, out);
}

/// Every GPM family with one value per GPU.
const GPM_PER_GPU: [(&MetricDef, Field); 5] = [
    (&catalog::GPU_GRAPHICS_ENGINE_ACTIVE_RATIO, |g| {
        g.gpm.graphics_engine_active_ratio
    }),
    (&catalog::GPU_SM_ACTIVE_RATIO, |g| g.gpm.sm_active_ratio),
    (&catalog::GPU_SM_OCCUPANCY_RATIO, |g| {
        g.gpm.sm_occupancy_ratio
    }),
    (&catalog::GPU_TENSOR_ACTIVE_RATIO, |g| {
        g.gpm.tensor_active_ratio
    }),
    (&catalog::GPU_DRAM_ACTIVE_RATIO, |g| g.gpm.dram_active_ratio),
];

/// Every GPM family by direction: its definition and how to read `tx` and `rx`.
const GPM_BY_DIRECTION: [(&MetricDef, Field, Field); 2] = [
    (
        &catalog::GPU_PCIE_TRAFFIC_BYTES_PER_SECOND,
        |g| g.gpm.pcie_tx_bytes_per_second,
        |g| g.gpm.pcie_rx_bytes_per_second,
    ),
    (
        &catalog::GPU_NVLINK_TRAFFIC_BYTES_PER_SECOND,
        |g| g.gpm.nvlink_tx_bytes_per_second,
        |g| g.gpm.nvlink_rx_bytes_per_second,
    ),
];

/// The GPM families: a GPU without a value (before Hopper, before its second sample, a read
/// that failed) has no series, never a zero.
fn render_gpm(s: &GpuSample, ids: &[String], out: &mut MetricsWriter) {
    for (def, field) in GPM_PER_GPU {
        out.family_def(def);
        for (g, id) in s.gpus.iter().zip(ids) {
            if let Some(v) = field(g) {
                out.sample(&[("gpu", id), ("uuid", &g.identity.uuid)], v);
            }
        }
    }
    for (def, tx, rx) in GPM_BY_DIRECTION {
        out.family_def(def);
        for (g, id) in s.gpus.iter().zip(ids) {
            for (dir, v) in [("tx", tx(g)), ("rx", rx(g))] {
                if let Some(v) = v {
                    out.sample(
                        &[("gpu", id), ("uuid", &g.identity.uuid), ("direction", dir)],
                        v,
                    );
                }
            }
        }
    }
}

fn render_processes(scrape: &Scrape, out: &mut MetricsWriter) {
    out.family_def(&catalog::GPU_PROCESS_MEMORY_BYTES);
    for d in &scrape.daemons {
        let pid = d.snapshot.header.writer_pid;
        for p in scrape
            .gpu
            .processes
            .iter()
            .filter(|p| u64::from(p.pid) == pid && !d.deleted)
        {
            let Some(bytes) = p.memory_bytes else {
                continue;
            };
            let (pid, gpu) = (p.pid.to_string(), p.gpu.to_string());
            let labels = [
                ("daemon", d.name.as_str()),
                ("pid", &pid),
                ("gpu", &gpu),
                ("uuid", &p.uuid),
            ];
            out.sample(&labels, bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{GpmMetric, GpuIdentity};
    use crate::text::Format;

    fn gpu(index: u32, uuid: &str) -> GpuStats {
        GpuStats {
            index,
            identity: GpuIdentity {
                uuid: uuid.into(),
                ..GpuIdentity::default()
            },
            ..GpuStats::default()
        }
    }

    #[test]
    fn a_gpu_without_gpm_has_no_gpm_series_not_zeros() {
        let mut hopper = gpu(0, "GPU-h");
        for m in GpmMetric::ALL {
            hopper.gpm.set(m, 50.0);
        }
        let sample = GpuSample {
            gpus: vec![hopper, gpu(1, "GPU-a")],
            ..GpuSample::default()
        };
        let ids = ["0".to_owned(), "1".to_owned()];
        let mut out = MetricsWriter::new(Format::Prometheus, "ns", 0);
        render_gpm(&sample, &ids, &mut out);
        let page = String::from_utf8(out.finish()).unwrap();
        let samples: Vec<&str> = page.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(
            samples.iter().all(|l| l.contains("uuid=\"GPU-h\"")),
            "{page}"
        );
        // Five ratios, and tx and rx of PCIe and NVLink.
        assert_eq!(samples.len(), 5 + 4, "{page}");
        assert!(page.contains("ns_gpu_sm_active_ratio{gpu=\"0\",uuid=\"GPU-h\"} 0.5\n"));
        assert!(page.contains(
            "ns_gpu_nvlink_traffic_bytes_per_second{gpu=\"0\",uuid=\"GPU-h\",direction=\"rx\"} 52428800\n"
        ));
        // Every family is still declared, so a page keeps its shape.
        assert_eq!(page.matches("# TYPE ").count(), 7, "{page}");
    }
}
