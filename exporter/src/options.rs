//! Command-line options: every one has a default, so `exporter` alone is a working setup.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::listen::Listen;

/// The default port: 9464 is taken by the OpenTelemetry Prometheus exporter, and 9470 is free
/// in the Prometheus port registry's neighbourhood of GPU and inference exporters.
pub const DEFAULT_PORT: u16 = 9470;

/// How the exporter is run.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "exporter",
    version,
    about = "Prometheus exporter for inferd and its GPUs",
    after_help = "Exit status: 0 on SIGTERM or after --once; 78 (EX_CONFIG) for a configuration \
                  error (a bad flag or value, a --web.config.file that does not load, an \
                  address in use or that does not resolve), \
                  printed as one line; 1 for any other failure."
)]
pub struct Options {
    /// Where to serve /metrics and the JSON endpoints: HOST:PORT (a name is resolved at start
    /// and binds its first IPv4 address, else its first IPv6 one; localhost:9470 is loopback),
    /// IPV4:PORT, a bracketed IPv6 address and port, or :PORT for every interface, IPv6 and
    /// IPv4.
    #[arg(long, env = "EXPORTER_LISTEN", value_name = "ADDR", default_value_t = Listen::any_ipv4(DEFAULT_PORT))]
    pub listen: Listen,

    /// TLS, basic auth and response headers, in the Prometheus exporter-toolkit's web config
    /// format (tls_server_config, basic_auth_users, http_server_config). The file, and the
    /// certificate and key files it names, are re-read when they change, so a renewed
    /// certificate is served without a restart. Without it the exporter serves plain HTTP to
    /// anyone who can reach --listen.
    #[arg(
        long = "web.config.file",
        env = "EXPORTER_WEB_CONFIG_FILE",
        value_name = "FILE"
    )]
    pub web_config_file: Option<PathBuf>,

    /// HTTP connections open at once. A new one past the limit takes the place of the
    /// connection that has waited longest for a request; when every one is answering a
    /// request, the new one is closed at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Segments to read: names or globs inside --segment-dir; may be given several times.
    /// Hosts that run one inferd per GPU name their segments inferd-0, inferd-1, ...; the
    /// default finds them all. Dot-files are skipped: they are writers' temporary files.
    #[arg(long = "segment", default_value = "inferd*")]
    pub segments: Vec<String>,

    /// Directory the segments live in.
    #[arg(long, default_value = shm_layout::DEFAULT_DIR)]
    pub segment_dir: PathBuf,

    /// Users whose segment files are read (user names or numeric uids); may be given several
    /// times. A file owned by anyone else is refused (reason `foreign_owner`), since anyone who
    /// can write --segment-dir could otherwise add daemons and series. Default: the user
    /// `inferd` (the shipped units run inferd as it) when it exists, root, and the user the
    /// exporter runs as.
    #[arg(long = "segment-owner", value_name = "USER")]
    pub segment_owners: Vec<String>,

    /// How often the background thread samples NVML, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub nvml_interval_ms: u64,

    /// Also sample PCIe throughput. Off by default: each read blocks the sampler for 20 ms.
    #[arg(long)]
    pub nvml_pcie: bool,

    /// Classic (`le`) buckets per doubling of the duration histograms: 1, 2, 4 or 8. The
    /// segment keeps 8 per doubling (native-histogram schema 3); the text formats fold them to
    /// this resolution, exactly, since every classic bound is one of the segment's. 1 (28
    /// series per histogram, bounds 2^-20 s ... 64 s) keeps a page as large as it always was;
    /// 8 gives classic-only servers the native resolution at 8 times the series. The protobuf
    /// format serves the native histogram beside these buckets.
    #[arg(long, default_value_t = 1, value_parser = parse_per_doubling)]
    pub classic_buckets_per_doubling: u8,

    /// Prefix of every metric name.
    #[arg(long, default_value = "inferd")]
    pub namespace: String,

    /// Print one /metrics page to stdout and exit, instead of serving. Waits one NVML interval
    /// first so that the page carries a GPU sample.
    #[arg(long)]
    pub once: bool,
}

/// Parses `--classic-buckets-per-doubling`: one of [`crate::CLASSIC_PER_DOUBLING`].
fn parse_per_doubling(s: &str) -> Result<u8, String> {
    s.parse::<u8>()
        .ok()
        .filter(|n| crate::CLASSIC_PER_DOUBLING.contains(n))
        .ok_or_else(|| format!("'{s}' is not 1, 2, 4 or 8"))
}

impl Options {
    /// The NVML sampling interval.
    pub fn nvml_interval(&self) -> Duration {
        Duration::from_millis(self.nvml_interval_ms)
    }

    /// Options for tests and embedding: the defaults, listening on an ephemeral local port,
    /// reading `segments` in `segment_dir`.
    pub fn local(segment_dir: impl Into<PathBuf>, segments: &[&str]) -> Options {
        let mut opts = Options::parse_from(["exporter"]);
        opts.listen = Listen::from(SocketAddr::from(([127, 0, 0, 1], 0)));
        opts.segment_dir = segment_dir.into();
        opts.segments = segments.iter().map(|s| (*s).to_owned()).collect();
        opts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let o = Options::parse_from(["exporter"]);
        assert_eq!(o.listen.port(), DEFAULT_PORT);
        assert_eq!(o.segments, vec!["inferd*".to_owned()]);
        assert_eq!(o.segment_dir, PathBuf::from("/dev/shm"));
        assert_eq!(o.nvml_interval(), Duration::from_secs(1));
        assert_eq!(o.namespace, "inferd");
        assert!(!o.nvml_pcie && !o.once);
        assert_eq!(o.max_connections, 64);
        assert_eq!(o.classic_buckets_per_doubling, 1);
        assert_eq!(o.web_config_file, None);
        let o = Options::parse_from(["exporter", "--classic-buckets-per-doubling", "8"]);
        assert_eq!(o.classic_buckets_per_doubling, 8);
        let e = Options::try_parse_from(["exporter", "--classic-buckets-per-doubling", "3"]);
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("'3' is not 1, 2, 4 or 8"));
        assert!(Options::try_parse_from(["exporter", "--max-connections", "0"]).is_err());
    }

    #[test]
    fn listen_takes_a_host_name_or_a_bare_port() {
        let o = Options::parse_from(["exporter", "--listen", "localhost:9470"]);
        assert_eq!(o.listen.to_string(), "localhost:9470");
        let o = Options::parse_from(["exporter", "--listen", ":9470"]);
        assert!(o.listen.is_any());
        let e = Options::try_parse_from(["exporter", "--listen", "nonsense"]).unwrap_err();
        assert!(e.to_string().contains("'nonsense'"), "{e}");
    }

    #[test]
    fn the_web_config_flag_is_spelled_as_exporters_spell_it() {
        let o = Options::parse_from(["exporter", "--web.config.file", "/etc/web.yml"]);
        assert_eq!(o.web_config_file, Some(PathBuf::from("/etc/web.yml")));
        let o = Options::parse_from(["exporter", "--web.config.file=web.yml"]);
        assert_eq!(o.web_config_file, Some(PathBuf::from("web.yml")));
    }

    #[test]
    fn segments_repeat_and_interval_has_a_floor() {
        let o = Options::parse_from(["exporter", "--segment", "a", "--segment", "b*"]);
        assert_eq!(o.segments, vec!["a".to_owned(), "b*".to_owned()]);
        assert!(Options::try_parse_from(["exporter", "--nvml-interval-ms", "1"]).is_err());
    }
}
