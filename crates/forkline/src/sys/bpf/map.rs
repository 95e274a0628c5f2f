//! BPF maps this process creates and reads or writes (`bpf(BPF_MAP_*)`), and the values of an
//! mmapable array map mapped into this process ([`MappedWords`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[cfg(test)]
use super::BPF_MAP_LOOKUP_ELEM;
use super::{
    bpf_call, bpf_obj_name, BPF_MAP_CREATE, BPF_MAP_DELETE_ELEM, BPF_MAP_UPDATE_ELEM,
    BPF_OBJ_NAME_LEN,
};

/// A BPF map this process created (`bpf(BPF_MAP_CREATE)`): its fd (CLOEXEC), and the key and
/// value sizes it was created with, which every access is checked against (the kernel copies
/// exactly that many bytes from, or to, the buffers it is given).
#[derive(Debug)]
pub(crate) struct BpfMap {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
}

/// The `BPF_MAP_CREATE` part of `union bpf_attr`, up to `map_name`.
#[repr(C)]
struct BpfMapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; BPF_OBJ_NAME_LEN],
}

/// The `BPF_MAP_*_ELEM` part of `union bpf_attr`.
#[repr(C)]
struct BpfMapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `BPF_ANY`: create an element or update an existing one.
pub(crate) const BPF_ANY: u64 = 0;

/// `BPF_F_MMAPABLE`: an `ARRAY` map whose values this process can map into its memory
/// ([`BpfMap::map_words`]; Linux 5.5+).
pub(crate) const BPF_F_MMAPABLE: u32 = 1 << 10;

impl BpfMap {
    /// Creates a map (`bpf(BPF_MAP_CREATE)`) of `map_type` with `max_entries` entries of
    /// `key_size`-byte keys and `value_size`-byte values, named `name` (up to 15 bytes).
    pub(crate) fn create(
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        name: &str,
    ) -> io::Result<BpfMap> {
        Self::create_with_flags(map_type, key_size, value_size, max_entries, 0, name)
    }

    /// [`create`](Self::create) with `map_flags` (such as [`BPF_F_MMAPABLE`]).
    pub(crate) fn create_with_flags(
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        name: &str,
    ) -> io::Result<BpfMap> {
        let attr = BpfMapCreateAttr {
            map_type,
            key_size,
            value_size,
            max_entries,
            map_flags,
            inner_map_fd: 0,
            numa_node: 0,
            map_name: bpf_obj_name(name),
        };
        // SAFETY: `attr` is a fully initialised BPF_MAP_CREATE attribute with no pointers.
        let fd = unsafe { bpf_call(BPF_MAP_CREATE, &attr)? };
        // SAFETY: a non-negative return of BPF_MAP_CREATE is a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(BpfMap {
            fd,
            key_size: key_size as usize,
            value_size: value_size as usize,
        })
    }

    /// The map's fd (for `BpfInsn::load_map_fd`).
    pub(crate) fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Checks that `key` and `value` are exactly the map's sizes.
    fn check(&self, key: &[u8], value: Option<usize>) -> io::Result<()> {
        if key.len() != self.key_size || value.is_some_and(|len| len != self.value_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "BPF map access of {} / {:?} bytes, the map has {} / {}",
                    key.len(),
                    value,
                    self.key_size,
                    self.value_size
                ),
            ));
        }
        Ok(())
    }

    /// Sets `key` to `value` (`bpf(BPF_MAP_UPDATE_ELEM)`, with `flags` such as [`BPF_ANY`]).
    /// For a `REUSEPORT_SOCKARRAY` the value is a socket's fd (a `u32` or `u64`), and the kernel
    /// stores the socket itself.
    pub(crate) fn update(&self, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
        self.check(key, Some(value.len()))?;
        let attr = BpfMapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags,
        };
        // SAFETY: the key and value buffers are exactly the map's key and value sizes (checked
        // above) and outlive the call; the kernel only reads them.
        unsafe { bpf_call(BPF_MAP_UPDATE_ELEM, &attr)? };
        Ok(())
    }

    /// Removes `key` (`bpf(BPF_MAP_DELETE_ELEM)`).
    pub(crate) fn delete(&self, key: &[u8]) -> io::Result<()> {
        self.check(key, None)?;
        let attr = BpfMapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: 0,
            flags: 0,
        };
        // SAFETY: the key buffer is exactly the map's key size (checked above) and outlives
        // the call; the kernel only reads it.
        unsafe { bpf_call(BPF_MAP_DELETE_ELEM, &attr)? };
        Ok(())
    }

    /// The value at `key` (`bpf(BPF_MAP_LOOKUP_ELEM)`), as many bytes as the map's values.
    /// Not every map type can be read from user space (a `REUSEPORT_SOCKARRAY` gives socket
    /// cookies, and only with a `u64` value size).
    #[cfg(test)]
    pub(crate) fn lookup(&self, key: &[u8]) -> io::Result<Vec<u8>> {
        self.check(key, None)?;
        let mut value = vec![0u8; self.value_size];
        let attr = BpfMapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the key buffer is exactly the map's key size, the value buffer exactly its
        // value size (the most the kernel writes), and both outlive the call.
        unsafe { bpf_call(BPF_MAP_LOOKUP_ELEM, &attr)? };
        Ok(value)
    }
}

impl BpfMap {
    /// Maps the values of an `ARRAY` map created with [`BPF_F_MMAPABLE`] into this process
    /// (`mmap`, shared): the first `words` 32-bit words of its values, which the program and
    /// this process then read and write in place, with no syscall per access.
    pub(crate) fn map_words(&self, words: usize) -> io::Result<MappedWords> {
        let len = words
            .checked_mul(4)
            .filter(|&len| len > 0 && len <= self.value_size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "cannot map {words} words of a {}-byte value",
                        self.value_size
                    ),
                )
            })?;
        // SAFETY: a fresh shared mapping chosen by the kernel (no fixed address, so nothing
        // of this process is replaced) of the map's fd at offset 0; the kernel checks that the
        // map is mmapable and at least `len` long. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedWords {
            ptr: ptr.cast(),
            words,
        })
    }
}

/// 32-bit words of a BPF map's values mapped into this process ([`BpfMap::map_words`]),
/// accessed atomically: a BPF program updates the same memory with atomic instructions.
#[derive(Debug)]
pub(crate) struct MappedWords {
    ptr: *mut std::sync::atomic::AtomicU32,
    words: usize,
}

// SAFETY: the mapping is plain shared memory, reached only through atomics, and lives until
// `drop`, which needs `&mut self`: any thread may use or drop it.
unsafe impl Send for MappedWords {}
// SAFETY: as above; every access is an atomic operation.
unsafe impl Sync for MappedWords {}

impl MappedWords {
    /// The word at `index`; `None` past the end.
    fn word(&self, index: usize) -> Option<&std::sync::atomic::AtomicU32> {
        // SAFETY: `index < words`, so the pointer stays inside the mapping, which is
        // 4-byte aligned (page aligned) and lives as long as `self`.
        (index < self.words).then(|| unsafe { &*self.ptr.add(index) })
    }

    /// Sets the word at `index` (ignored past the end).
    pub(crate) fn store(&self, index: usize, value: u32) {
        if let Some(word) = self.word(index) {
            word.store(value, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Subtracts `value` from the word at `index` (ignored past the end), atomically with the
    /// program's own additions.
    pub(crate) fn subtract(&self, index: usize, value: u32) {
        if let Some(word) = self.word(index) {
            word.fetch_sub(value, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The word at `index` (0 past the end).
    pub(crate) fn load(&self, index: usize) -> u32 {
        self.word(index)
            .map_or(0, |word| word.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Drop for MappedWords {
    fn drop(&mut self) {
        // SAFETY: the mapping `map_words` made, of exactly this length, unmapped once; no
        // reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.words * 4) };
    }
}
