//! Which running cluster a control command talks to: its name, or `--control PATH`. One set of
//! arguments, [`ClusterArgs`], that `status`, `reload`, `scale`, `restart`, `stop`, `logs`,
//! `upgrade` and `top` all flatten, and the one place that turns it into a [`Target`].

use std::path::PathBuf;

use clap::builder::Resettable;
use clap::{Arg, Args};

use crate::control::Target;
use crate::error::CliError;

/// The cluster a control command talks to: `NAME`, or `--control PATH` (then a NAME given too
/// is only what messages call it).
///
/// A command flattens it after its own arguments, so that `--control` is listed last.
/// `restart` and `scale` take a word after the cluster (`NAME WORD`, or `--control PATH WORD`,
/// where clap puts the word in NAME): they make NAME always required and the word second with
/// [`ClusterArgs::name_always_given`] and [`ClusterArgs::word_after_name`], and split the two
/// with [`ClusterArgs::with_word`].
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// The cluster's name (see forkline ls)
    #[arg(value_name = "NAME", required_unless_present = "control")]
    pub name: Option<String>,

    /// Talk to the control socket at PATH instead of finding the cluster by name
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

impl ClusterArgs {
    /// The cluster these arguments name (a usage error when they name none).
    pub fn target(&self) -> Result<Target, CliError> {
        Target::new(self.name.as_deref(), self.control.as_deref())
    }

    /// For `mut_arg("name", ClusterArgs::name_always_given)` in a command that takes a word
    /// after the cluster: NAME must be given even with `--control`, where it holds the word.
    /// `mut_arg` moves the argument after the others: NAME is put back first, and the word
    /// after it with [`ClusterArgs::word_after_name`].
    pub fn name_always_given(name: Arg) -> Arg {
        name.index(1)
            .required(true)
            .required_unless_present(Resettable::Reset)
    }

    /// For `mut_arg(WORD, ClusterArgs::word_after_name)` after
    /// [`ClusterArgs::name_always_given`]: the word is the second one, and is listed after NAME
    /// (in help and completions).
    pub fn word_after_name(word: Arg) -> Arg {
        word.index(2)
    }

    /// Splits `NAME WORD` or `--control PATH WORD` (clap gave WORD as NAME, and `word` is
    /// `None`) into the cluster and the word; a missing word is the usage error `missing`.
    pub fn with_word(
        &self,
        word: Option<&str>,
        missing: &str,
    ) -> Result<(ClusterArgs, String), CliError> {
        match (word, &self.control, &self.name) {
            (Some(word), _, _) => Ok((self.clone(), word.to_string())),
            (None, Some(control), Some(word)) => Ok((
                ClusterArgs {
                    name: None,
                    control: Some(control.clone()),
                },
                word.clone(),
            )),
            _ => Err(CliError::Usage(missing.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    /// The cluster and the word of `forkline scale ARGS...`, or the error's exit code.
    fn scale(args: &[&str]) -> Result<(Option<String>, Option<String>, String), i32> {
        let cli = Cli::try_parse_from(["forkline", "scale"].iter().chain(args))
            .map_err(|e| e.exit_code())?;
        let Command::Scale(scale) = cli.command else {
            panic!("not scale");
        };
        let (cluster, word) = scale
            .cluster
            .with_word(scale.count.as_deref(), "no count")
            .map_err(|e| e.exit_code())?;
        let control = cluster.control.map(|p| p.display().to_string());
        Ok((cluster.name, control, word))
    }

    #[test]
    fn a_word_after_the_cluster() {
        assert_eq!(
            scale(&["web", "+1"]),
            Ok((Some("web".into()), None, "+1".into()))
        );
        assert_eq!(
            scale(&["--control", "/run/a.sock", "-1"]),
            Ok((None, Some("/run/a.sock".into()), "-1".into()))
        );
        assert_eq!(
            scale(&["web", "3", "--control", "/run/a.sock"]),
            Ok((Some("web".into()), Some("/run/a.sock".into()), "3".into()))
        );
        assert_eq!(scale(&["web"]), Err(2));
        assert_eq!(scale(&[]), Err(2));
        assert_eq!(scale(&["--control", "/run/a.sock"]), Err(2));
    }

    #[test]
    fn a_cluster_by_name_or_socket() {
        let target = |args: &[&str]| {
            let cli = Cli::try_parse_from(["forkline", "status"].iter().chain(args)).ok()?;
            let Command::Status(status) = cli.command else {
                return None;
            };
            let target = status.cluster.target().ok()?;
            Some((target.name, target.path.display().to_string()))
        };
        assert_eq!(
            target(&["--control", "/run/a.sock"]),
            Some(("/run/a.sock".into(), "/run/a.sock".into()))
        );
        assert!(target(&["web"])
            .is_some_and(|(name, path)| name == "web" && path.ends_with("/web.sock")));
        assert_eq!(target(&[]), None);
        assert_eq!(target(&[""]), None);
    }
}
