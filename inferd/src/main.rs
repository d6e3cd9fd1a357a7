//! `inferd`: parse the configuration, start logging, serve until drained.

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let config = inferd::Config::from_env()?;
    inferd::init_logging(&config.log_level)?;
    inferd::run(config).context("inferd failed")
}
