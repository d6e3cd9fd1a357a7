//! `inferd`: parse the configuration, start logging, serve until drained.

use std::process::ExitCode;

fn main() -> ExitCode {
    let outcome = inferd::Config::from_env().and_then(|config| {
        inferd::init_logging(&config.log_level)?;
        inferd::run(config)
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: each error's text already carries its cause.
            inferd::report_fatal(&e);
            ExitCode::from(e.exit_code())
        }
    }
}
