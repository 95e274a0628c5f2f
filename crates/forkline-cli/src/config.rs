//! The config file (`forkline.toml`): the settings spelled like the long flags
//! (`graceful-timeout = "30s"`), plus `command` and an `[env]` table. It is read here as one
//! layer of settings; its values are checked when [`crate::settings`] merges the layers, and
//! every error about it names the file, the line and the key, on one line.

use std::path::{Path, PathBuf};

use figment::value::{Dict, Value};
use toml::de::{DeTable, DeValue};

/// A config file, read and parsed: its values, and its text to find a key's line in.
#[derive(Debug)]
pub struct ConfigFile {
    /// The file's path, as given.
    pub path: PathBuf,
    text: String,
    table: toml::Table,
}

impl ConfigFile {
    /// Reads and parses `path`. `cwd` and `control` are taken relative to the file's
    /// directory. The error is one line: `PATH:LINE: key `KEY`: what is wrong`.
    pub fn load(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        ConfigFile::parse(path, text)
    }

    /// Parses `text`, read from `path`, as [`ConfigFile::load`] does.
    pub fn parse(path: &Path, text: String) -> Result<ConfigFile, String> {
        let mut file = ConfigFile {
            path: path.to_path_buf(),
            table: toml::Table::new(),
            text,
        };
        file.table = toml::from_str(&file.text).map_err(|e| {
            let line = e.span().map_or(1, |span| file.line_of(span.start));
            let key = e.span().and_then(|span| file.key_on_line(span.start));
            file.located(line, key, &one_line(e.message()))
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        for key in ["cwd", "control"] {
            if let Some(toml::Value::String(relative)) = file.table.get_mut(key) {
                *relative = base.join(&*relative).to_string_lossy().into_owned();
            }
        }
        Ok(file)
    }

    /// The file's values, as figment merges them.
    pub fn values(&self) -> Dict {
        Value::serialize(&self.table)
            .ok()
            .and_then(Value::into_dict)
            .unwrap_or_default()
    }

    /// The error for the value at `keys` (a key, then keys of its table or indexes of its
    /// array): `PATH:LINE: key `KEY`: MESSAGE`, naming the key unless the message does.
    pub fn error(&self, keys: &[String], message: &str) -> String {
        let named: Vec<&str> = keys
            .iter()
            .map(String::as_str)
            .take_while(|key| key.parse::<usize>().is_err())
            .collect();
        let line = self.line_of_key(&named).unwrap_or(1);
        self.located(line, Some(&named.join(".")), message)
    }

    fn located(&self, line: usize, key: Option<&str>, message: &str) -> String {
        match key {
            Some(key) if !key.is_empty() && !message.contains(&format!("`{key}`")) => {
                format!("{}:{line}: key `{key}`: {message}", self.path.display())
            }
            _ => format!("{}:{line}: {message}", self.path.display()),
        }
    }

    /// The line `keys` (a key, then keys of its table) is set on.
    fn line_of_key(&self, keys: &[&str]) -> Option<usize> {
        let document = DeTable::parse(&self.text).ok()?;
        let mut table = document.get_ref();
        let mut line = None;
        for key in keys {
            let (name, value) = table.iter().find(|(name, _)| name.get_ref() == key)?;
            line = Some(self.line_of(name.span().start));
            match value.get_ref() {
                DeValue::Table(inner) => table = inner,
                _ => break,
            }
        }
        line
    }

    fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The key assigned on the line holding `offset` (`key = ...`), if that line is one: for
    /// syntax errors, which the parser reports by position only.
    fn key_on_line(&self, offset: usize) -> Option<&str> {
        let offset = offset.min(self.text.len());
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next().unwrap_or("");
        let (key, _) = line.split_once('=')?;
        let key = key.trim().trim_matches('"');
        let plain = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        plain.then_some(key)
    }
}

/// Joins a multi-line message into one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
