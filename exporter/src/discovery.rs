//! Finding segments and keeping each one mapped across inferd restarts.
//!
//! Each scrape lists the segment directory (tmpfs: a few entries, microseconds) and matches
//! the names against the `--segment` patterns. A segment is tracked by name, inode and
//! generation: a new inode at the name (inferd renames a fresh segment into place when it
//! starts) or a new generation means a restart, and the segment is mapped again. A segment
//! whose file is gone keeps its old mapping for [`FORGET_DELETED_AFTER`] so that its `up 0`
//! is seen, then it is dropped. A segment that fails validation is refused, logged once per
//! file and reason, and shown in metrics until it goes away or is replaced.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shm_layout::{SegmentReader, Snapshot};

use crate::{Error, Result};

/// How long a deleted segment is still reported (with `up 0`) before it is forgotten.
pub const FORGET_DELETED_AFTER: Duration = Duration::from_secs(60);

/// A segment that is mapped and readable.
pub(crate) struct Attached {
    reader: SegmentReader,
    generation: u64,
    deleted_at: Option<Instant>,
}

/// A segment that failed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The segment's name.
    pub segment: String,
    /// A short label: `bad_magic`, `version_mismatch`, `layout_mismatch`, `too_small`,
    /// `not_ready`, `io` or `other`.
    pub reason: &'static str,
    /// The full error.
    pub message: String,
    inode: u64,
}

enum Tracked {
    Attached(Attached),
    Refused(Refusal),
}

/// One readable segment's values at one moment.
pub struct SegmentView {
    /// The segment's name: the `daemon` label.
    pub daemon: String,
    /// Its values.
    pub snapshot: Snapshot,
    /// Whether its file has been deleted (inferd gone, the old mapping still held).
    pub deleted: bool,
}

/// The set of segments the exporter reads.
pub struct Discovery {
    dir: PathBuf,
    patterns: Vec<glob::Pattern>,
    tracked: BTreeMap<String, Tracked>,
    errors_total: BTreeMap<(String, &'static str), u64>,
}

impl Discovery {
    /// Tracks the segments in `dir` whose names match any of `patterns` (names or globs).
    pub fn new(dir: &Path, patterns: &[String]) -> Result<Discovery> {
        let patterns = patterns
            .iter()
            .map(|p| {
                // Patterns match file names inside `dir`; a path would silently match nothing.
                if p.contains('/') {
                    return Err(Error::PatternPath(p.clone()));
                }
                glob::Pattern::new(p).map_err(|source| Error::Pattern {
                    pattern: p.clone(),
                    source,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Discovery {
            dir: dir.to_owned(),
            patterns,
            tracked: BTreeMap::new(),
            errors_total: BTreeMap::new(),
        })
    }

    /// Re-scans the directory at `now` and returns every readable segment's snapshot.
    /// Never fails as a whole: an unreadable directory or segment is logged and shown.
    pub fn scan(&mut self, now: Instant) -> Result<Vec<SegmentView>> {
        let listed = self.list();
        let present = listed.as_ref().map(|l| l.as_slice()).unwrap_or_default();
        for (name, inode) in present {
            self.refresh_one(name, *inode);
        }
        // Names that are gone: forget refusals, keep attached ones for a while.
        self.tracked.retain(|name, t| {
            if present.iter().any(|(n, _)| n == name) {
                return true;
            }
            match t {
                Tracked::Refused(_) => false,
                Tracked::Attached(a) => {
                    let since = *a.deleted_at.get_or_insert_with(|| {
                        log::warn!("segment {name} was deleted; reporting it down");
                        now
                    });
                    now.saturating_duration_since(since) < FORGET_DELETED_AFTER
                }
            }
        });
        let mut views = Vec::with_capacity(self.tracked.len());
        let mut failed = Vec::new();
        for (name, t) in &self.tracked {
            if let Tracked::Attached(a) = t {
                match a.reader.snapshot() {
                    Ok(snapshot) => views.push(SegmentView {
                        daemon: name.clone(),
                        snapshot,
                        deleted: a.deleted_at.is_some(),
                    }),
                    Err(e) => failed.push((name.clone(), a.reader.inode(), e)),
                }
            }
        }
        for (name, inode, e) in failed {
            self.refuse(&name, inode, &e);
        }
        listed.map(|_| views)
    }

    /// The segments refused now.
    pub fn refusals(&self) -> impl Iterator<Item = &Refusal> {
        self.tracked.values().filter_map(|t| match t {
            Tracked::Refused(r) => Some(r),
            Tracked::Attached(_) => None,
        })
    }

    /// Refusals since start, by segment and reason.
    pub fn errors_total(&self) -> &BTreeMap<(String, &'static str), u64> {
        &self.errors_total
    }

    fn list(&self) -> Result<Vec<(String, u64)>> {
        let io = |source| {
            Error::Segment(shm_layout::Error::Io {
                path: self.dir.clone(),
                source,
            })
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let Ok(entry) = entry else { continue };
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // Dot-files are writers' temporary files, renamed into place when complete.
            if name.starts_with('.') || !self.patterns.iter().any(|p| p.matches(&name)) {
                continue;
            }
            // A file deleted between the listing and here is simply absent.
            if let Ok(meta) = entry.metadata() {
                if meta.is_file() {
                    out.push((name, meta.ino()));
                }
            }
        }
        Ok(out)
    }

    fn refresh_one(&mut self, name: &str, inode: u64) {
        let reopen = match self.tracked.get(name) {
            None => true,
            Some(Tracked::Attached(a)) if a.reader.inode() != inode => {
                log::info!("segment {name} was replaced (inferd restarted); mapping it again");
                true
            }
            Some(Tracked::Attached(a)) => match a.reader.header() {
                Ok(h) if h.generation == a.generation => false,
                Ok(_) => {
                    log::info!("segment {name} has a new generation; mapping it again");
                    true
                }
                Err(_) => true,
            },
            // A refused file is only looked at again once it is replaced, except for states
            // that pass by themselves.
            Some(Tracked::Refused(r)) => r.inode != inode || matches!(r.reason, "not_ready" | "io"),
        };
        if !reopen {
            return;
        }
        let path = self.dir.join(name);
        match SegmentReader::open(&path).and_then(|r| Ok((r.header()?.generation, r))) {
            Ok((generation, reader)) => {
                if !matches!(self.tracked.get(name), Some(Tracked::Attached(_))) {
                    log::info!("attached segment {name} (generation {generation:#x})");
                }
                self.tracked.insert(
                    name.to_owned(),
                    Tracked::Attached(Attached {
                        reader,
                        generation,
                        deleted_at: None,
                    }),
                );
            }
            Err(e) => self.refuse(name, inode, &e),
        }
    }

    fn refuse(&mut self, name: &str, inode: u64, e: &shm_layout::Error) {
        let reason = reason(e);
        let again = matches!(
            self.tracked.get(name),
            Some(Tracked::Refused(r)) if r.inode == inode && r.reason == reason
        );
        if !again {
            log::error!("refusing segment {name}: {e}");
            *self
                .errors_total
                .entry((name.to_owned(), reason))
                .or_insert(0) += 1;
        }
        self.tracked.insert(
            name.to_owned(),
            Tracked::Refused(Refusal {
                segment: name.to_owned(),
                reason,
                message: e.to_string(),
                inode,
            }),
        );
    }
}

/// The `reason` label of a segment error.
pub fn reason(e: &shm_layout::Error) -> &'static str {
    match e {
        shm_layout::Error::BadMagic(_) => "bad_magic",
        shm_layout::Error::IncompatibleVersion { .. } => "version_mismatch",
        shm_layout::Error::LayoutMismatch { .. } => "layout_mismatch",
        shm_layout::Error::TooSmall { .. } => "too_small",
        shm_layout::Error::NotReady => "not_ready",
        shm_layout::Error::Io { .. } => "io",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_layout::{SegmentOptions, SegmentWriter};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn unique(tag: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        format!(
            "exp-disc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir_in("/dev/shm").unwrap()
    }

    fn create(dir: &Path, name: &str) -> SegmentWriter {
        let mut opts = SegmentOptions::new(name);
        opts.dir = dir.to_owned();
        SegmentWriter::create(&opts).unwrap()
    }

    #[test]
    fn globs_match_names_and_skip_dot_files() {
        let d = dir();
        let a = unique("a");
        let _w = create(d.path(), &a);
        std::fs::write(d.path().join(format!(".{a}.tmp")), b"partial").unwrap();
        std::fs::write(d.path().join("unrelated"), b"x").unwrap();
        let mut disc = Discovery::new(d.path(), &["exp-disc-*".into()]).unwrap();
        let views = disc.scan(Instant::now()).unwrap();
        assert_eq!(
            views.iter().map(|v| v.daemon.as_str()).collect::<Vec<_>>(),
            vec![a.as_str()]
        );
        assert_eq!(disc.refusals().count(), 0);
    }

    #[test]
    fn a_deleted_segment_is_reported_then_forgotten() {
        let d = dir();
        let name = unique("del");
        let w = create(d.path(), &name);
        let mut disc = Discovery::new(d.path(), std::slice::from_ref(&name)).unwrap();
        let t0 = Instant::now();
        assert!(!disc.scan(t0).unwrap()[0].deleted);
        std::fs::remove_file(w.path()).unwrap();
        let views = disc.scan(t0).unwrap();
        assert!(views[0].deleted, "still readable through the old mapping");
        assert_eq!(disc.scan(t0 + FORGET_DELETED_AFTER / 2).unwrap().len(), 1);
        assert!(disc.scan(t0 + FORGET_DELETED_AFTER * 2).unwrap().is_empty());
    }

    #[test]
    fn garbage_is_refused_once_and_counted_once() {
        let d = dir();
        let name = unique("bad");
        std::fs::write(d.path().join(&name), vec![0xAB; 4096]).unwrap();
        let mut disc = Discovery::new(d.path(), std::slice::from_ref(&name)).unwrap();
        for _ in 0..3 {
            assert!(disc.scan(Instant::now()).unwrap().is_empty());
        }
        let r: Vec<_> = disc.refusals().collect();
        assert_eq!((r.len(), r[0].reason), (1, "bad_magic"));
        assert_eq!(disc.errors_total().get(&(name, "bad_magic")), Some(&1));
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let mut disc =
            Discovery::new(Path::new("/nonexistent-exporter-dir"), &["*".into()]).unwrap();
        assert!(disc.scan(Instant::now()).is_err());
        assert!(Discovery::new(Path::new("/dev/shm"), &["[".into()]).is_err());
        let path = Discovery::new(Path::new("/dev/shm"), &["/dev/shm/inferd".into()]);
        assert!(matches!(path, Err(Error::PatternPath(_))));
    }
}
