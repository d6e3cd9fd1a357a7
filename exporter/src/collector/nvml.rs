//! GPU metrics from the latest NVML sample. Collecting is one atomic load: NVML itself is
//! only ever called on the sampler's thread.

use super::Collector;
use crate::gpu::{GpuSample, GpuSampler, GpuStats};
use crate::scrape::Scrape;
use crate::text::{Kind, MetricsWriter};
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
        out.family(
            "nvml_up",
            Kind::Gauge,
            "1 if NVML is loaded and answering; GPU metrics are absent while it is 0.",
        );
        out.sample(&[], s.nvml_up);
        out.family("gpu_sample_age_seconds", Kind::Gauge, "Age of the GPU sample served: NVML is sampled in the background, never during a scrape.");
        if let Some(age) = s.age_seconds(scrape.at) {
            out.sample(&[], age);
        }
        out.family(
            "nvml_field_errors_total",
            Kind::Counter,
            "NVML reads that failed, by field; a failed field is left out of that sample.",
        );
        for (field, n) in &s.field_errors {
            out.sample(&[("field", field)], *n);
        }
        render_info(s, out);
        render_gauges(s, out);
        render_processes(scrape, out);
    }
}

fn render_info(s: &GpuSample, out: &mut MetricsWriter) {
    out.family(
        "gpu_info",
        Kind::Gauge,
        "A GPU's identity; always 1. Other GPU series carry its gpu and uuid labels.",
    );
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

/// Every per-GPU family with one value: (name, type, help, value).
const PER_GPU: [(&str, Kind, &str, Field); 14] = [
    (
        "gpu_utilization_ratio",
        Kind::Gauge,
        "Fraction of the last sample period a kernel was running, 0 to 1.",
        |g| g.utilization_ratio,
    ),
    (
        "gpu_memory_utilization_ratio",
        Kind::Gauge,
        "Fraction of the last sample period device memory was read or written, 0 to 1.",
        |g| g.memory_utilization_ratio,
    ),
    (
        "device_memory_used_bytes",
        Kind::Gauge,
        "Device memory allocated.",
        |g| g.memory_used_bytes.map(|b| b as f64),
    ),
    (
        "gpu_memory_free_bytes",
        Kind::Gauge,
        "Device memory free.",
        |g| g.memory_free_bytes.map(|b| b as f64),
    ),
    (
        "gpu_memory_total_bytes",
        Kind::Gauge,
        "Device memory installed.",
        |g| g.memory_total_bytes.map(|b| b as f64),
    ),
    (
        "gpu_temperature_celsius",
        Kind::Gauge,
        "GPU die temperature.",
        |g| g.temperature_celsius,
    ),
    ("gpu_power_watts", Kind::Gauge, "Power draw.", |g| {
        g.power_watts
    }),
    (
        "gpu_power_limit_watts",
        Kind::Gauge,
        "Enforced power limit.",
        |g| g.power_limit_watts,
    ),
    (
        "gpu_energy_joules_total",
        Kind::Counter,
        "Energy consumed since the driver loaded.",
        |g| g.energy_joules,
    ),
    ("gpu_sm_clock_hertz", Kind::Gauge, "SM clock.", |g| {
        g.sm_clock_hertz
    }),
    (
        "gpu_memory_clock_hertz",
        Kind::Gauge,
        "Memory clock.",
        |g| g.memory_clock_hertz,
    ),
    (
        "gpu_ecc_corrected_errors_total",
        Kind::Counter,
        "Corrected (single-bit) ECC errors since the driver loaded.",
        |g| g.ecc_corrected_errors.map(|n| n as f64),
    ),
    (
        "gpu_ecc_uncorrected_errors_total",
        Kind::Counter,
        "Uncorrected (double-bit) ECC errors since the driver loaded.",
        |g| g.ecc_uncorrected_errors.map(|n| n as f64),
    ),
    (
        "gpu_performance_state",
        Kind::Gauge,
        "Performance state: 0 is P0 (fastest) to 15 (slowest).",
        |g| g.performance_state.map(f64::from),
    ),
];

fn render_gauges(s: &GpuSample, out: &mut MetricsWriter) {
    let ids: Vec<String> = s.gpus.iter().map(|g| g.index.to_string()).collect();
    for (name, kind, help, field) in PER_GPU {
        out.family(name, kind, help);
        for (g, id) in s.gpus.iter().zip(&ids) {
            if let Some(v) = field(g) {
                out.sample(&[("gpu", id), ("uuid", &g.identity.uuid)], v);
            }
        }
    }
    out.family(
        "gpu_throttle_reasons",
        Kind::Gauge,
        "1 for each clock-limit (throttle) reason active now, 0 for the others.",
    );
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
    out.family(
        "gpu_fan_speed_ratio",
        Kind::Gauge,
        "Each fan's speed as a fraction of its maximum, 0 to 1.",
    );
    for (g, id) in s.gpus.iter().zip(&ids) {
        for (fan, ratio) in g.fan_speed_ratios.iter().flatten().enumerate() {
            let fan = fan.to_string();
            out.sample(
                &[("gpu", id), ("uuid", &g.identity.uuid), ("fan", &fan)],
                *ratio,
            );
        }
    }
    out.family(
        "gpu_pcie_throughput_bytes_per_second",
        Kind::Gauge,
        "PCIe throughput by direction (tx, rx); only with --nvml-pcie, as each read blocks 20 ms.",
    );
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
}

fn render_processes(scrape: &Scrape, out: &mut MetricsWriter) {
    out.family("gpu_process_memory_bytes", Kind::Gauge, "GPU memory held by each inferd process, from NVML's running compute processes matched to the pid in its segment.");
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
