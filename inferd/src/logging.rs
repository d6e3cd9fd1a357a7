//! Logs to stderr, in a form journald reads well.

use std::io::Write;

use crate::{Error, Result};

/// The syslog priority journald reads from a `<N>` line prefix.
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Starts logging at `filter` (env_logger syntax, e.g. `info` or `inferd=debug`).
///
/// Under systemd (`JOURNAL_STREAM` set) each line starts with its syslog priority, `<6>`,
/// which journald turns into the entry's priority and strips; elsewhere it starts with the
/// level name. journald stamps the time itself, so lines carry none.
pub fn init_logging(filter: &str) -> Result<()> {
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    env_logger::Builder::new()
        .parse_filters(filter)
        .target(env_logger::Target::Stderr)
        .format(move |buf, record| {
            if journald {
                let priority = syslog_priority(record.level());
                writeln!(buf, "<{priority}>{}: {}", record.target(), record.args())
            } else {
                writeln!(
                    buf,
                    "{:<5} {}: {}",
                    record.level(),
                    record.target(),
                    record.args()
                )
            }
        })
        .try_init()
        .map_err(|e| Error::Config(format!("logging: {e}")))
}

/// Prints the error that stops inferd: one line on stderr, `inferd: <error>`, at error
/// priority under journald. Not through `log`, which may not be started yet (or filtered off).
pub fn report_fatal(e: &Error) {
    let priority = if std::env::var_os("JOURNAL_STREAM").is_some() {
        "<3>"
    } else {
        ""
    };
    let line = e.to_string().replace('\n', " ");
    let _ = writeln!(std::io::stderr(), "{priority}inferd: {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(log::Level::Error), 3);
        assert_eq!(syslog_priority(log::Level::Warn), 4);
        assert_eq!(syslog_priority(log::Level::Info), 6);
        assert_eq!(syslog_priority(log::Level::Trace), 7);
    }
}
