//! systemd integration: socket activation (`LISTEN_FDS`) and readiness, stopping and watchdog
//! notifications (`NOTIFY_SOCKET`). Without systemd every function here does nothing.
//!
//! Socket activation is what lets robots' connections wait in the kernel's backlog while
//! inferd restarts: systemd owns the socket, so inferd must neither unlink nor chmod it.

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::{Error, Result};

/// The listening socket systemd passed in `LISTEN_FDS`, if it passed one.
///
/// More than one socket, or one that is not a listening Unix stream socket, is a
/// configuration error: serving on the wrong socket would be worse than not starting.
pub fn activated_listener() -> Result<Option<UnixListener>> {
    let mut fds = sd_notify::listen_fds()
        .map_err(|e| Error::Config(format!("socket activation (LISTEN_FDS): {e}")))?;
    let fd = match (fds.next(), fds.len()) {
        (None, _) => return Ok(None),
        (Some(fd), 0) => fd,
        (Some(_), more) => {
            return Err(Error::Config(format!(
                "socket activation passed {} sockets; inferd serves exactly one",
                more + 1
            )))
        }
    };
    check_unix_stream_listener(fd)?;
    // SAFETY: systemd passed this descriptor to this process (LISTEN_PID matched) for us to own,
    // nothing else in the process refers to it, and it was just checked to be a listening
    // AF_UNIX stream socket.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    listener
        .set_nonblocking(true)
        .map_err(Error::io("socket from systemd"))?;
    Ok(Some(listener))
}

fn check_unix_stream_listener(fd: RawFd) -> Result<()> {
    let int_opt = |level, name| -> Option<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, which is that large.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    let domain = int_opt(libc::SOL_SOCKET, libc::SO_DOMAIN);
    let kind = int_opt(libc::SOL_SOCKET, libc::SO_TYPE);
    let listening = int_opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN);
    if domain == Some(libc::AF_UNIX) && kind == Some(libc::SOCK_STREAM) && listening == Some(1) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "socket activation: fd {fd} is not a listening Unix stream socket \
             (domain {domain:?}, type {kind:?}, listening {listening:?}); check inferd.socket"
        )))
    }
}

/// Tells systemd the model is loaded and requests are being served (`Type=notify`).
pub fn notify_ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the daemon is draining.
pub fn notify_stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// How often to feed the watchdog: half its timeout, as sd_watchdog_enabled(3) advises;
/// `None` when the service has no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// Feeds the watchdog.
pub fn notify_watchdog() {
    send(&[NotifyState::Watchdog]);
}

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        log::warn!("could not notify systemd: {e}");
    }
}
