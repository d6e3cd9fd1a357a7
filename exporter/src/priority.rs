//! The exporter yields the CPU to inferd: the threads that serve scrapes run under `SCHED_IDLE`.
//!
//! A scrape is about a millisecond of CPU. Under the normal policy, a scrape that holds a core
//! keeps it for its slice while inferd's woken threads wait behind it, and that wait shows in
//! inferd's tail latency (`scripts/bench/scrape.sh` measures it). The scheduler counts a core
//! that runs only `SCHED_IDLE` threads as idle: a waking inferd thread takes it at once. The
//! exporter still gets every cycle nobody else wants, and a small share (a weight of 3 against
//! a normal thread's 1024) even on cores inferd keeps busy, so a scrape is delayed, never
//! starved.

use std::sync::atomic::{AtomicBool, Ordering};

/// Moves the calling thread to `SCHED_IDLE`. Needs no privilege (a thread may always lower its
/// own priority), but a seccomp filter may refuse it: the thread then keeps its policy, and
/// the first refusal is logged. Under systemd the unit sets `CPUSchedulingPolicy=idle` for the
/// whole process instead (its filter refuses `sched_setscheduler`), so a thread already there
/// has nothing to do.
pub(crate) fn yield_to_inferd() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if current_policy() == libc::SCHED_IDLE {
        return;
    }
    if let Err(e) = set_idle_policy() {
        if !WARNED.swap(true, Ordering::Relaxed) {
            log::warn!("cannot run the HTTP threads under SCHED_IDLE ({e}); scrapes compete with inferd for CPU");
        }
    }
}

fn set_idle_policy() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a live, initialised sched_param that the
    // call only reads.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's scheduling policy.
pub(crate) fn current_policy() -> i32 {
    // SAFETY: reads the calling thread's policy; no memory is passed.
    unsafe { libc::sched_getscheduler(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_only_the_calling_thread_to_sched_idle() {
        let before = current_policy();
        let policy = std::thread::spawn(|| {
            yield_to_inferd();
            current_policy()
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        assert_eq!(current_policy(), before, "the test thread keeps its policy");
    }
}
