//! `--config-file`: `RELAY_X=value` lines, the format of contrib/deploy's environment file,
//! read at start and on every SIGHUP (a process cannot re-read its argv or environment, so
//! what is to be reloadable lives in a file).
//!
//! Precedence: command line > config file > environment > default. The file's settings are
//! handed to clap as the flags they name, so a value from the file is parsed and validated
//! exactly as the same value on the command line or in the environment.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches};

use super::Args;

/// The variable naming the file (a file cannot name another one).
const CONFIG_FILE_VAR: &str = "RELAY_CONFIG_FILE";

/// Parses `argv` (with the environment) into `Args`, then overlays the config file if one
/// is named. `Err` is a message for the operator (exit 2 at start, one log line on reload).
pub fn args_with_config_file(argv: &[OsString]) -> Result<Args, String> {
    let command = Args::command();
    let matches = command
        .clone()
        .try_get_matches_from(argv)
        .map_err(|e| e.to_string().trim_end().to_owned())?;
    let args = Args::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let Some(path) = args.config_file.clone() else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("--config-file {}: {e}", path.display()))?;
    let settings = parse(&text).map_err(|e| format!("{}:{e}", path.display()))?;
    overlay(command, &matches, argv, &settings, &path)
}

/// Runs clap again with the file's settings as flags: each flag named in the file loses its
/// environment variable (the file beats the environment) and is added to the command line
/// unless the command line already has it (the command line beats the file).
fn overlay(
    mut command: clap::Command,
    first: &clap::ArgMatches,
    argv: &[OsString],
    settings: &[(usize, String, String)],
    path: &Path,
) -> Result<Args, String> {
    let mut flags: Vec<OsString> = Vec::new();
    for (line, name, value) in settings {
        let at = || format!("{}:{line}: {name}", path.display());
        if name == CONFIG_FILE_VAR {
            // The environment file that systemd reads (EnvironmentFile=) naming itself, so
            // that the relay re-reads it on reload: what it names is this file already.
            if Path::new(value) == path {
                continue;
            }
            return Err(format!("{}: a config file cannot name another one", at()));
        }
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|env| env == name.as_str()))
        else {
            return Err(format!("{}: not a relay setting (see relay --help)", at()));
        };
        let (id, long) = (
            arg.get_id().clone(),
            arg.get_long().unwrap_or_default().to_owned(),
        );
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
        command = command.mut_arg(id.clone(), |a| a.env(Option::<&'static str>::None));
        if first.value_source(id.as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        if is_switch {
            match value.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => flags.push(format!("--{long}").into()),
                "" | "0" | "false" | "no" | "off" => {}
                _ => return Err(format!("{}: {value:?} is not true or false", at())),
            }
        } else {
            flags.push(format!("--{long}={value}").into());
        }
    }
    // The file's flags go right after the program name: before any subcommand.
    let mut full: Vec<OsString> = argv.iter().take(1).cloned().collect();
    full.extend(flags);
    full.extend(argv.iter().skip(1).cloned());
    let matches = command.try_get_matches_from(full).map_err(|e| {
        format!(
            "with --config-file {}: {}",
            path.display(),
            e.to_string().trim_end()
        )
    })?;
    Args::from_arg_matches(&matches).map_err(|e| e.to_string())
}

/// `NAME=value` lines as systemd's EnvironmentFile= reads them: blank lines and lines
/// starting with `#` or `;` are skipped, whitespace around the name and the value is
/// dropped, and a value may be quoted with `"` (where `\"` and `\\` are escapes) or `'`.
/// Returns (line number, name, value).
pub fn parse(text: &str) -> Result<Vec<(usize, String, String)>, String> {
    let mut settings = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        // The errors never quote the line: a secret file given as the config file (or a
        // secret pasted on a line of its own) would go to the log.
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("{number}: expected NAME=value"));
        };
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "{number}: expected NAME=value, NAME of letters, digits and '_'"
            ));
        }
        let value = unquote(value.trim()).map_err(|e| format!("{number}: {name}: {e}"))?;
        settings.push((number, name.to_owned(), value));
    }
    Ok(settings)
}

fn unquote(value: &str) -> Result<String, String> {
    let Some(quote) = value.chars().next().filter(|c| *c == '"' || *c == '\'') else {
        return Ok(value.to_owned());
    };
    let inner = &value[1..];
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quote == '"' => match chars.next() {
                Some(escaped @ ('"' | '\\')) => out.push(escaped),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => return Err("unterminated quote".into()),
            },
            c if c == quote => {
                return if chars.as_str().trim().is_empty() {
                    Ok(out)
                } else {
                    Err("text after the closing quote".into())
                };
            }
            c => out.push(c),
        }
    }
    Err("unterminated quote".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_blanks_and_quotes() {
        let text = "# comment\n\n; also\n A = 1 \nB=\"x \\\" y\"\nC='a\"b'\nD=\n";
        let parsed: Vec<(String, String)> = parse(text)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, n, v)| (n, v))
            .collect();
        let expected = [("A", "1"), ("B", "x \" y"), ("C", "a\"b"), ("D", "")];
        assert_eq!(
            parsed,
            expected.map(|(n, v)| (n.to_owned(), v.to_owned())).to_vec()
        );
    }

    #[test]
    fn refuses_malformed_lines() {
        // Never the line itself: it may be a secret.
        assert_eq!(
            parse("secret\n").err(),
            Some("1: expected NAME=value".into())
        );
        assert_eq!(
            parse("\n#\nsec+ret=\n").err(),
            Some("3: expected NAME=value, NAME of letters, digits and '_'".into())
        );
        assert!(parse("A=\"open\n").is_err());
        assert!(parse("A='x' y\n").is_err());
        assert!(parse("A B=1\n").is_err());
    }
}
