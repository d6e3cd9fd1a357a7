//! The [`Exporter`]: its collectors, and one scrape through all of them.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::collector::{
    Collector, ExporterCollector, NvmlCollector, ProcessCollector, SegmentCollector,
};
use crate::discovery::Discovery;
use crate::gpu::{GpuSampler, GpuSource};
use crate::histogram::ClassicBuckets;
use crate::owner::Owners;
use crate::scrape::{CollectorRun, Scrape};
use crate::server::HttpStats;
use crate::text::{valid_namespace, Format, MetricsWriter};
use crate::{Error, Options, Result};

/// Everything a scrape needs; shared by every connection.
pub struct Exporter {
    namespace: String,
    collectors: Vec<Box<dyn Collector>>,
    started_at: SystemTime,
    /// The last page's size, so the next one is allocated once.
    last_page_bytes: AtomicUsize,
    /// What the HTTP server counts, for the exporter's own metrics.
    http: Arc<HttpStats>,
}

impl Exporter {
    /// Sets up the collectors and starts the GPU sampler on `gpu`.
    pub fn new(options: &Options, gpu: Box<dyn GpuSource>) -> Result<Exporter> {
        if !valid_namespace(&options.namespace) {
            return Err(Error::Namespace(options.namespace.clone()));
        }
        let owners = Owners::from_specs(&options.segment_owners)?;
        let discovery = Discovery::new(&options.segment_dir, &options.segments, owners)?;
        let classic = ClassicBuckets::new(options.classic_buckets_per_doubling)
            .ok_or(Error::ClassicBuckets(options.classic_buckets_per_doubling))?;
        let sampler = GpuSampler::spawn(gpu, options.nvml_interval(), options.nvml_pcie)?;
        let http = Arc::new(HttpStats::default());
        // Order matters: the process and NVML collectors use the daemons the segment collector
        // found, and the exporter collector reports on all the others.
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(SegmentCollector::new(discovery, classic)),
            Box::new(ProcessCollector::new()),
            Box::new(NvmlCollector::new(sampler)),
            Box::new(ExporterCollector::new(Arc::clone(&http))),
        ];
        Ok(Exporter {
            namespace: options.namespace.clone(),
            collectors,
            started_at: SystemTime::now(),
            last_page_bytes: AtomicUsize::new(64 * 1024),
            http,
        })
    }

    /// The counts the HTTP server keeps, which the exporter's own metrics report.
    pub(crate) fn http_stats(&self) -> &Arc<HttpStats> {
        &self.http
    }

    /// Reads every source once. `/metrics` and the JSON endpoints are built from the result.
    pub fn scrape(&self) -> Scrape {
        let start = Instant::now();
        let mut scrape = Scrape::new(SystemTime::now(), self.started_at);
        for c in &self.collectors {
            let t = Instant::now();
            let result = c.collect(&mut scrape);
            if let Err(e) = &result {
                log::debug!("collector {} failed: {e}", c.name());
            }
            scrape.collectors.push(CollectorRun {
                collector: c.name(),
                duration_seconds: t.elapsed().as_secs_f64(),
                success: result.is_ok(),
            });
        }
        scrape.duration_seconds = start.elapsed().as_secs_f64();
        scrape
    }

    /// Writes a scrape as a metrics page.
    pub fn render(&self, scrape: &Scrape, format: Format) -> Vec<u8> {
        let capacity = self.last_page_bytes.load(Relaxed) + 4096;
        let mut out = MetricsWriter::new(format, &self.namespace, capacity);
        for c in &self.collectors {
            c.render(scrape, &mut out);
        }
        let page = out.finish();
        self.last_page_bytes.store(page.len(), Relaxed);
        page
    }

    /// A scrape rendered: what `GET /metrics` answers.
    pub fn metrics(&self, format: Format) -> Vec<u8> {
        self.render(&self.scrape(), format)
    }
}
