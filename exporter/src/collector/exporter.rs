//! The exporter's own metrics: how each scrape went, its HTTP connections, and which build is
//! running.

use std::sync::Arc;

use super::Collector;
use crate::catalog;
use crate::scrape::Scrape;
use crate::server::HttpStats;
use crate::text::MetricsWriter;
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
        out.family_def(&catalog::SCRAPE_COLLECTOR_DURATION_SECONDS);
        for c in &scrape.collectors {
            out.sample(&[("collector", c.collector)], c.duration_seconds);
        }
        out.family_def(&catalog::SCRAPE_COLLECTOR_SUCCESS);
        for c in &scrape.collectors {
            out.sample(&[("collector", c.collector)], c.success);
        }
        out.family_def(&catalog::EXPORTER_SCRAPE_DURATION_SECONDS);
        out.sample(&[], scrape.duration_seconds);
        out.family_def(&catalog::EXPORTER_START_TIME_SECONDS);
        let started = scrape
            .exporter_started_at
            .duration_since(std::time::UNIX_EPOCH);
        out.sample(&[], started.map(|d| d.as_secs_f64()).unwrap_or(0.0));
        out.family_def(&catalog::EXPORTER_HTTP_CONNECTIONS);
        out.sample(&[], scrape.http.open);
        out.family_def(&catalog::EXPORTER_HTTP_CONNECTIONS_CLOSED_TOTAL);
        let http = &scrape.http;
        for (reason, n) in [
            ("evicted", http.evicted_total),
            ("refused", http.refused_total),
            ("header_timeout", http.header_timeouts_total),
        ] {
            out.sample(&[("reason", reason)], n);
        }
        out.family_def(&catalog::EXPORTER_BUILD_INFO);
        out.sample(&[("version", scrape.exporter_version)], 1u64);
    }
}
