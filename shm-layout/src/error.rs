//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong when creating, opening or reading a segment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation on the segment failed.
    #[error("segment {path}: {source}")]
    Io {
        /// The segment file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The segment name is empty, too long, or holds a `/` or NUL.
    #[error("invalid segment name {0:?}: use 1-200 characters without '/' or NUL")]
    InvalidName(String),
    /// The directory is not on tmpfs; an mmap'd disk file stalls its writer on I/O.
    #[error("{0} is not on tmpfs: the segment must live in memory (for example /dev/shm)")]
    NotTmpfs(PathBuf),
    /// The file (or the bytes read of it) is shorter than the part the reader needs.
    #[error("segment is {len} bytes, but at least {need} are needed")]
    TooSmall {
        /// Bytes available.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The first eight bytes are not the segment's magic.
    #[error("bad magic {0:#018x}: not an inferd metrics segment")]
    BadMagic(u64),
    /// The writer has not yet published the segment (ready word unset).
    #[error("segment is not ready yet (its writer has not published it)")]
    NotReady,
    /// The layout's major version differs from the one this reader understands.
    #[error("segment layout version {found_major}.{found_minor} is incompatible with this reader's {expected_major}.x")]
    IncompatibleVersion {
        /// The major version in the segment.
        found_major: u32,
        /// The minor version in the segment.
        found_minor: u32,
        /// The major version this reader reads.
        expected_major: u32,
    },
    /// The header's dimensions or section offsets disagree with this reader's layout.
    #[error("segment header field {field} is {found}, expected {expected}")]
    LayoutMismatch {
        /// Which header field.
        field: &'static str,
        /// The value found.
        found: u64,
        /// The value this layout requires.
        expected: u64,
    },
    /// Another live process writes the segment of this name: it holds the file's lock.
    #[error("segment {path} is in use by a running inferd{}: stop it, or give this one another --segment-name", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    InUse {
        /// The segment file.
        path: PathBuf,
        /// The holder's pid, from the segment's header, when it has a readable one.
        pid: Option<u32>,
    },
    /// The segment could not be allocated in full: the tmpfs is full (or too small).
    #[error("cannot allocate the {need}-byte metrics segment in {dir}: {source}; free space there or choose another --segment-dir")]
    NoSpace {
        /// The segment directory.
        dir: PathBuf,
        /// Bytes the segment needs.
        need: usize,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The name is not a regular file (a FIFO, a symbolic link, a directory, ...).
    #[error("{path} is a {kind}, not a segment file")]
    NotAFile {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// Every per-thread shard is already claimed.
    #[error("all {0} shards are claimed: more recording threads than the segment has shards")]
    ShardsExhausted(usize),
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
