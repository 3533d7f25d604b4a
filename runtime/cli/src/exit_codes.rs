//! The exit codes of `lifeboat` (defined with their mapping from engine errors in
//! `lifeboat_orchestrator::exit_codes`, which the daemon's API shares) and the paragraph
//! `--help` prints.

pub use lifeboat_orchestrator::exit_codes::*;

/// The `Exit codes:` paragraph of `lifeboat --help`, from [`TABLE`].
pub fn after_help() -> String {
    let codes: Vec<String> = TABLE.iter().map(|(c, m)| format!("{c} {m}")).collect();
    format!("Exit codes: {}.", codes.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `commit` of a failover that has not finished said "finish it first" and
    /// exited 6 (fenced), because the code was chosen by searching the message for "first".
    #[test]
    fn a_run_in_the_wrong_state_is_a_failure_not_a_fence() {
        use lifeboat_orchestrator::error::Error;
        use lifeboat_orchestrator::journal::RunStatus;
        let e = Error::InvalidState {
            run: "p-1".into(),
            status: RunStatus::Failed,
            why: "finish it first (`lifeboat retry p-1`) or clean it up".into(),
        };
        assert_eq!(of_run(&e), FAILED);
        let fenced = Error::replication(
            "group `g`",
            lifeboat_replication::Error::fenced("site east is fenced"),
        );
        assert_eq!(of_run(&fenced), FENCED);
    }

    #[test]
    fn help_lists_every_code() {
        let help = after_help();
        for (code, meaning) in TABLE {
            assert!(help.contains(&format!("{code} {meaning}")), "{help}");
        }
    }
}
