//! inferd's resource use from `/proc/<pid>`. Reading (the files) is kept apart from parsing
//! (procfs-core, on bytes), so parsing is tested on fixed text.
//!
//! Each scrape reads, per daemon, one file and one directory's size: `stat` holds the CPU
//! times, the thread count and the resident set (the `rss` field is the very count `VmRSS` in
//! `status` prints, `get_mm_rss`, in pages), and `stat(2)` of `fd` gives the number of open
//! descriptors as its size (Linux 6.2 and later) without listing them. `status`, which the
//! kernel formats from some fifty fields and procfs parses into a map of owned strings, cost
//! more than everything else this collector does, and is not read.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use procfs::process::Stat;
use procfs::FromRead;

use super::Collector;
use crate::catalog::{self, MetricDef};
use crate::scrape::{ProcessStats, Scrape};
use crate::text::MetricsWriter;
use crate::{Error, Result};

/// Reads `/proc/<pid>` of each daemon that is not known to be gone.
pub(crate) struct ProcessCollector {
    proc_root: &'static Path,
    ticks_per_second: u64,
    page_size: u64,
}

impl ProcessCollector {
    pub(crate) fn new() -> ProcessCollector {
        ProcessCollector {
            proc_root: Path::new("/proc"),
            ticks_per_second: procfs::ticks_per_second(),
            page_size: procfs::page_size(),
        }
    }
}

/// The raw files of one process.
pub(crate) struct ProcFiles {
    stat: Vec<u8>,
    open_fds: u64,
}

/// Reads the files; `Ok(None)` when the process does not exist (it exited, or lives in another
/// pid namespace).
pub(crate) fn read(proc_root: &Path, pid: u64) -> Result<Option<ProcFiles>> {
    let dir = proc_root.join(pid.to_string());
    let io = |file: &'static str| {
        move |e: std::io::Error| Error::Proc {
            pid,
            file,
            message: e.to_string(),
        }
    };
    // Opened and read to its end, not `fs::read`: that `stat`s the file first for its size,
    // which a /proc file does not have. A stat line is a few hundred bytes.
    let mut stat = Vec::with_capacity(1024);
    match std::fs::File::open(dir.join("stat")).and_then(|mut f| f.read_to_end(&mut stat)) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("stat")(e)),
    }
    let fd = dir.join("fd");
    // Since Linux 6.2 the size of `fd` is the number of open descriptors; before, it is 0,
    // and they are counted. (A process with none counts 0 either way.)
    let open_fds = match std::fs::metadata(&fd).map_err(io("fd"))?.size() {
        0 => std::fs::read_dir(&fd).map_err(io("fd"))?.count() as u64,
        n => n,
    };
    Ok(Some(ProcFiles { stat, open_fds }))
}

/// Reads and parses `/proc/<pid>` in one go: `Ok(None)` when the process does not exist.
pub(crate) fn stats(
    proc_root: &Path,
    daemon: &str,
    pid: u64,
    ticks_per_second: u64,
    page_size: u64,
) -> Result<Option<ProcessStats>> {
    read(proc_root, pid)?
        .map(|f| parse(daemon, pid, &f, ticks_per_second, page_size))
        .transpose()
}

/// Parses the files into stats.
/// `page_size` is the kernel's, in bytes, which `rss` counts in.
pub(crate) fn parse(
    daemon: &str,
    pid: u64,
    files: &ProcFiles,
    ticks_per_second: u64,
    page_size: u64,
) -> Result<ProcessStats> {
    let bad = |file: &'static str| {
        move |e: procfs::ProcError| Error::Proc {
            pid,
            file,
            message: e.to_string(),
        }
    };
    let stat = Stat::from_read(files.stat.as_slice()).map_err(bad("stat"))?;
    let ticks = ticks_per_second.max(1) as f64;
    Ok(ProcessStats {
        daemon: daemon.to_owned(),
        pid,
        cpu_seconds: (stat.utime.saturating_add(stat.stime)) as f64 / ticks,
        // Pages; kernel threads have none (0).
        resident_memory_bytes: stat.rss.saturating_mul(page_size),
        threads: u64::try_from(stat.num_threads).unwrap_or(0),
        open_fds: files.open_fds,
    })
}

impl Collector for ProcessCollector {
    fn name(&self) -> &'static str {
        "process"
    }

    fn collect(&self, scrape: &mut Scrape) -> Result<()> {
        let mut first_error = None;
        for d in scrape
            .daemons
            .iter()
            .filter(|d| !d.deleted && d.snapshot.header.state != shm_layout::State::Stopped)
        {
            let pid = d.snapshot.header.writer_pid;
            match stats(
                self.proc_root,
                &d.name,
                pid,
                self.ticks_per_second,
                self.page_size,
            ) {
                Ok(Some(stats)) => scrape.processes.push(stats),
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn render(&self, scrape: &Scrape, out: &mut MetricsWriter) {
        type Pick = fn(&ProcessStats) -> f64;
        let families: [(&MetricDef, Pick); 4] = [
            (&catalog::PROCESS_CPU_SECONDS_TOTAL, |p| p.cpu_seconds),
            (&catalog::PROCESS_RESIDENT_MEMORY_BYTES, |p| {
                p.resident_memory_bytes as f64
            }),
            (&catalog::PROCESS_THREADS, |p| p.threads as f64),
            (&catalog::PROCESS_OPEN_FDS, |p| p.open_fds as f64),
        ];
        for (def, pick) in families {
            out.family_def(def);
            for p in &scrape.processes {
                out.sample(&[("daemon", &p.daemon)], pick(p));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (inferd worker) S 1 4242 4242 0 -1 4194560 2500 0 0 0 1234 566 0 0 20 0 9 0 987654 1073741824 5120 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 3 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
    fn files(stat: &str) -> ProcFiles {
        ProcFiles {
            stat: stat.as_bytes().to_vec(),
            open_fds: 12,
        }
    }

    #[test]
    fn parses_fixture_into_base_units() {
        let p = parse("d", 4242, &files(STAT), 100, 4096).unwrap();
        assert_eq!(p.cpu_seconds, 18.0, "(1234 + 566) ticks at 100 Hz");
        assert_eq!(p.resident_memory_bytes, 5120 * 4096, "rss in pages");
        assert_eq!(p.threads, 9);
        assert_eq!(p.open_fds, 12);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse("d", 1, &files("nonsense"), 100, 4096).is_err());
        assert!(parse("d", 1, &files(""), 0, 0).is_err());
    }

    #[test]
    fn reads_our_own_process_and_none_for_a_missing_pid() {
        let me = u64::from(std::process::id());
        let f = read(Path::new("/proc"), me).unwrap().unwrap();
        let p = parse(
            "me",
            me,
            &f,
            procfs::ticks_per_second(),
            procfs::page_size(),
        )
        .unwrap();
        assert!(p.threads >= 1 && p.open_fds >= 3 && p.resident_memory_bytes > 0);
        assert!(read(Path::new("/proc"), u64::from(u32::MAX))
            .unwrap()
            .is_none());
    }

    #[test]
    fn resident_memory_is_what_status_calls_vmrss() {
        // The same kernel count in two files (pages in `stat`, kB in `status`), read a moment
        // apart while other tests allocate: equal to within what they can move it.
        let me = u64::from(std::process::id());
        let f = read(Path::new("/proc"), me).unwrap().unwrap();
        let p = parse(
            "me",
            me,
            &f,
            procfs::ticks_per_second(),
            procfs::page_size(),
        )
        .unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vmrss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let (a, b) = (p.resident_memory_bytes, vmrss_kb * 1024);
        assert!(a.abs_diff(b) <= a.max(b) / 4, "stat {a} B, status {b} B");
    }

    #[test]
    fn open_fds_are_counted_exactly() {
        // A child whose descriptors are stdin, stdout, stderr and whatever it inherited
        // (cargo's jobserver pipes, say), counted as `ls /proc/<pid>/fd` counts them.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = u64::from(child.id());
        // `sleep` opens and closes locale files as it starts, so the listing and the read are
        // compared once the child holds still: the read must agree with the listings on
        // either side of it.
        let list = || {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .count() as u64
        };
        let mut agreed = None;
        let mut seen = Vec::new();
        for _ in 0..100 {
            let before = list();
            let counted = read(Path::new("/proc"), pid).unwrap().unwrap().open_fds;
            let after = list();
            seen.push((before, counted, after));
            if before == counted && counted == after {
                agreed = Some(counted);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        let open_fds = agreed.unwrap_or_else(|| panic!("never agreed: {seen:?}"));
        assert!(open_fds >= 3, "{open_fds}");
    }
}
