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
    ticks_per_second: u64,
    page_size: u64,
}

impl ExporterCollector {
    /// Reports `http`, the counts the HTTP server keeps.
    pub(crate) fn new(http: Arc<HttpStats>) -> ExporterCollector {
        ExporterCollector {
            http,
            ticks_per_second: procfs::ticks_per_second(),
            page_size: procfs::page_size(),
        }
    }
}

impl Collector for ExporterCollector {
    fn name(&self) -> &'static str {
        "exporter"
    }

    fn collect(&self, scrape: &mut Scrape) -> Result<()> {
        scrape.http = self.http.read();
        // The same files the process collector reads for each inferd, of this process.
        scrape.exporter_process = super::process::stats(
            std::path::Path::new("/proc"),
            "",
            u64::from(std::process::id()),
            self.ticks_per_second,
            self.page_size,
        )?;
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
        let build = [
            ("version", scrape.exporter_version),
            ("revision", scrape.exporter_revision),
            ("rustc_version", scrape.rustc_version),
        ];
        out.sample(&build, 1u64);
        let own = scrape.exporter_process.as_ref();
        out.family_def(&catalog::EXPORTER_PROCESS_CPU_SECONDS_TOTAL);
        if let Some(p) = own {
            out.sample(&[], p.cpu_seconds);
        }
        out.family_def(&catalog::EXPORTER_PROCESS_RESIDENT_MEMORY_BYTES);
        if let Some(p) = own {
            out.sample(&[], p.resident_memory_bytes);
        }
        out.family_def(&catalog::EXPORTER_PROCESS_OPEN_FDS);
        if let Some(p) = own {
            out.sample(&[], p.open_fds);
        }
    }
}
