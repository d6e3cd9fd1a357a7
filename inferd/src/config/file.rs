//! The `--config FILE` TOML file: its keys are the flags' long names, and its values become
//! flags placed before the command line's, so clap parses, range-checks and reports them as it
//! does flags, and a flag given on the command line wins.

use std::ffi::OsString;
use std::path::Path;

use clap::{CommandFactory, FromArgMatches};

use super::Config;
use crate::{Error, Result};

/// Parses `args` (program name first) with the options of `file` merged in before them.
pub(super) fn parse_with_file(args: &[OsString], file: &Path) -> Result<Config> {
    let mut merged = args.first().cloned().into_iter().collect::<Vec<_>>();
    merged.extend(file_args(file, &args[1.min(args.len())..])?);
    merged.extend(args.iter().skip(1).cloned());
    let matches = Config::command()
        .try_get_matches_from(merged)
        .map_err(|e| {
            Error::Config(format!(
                "{} (with options from {})",
                one_line(&e),
                file.display()
            ))
        })?;
    Ok(Config::from_arg_matches(&matches)?)
}

/// clap's text for an error on one line, without its `error: ` and the usage and `--help`
/// hints that follow: a fatal error is reported as one line, and the hints would send the
/// reader to the flags when the value came from the file.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    text.lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `args` (the command line, without the program name) give the flag `--{flag}`.
fn gives(args: &[OsString], flag: &str) -> bool {
    let long = format!("--{flag}");
    args.iter().filter_map(|a| a.to_str()).any(|a| {
        a == long
            || a.strip_prefix(long.as_str())
                .is_some_and(|rest| rest.starts_with('='))
    })
}

/// Turns a TOML file into `--key value` arguments, refusing keys that are not flags. A
/// repeatable flag (`openpi-api-key`) takes an array of strings, one flag each, and a command
/// line that gives the flag replaces the file's list, as a later flag replaces an earlier one
/// for every other option.
fn file_args(path: &Path, command_line: &[OsString]) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| Error::Config(format!("{}: not valid TOML: {e}", path.display())))?;
    let command = Config::command();
    let mut args = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()));
        let Some(arg) = arg.filter(|_| flag != "config") else {
            return Err(Error::Config(format!(
                "{}: unknown option {key:?}",
                path.display()
            )));
        };
        if matches!(arg.get_action(), clap::ArgAction::Append) {
            let items = match &value {
                toml::Value::String(s) => vec![s.clone()],
                toml::Value::Array(items) => items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s.clone()),
                        _ => Err(Error::Config(format!(
                            "{}: {key} must be a string or an array of strings",
                            path.display()
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?,
                _ => {
                    return Err(Error::Config(format!(
                        "{}: {key} must be a string or an array of strings",
                        path.display()
                    )))
                }
            };
            if !gives(command_line, &flag) {
                args.extend(
                    items
                        .iter()
                        .map(|s| OsString::from(format!("--{flag}={s}"))),
                );
            }
            continue;
        }
        // No option is an on/off switch, so a TOML boolean is one of the unsupported types.
        let text = match &value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::Integer(i) => Ok(i.to_string()),
                    toml::Value::Float(f) => Ok(f.to_string()),
                    _ => Err(Error::Config(format!(
                        "{}: {key} must be an array of numbers",
                        path.display()
                    ))),
                })
                .collect::<Result<Vec<_>>>()?
                .join(","),
            _ => {
                return Err(Error::Config(format!(
                    "{}: {key} has an unsupported type",
                    path.display()
                )))
            }
        };
        args.push(OsString::from(format!("--{flag}={text}")));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::config::tests::parse;

    #[test]
    fn the_config_file_sets_options_and_flags_override_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("inferd.toml");
        std::fs::write(
            &file,
            "max-batch-size = 8\nqueue_capacity = 5\naction-low = [-1, -2.5]\n\
             action-high = [1, 2.5]\ndrain-timeout-seconds = 0.5\nsocket = \"/tmp/x.sock\"\n\
             action-max-step-delta = [0.25, 1]\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = parse(&["--config", f, "--max-batch-size", "4"]).unwrap();
        assert_eq!(c.max_batch_size, 4);
        assert_eq!(c.queue_capacity, 5);
        assert_eq!(c.socket_path(), PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.drain_timeout(), Duration::from_millis(500));
        assert_eq!(c.action_limits(2), Some((vec![-1.0, -2.5], vec![1.0, 2.5])));
        assert_eq!(c.max_step_delta(), Some(&[0.25, 1.0][..]));
        // One number for every dimension is a plain TOML number; a flag replaces the file's.
        let c = parse(&["--config", f, "--action-max-step-delta", "0.5"]).unwrap();
        assert_eq!(c.max_step_delta(), Some(&[0.5][..]));
        // A list flag on the command line replaces the file's list rather than extending it.
        let c = parse(&["--config", f, "--action-low=-3,-3", "--action-high", "3,3"]).unwrap();
        assert_eq!(c.action_limits(2), Some((vec![-3.0, -3.0], vec![3.0, 3.0])));
    }

    #[test]
    fn openpi_keys_are_an_array_of_strings_that_the_command_line_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("inferd.toml");
        std::fs::write(
            &file,
            "openpi-listen = 8000\nopenpi-api-key = [\"k1=franka\", \"k2\"]\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let robots = |c: &crate::Config| -> Vec<(String, String)> {
            c.openpi_api_key
                .iter()
                .map(|k| (k.key.clone(), k.robot_type().to_owned()))
                .collect()
        };
        let c = parse(&["--config", f]).unwrap();
        assert_eq!(c.openpi_listen, Some("127.0.0.1:8000".parse().unwrap()));
        assert_eq!(
            robots(&c),
            [
                ("k1".into(), "franka".into()),
                ("k2".into(), "openpi".into())
            ]
        );
        let c = parse(&["--config", f, "--openpi-api-key=k3=aloha"]).unwrap();
        assert_eq!(robots(&c), [("k3".into(), "aloha".into())]);
        // One key may be a plain string.
        std::fs::write(&file, "openpi-listen = 8000\nopenpi-api-key = \"k\"\n").unwrap();
        assert_eq!(robots(&parse(&["--config", f]).unwrap()).len(), 1);
        for (text, want) in [
            (
                "openpi-api-key = [1]\n",
                "must be a string or an array of strings",
            ),
            (
                "openpi-api-key = true\n",
                "must be a string or an array of strings",
            ),
            (
                "openpi-listen = 8000\nopenpi-api-key = [\"k=other\"]\n",
                "'--openpi-api-key <KEY[=ROBOT_TYPE]>'",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = parse(&["--config", f]).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn bad_config_files_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        for (text, want) in [
            ("max_batch = 3\n", "unknown option \"max_batch\""),
            ("config = \"x\"\n", "unknown option \"config\""),
            ("workers = \"many\"\n", "invalid value"),
            ("workers = [\n", "not valid TOML"),
            ("action-low = [\"a\"]\n", "array of numbers"),
            ("workers = true\n", "workers has an unsupported type"),
            (
                "workers = 0\n",
                "invalid value '0' for '--workers <N>': must be 1 to",
            ),
            (
                "action-max-step-delta = -0.5\n",
                "'--action-max-step-delta <X[,X...]>': must be a number >= 0",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = parse(&["--config", file.to_str().unwrap()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        // A fatal error is one line, so clap's usage hints are left out of it.
        std::fs::write(&file, "workers = 0\naction-low = [1]\n").unwrap();
        let err = parse(&["--config", file.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        let from = format!("(with options from {})", file.display());
        assert!(!err.contains('\n') && err.ends_with(&from), "{err}");
        let err = parse(&["--config", "/nonexistent.toml"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent.toml"), "{err}");
    }
}
