//! Which listeners this worker has open, per address, so that each `listen` call gets its own
//! listener in the primary, as Node keys its handles: the first open listener of an address is
//! index 0 (shared with the other workers' index 0), a second one while the first is open is
//! index 1, a listener of its own (which, on a fixed port, the kernel refuses: EADDRINUSE).
//! Once every listener of an address is dropped, the next one is index 0 again.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use crate::protocol::{Mode, SocketKind};

/// What a listen call is keyed by in the worker.
type Key = (SocketKind, String, Option<Mode>);

/// The open listen indexes per key.
#[derive(Debug, Default)]
pub(crate) struct ListenIndexes {
    open: Mutex<HashMap<Key, (u32, BTreeSet<u32>)>>,
}

/// One open index; dropping it (with its listener) frees it.
#[derive(Debug)]
pub(crate) struct ListenIndex {
    indexes: Arc<ListenIndexes>,
    key: Key,
    index: u32,
}

impl ListenIndex {
    /// The index to send in the `listen` request.
    pub(crate) fn get(&self) -> u32 {
        self.index
    }
}

impl ListenIndexes {
    /// The next index for a listener of `kind` at `address` with `mode`.
    pub(crate) fn take(
        self: &Arc<Self>,
        kind: SocketKind,
        address: &str,
        mode: Option<Mode>,
    ) -> ListenIndex {
        let key = (kind, address.to_string(), mode);
        let mut open = self.open.lock().unwrap();
        let (next, set) = open.entry(key.clone()).or_default();
        let index = *next;
        *next += 1;
        set.insert(index);
        ListenIndex {
            indexes: self.clone(),
            key,
            index,
        }
    }
}

impl Drop for ListenIndex {
    fn drop(&mut self) {
        let mut open = self.indexes.open.lock().unwrap();
        if let Some((_, set)) = open.get_mut(&self.key) {
            set.remove(&self.index);
            if set.is_empty() {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_listener_gets_its_own_index_and_closing_all_starts_over() {
        let indexes = Arc::new(ListenIndexes::default());
        let first = indexes.take(SocketKind::Tcp, "127.0.0.1:80", None);
        let second = indexes.take(SocketKind::Tcp, "127.0.0.1:80", None);
        let other = indexes.take(SocketKind::Tcp, "127.0.0.1:81", None);
        assert_eq!((first.get(), second.get(), other.get()), (0, 1, 0));
        drop(first);
        assert_eq!(indexes.take(SocketKind::Tcp, "127.0.0.1:80", None).get(), 2);
        drop(second);
        assert_eq!(indexes.take(SocketKind::Tcp, "127.0.0.1:80", None).get(), 0);
    }
}
