//! The worker protocol: wire messages ([`wire`]) and the SEQPACKET channel that carries them
//! ([`channel`]). See `docs/PROTOCOL.md`.

pub mod channel;
pub mod wire;

pub use wire::{FromWorker, Mode, SocketKind, ToWorker, MAX_PACKET, PROTOCOL_VERSION};
