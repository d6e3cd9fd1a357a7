//! The exporter's own metrics: how each scrape went, and which build is running.

use super::Collector;
use crate::scrape::Scrape;
use crate::text::{Kind, MetricsWriter};
use crate::Result;

/// Reports the scrape itself; reads nothing.
pub(crate) struct ExporterCollector;

impl Collector for ExporterCollector {
    fn name(&self) -> &'static str {
        "exporter"
    }

    fn collect(&self, _scrape: &mut Scrape) -> Result<()> {
        Ok(())
    }

    fn render(&self, scrape: &Scrape, out: &mut MetricsWriter) {
        out.family(
            "scrape_collector_duration_seconds",
            Kind::Gauge,
            "How long each collector took in this scrape.",
        );
        for c in &scrape.collectors {
            out.sample(&[("collector", c.collector)], c.duration_seconds);
        }
        out.family(
            "scrape_collector_success",
            Kind::Gauge,
            "1 if the collector read everything it should have in this scrape.",
        );
        for c in &scrape.collectors {
            out.sample(&[("collector", c.collector)], c.success);
        }
        out.family(
            "exporter_scrape_duration_seconds",
            Kind::Gauge,
            "How long collecting this scrape took, all collectors together.",
        );
        out.sample(&[], scrape.duration_seconds);
        out.family(
            "exporter_start_time_seconds",
            Kind::Gauge,
            "When the exporter started, seconds since the Unix epoch.",
        );
        let started = scrape
            .exporter_started_at
            .duration_since(std::time::UNIX_EPOCH);
        out.sample(&[], started.map(|d| d.as_secs_f64()).unwrap_or(0.0));
        out.family(
            "exporter_build_info",
            Kind::Gauge,
            "The exporter's version; always 1.",
        );
        out.sample(&[("version", env!("CARGO_PKG_VERSION"))], 1u64);
    }
}
