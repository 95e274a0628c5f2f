//! The checks of settings that no single value can get wrong: a mode and a strategy that do not
//! go together, a setting that needs another; and which channel workers get (`node_ipc`).

use forkline::{Balance, Mode};

use super::Settings;
use crate::error::CliError;

impl Settings {
    /// Checks combinations that no single value can get wrong.
    pub fn check(&self) -> Result<(), CliError> {
        if self.mode == Mode::Proxy
            && !self
                .listen
                .iter()
                .any(|l| l.kind == forkline::SocketKind::Tcp)
        {
            return Err(CliError::Usage(
                "--mode proxy needs a TCP --listen address to relay from".into(),
            ));
        }
        if self.mode == Mode::Steer && self.balance == Balance::IpHash {
            return Err(CliError::Usage(
                "--mode steer balances round-robin or least-conn in the kernel; --balance \
                 ip-hash needs the primary to pick (--mode proxy, or round-robin for \
                 forkline-library workers)"
                    .into(),
            ));
        }
        forkline::cli_support::check_steered_workers(
            self.mode,
            self.balance,
            self.workers.resolve(),
        )
        .map_err(crate::error::from_library)?;
        forkline::cli_support::check_accept_coalesce(self.accept_coalesce)
            .map_err(crate::error::from_library)?;
        if !matches!(self.ipc.as_str(), "auto" | "none" | "node") {
            return Err(CliError::Usage(format!(
                "ipc: unknown protocol `{}` (expected auto, none or node)",
                self.ipc
            )));
        }
        if self.ipc == "node" && self.mode == Mode::Proxy {
            return Err(CliError::Usage(
                "--ipc node: proxy mode relays to each worker's own $PORT; Node's cluster \
                 channel works in round-robin, shared, reuseport and steer modes"
                    .into(),
            ));
        }
        if self.max_requests_jitter > 0 && self.max_requests.is_none() {
            return Err(CliError::Usage(
                "--max-requests-jitter needs --max-requests".into(),
            ));
        }
        Ok(())
    }
}

impl Settings {
    /// Whether workers get Node's cluster channel: `--ipc node`, or `auto` for a program named
    /// `node` (or `nodejs`) in any mode but proxy (where a worker serves its own `$PORT`).
    pub fn node_ipc(&self, program: &std::path::Path) -> bool {
        match self.ipc.as_str() {
            "node" => true,
            "auto" => {
                let name = program.file_name().and_then(|n| n.to_str()).unwrap_or("");
                matches!(name, "node" | "nodejs") && self.mode != Mode::Proxy
            }
            _ => false,
        }
    }
}
