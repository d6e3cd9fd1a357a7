//! Finding segments and following each one across inferd restarts.
//!
//! Each scrape lists the segment directory (tmpfs: a few entries, microseconds) and matches
//! the names against the `--segment` patterns. The listing itself gives each entry's type and
//! inode (`d_type`, `d_ino`), so a scrape costs no `stat` per file; a file is looked at
//! through its own descriptor only when it is opened. A segment is tracked by name and inode: a new
//! inode at the name (inferd renames a fresh segment into place when it starts) means a
//! restart, and the file is opened again. A segment whose file is gone keeps its open
//! descriptor for [`FORGET_DELETED_AFTER`] so that its `up 0` is seen, then it is dropped.
//!
//! Nothing a file in the directory does can stop a scrape: files are opened non-blocking and
//! without following links, checked through the descriptor held (a regular file, owned by an
//! allowed user), and read by copy (`SegmentReader`), never mapped. A file that fails any
//! check is refused, logged once per file and reason, counted, and shown in metrics until it
//! goes away or is replaced.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shm_layout::{SegmentReader, Snapshot};

use crate::owner::Owners;
use crate::{Error, Result};

/// How long a deleted segment is still reported (with `up 0`) before it is forgotten.
pub const FORGET_DELETED_AFTER: Duration = Duration::from_secs(60);

/// The most file names tracked at once (segments read or refused). Anyone who can write the
/// directory can add names; past this, new names are ignored (and logged) rather than growing
/// the exporter's memory and series without bound.
pub const MAX_TRACKED_SEGMENTS: usize = 256;

/// A segment that is open and readable.
struct Attached {
    reader: SegmentReader,
    deleted_at: Option<Instant>,
}

/// A segment that failed a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The segment's name.
    pub segment: String,
    /// A short label: `bad_magic`, `version_mismatch`, `layout_mismatch`, `too_small`,
    /// `not_ready`, `not_a_file`, `foreign_owner`, `io` or `other`.
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
    /// Whether its file has been deleted (inferd gone, the old descriptor still held).
    pub deleted: bool,
}

/// What the last listing found, so that a change (and only a change) is logged.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Listing {
    Unknown,
    Unreadable(String),
    NoMatch,
    Found(usize),
    TooMany,
}

/// The set of segments the exporter reads.
pub struct Discovery {
    dir: PathBuf,
    patterns: Vec<glob::Pattern>,
    owners: Owners,
    tracked: BTreeMap<String, Tracked>,
    errors_total: BTreeMap<(String, &'static str), u64>,
    listing: Listing,
}

impl Discovery {
    /// Tracks the segments in `dir` whose names match any of `patterns` (names or globs) and
    /// whose files belong to one of `owners`.
    pub fn new(dir: &Path, patterns: &[String], owners: Owners) -> Result<Discovery> {
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
            owners,
            tracked: BTreeMap::new(),
            errors_total: BTreeMap::new(),
            listing: Listing::Unknown,
        })
    }

    /// Re-scans the directory at `now` and returns every readable segment's snapshot.
    /// Never fails as a whole: an unreadable directory or segment is logged and shown.
    pub fn scan(&mut self, now: Instant) -> Result<Vec<SegmentView>> {
        let listed = self.list();
        self.note_listing(&listed);
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
        for (name, t) in &mut self.tracked {
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
            self.refuse(&name, inode, &e.into());
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
            // Not followed: a link or FIFO is passed over here, and one swapped in after this
            // look is caught by the checks on the opened descriptor. The type is the listing's
            // own (`lstat` only where the file system leaves it unknown).
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                out.push((name, entry.ino()));
            }
        }
        Ok(out)
    }

    /// Logs what the listing found when it differs from last time: an operator whose
    /// exporter reads nothing learns why once, not on every scrape.
    fn note_listing(&mut self, listed: &Result<Vec<(String, u64)>>) {
        let now = match listed {
            Err(e) => Listing::Unreadable(e.to_string()),
            Ok(l) if l.is_empty() => Listing::NoMatch,
            Ok(l) if l.len() > MAX_TRACKED_SEGMENTS => Listing::TooMany,
            Ok(l) => Listing::Found(l.len()),
        };
        if now == self.listing {
            return;
        }
        let patterns: Vec<&str> = self.patterns.iter().map(glob::Pattern::as_str).collect();
        match &now {
            Listing::Unreadable(e) => {
                log::warn!("cannot list the segment directory ({e}); no inferd is read until it can be")
            }
            Listing::NoMatch => log::warn!(
                "no segment in {} matches --segment {patterns:?}; waiting for inferd to create one",
                self.dir.display()
            ),
            Listing::TooMany => log::warn!(
                "more than {MAX_TRACKED_SEGMENTS} files in {} match --segment {patterns:?}; the rest are ignored",
                self.dir.display()
            ),
            Listing::Found(n) => log::info!(
                "{n} file(s) in {} match --segment {patterns:?}",
                self.dir.display()
            ),
            Listing::Unknown => {}
        }
        self.listing = now;
    }

    /// `inode` is the listing's (`d_ino`).
    fn refresh_one(&mut self, name: &str, inode: u64) {
        let held = match self.tracked.get(name) {
            Some(Tracked::Attached(a)) => Some(a.reader.inode()),
            Some(Tracked::Refused(r)) => Some(r.inode),
            None => None,
        };
        // On most file systems (tmpfs among them) the listing's inode is the file's own; where
        // they can differ (overlayfs across layers), the file's `lstat` settles whether it
        // was replaced, so a mere difference of numbering never reopens it.
        let inode = match held {
            Some(held) if held != inode => {
                std::fs::symlink_metadata(self.dir.join(name)).map_or(inode, |meta| meta.ino())
            }
            _ => inode,
        };
        let reopen = match self.tracked.get(name) {
            None => self.tracked.len() < MAX_TRACKED_SEGMENTS,
            Some(Tracked::Attached(a)) if a.reader.inode() != inode => {
                log::info!("segment {name} was replaced (inferd restarted); opening it again");
                true
            }
            Some(Tracked::Attached(_)) => false,
            // A refused file is only looked at again once it is replaced, except for states
            // that pass by themselves.
            Some(Tracked::Refused(r)) => r.inode != inode || matches!(r.reason, "not_ready" | "io"),
        };
        if !reopen {
            return;
        }
        let opened = SegmentReader::open(self.dir.join(name))
            .map_err(Error::from)
            .and_then(|reader| self.owners.check(name, reader.owner_uid()).map(|()| reader));
        match opened {
            Ok(reader) => {
                if !matches!(self.tracked.get(name), Some(Tracked::Attached(_))) {
                    log::info!("attached segment {name}");
                }
                self.tracked.insert(
                    name.to_owned(),
                    Tracked::Attached(Attached {
                        reader,
                        deleted_at: None,
                    }),
                );
            }
            Err(e) => self.refuse(name, inode, &e),
        }
    }

    fn refuse(&mut self, name: &str, inode: u64, e: &Error) {
        let reason = reason(e);
        let again = matches!(
            self.tracked.get(name),
            Some(Tracked::Refused(r)) if r.inode == inode && r.reason == reason
        );
        if !again {
            log::error!("refusing segment {name:?}: {e}");
            self.count(name, reason);
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

    fn count(&mut self, name: &str, reason: &'static str) {
        // Counters of names long gone are dropped before the table can outgrow the bound
        // that applies to what is tracked.
        if self.errors_total.len() >= 4 * MAX_TRACKED_SEGMENTS {
            let tracked = &self.tracked;
            self.errors_total
                .retain(|(segment, _), _| tracked.contains_key(segment));
        }
        *self
            .errors_total
            .entry((name.to_owned(), reason))
            .or_insert(0) += 1;
    }
}

/// The `reason` label of a segment error.
pub fn reason(e: &Error) -> &'static str {
    match e {
        Error::ForeignOwner { .. } => "foreign_owner",
        Error::Segment(e) => match e {
            shm_layout::Error::BadMagic(_) => "bad_magic",
            shm_layout::Error::IncompatibleVersion { .. } => "version_mismatch",
            shm_layout::Error::LayoutMismatch { .. } => "layout_mismatch",
            shm_layout::Error::TooSmall { .. } => "too_small",
            shm_layout::Error::NotReady => "not_ready",
            shm_layout::Error::NotAFile { .. } => "not_a_file",
            shm_layout::Error::Io { .. } => "io",
            _ => "other",
        },
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
        let mut disc =
            Discovery::new(d.path(), &["exp-disc-*".into()], Owners::defaults()).unwrap();
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
        let mut disc =
            Discovery::new(d.path(), std::slice::from_ref(&name), Owners::defaults()).unwrap();
        let t0 = Instant::now();
        assert!(!disc.scan(t0).unwrap()[0].deleted);
        std::fs::remove_file(w.path()).unwrap();
        let views = disc.scan(t0).unwrap();
        assert!(
            views[0].deleted,
            "still readable through the old descriptor"
        );
        assert_eq!(disc.scan(t0 + FORGET_DELETED_AFTER / 2).unwrap().len(), 1);
        assert!(disc.scan(t0 + FORGET_DELETED_AFTER * 2).unwrap().is_empty());
    }

    #[test]
    fn garbage_is_refused_once_and_counted_once() {
        let d = dir();
        let name = unique("bad");
        std::fs::write(d.path().join(&name), vec![0xAB; 4096]).unwrap();
        let mut disc =
            Discovery::new(d.path(), std::slice::from_ref(&name), Owners::defaults()).unwrap();
        for _ in 0..3 {
            assert!(disc.scan(Instant::now()).unwrap().is_empty());
        }
        let r: Vec<_> = disc.refusals().collect();
        assert_eq!((r.len(), r[0].reason), (1, "bad_magic"));
        assert_eq!(disc.errors_total().get(&(name, "bad_magic")), Some(&1));
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let mut disc = Discovery::new(
            Path::new("/nonexistent-exporter-dir"),
            &["*".into()],
            Owners::defaults(),
        )
        .unwrap();
        assert!(disc.scan(Instant::now()).is_err());
        assert!(Discovery::new(Path::new("/dev/shm"), &["[".into()], Owners::defaults()).is_err());
        let path = Discovery::new(
            Path::new("/dev/shm"),
            &["/dev/shm/inferd".into()],
            Owners::defaults(),
        );
        assert!(matches!(path, Err(Error::PatternPath(_))));
    }
    #[test]
    fn shrunk_segment_does_not_kill_the_exporter() {
        let d = dir();
        let name = unique("shrink");
        let w = create(d.path(), &name);
        // An attacker's copy of a live segment, read once, then truncated under the reader.
        let evil = d.path().join(format!("{name}-evil"));
        std::fs::copy(w.path(), &evil).unwrap();
        let mut disc = Discovery::new(d.path(), &[format!("{name}*")], Owners::defaults()).unwrap();
        assert_eq!(disc.scan(Instant::now()).unwrap().len(), 2);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&evil)
            .unwrap()
            .set_len(4096)
            .unwrap();
        for _ in 0..3 {
            let views = disc.scan(Instant::now()).unwrap();
            assert_eq!(views.len(), 1, "the real segment is still read");
            assert_eq!(views[0].daemon, name);
        }
        let evil_name = format!("{name}-evil");
        let r: Vec<_> = disc.refusals().collect();
        assert_eq!(
            (r.len(), r[0].segment.as_str(), r[0].reason),
            (1, evil_name.as_str(), "too_small")
        );
        assert_eq!(disc.errors_total().get(&(evil_name, "too_small")), Some(&1));
    }

    #[test]
    fn a_fifo_swapped_in_does_not_hang_the_exporter() {
        let d = dir();
        let name = unique("fifo");
        let path = d.path().join(&name);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let mut disc =
            Discovery::new(d.path(), std::slice::from_ref(&name), Owners::defaults()).unwrap();
        // The listing passes over a FIFO; opening it directly, as a swap between listing and
        // open would, must not block either.
        assert!(disc.scan(Instant::now()).unwrap().is_empty());
        let (tx, rx) = std::sync::mpsc::channel();
        let opener = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(SegmentReader::open(&opener).err().map(|e| e.to_string()));
        });
        let err = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("opening a FIFO must not block")
            .expect("a FIFO is refused");
        assert!(err.contains("FIFO"), "{err}");
        disc.refresh_one(&name, 1);
        let r: Vec<_> = disc.refusals().collect();
        assert_eq!(r[0].reason, "not_a_file");
    }

    #[test]
    fn foreign_segments_are_refused_and_counted() {
        let d = dir();
        let name = unique("foreign");
        let w = create(d.path(), &name);
        // Allow only a uid that owns nothing here: the file (ours) is foreign to it.
        let owners = Owners::from_specs(&["4242".into()]).unwrap();
        let mut disc = Discovery::new(d.path(), std::slice::from_ref(&name), owners).unwrap();
        for _ in 0..2 {
            assert!(disc.scan(Instant::now()).unwrap().is_empty());
        }
        let r: Vec<_> = disc.refusals().collect();
        assert_eq!(r[0].reason, "foreign_owner");
        assert!(
            r[0].message.contains("not an allowed owner"),
            "{}",
            r[0].message
        );
        assert_eq!(disc.errors_total().get(&(name, "foreign_owner")), Some(&1));
        drop(w);
    }

    #[test]
    fn tracked_names_are_bounded() {
        let d = dir();
        let prefix = unique("many");
        for i in 0..MAX_TRACKED_SEGMENTS + 10 {
            std::fs::write(d.path().join(format!("{prefix}-{i}")), b"junk").unwrap();
        }
        let mut disc =
            Discovery::new(d.path(), &[format!("{prefix}-*")], Owners::defaults()).unwrap();
        disc.scan(Instant::now()).unwrap();
        assert_eq!(disc.refusals().count(), MAX_TRACKED_SEGMENTS);
        assert_eq!(disc.listing, Listing::TooMany);
    }
}
