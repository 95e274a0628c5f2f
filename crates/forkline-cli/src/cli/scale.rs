//! `forkline scale NAME N|+K|-K`: sets the number of workers, or adds or removes some.

use clap::Args;
use forkline::control::{Request, Scaled};

use super::cluster_args::ClusterArgs;
use crate::control;
use crate::error::CliError;

/// Arguments of `forkline scale`.
#[derive(Debug, Args)]
#[command(
    allow_negative_numbers = true,
    override_usage = "forkline scale NAME N|+K|-K\n       forkline scale --control PATH N|+K|-K",
    mut_arg("name", ClusterArgs::name_always_given),
    mut_arg("count", ClusterArgs::word_after_name)
)]
pub struct ScaleArgs {
    /// Which cluster: NAME, or --control PATH (then NAME holds the count).
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// N workers, or K more (+K) or fewer (-K)
    #[arg(value_name = "N|+K|-K", allow_hyphen_values = true)]
    pub count: Option<String>,
}

/// Runs `scale`.
pub fn scale(args: ScaleArgs) -> Result<i32, CliError> {
    let (cluster, count) = args.cluster.with_word(
        args.count.as_deref(),
        "scale: give the cluster's name and N, +K or -K",
    )?;
    let request = parse_count(&count)?;
    let target = cluster.target()?;
    let scaled: Scaled = target.call(request, Some(control::QUICK))?;
    control::print(&format!(
        "{}: scaled to {} workers\n",
        target.name, scaled.workers
    ));
    Ok(0)
}

/// `N` (at least 1), `+K` or `-K` (K at least 1) as a scale request.
fn parse_count(count: &str) -> Result<Request, CliError> {
    let bad = |why: &str| CliError::Usage(format!("scale: invalid count `{count}`: {why}"));
    let number = |digits: &str| -> Result<u64, CliError> {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("expected N, +K or -K (whole numbers)"));
        }
        digits.parse().map_err(|_| bad("too large"))
    };
    let signed = (count.strip_prefix('+').map(|k| (k, 1)))
        .or_else(|| count.strip_prefix('-').map(|k| (k, -1)));
    if let Some((k, sign)) = signed {
        let k = number(k)?;
        if k == 0 {
            return Err(bad("K must be at least 1"));
        }
        let k = i64::try_from(k).map_err(|_| bad("too large"))?;
        return Ok(Request::Scale {
            workers: None,
            delta: Some(sign * k),
        });
    }
    match number(count)? {
        0 => Err(bad(
            "a cluster needs at least 1 worker (stop it with forkline stop)",
        )),
        n => {
            let n = usize::try_from(n).map_err(|_| bad("too large"))?;
            Ok(Request::Scale {
                workers: Some(n),
                delta: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let scale = |workers, delta| Request::Scale { workers, delta };
        assert_eq!(parse_count("3").unwrap(), scale(Some(3), None));
        assert_eq!(parse_count("+2").unwrap(), scale(None, Some(2)));
        assert_eq!(parse_count("-1").unwrap(), scale(None, Some(-1)));
        for bad in ["0", "abc", "+0", "-", "+", "1.5", "", "-0", " 2"] {
            let e = parse_count(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
    }
}
