//! inferd's resource use from `/proc/<pid>`. Reading (the files) is kept apart from parsing
//! (procfs-core, on bytes), so parsing is tested on fixed text.

use std::path::Path;

use procfs::process::{Stat, Status};
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
}

impl ProcessCollector {
    pub(crate) fn new() -> ProcessCollector {
        ProcessCollector {
            proc_root: Path::new("/proc"),
            ticks_per_second: procfs::ticks_per_second(),
        }
    }
}

/// The raw files of one process.
pub(crate) struct ProcFiles {
    stat: Vec<u8>,
    status: Vec<u8>,
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
    let stat = match std::fs::read(dir.join("stat")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("stat")(e)),
    };
    let status = std::fs::read(dir.join("status")).map_err(io("status"))?;
    let open_fds = std::fs::read_dir(dir.join("fd")).map_err(io("fd"))?.count() as u64;
    Ok(Some(ProcFiles {
        stat,
        status,
        open_fds,
    }))
}

/// Parses the files into stats.
pub(crate) fn parse(
    daemon: &str,
    pid: u64,
    files: &ProcFiles,
    ticks_per_second: u64,
) -> Result<ProcessStats> {
    let bad = |file: &'static str| {
        move |e: procfs::ProcError| Error::Proc {
            pid,
            file,
            message: e.to_string(),
        }
    };
    let stat = Stat::from_read(files.stat.as_slice()).map_err(bad("stat"))?;
    let status = Status::from_read(files.status.as_slice()).map_err(bad("status"))?;
    let ticks = ticks_per_second.max(1) as f64;
    Ok(ProcessStats {
        daemon: daemon.to_owned(),
        pid,
        cpu_seconds: (stat.utime.saturating_add(stat.stime)) as f64 / ticks,
        // VmRSS is in kB; kernel threads have none.
        resident_memory_bytes: status.vmrss.unwrap_or(0).saturating_mul(1024),
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
            match read(self.proc_root, pid).and_then(|f| {
                f.map(|f| parse(&d.name, pid, &f, self.ticks_per_second))
                    .transpose()
            }) {
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
    const STATUS: &str = "Name:\tinferd\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t1\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t\nVmPeak:\t 1048576 kB\nVmSize:\t 1048576 kB\nVmRSS:\t   20480 kB\nThreads:\t9\nSigQ:\t0/1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\nSpeculation_Store_Bypass:\tvulnerable\nCpus_allowed:\tff\nCpus_allowed_list:\t0-7\nMems_allowed:\t1\nMems_allowed_list:\t0\nvoluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t2\n";

    fn files(stat: &str, status: &str) -> ProcFiles {
        ProcFiles {
            stat: stat.as_bytes().to_vec(),
            status: status.as_bytes().to_vec(),
            open_fds: 12,
        }
    }

    #[test]
    fn parses_fixture_into_base_units() {
        let p = parse("d", 4242, &files(STAT, STATUS), 100).unwrap();
        assert_eq!(p.cpu_seconds, 18.0, "(1234 + 566) ticks at 100 Hz");
        assert_eq!(p.resident_memory_bytes, 20480 * 1024);
        assert_eq!(p.threads, 9);
        assert_eq!(p.open_fds, 12);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse("d", 1, &files("nonsense", STATUS), 100).is_err());
        assert!(parse("d", 1, &files("", ""), 0).is_err());
    }

    #[test]
    fn reads_our_own_process_and_none_for_a_missing_pid() {
        let me = u64::from(std::process::id());
        let f = read(Path::new("/proc"), me).unwrap().unwrap();
        let p = parse("me", me, &f, procfs::ticks_per_second()).unwrap();
        assert!(p.threads >= 1 && p.open_fds >= 3 && p.resident_memory_bytes > 0);
        assert!(read(Path::new("/proc"), u64::from(u32::MAX))
            .unwrap()
            .is_none());
    }
}
