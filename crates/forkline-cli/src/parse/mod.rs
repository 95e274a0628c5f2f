//! Parsing of setting values as people write them — `30s`, `512M`, `127.0.0.1:8080`,
//! `unix:/run/app.sock`, `max` — and their canonical spelling back. The same functions serve
//! the flags (as clap value parsers), the environment variables and the config file (through
//! serde, see [`Text`]), so a value means the same thing wherever it is written, and every
//! error says what was expected.
//!
//! [`listen`] reads `--listen` addresses, [`values`] every other value, and [`serde_text`] is
//! the serde layer that reads them from the config file and spells them back.

mod listen;
mod serde_text;
mod values;

pub use listen::{listen_addr, ListenAddr};
pub use serde_text::{command, env_table, log_filter, opt_text, text, text_list, Text};
pub use values::{
    balance, closest, did_you_mean, duration, env_pair, format_duration, log_level, mode, ready,
    restart, size, socket_mode, socket_owner, workers, SocketMode, SocketOwner, Workers,
};
