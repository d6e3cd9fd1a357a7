//! Collectors, one per source, in the style of node_exporter: each reads its source into the
//! [`Scrape`] (`collect`, the I/O) and writes its metric families from it (`render`).

mod exporter;
mod nvml;
mod process;
mod segment;

pub(crate) use exporter::ExporterCollector;
pub(crate) use nvml::NvmlCollector;
pub(crate) use process::ProcessCollector;
pub(crate) use segment::SegmentCollector;

use crate::scrape::Scrape;
use crate::text::MetricsWriter;
use crate::Result;

/// One source of metrics.
pub(crate) trait Collector: Send + Sync {
    /// The `collector` label.
    fn name(&self) -> &'static str;
    /// Reads this collector's source into `scrape`. An error marks the collector failed for
    /// this scrape; whatever it did read is still served.
    fn collect(&self, scrape: &mut Scrape) -> Result<()>;
    /// Writes this collector's families from `scrape`.
    fn render(&self, scrape: &Scrape, out: &mut MetricsWriter);
}
