//! The text layer between those values and serde: [`Text`] reads a value from the config file
//! or an environment variable with the same parser as its flag, and spells it back for
//! `check-config`; the `#[serde(with = ...)]` modules here put it to work on single values,
//! optional ones, lists, the `[env]` table and the worker command.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use bytesize::ByteSize;
use forkline::{Balance, Mode, Readiness, RestartPolicy};
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::listen::{listen_addr, ListenAddr};
use super::values::{
    balance, duration, env_key, format_duration, format_size, log_level, mode, ready, restart,
    size, socket_mode, socket_owner, workers, SocketMode, SocketOwner, Workers,
};

/// `4` or `"max"`, as the config file has it.
impl Serialize for Workers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Workers::Count(n) => serializer.serialize_u64(n as u64),
            Workers::Max => serializer.serialize_str("max"),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text::deserialize(deserializer)
    }
}

/// `#[serde(deserialize_with = "log_filter")]`: a `log-level`, checked as [`log_level`] does.
pub fn log_filter<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    log_level(&String::deserialize(deserializer)?).map_err(de::Error::custom)
}

/// A setting value as people write it: the same parser reads it from a flag, an environment
/// variable or the config file, and [`Text::text`] spells it back for `check-config`. Settings
/// of library and std types are (de)serialized through it with `#[serde(with = "text")]`.
pub trait Text: Sized {
    /// What a value looks like, for the "expected ..." of a type error.
    const EXPECTED: &'static str;
    /// Parses a value as written.
    fn parse(s: &str) -> Result<Self, String>;
    /// The canonical spelling, which [`Text::parse`] reads back.
    fn text(&self) -> String;
    /// Parses a number or boolean that the config file gives unquoted (`workers = 4`,
    /// `min-uptime = 2`): by default, as its text.
    fn parse_unquoted(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl Text for Duration {
    const EXPECTED: &'static str = "a duration like \"30s\"";
    fn parse(s: &str) -> Result<Self, String> {
        duration(s)
    }
    fn text(&self) -> String {
        format_duration(*self)
    }
}

impl Text for ByteSize {
    const EXPECTED: &'static str = "a size like \"512M\"";
    fn parse(s: &str) -> Result<Self, String> {
        size(s)
    }
    fn text(&self) -> String {
        format_size(*self)
    }
}

impl Text for Workers {
    const EXPECTED: &'static str = "a number or \"max\"";
    fn parse(s: &str) -> Result<Self, String> {
        workers(s)
    }
    fn text(&self) -> String {
        match self {
            Workers::Count(n) => n.to_string(),
            Workers::Max => "max".into(),
        }
    }
}

impl Text for ListenAddr {
    const EXPECTED: &'static str = "an address like \"127.0.0.1:8080\"";
    fn parse(s: &str) -> Result<Self, String> {
        listen_addr(s)
    }
    fn text(&self) -> String {
        self.to_string()
    }
}

impl Text for SocketMode {
    const EXPECTED: &'static str = "an octal mode in quotes, like \"0660\"";
    fn parse(s: &str) -> Result<Self, String> {
        socket_mode(s)
    }
    fn text(&self) -> String {
        format!("{:04o}", self.0)
    }
    /// TOML reads `660` as decimal and `0o660` as the number 432: a mode must be quoted.
    fn parse_unquoted(s: &str) -> Result<Self, String> {
        Err(format!(
            "expected an octal mode in quotes, like \"0660\", found {s}"
        ))
    }
}

impl Text for SocketOwner {
    const EXPECTED: &'static str = "an owner like \"www-data\" or \"www-data:adm\"";
    fn parse(s: &str) -> Result<Self, String> {
        socket_owner(s)
    }
    fn text(&self) -> String {
        self.to_string()
    }
}

impl Text for Mode {
    const EXPECTED: &'static str = "a mode: shared, reuseport, steer, proxy or round-robin";
    fn parse(s: &str) -> Result<Self, String> {
        mode(s)
    }
    fn text(&self) -> String {
        self.to_string()
    }
}

impl Text for Balance {
    const EXPECTED: &'static str = "a strategy: round-robin, least-conn or ip-hash";
    fn parse(s: &str) -> Result<Self, String> {
        balance(s)
    }
    fn text(&self) -> String {
        self.to_string()
    }
}

impl Text for RestartPolicy {
    const EXPECTED: &'static str = "a policy: always, on-failure or never";
    fn parse(s: &str) -> Result<Self, String> {
        restart(s)
    }
    fn text(&self) -> String {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
        .into()
    }
}

impl Text for Readiness {
    const EXPECTED: &'static str = "notify, listen, online, delay:DURATION or none";
    fn parse(s: &str) -> Result<Self, String> {
        ready(s)
    }
    fn text(&self) -> String {
        match self {
            Readiness::Notify => "notify".into(),
            Readiness::Listen => "listen".into(),
            Readiness::Online => "online".into(),
            Readiness::None => "none".into(),
            Readiness::Delay(d) => format!("delay:{}", format_duration(*d)),
            // A readiness this CLI does not know yet cannot have come from its own parser.
            other => format!("{other:?}"),
        }
    }
}

/// Names and ids (`user = 33`) and `[env]` values (`THREADS = 4`) are text, numbers included.
impl Text for String {
    const EXPECTED: &'static str = "a string";
    fn parse(s: &str) -> Result<Self, String> {
        Ok(s.to_string())
    }
    fn text(&self) -> String {
        self.clone()
    }
}

/// Reads a [`Text`] value from a string, or from a number or boolean through
/// [`Text::parse_unquoted`].
struct TextVisitor<T>(PhantomData<T>);

impl<T: Text> Visitor<'_> for TextVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        T::parse(s).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        T::parse_unquoted(&n.to_string()).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        T::parse_unquoted(&n.to_string()).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<T, E> {
        T::parse_unquoted(&n.to_string()).map_err(E::custom)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<T, E> {
        T::parse_unquoted(&b.to_string()).map_err(E::custom)
    }
}

/// `#[serde(with = "text")]`: a [`Text`] value as its text.
pub mod text {
    use super::*;

    /// Writes the value's text.
    pub fn serialize<T: Text, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.text())
    }

    /// Parses the value.
    pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_any(TextVisitor(PhantomData))
    }
}

/// `#[serde(default, with = "opt_text")]`: an optional [`Text`] value; `None` is left out.
pub mod opt_text {
    use super::*;

    /// Writes the value's text, or nothing.
    pub fn serialize<T: Text, S: Serializer>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_str(&value.text()),
            None => serializer.serialize_none(),
        }
    }

    /// Parses the value.
    pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        text::deserialize(deserializer).map(Some)
    }
}

/// A [`Text`] value where serde wants a `Deserialize` type: an array's items, a table's values.
pub struct Parsed<T>(pub T);

impl<'de, T: Text> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text::deserialize(deserializer).map(Parsed)
    }
}

/// `#[serde(with = "text_list")]`: a list of [`Text`] values, which the config file may also
/// give as one string (`listen = "127.0.0.1:8080"`).
pub mod text_list {
    use super::*;

    /// Writes an array of texts.
    pub fn serialize<T: Text, S: Serializer>(
        values: &[T],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(values.iter().map(Text::text))
    }

    /// Parses one value or an array of them.
    pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<T>, D::Error> {
        struct List<T>(PhantomData<T>);
        impl<'de, T: Text> Visitor<'de> for List<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}, or an array of them", T::EXPECTED)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<T>, E> {
                T::parse(s).map(|value| vec![value]).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Vec<T>, A::Error> {
                let mut values = Vec::new();
                while let Some(Parsed(value)) = items.next_element()? {
                    values.push(value);
                }
                Ok(values)
            }
        }
        deserializer.deserialize_any(List(PhantomData))
    }
}

/// `#[serde(with = "env_table")]`: `--env KEY=VALUE` pairs as the config file's `[env]`
/// table, whose values may be numbers or booleans too (`THREADS = 4`).
pub mod env_table {
    use super::*;

    /// Writes a table; of two pairs with the same key, the later wins.
    pub fn serialize<S: Serializer>(
        pairs: &[(String, String)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let table: BTreeMap<&String, &String> = pairs.iter().map(|(k, v)| (k, v)).collect();
        serializer.collect_map(table)
    }

    /// Reads a table of names and values.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(String, String)>, D::Error> {
        BTreeMap::<String, Parsed<String>>::deserialize(deserializer)?
            .into_iter()
            .map(|(key, Parsed(value))| {
                env_key(&key).map_err(de::Error::custom)?;
                Ok((key, value))
            })
            .collect()
    }
}

/// `#[serde(default, with = "command")]`: the worker command and its arguments, as an array
/// of strings; none is left out.
pub mod command {
    use super::*;

    /// Writes an array of strings (lossily, for words that are not UTF-8), or nothing.
    pub fn serialize<S: Serializer>(words: &[OsString], serializer: S) -> Result<S::Ok, S::Error> {
        if words.is_empty() {
            return serializer.serialize_none();
        }
        serializer.collect_seq(words.iter().map(|word| word.to_string_lossy()))
    }

    /// Reads a program and its arguments.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<OsString>, D::Error> {
        let words = Vec::<String>::deserialize(deserializer)?;
        if words.first().is_none_or(String::is_empty) {
            return Err(de::Error::custom(
                "the command is empty (expected an array like [\"node\", \"server.js\"])",
            ));
        }
        Ok(words.into_iter().map(OsString::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_read_back() {
        assert_eq!(SocketMode(0o660).text(), "0660");
        assert_eq!(SocketMode(0o7).text(), "0007");
        assert_eq!(ready("delay:500ms").unwrap().text(), "delay:500ms");
    }
}
