//! Where each setting comes from: [`Settings::resolve`] layers them with figment — defaults,
//! then `RUST_LOG`, the config file, the library's own variables, the variables clap read, the
//! flags — remembering the [`Source`] of each value, and turns a bad value into one line that
//! names its key (and, from the config file, its line).

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use clap::parser::ValueSource;
use clap::ArgMatches;
use figment::error::Kind;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::Settings;
use crate::config::ConfigFile;
use crate::error::CliError;
use crate::parse::{self, Text};

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag (or the command after `--`).
    Flag,
    /// This environment variable.
    Env(String),
    /// The config file.
    File,
    /// forkline's default.
    Default,
}

/// As `check-config` comments each line: `flag`, `env VAR`, `config file`, `default`.
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File => f.write_str("config file"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// One layer of values for figment to merge: where they came from, and the values by key.
#[derive(Clone)]
struct Layer {
    source: Source,
    values: Dict,
}

impl Layer {
    /// A layer of one value.
    fn one(source: Source, key: &str, value: impl Into<Value>) -> Layer {
        Layer {
            source,
            values: Dict::from([(key.to_string(), value.into())]),
        }
    }
}

impl Provider for Layer {
    /// Named as `check-config` names it.
    fn metadata(&self) -> Metadata {
        Metadata::named(self.source.to_string())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// Node's name for the mode variable, honoured after `--mode` and `FORKLINE_MODE`.
const SCHED_POLICY: &str = forkline::protocol::wire::ENV_SCHED_POLICY;

impl Settings {
    /// Merges these flags, environment variables and defaults (`matches` tells which clap
    /// found where) with the config file (`config_override`, else `--config`) and `command`
    /// (the words after `--`, which replace the file's).
    pub fn resolve(
        mut self,
        matches: &ArgMatches,
        command: Vec<OsString>,
        config_override: Option<&Path>,
    ) -> Result<Settings, CliError> {
        if let Some(path) = config_override {
            self.config = Some(path.to_path_buf());
        }
        let file = self.config.as_deref().map(ConfigFile::load).transpose();
        self.command = command;
        self.layered(matches, file.map_err(CliError::Usage)?)
    }

    /// [`Settings::resolve`] with the config file read already.
    fn layered(self, matches: &ArgMatches, file: Option<ConfigFile>) -> Result<Settings, CliError> {
        let (defaults, variables, flags) = self.clap_layers(matches);
        let file_layer = file.as_ref().map(|file| Layer {
            source: Source::File,
            values: file.values(),
        });
        if let Some(layer) = &file_layer {
            // The whole file is checked, values that flags or variables override included:
            // here it goes on top.
            let on_top = std::iter::once(&defaults).chain(&variables);
            merge(on_top.chain([&flags, layer]), file.as_ref())?;
        }
        let layers: Vec<Layer> = std::iter::once(defaults)
            .chain(rust_log())
            .chain(file_layer)
            .chain(library_variables()?)
            .chain(variables)
            .chain([flags])
            .collect();
        let mut settings = merge(&layers, file.as_ref())?;
        for layer in layers {
            for key in layer.values.into_keys() {
                settings.sources.insert(key, layer.source.clone());
            }
        }
        if !self.command.is_empty() {
            // The words as given, not their UTF-8 rendering.
            settings.command = self.command;
        }
        settings.config = self.config;
        let name = settings.name.get_or_insert_with(|| {
            let program = settings.command.first().map(Path::new);
            program
                .and_then(Path::file_name)
                .map_or("worker".into(), |name| name.to_string_lossy().into_owned())
        });
        let control = crate::control::default_path(name);
        settings.control.get_or_insert(control);
        settings.cwd = settings
            .cwd
            .map(|dir| std::path::absolute(&dir).unwrap_or(dir));
        Ok(settings)
    }

    /// The values clap read, by where it found them: its defaults, one layer per environment
    /// variable, and the flags (with the command after `--`).
    fn clap_layers(&self, matches: &ArgMatches) -> (Layer, Vec<Layer>, Layer) {
        let values = self.values();
        let layer = |source| Layer {
            source,
            values: Dict::new(),
        };
        let (mut defaults, mut variables, mut flags) =
            (layer(Source::Default), Vec::new(), layer(Source::Flag));
        for arg in Self::flags().get_arguments() {
            let id = arg.get_id().as_str();
            let key = id.replace('_', "-");
            // `--config` and `--no-log-prefix` are no settings of their own.
            let Some(value) = values.get(&key) else {
                continue;
            };
            match (matches.value_source(id), arg.get_env()) {
                (Some(ValueSource::DefaultValue), _) => {
                    defaults.values.insert(key, value.clone());
                }
                (Some(ValueSource::EnvVariable), Some(var)) => {
                    let var = var.to_string_lossy().into_owned();
                    variables.push(Layer::one(Source::Env(var), &key, value.clone()));
                }
                (Some(ValueSource::CommandLine), _) => {
                    flags.values.insert(key, value.clone());
                }
                _ => {}
            }
        }
        if self.no_log_prefix {
            flags.values.insert("log-prefix".into(), false.into());
        }
        if let (false, Some(command)) = (self.command.is_empty(), values.get("command")) {
            flags.values.insert("command".into(), command.clone());
        }
        (defaults, variables, flags)
    }
}

/// Merges `layers`, each over the ones before, into settings.
fn merge<'a>(
    layers: impl IntoIterator<Item = &'a Layer>,
    file: Option<&ConfigFile>,
) -> Result<Settings, CliError> {
    let figment = layers.into_iter().fold(Figment::new(), |figment, layer| {
        figment.merge(layer.clone())
    });
    figment
        .extract()
        .map_err(|e| CliError::Usage(extract_error(e, file)))
}

/// `RUST_LOG`, the log level when neither `--log-level`, its variable nor the file sets one
/// (a filter tracing cannot read is ignored, as tracing ignores it).
fn rust_log() -> Option<Layer> {
    let filter = std::env::var("RUST_LOG").ok()?;
    parse::log_level(&filter).ok()?;
    Some(Layer::one(
        Source::Env("RUST_LOG".into()),
        "log-level",
        filter,
    ))
}

/// Node's `FORKLINE_SCHED_POLICY` (a mode, after `FORKLINE_MODE`) and the library's
/// `FORKLINE_ACCEPT_COALESCE_US` (microseconds), which clap does not read: above the file,
/// below the flags and the variables clap reads.
fn library_variables() -> Result<Vec<Layer>, CliError> {
    let mut layers = Vec::new();
    if let Ok(value) = std::env::var(SCHED_POLICY) {
        let mode =
            parse::mode(&value).map_err(|e| CliError::Usage(format!("{SCHED_POLICY}: {e}")))?;
        layers.push(Layer::one(
            Source::Env(SCHED_POLICY.into()),
            "mode",
            mode.text(),
        ));
    }
    let window = forkline::cli_support::accept_coalesce_from_env()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(window) = window {
        let var = Source::Env(forkline::cli_support::ENV_ACCEPT_COALESCE_US.into());
        let window = window.unwrap_or_default().text();
        layers.push(Layer::one(var, "accept-coalesce", window));
    }
    Ok(layers)
}

/// A figment error as one line; located in the config file when the bad value came from it
/// (the other layers hold values clap or forkline parsed already).
fn extract_error(e: figment::Error, file: Option<&ConfigFile>) -> String {
    let message = match &e.kind {
        Kind::UnknownField(key, valid) => match parse::closest(key, valid) {
            Some(known) => format!("unknown key `{key}` (did you mean `{known}`?)"),
            None => format!("unknown key `{key}` (valid keys: {})", valid.join(", ")),
        },
        Kind::UnknownVariant(value, valid) => format!(
            "unknown value `{value}` (expected {}{})",
            valid.join(" or "),
            parse::did_you_mean(value, valid)
        ),
        kind => kind.to_string(),
    };
    let from_file = e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name == Source::File.to_string());
    match file {
        Some(file) if from_file => file.error(&e.path, &message),
        _ => format!("key `{}`: {message}", e.path.join(".")),
    }
}

/// The settings of a command line and a config file, for the tests of each part.
#[cfg(test)]
pub(super) mod testing {
    use super::*;
    use clap::{Args, Command, FromArgMatches};

    /// The settings for `ARGS -- true` with the config file `text`, if any, as `run` resolves
    /// them.
    pub fn resolve_with(args: &[&str], file: Option<&str>) -> Result<Settings, String> {
        let command = Settings::augment_args(Command::new("run"));
        let matches = command
            .try_get_matches_from(std::iter::once("run").chain(args.iter().copied()))
            .unwrap();
        let mut parsed = Settings::from_arg_matches(&matches).unwrap();
        parsed.command = vec!["true".into()];
        let file = file.map(|text| {
            ConfigFile::parse(Path::new("/etc/forkline.toml"), text.into()).map_err(CliError::Usage)
        });
        file.transpose()
            .and_then(|file| parsed.layered(&matches, file))
            .map_err(|e| e.to_string())
    }

    /// The settings for `ARGS -- true`, without a config file.
    pub fn resolve(args: &[&str]) -> Settings {
        resolve_with(args, None).unwrap()
    }

    /// The library options for `settings`, with made-up paths.
    pub fn options(settings: &Settings) -> forkline::ClusterOptions {
        settings.cluster_options("/bin/forkline".into(), Path::new("/bin/true"), None, None)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;
    use std::path::PathBuf;
    use std::time::Duration;

    use bytesize::ByteSize;

    use super::testing::{options, resolve_with};
    use super::*;
    use crate::parse::{SocketMode, Workers};
    use crate::settings::LogFormat;

    #[test]
    fn the_file_fills_in_what_flags_leave() {
        let file = r#"
command = ["node", "server.js"]
workers = "max"
listen = "127.0.0.1:8080"
graceful-timeout = "10s"
min-uptime = 2
settle-time = "1.5s"
socket-mode = "0660"
socket-owner = "www-data:adm"
max-memory = "512M"
max-requests = 1000
user = 33
log-format = "json"
log-level = "forkline=debug"
readyz-all = true
cwd = "app"

[env]
NODE_ENV = "production"
THREADS = 4
"#;
        let settings =
            resolve_with(&["--graceful-timeout", "3s", "-e", "THREADS=8"], Some(file)).unwrap();
        assert_eq!(settings.workers, Workers::Max);
        assert_eq!(settings.listen.len(), 1);
        assert_eq!(settings.graceful_timeout, Duration::from_secs(3));
        assert_eq!(settings.source("graceful-timeout"), Source::Flag);
        assert_eq!(settings.min_uptime, Duration::from_secs(2));
        assert_eq!(settings.source("min-uptime"), Source::File);
        assert_eq!(settings.settle_time, Duration::from_millis(1500));
        assert_eq!(settings.socket_mode, Some(SocketMode(0o660)));
        assert_eq!(settings.max_memory, Some(ByteSize::mib(512)));
        assert_eq!(settings.max_requests, NonZeroU64::new(1000));
        assert_eq!(settings.user.as_deref(), Some("33"));
        assert_eq!(settings.log_format, LogFormat::Json);
        assert_eq!(settings.log_level, "forkline=debug");
        assert!(settings.readyz_all);
        let opts = options(&settings);
        assert!(opts.readyz_requires_all);
        assert_eq!(opts.log_format, forkline::LogFormat::Json);
        assert_eq!(settings.cwd, Some(PathBuf::from("/etc/app")));
        assert_eq!(settings.command, [OsString::from("true")]);
        assert_eq!(
            settings.env,
            [
                ("NODE_ENV".to_string(), "production".to_string()),
                ("THREADS".to_string(), "8".to_string())
            ]
        );
    }

    #[test]
    fn file_errors_name_the_key_and_line() {
        let error = |text: &str| resolve_with(&[], Some(text)).unwrap_err();
        let err = error("workers = 2\nbogus = 1\n");
        assert!(
            err.starts_with("/etc/forkline.toml:2: unknown key `bogus`"),
            "{err}"
        );
        let err = error("\ngracefull-timeout = 1\n");
        assert!(err.starts_with("/etc/forkline.toml:2: unknown key `gracefull-timeout` (did you mean `graceful-timeout`?)"), "{err}");
        let err = error("settle_time = \"2s\"\n");
        assert!(err.contains("did you mean `settle-time`?"), "{err}");
        let err = error("[env]\nA = \"x\"\nB = [1]\n");
        assert!(
            err.starts_with("/etc/forkline.toml:3: key `env.B`"),
            "{err}"
        );
        let err = error("workers = 2\n\nmode = \"fast\"\n");
        assert!(
            err.starts_with("/etc/forkline.toml:3: key `mode`:"),
            "{err}"
        );
        let err = error("workers = true\n");
        assert!(err.contains(":1: key `workers`"), "{err}");
        let err = error("workers = 0\n");
        assert!(err.contains("at least 1"), "{err}");
        let err = error("workers = 2\nsocket-mode = 660\n");
        assert!(
            err.contains(":2: key `socket-mode`") && err.contains("\"0660\""),
            "{err}"
        );
        let err = error("log-format = \"jsno\"\n");
        assert!(
            err.contains(":1: key `log-format`") && err.contains("did you mean `json`?"),
            "{err}"
        );
        let err = error("log-level = \"forkline=loud\"\n");
        assert!(err.contains(":1: key `log-level`"), "{err}");
        let err = error("listen = [\"web=127.0.0.1:80\", \"a:b=127.0.0.1:81\"]\n");
        assert!(
            err.contains(":1: key `listen`") && err.contains("a:b="),
            "{err}"
        );
        let err = error("command = []\n");
        assert!(
            err.contains(":1: key `command`: the command is empty"),
            "{err}"
        );
        let err = error("name = \"unterminated\nworkers = 1\n");
        assert!(err.starts_with("/etc/forkline.toml:1: key `name`"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
