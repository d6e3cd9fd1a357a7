//! The exporter's own metrics: how each scrape went, its HTTP connections, and which build is
//! running.

use std::sync::Arc;

use super::Collector;
use crate::scrape::Scrape;
use crate::server::HttpStats;
use crate::text::{Kind, MetricsWriter};
use crate::Result;

/// Reports the scrape itself and the HTTP server's connection counts.
pub(crate) struct ExporterCollector {
    http: Arc<HttpStats>,
}

impl ExporterCollector {
    /// Reports `http`, the counts the HTTP server keeps.
    pub(crate) fn new(http: Arc<HttpStats>) -> ExporterCollector {
        ExporterCollector { http }
    }
}

impl Collector for ExporterCollector {
    fn name(&self) -> &'static str {
        "exporter"
    }

    fn collect(&self, scrape: &mut Scrape) -> Result<()> {
        scrape.http = self.http.read();
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
            "exporter_http_connections",
            Kind::Gauge,
            "HTTP connections open now, including those asked to close.",
        );
        out.sample(&[], scrape.http.open);
        out.family(
            "exporter_http_connections_closed_total",
            Kind::Counter,
            "HTTP connections the exporter closed: evicted (the one idle longest, for a new one at --max-connections), refused (a new one at the limit, every open one busy), header_timeout.",
        );
        let http = &scrape.http;
        for (reason, n) in [
            ("evicted", http.evicted_total),
            ("refused", http.refused_total),
            ("header_timeout", http.header_timeouts_total),
        ] {
            out.sample(&[("reason", reason)], n);
        }
        out.family(
            "exporter_build_info",
            Kind::Gauge,
            "The exporter's version; always 1.",
        );
        out.sample(&[("version", env!("CARGO_PKG_VERSION"))], 1u64);
    }
}
