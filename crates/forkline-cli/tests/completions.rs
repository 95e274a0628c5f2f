//! `forkline completions SHELL` prints a completion script and `forkline man [COMMAND]` a roff
//! man page, both on stdout and generated from the command line itself.

mod common;

use std::time::Duration;

use common::*;

/// Runs `forkline ARGS` to its end.
fn forkline_with(args: &[&str]) -> Finished {
    let mut command = forkline();
    command.args(args);
    run_to_end(command, Duration::from_secs(30))
}

#[test]
fn completion_scripts_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let finished = forkline_with(&["completions", shell]);
        assert_eq!(finished.code, Some(0), "{shell}: {}", finished.stderr);
        assert!(finished.stdout.contains("forkline"), "{shell}");
        assert!(finished.stdout.contains("graceful-timeout"), "{shell}");
    }
    let bash = forkline_with(&["completions", "bash"]).stdout;
    assert!(bash.contains("complete -F _forkline"), "{bash}");
    let unknown = forkline_with(&["completions", "tcsh"]);
    assert_eq!(unknown.code, Some(2));
    assert!(unknown.stderr.contains("tcsh"), "{}", unknown.stderr);
}

#[test]
fn man_pages() {
    let page = forkline_with(&["man"]);
    assert_eq!(page.code, Some(0), "{}", page.stderr);
    assert!(page.stdout.contains(".TH forkline 1"), "{}", page.stdout);
    assert!(page.stdout.contains("forkline\\-run(1)"), "{}", page.stdout);

    let run = forkline_with(&["man", "run"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout
            .contains(".TH forkline-run 1  \"forkline 0.1.0\""),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("\\-\\-log\\-level"), "{}", run.stdout);
    assert!(run.stdout.contains("FORKLINE_READYZ_ALL"), "{}", run.stdout);

    let unknown = forkline_with(&["man", "rn"]);
    assert_eq!(unknown.code, Some(2));
    assert!(
        unknown.stderr.contains("no command `rn`") && unknown.stderr.contains("run"),
        "{}",
        unknown.stderr
    );
}
