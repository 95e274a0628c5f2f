//! The private directory of the workers' notify sockets (`NOTIFY_SOCKET`): created with an
//! unguessable name, one socket per worker, removed with the cluster, stale ones swept.

use std::io;
use std::path::PathBuf;

use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::UnixDatagram;

/// The directory holding a cluster's notify sockets, removed on drop.
#[derive(Debug)]
pub(crate) struct NotifyDir {
    path: PathBuf,
    /// The workers' user and group, when they run as another user.
    owner: Option<(Option<u32>, Option<u32>)>,
}

impl NotifyDir {
    /// Creates a private directory (0700) with an unguessable name under the runtime or temp
    /// dir (first removing those left by primaries that were killed before they could clean
    /// up). Workers that run as another user (`owner`) own it, so they can reach their socket.
    pub(crate) fn create(owner: Option<(Option<u32>, Option<u32>)>) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        remove_stale(&base);
        let path = base.join(format!(
            "forkline-{}-{}",
            std::process::id(),
            unguessable()?
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        // Marks the directory as ours, so stale-directory cleanup never touches anything else.
        std::fs::write(path.join(".forkline-notify"), b"")?;
        let owner = owner.filter(|(uid, gid)| uid.is_some() || gid.is_some());
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, uid, gid)?;
        }
        Ok(Self { path, owner })
    }

    /// Binds the notify socket of worker `seq`: 0600, the workers' user's, credentials passed.
    pub(crate) fn bind(&self, seq: u64) -> io::Result<(UnixDatagram, PathBuf)> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path.join(format!("notify-{seq}.sock"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        setsockopt(&socket, sockopt::PassCred, &true)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&path, uid, gid)?;
        }
        Ok((socket, path))
    }
}

/// 16 random hex digits, from the kernel.
fn unguessable() -> io::Result<String> {
    let mut bytes = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes `forkline-PID-*` directories whose primary is no longer running.
fn remove_stale(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("forkline-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive && entry.path().join(".forkline-notify").exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for NotifyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
