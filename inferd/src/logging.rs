//! Logs to stderr, in a form journald reads well.

use std::fmt;
use std::io::{self, Write};

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
            write_record(
                buf,
                journald,
                record.level(),
                record.target(),
                record.args(),
            )
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
    let _ = writeln!(
        std::io::stderr(),
        "{priority}inferd: {}",
        OneLine(&format_args!("{e}"))
    );
}

/// Writes one record as exactly one line. Control characters in the message are escaped (a
/// newline as `\n`): messages carry clients' text, and a line break in it would start a line of
/// the client's own, which journald reads as a new entry at whatever `<N>` priority it begins
/// with. Call sites quote clients' strings too; this holds even where one forgets.
fn write_record(
    out: &mut impl Write,
    journald: bool,
    level: log::Level,
    target: &str,
    message: &fmt::Arguments<'_>,
) -> io::Result<()> {
    if journald {
        write!(out, "<{}>{target}: ", syslog_priority(level))?;
    } else {
        write!(out, "{level:<5} {target}: ")?;
    }
    writeln!(out, "{}", OneLine(message))
}

/// A message displayed with its control characters escaped, without building it first.
struct OneLine<'a, 'b>(&'a fmt::Arguments<'b>);

impl fmt::Display for OneLine<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::write(&mut Escaping(f), *self.0)
    }
}

/// Passes text on, control characters escaped as Rust writes them (`\n`, `\u{1b}`).
struct Escaping<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(char::is_control) {
            let (plain, tail) = rest.split_at(at);
            self.0.write_str(plain)?;
            let mut chars = tail.chars();
            if let Some(c) = chars.next() {
                write!(self.0, "{}", c.escape_default())?;
            }
            rest = chars.as_str();
        }
        self.0.write_str(rest)
    }
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

    #[test]
    fn a_newline_from_a_client_cannot_start_a_new_log_line() {
        for journald in [true, false] {
            let mut out = Vec::new();
            let forged = "x\n<0>FAKE";
            write_record(
                &mut out,
                journald,
                log::Level::Debug,
                "inferd::server",
                &format_args!("robot type {forged} id {}", "7\r\n<1>\u{1b}[2J\u{85}"),
            )
            .unwrap();
            let line = String::from_utf8(out).unwrap();
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert!(line.ends_with('\n'), "{line:?}");
            assert!(!line.contains('\r') && !line.contains('\u{1b}'), "{line:?}");
            assert!(
                line.contains(r"x\n<0>FAKE id 7\r\n<1>\u{1b}[2J\u{85}"),
                "{line:?}"
            );
            let prefix = if journald {
                "<7>inferd::server: "
            } else {
                "DEBUG inferd::server: "
            };
            assert!(line.starts_with(prefix), "{line:?}");
        }
    }

    #[test]
    fn printable_text_is_logged_as_it_is_and_a_tab_escaped() {
        let mut out = Vec::new();
        let args = format_args!("robot type {:?} ünïcode\tok", "anymal_c");
        write_record(&mut out, true, log::Level::Info, "inferd", &args).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<6>inferd: robot type \"anymal_c\" ünïcode\\tok\n"
        );
    }
}
