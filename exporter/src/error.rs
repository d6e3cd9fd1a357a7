//! The one error type of this crate.

/// Everything that can stop the exporter from starting or a collector from reading.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listen socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for (and the one it resolved to, for a host name).
        addr: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The `--listen` host name could not be resolved.
    #[error("cannot resolve the listen address {listen}: {source}")]
    Resolve {
        /// The address as given.
        listen: String,
        /// What the resolver said.
        source: std::io::Error,
    },
    /// The runtime or a thread could not be started.
    #[error("cannot start {what}: {source}")]
    Start {
        /// What was being started.
        what: &'static str,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A `--segment` pattern is not a valid glob.
    #[error("invalid segment pattern {pattern:?}: {source}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// Why glob refused it.
        source: glob::PatternError,
    },
    /// A `--segment` pattern is a path; patterns are names or globs inside `--segment-dir`.
    #[error("segment pattern {0:?} holds a '/': give a name or glob, and the directory with --segment-dir")]
    PatternPath(String),
    /// The namespace is not a valid metric name prefix.
    #[error("invalid namespace {0:?}: use [a-zA-Z_][a-zA-Z0-9_]*")]
    Namespace(String),
    /// `--classic-buckets-per-doubling` is not 1, 2, 4 or 8.
    #[error("--classic-buckets-per-doubling {0}: give 1, 2, 4 or 8")]
    ClassicBuckets(u8),
    /// A segment file is owned by a user not allowed to own segments (`--segment-owner`).
    #[error("segment {segment:?} is owned by uid {uid}, which is not an allowed owner ({allowed}); see --segment-owner")]
    ForeignOwner {
        /// The segment's name.
        segment: String,
        /// The file's owner.
        uid: u32,
        /// The allowed owners, for the message.
        allowed: String,
    },
    /// A `--segment-owner` names no user.
    #[error("--segment-owner {0:?}: no such user (give a user name or a numeric uid)")]
    Owner(String),
    /// A segment could not be opened or read.
    #[error(transparent)]
    Segment(#[from] shm_layout::Error),
    /// A file under /proc could not be read or parsed.
    #[error("/proc/{pid}/{file}: {message}")]
    Proc {
        /// The process.
        pid: u64,
        /// The file under `/proc/<pid>`.
        file: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The `--web.config.file` cannot be read, or a key in it is wrong or not supported.
    #[error("--web.config.file {}: {message}", .path.display())]
    WebConfig {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, starting with the key (`tls_server_config.key_file: ...`).
        message: String,
    },
    /// NVML failed (not installed, no driver, or a call failed).
    #[error("nvml: {0}")]
    Nvml(String),
}

impl Error {
    /// Whether the configuration is at fault (a flag's value, an address that cannot be bound),
    /// so that restarting with the same configuration cannot help: the binary exits with
    /// `EX_CONFIG` for these, and systemd's `RestartPreventExitStatus` stops there.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::Bind { .. }
                | Error::Resolve { .. }
                | Error::Pattern { .. }
                | Error::PatternPath(_)
                | Error::Namespace(_)
                | Error::ClassicBuckets(_)
                | Error::WebConfig { .. }
        )
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
