//! A Prometheus exporter for inferd: inference metrics from its shared-memory segments, GPU
//! metrics from NVML, and process metrics from `/proc`, without ever touching inferd's hot path.
//!
//! # Overview
//!
//! - [`Options`] are the command-line flags; each has a default.
//! - [`Exporter`] owns the collectors, one per source in the style of node_exporter: the
//!   segment collector ([`Discovery`] finds the segments, follows restarts and refuses bad
//!   ones), the process collector (`/proc/<pid>` of each inferd), the NVML collector (serving
//!   the [`GpuSampler`]'s latest sample, taken on a background thread from a [`GpuSource`]:
//!   [`NvmlSource`] for real, [`FakeGpuSource`] in tests) and the exporter's own metrics.
//!   [`Exporter::scrape`] reads them all into one [`Scrape`]; [`Exporter::render`] writes it
//!   in a [`Format`] through the [`MetricsWriter`], and the JSON endpoints read the same scrape.
//! - [`serve`] serves it all over hyper: `/metrics`, `/health`, `/gpu/stats`,
//!   `/queue/stats`, `/models/stats`; [`Server`] runs it on its own thread. The threads of
//!   its [`runtime`] run under `SCHED_IDLE`, so that a scrape never holds a core inferd wants.
//! - [`WebConfigFile`] is `--web.config.file`, exporter-toolkit's format: TLS (rustls), basic
//!   auth ([`BasicAuth`], bcrypt) and response headers, re-read when a file changes.
//!
//! Every metric family is defined once, in [`CATALOG`]; `docs/metrics.md` describes them for
//! people, and a test keeps the two and a real page in agreement.
//!
//! # Example
//!
//! ```
//! use exporter::{Exporter, FakeGpuSource, Format, Options};
//!
//! let dir = tempfile::tempdir_in("/dev/shm")?;
//! let options = Options::local(dir.path(), &["inferd*"]);
//! let exporter = Exporter::new(&options, Box::new(FakeGpuSource::missing()))?;
//! let page = String::from_utf8(exporter.metrics(Format::Prometheus))?;
//! assert!(page.contains("# TYPE inferd_requests_total counter"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod basic_auth;
mod catalog;
mod collector;
mod discovery;
mod error;
mod exporter;
mod gpu;
mod histogram;
mod json;
mod listen;
mod options;
mod owner;
mod priority;
mod protobuf;
mod scrape;
mod server;
#[cfg(test)]
mod test_certs;
mod text;
mod tls;
mod web_config;

pub use crate::basic_auth::BasicAuth;
pub use crate::catalog::{Help, MetricDef, CATALOG};
pub use crate::discovery::{
    Discovery, Refusal, SegmentView, FORGET_DELETED_AFTER, MAX_TRACKED_SEGMENTS,
};
pub use crate::error::{Error, Result};
pub use crate::exporter::Exporter;
pub use crate::gpu::{
    FakeDevice, FakeGpuSource, GpmMetric, GpmReadings, GpmSnapshot, GpmStats, GpuIdentity,
    GpuProcess, GpuSample, GpuSampler, GpuSource, GpuStats, NvmlSource, SourceError,
    THROTTLE_REASONS,
};
pub use crate::histogram::{BucketBounds, ClassicBuckets, NativeHistogram, CLASSIC_PER_DOUBLING};
pub use crate::listen::{BadListen, Listen};
pub use crate::options::{Options, DEFAULT_PORT};
pub use crate::owner::{Owners, INFERD_USER};
pub use crate::protobuf::{decode_page, proto};
pub use crate::scrape::{
    CollectorRun, Daemon, HttpConnections, ProcessStats, Scrape, HEARTBEAT_TIMEOUT,
};
pub use crate::server::{
    accepts_gzip, bind, handle, runtime, serve, HttpLimits, Server, HEADER_READ_TIMEOUT,
    IDLE_TIMEOUT,
};
pub use crate::text::{Format, Kind, Labels, MetricsWriter, Value};
pub use crate::web_config::{WebConfig, WebConfigFile, RELOAD_CHECK_INTERVAL};
