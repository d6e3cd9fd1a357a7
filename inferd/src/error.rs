//! The one error type of this crate.

use std::path::PathBuf;

use crate::protocol::ErrorCode;

/// Everything that can go wrong when configuring, loading, serving or talking to inferd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or socket.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The command line did not parse, or asked for `--help` or `--version`; clap's text.
    #[error("{0}")]
    Cli(#[from] clap::Error),
    /// The configuration (flags, config file or environment) is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A policy file could not be loaded.
    #[error("model {path}: {reason}")]
    Model {
        /// The file, or `<demo>` for the built-in policy.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend failed to run a batch.
    #[error("backend: {0}")]
    Backend(String),
    /// The metrics segment could not be created or a shard claimed.
    #[error(transparent)]
    Segment(#[from] shm_layout::Error),
    /// A peer sent bytes that break the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server answered a request with an error.
    #[error("server answered {code}: {message}")]
    Server {
        /// The documented error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// A connection-level I/O failure (the peer went away, a read timed out, ...).
    #[error("connection: {0}")]
    Connection(#[source] std::io::Error),
}

/// The exit status of a configuration error: `EX_CONFIG` of sysexits.h. The systemd units set
/// `RestartPreventExitStatus=78`, so a typo stops the unit instead of restarting it forever.
pub const EXIT_CONFIG: u8 = 78;

impl Error {
    /// The exit status inferd ends with when this error stops it: [`EXIT_CONFIG`] for what only
    /// a change of configuration can fix (options, the model file they name, a socket or
    /// segment name another inferd holds), 1 for the rest, which a restart may cure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Cli(_) | Error::Config(_) | Error::Model { .. } => EXIT_CONFIG,
            Error::Segment(
                shm_layout::Error::InvalidName(_)
                | shm_layout::Error::NotTmpfs(_)
                | shm_layout::Error::InUse { .. },
            ) => EXIT_CONFIG,
            _ => 1,
        }
    }

    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
