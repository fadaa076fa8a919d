//! The checks, each a rule of `participant.proto`, run in order against one agent:
//! later checks start from the state earlier ones left (a committed version, nothing
//! staged), so a failure is reported and the run goes on where it can.

use std::time::Duration;

use lockstep::pb::{self, participant_client::ParticipantClient};
use tonic::{Code, transport::Channel};

use super::{Checked, Request, decisions::Decisions};

/// A client of the agent under test.
pub type Agent = ParticipantClient<Channel>;

/// What the kit stamps on its orders as the coordinator's incarnation.
const INCARNATION: &str = "lockstep-conformance";

/// How long the restart check waits for the agent to ask and finish.
const RESTART_DEADLINE: Duration = Duration::from_secs(60);

type Outcome = std::result::Result<(), String>;

/// The checks, in the order they run (later ones build on the state earlier ones left).
const CHECKS: [&str; 14] = [
    "GetStatus answers for the project",
    "a Prepare whose from_version is not live is refused",
    "Prepare votes PREPARED, and a repeated Prepare gets the same vote",
    "GetStatus lists the prepared transaction as staged",
    "a second transaction is refused while one is prepared",
    "Preview answers without side effects",
    "a Commit or Abort naming another project is refused and changes nothing",
    "Commit makes the version live, and a repeated Commit answers the same",
    "a Commit for an unknown id is FAILED_PRECONDITION",
    "an Abort of a committed transaction is FAILED_PRECONDITION",
    "an Abort before its Prepare is remembered: the late Prepare is refused",
    "Abort undoes a prepared transaction, and a repeated Abort answers the same",
    "a restarted agent holding a PREPARED vote asks GetDecision and finishes",
    // Last: it leaves the agent one term above this run's (use a test instance).
    "an order from a lower coordinator term than one seen is FAILED_PRECONDITION",
];

/// Where a call went unanswered, in a reason, until [`Kit::checked`] puts the call
/// timeout in its place.
const NO_ANSWER: &str = "{call timeout}";

/// The kit's state across checks.
pub struct Kit {
    agent: Agent,
    project: String,
    environment: String,
    restart_cmd: Option<String>,
    decisions: Decisions,
    /// A prefix unique to this run, so ids never collide with an earlier run's.
    run: String,
    /// The coordinator term of this run's orders: milliseconds since the epoch, so it
    /// is above any an earlier run left the agent at (the term check leaves it one
    /// higher than its run's), and a second run against the same agent is not refused.
    term: u64,
    /// What the kit believes is live on the agent.
    live: String,
    /// How long a call may go unanswered (`--call-timeout`).
    call_timeout: Duration,
    /// Why the agent is taken to have stopped answering, once a call timed out.
    stalled: Option<String>,
}

impl Kit {
    /// A kit for `agent` as `request` describes it.
    pub fn new(agent: Agent, request: &Request, decisions: Decisions) -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let nanos = since.as_nanos();
        let term = u64::try_from(since.as_millis()).unwrap_or(u64::MAX / 2);
        decisions.set_term(term);
        Self {
            agent,
            project: request.project.clone(),
            environment: request.environment.clone(),
            restart_cmd: request.restart_cmd.clone(),
            decisions,
            run: format!("conf{nanos:x}"),
            term,
            live: String::new(),
            call_timeout: request.call_timeout,
            stalled: None,
        }
    }

    /// Runs every check, in order. Once a call goes unanswered within the call
    /// timeout, the agent is taken to have stopped answering: every later check fails
    /// as not run, so a hung agent costs one timeout, not one per check.
    pub async fn run_all(&mut self) -> Vec<Checked> {
        let mut out = Vec::new();
        for (i, name) in CHECKS.into_iter().enumerate() {
            let checked = match &self.stalled {
                Some(why) => Checked {
                    name,
                    outcome: "fail",
                    reason: format!("not run: the agent stopped answering ({why})"),
                },
                None => self.run_one(i, name).await,
            };
            out.push(checked);
        }
        out
    }

    /// Check `i` of [`CHECKS`].
    async fn run_one(&mut self, i: usize, name: &'static str) -> Checked {
        let outcome = match i {
            0 => self.status_answers().await,
            1 => self.wrong_from_version_refused().await,
            2 => self.prepared_twice().await,
            3 => self.staged_listed().await,
            4 => self.second_refused().await,
            5 => self.preview_changes_nothing().await,
            6 => self.other_project_refused().await,
            7 => self.committed_twice().await,
            8 => self.unknown_commit_refused().await,
            9 => self.committed_abort_refused().await,
            10 => self.abort_before_prepare().await,
            11 => self.aborted_twice().await,
            12 => return self.restart_check(name).await,
            _ => self.stale_term_refused().await,
        };
        self.checked(name, outcome)
    }

    /// The check's outcome; an unanswered call is named with the timeout, and stops
    /// the run.
    fn checked(&mut self, name: &'static str, outcome: Outcome) -> Checked {
        let timeout = humantime::format_duration(self.call_timeout).to_string();
        let outcome = outcome.map_err(|reason| (reason.contains(NO_ANSWER), reason));
        if let Err((true, reason)) = &outcome {
            self.stalled = Some(reason.replace(NO_ANSWER, &timeout));
        }
        checked(
            name,
            outcome.map_err(|(_, r)| r.replace(NO_ANSWER, &timeout)),
        )
    }

    fn tx(&self, n: u32) -> String {
        format!("{}-t{n}", self.run)
    }

    fn version(&self, n: u32) -> String {
        format!("{}-v{n}", self.run)
    }

    fn prepare(&self, n: u32, from: &str) -> pb::PrepareRequest {
        pb::PrepareRequest {
            transaction_id: self.tx(n),
            environment: self.environment.clone(),
            project: self.project.clone(),
            version: self.version(n),
            from_version: from.to_string(),
            coordinator_incarnation: INCARNATION.into(),
            coordinator_term: self.term,
            ..Default::default()
        }
    }

    /// Commit of transaction `n`, decided COMMIT first (as a coordinator decides before
    /// it sends).
    fn commit(&self, n: u32) -> pb::CommitRequest {
        self.decisions.decide(&self.tx(n), pb::Decision::Commit);
        self.commit_undecided(n)
    }

    /// Commit of transaction `n` with the kit's own decision left as it is: an agent
    /// that asks GetDecision meanwhile still hears UNDECIDED.
    fn commit_undecided(&self, n: u32) -> pb::CommitRequest {
        pb::CommitRequest {
            transaction_id: self.tx(n),
            project: self.project.clone(),
            coordinator_incarnation: INCARNATION.into(),
            coordinator_term: self.term,
        }
    }

    /// Abort of transaction `n`, decided ABORT first unless decided already.
    fn abort(&self, n: u32) -> pb::AbortRequest {
        self.decisions.decide(&self.tx(n), pb::Decision::Abort);
        self.abort_undecided(n)
    }

    /// Abort of transaction `n` as a deposed coordinator sends it: the kit's own
    /// decision stays as it is.
    fn abort_undecided(&self, n: u32) -> pb::AbortRequest {
        pb::AbortRequest {
            transaction_id: self.tx(n),
            project: self.project.clone(),
            reason: "lockstep conformance".into(),
            coordinator_incarnation: INCARNATION.into(),
            coordinator_term: self.term,
        }
    }

    async fn status(&mut self) -> std::result::Result<pb::ParticipantStatus, String> {
        let answer = self.agent.get_status(pb::GetStatusRequest {}).await;
        answer
            .map(|r| r.into_inner())
            .map_err(|s| said("GetStatus", &s))
    }

    async fn vote(&mut self, request: pb::PrepareRequest) -> std::result::Result<pb::Vote, String> {
        let tx = request.transaction_id.clone();
        // Known before the Prepare goes, as a coordinator knows its transaction: an
        // agent asking at once (`--ask-after 0`) hears UNDECIDED, not a presumed ABORT
        // (a race the kit lost now and then: the agent then aborted what it had just
        // prepared).
        self.decisions.prepared(&tx);
        let answer = self.agent.prepare(request).await;
        let vote = answer.map(|a| pb::Vote::try_from(a.into_inner().vote));
        let vote = vote.map(|v| v.unwrap_or(pb::Vote::Unspecified));
        // Anything but PREPARED is aborted, as a coordinator decides it (`decide` keeps
        // a decision already taken).
        if !matches!(vote, Ok(pb::Vote::Prepared)) {
            self.decisions.decide(&tx, pb::Decision::Abort);
        }
        vote.map_err(|s| said("Prepare", &s))
    }

    /// A Prepare that must be refused: a REFUSED vote, or any error status but
    /// UNAVAILABLE, which participant.proto counts as REFUSED.
    async fn refused(&mut self, request: pb::PrepareRequest) -> Outcome {
        let answer = self.agent.prepare(request).await;
        refusal(answer.map(|a| pb::Vote::try_from(a.into_inner().vote).unwrap_or_default()))
    }

    async fn status_answers(&mut self) -> Outcome {
        let status = self.status().await?;
        if !status.project.is_empty() && status.project != self.project {
            return Err(format!(
                "it serves project {:?}, not {:?}",
                status.project, self.project
            ));
        }
        self.live = status.live_version;
        Ok(())
    }

    async fn wrong_from_version_refused(&mut self) -> Outcome {
        let request = self.prepare(0, "lockstep-conformance-not-live");
        self.refused(request).await
    }

    async fn prepared_twice(&mut self) -> Outcome {
        let live = self.live.clone();
        for _ in 0..2 {
            expect_vote(self.vote(self.prepare(1, &live)).await?, pb::Vote::Prepared)?;
        }
        Ok(())
    }

    async fn staged_listed(&mut self) -> Outcome {
        let status = self.status().await?;
        let tx = self.tx(1);
        if !status.staged.iter().any(|s| s.transaction_id == tx) {
            return Err(format!("{tx} is not among the staged: {:?}", status.staged));
        }
        expect_live(&status, &self.live)
    }

    async fn second_refused(&mut self) -> Outcome {
        let live = self.live.clone();
        self.refused(self.prepare(2, &live)).await
    }

    async fn preview_changes_nothing(&mut self) -> Outcome {
        let before = self.status().await?;
        let live = self.live.clone();
        match self.agent.preview(self.prepare(3, &live)).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::Unimplemented => {}
            Err(s) => return Err(said("Preview", &s)),
        }
        let after = self.status().await?;
        if after != before {
            return Err(format!("GetStatus changed: {before:?} became {after:?}"));
        }
        Ok(())
    }

    /// Orders for transaction 1 (prepared) naming another project, as a coordinator
    /// sends them to an endpoint registered for the wrong project: acting on one would
    /// make this project live (or undone) in another's wave.
    async fn other_project_refused(&mut self) -> Outcome {
        let other = format!("{}-other", self.project);
        let mut commit = self.commit_undecided(1);
        commit.project.clone_from(&other);
        let committed = self.agent.commit(commit).await;
        let mut abort = self.abort_undecided(1);
        abort.project = other;
        let aborted = self.agent.abort(abort).await;
        for (call, answer) in [("Commit", committed.is_ok()), ("Abort", aborted.is_ok())] {
            if answer {
                return Err(format!("a {call} naming another project was answered OK"));
            }
        }
        self.staged_listed().await
    }

    async fn committed_twice(&mut self) -> Outcome {
        for _ in 0..2 {
            let answer = self.agent.commit(self.commit(1)).await;
            let live = answer
                .map_err(|s| said("Commit", &s))?
                .into_inner()
                .live_version;
            if live != self.version(1) {
                return Err(format!(
                    "Commit answered live {live:?}, not {:?}",
                    self.version(1)
                ));
            }
        }
        self.live = self.version(1);
        let status = self.status().await?;
        expect_nothing_staged(&status)?;
        expect_live(&status, &self.live)
    }

    async fn unknown_commit_refused(&mut self) -> Outcome {
        let answer = self.agent.commit(self.commit(99)).await;
        expect_code("Commit", answer.map(|_| ()), Code::FailedPrecondition)
    }

    async fn committed_abort_refused(&mut self) -> Outcome {
        let answer = self.agent.abort(self.abort(1)).await;
        expect_code("Abort", answer.map(|_| ()), Code::FailedPrecondition)
    }

    async fn abort_before_prepare(&mut self) -> Outcome {
        self.agent
            .abort(self.abort(4))
            .await
            .map_err(|s| said("Abort", &s))?;
        let live = self.live.clone();
        self.refused(self.prepare(4, &live)).await
    }

    async fn aborted_twice(&mut self) -> Outcome {
        let live = self.live.clone();
        expect_vote(self.vote(self.prepare(5, &live)).await?, pb::Vote::Prepared)?;
        for _ in 0..2 {
            let answer = self.agent.abort(self.abort(5)).await;
            let now = answer
                .map_err(|s| said("Abort", &s))?
                .into_inner()
                .live_version;
            if now != live {
                return Err(format!("Abort answered live {now:?}, not {live:?}"));
            }
        }
        let status = self.status().await?;
        expect_nothing_staged(&status)?;
        expect_live(&status, &live)
    }

    /// A Prepare at the run's term + 1, then an Abort at the run's term (a deposed
    /// leader's): refused, the transaction stays prepared; the Abort at the newer term
    /// goes through.
    async fn stale_term_refused(&mut self) -> Outcome {
        let live = self.live.clone();
        let mut prepare = self.prepare(7, &live);
        prepare.coordinator_term = self.term + 1;
        self.decisions.set_term(self.term + 1);
        expect_vote(self.vote(prepare).await?, pb::Vote::Prepared)?;
        let mut stale = self.abort_undecided(7);
        stale.coordinator_term = self.term;
        let answer = self.agent.abort(stale.clone()).await;
        expect_code(
            "Abort at the older term",
            answer.map(|_| ()),
            Code::FailedPrecondition,
        )?;
        let status = self.status().await?;
        if !status.staged.iter().any(|s| s.transaction_id == self.tx(7)) {
            return Err("the refused Abort undid the prepared transaction".into());
        }
        let mut current = self.abort(7);
        current.coordinator_term = self.term + 1;
        let answer = self.agent.abort(current).await;
        answer.map_err(|s| said("Abort at the newer term", &s))?;
        expect_nothing_staged(&self.status().await?)
    }

    async fn restart_check(&mut self, name: &'static str) -> Checked {
        let Some(cmd) = self.restart_cmd.clone() else {
            return Checked {
                name,
                outcome: "skip",
                reason: "no --restart-cmd".into(),
            };
        };
        let outcome = self.restarted(&cmd).await;
        self.checked(name, outcome)
    }

    /// Restarts the agent holding a PREPARED vote that stays UNDECIDED until the
    /// restarted agent asks about it: going live before that is deciding alone; then
    /// COMMIT, and the version must go live.
    async fn restarted(&mut self, cmd: &str) -> Outcome {
        let live = self.live.clone();
        expect_vote(self.vote(self.prepare(6, &live)).await?, pb::Vote::Prepared)?;
        let ran = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .await;
        match ran {
            Ok(s) if s.success() => {}
            other => return Err(format!("--restart-cmd {cmd:?} failed: {other:?}")),
        }
        let (tx, wanted) = (self.tx(6), self.version(6));
        let asked_before = self.decisions.asks(&tx);
        let deadline = tokio::time::Instant::now() + RESTART_DEADLINE;
        let mut decided = false;
        loop {
            let status = self.status().await.ok();
            let now_live = status.is_some_and(|s| s.live_version == wanted);
            match (now_live, decided) {
                (true, true) => {
                    self.live = wanted;
                    return Ok(());
                }
                (true, false) => {
                    return Err(format!(
                        "{wanted} went live after the restart before any decision: the agent decided alone (it must ask GetDecision and wait while UNDECIDED)"
                    ));
                }
                (false, false) if self.decisions.asks(&tx) > asked_before => {
                    self.decisions.decide(&tx, pb::Decision::Commit);
                    decided = true;
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                let stage = if decided {
                    "did not commit once told COMMIT"
                } else {
                    "never asked GetDecision at the kit's --serve address"
                };
                return Err(format!(
                    "{wanted} is not live {RESTART_DEADLINE:?} after the restart: the agent {stage}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn checked(name: &'static str, outcome: Outcome) -> Checked {
    match outcome {
        Ok(()) => Checked {
            name,
            outcome: "pass",
            reason: String::new(),
        },
        Err(reason) => Checked {
            name,
            outcome: "fail",
            reason,
        },
    }
}

fn said(call: &str, status: &tonic::Status) -> String {
    if timed_out(status) {
        return format!("{call}: no answer within {NO_ANSWER}");
    }
    format!("{call} answered {:?}: {}", status.code(), status.message())
}

/// Whether the call went unanswered within the channel's timeout (tonic's
/// `TimeoutExpired`, which it reports as CANCELLED).
fn timed_out(status: &tonic::Status) -> bool {
    status.code() == Code::Cancelled && status.message().contains("Timeout expired")
}

/// Whether a Prepare's answer refuses: REFUSED, or an error status other than
/// UNAVAILABLE (a status is a refusal by the contract; UNAVAILABLE means "not reached").
fn refusal(answer: std::result::Result<pb::Vote, tonic::Status>) -> Outcome {
    match answer {
        Ok(vote) => expect_vote(vote, pb::Vote::Refused),
        Err(s) if s.code() == Code::Unavailable || timed_out(&s) => Err(said("Prepare", &s)),
        Err(_) => Ok(()),
    }
}

fn expect_vote(got: pb::Vote, wanted: pb::Vote) -> Outcome {
    if got == wanted {
        return Ok(());
    }
    Err(format!("voted {got:?}, expected {wanted:?}"))
}

fn expect_code(
    call: &str,
    answer: std::result::Result<(), tonic::Status>,
    wanted: Code,
) -> Outcome {
    match answer {
        Err(s) if s.code() == wanted => Ok(()),
        Err(s) => Err(format!("{}, expected {wanted:?}", said(call, &s))),
        Ok(()) => Err(format!("{call} answered OK, expected {wanted:?}")),
    }
}

fn expect_live(status: &pb::ParticipantStatus, wanted: &str) -> Outcome {
    if status.live_version == wanted {
        return Ok(());
    }
    Err(format!(
        "GetStatus says {:?} is live, expected {wanted:?}",
        status.live_version
    ))
}

fn expect_nothing_staged(status: &pb::ParticipantStatus) -> Outcome {
    if status.staged.is_empty() {
        return Ok(());
    }
    Err(format!("still staged: {:?}", status.staged))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a review at stop 54: participant.proto says any status but OK or
    /// UNAVAILABLE is a REFUSED vote, and the kit failed an agent that refused so.
    #[test]
    fn an_error_status_but_unavailable_is_a_refusal() {
        assert!(refusal(Ok(pb::Vote::Refused)).is_ok());
        assert!(refusal(Err(tonic::Status::failed_precondition("busy"))).is_ok());
        assert!(refusal(Err(tonic::Status::invalid_argument("from_version"))).is_ok());
        assert!(refusal(Ok(pb::Vote::Prepared)).is_err());
        assert!(refusal(Err(tonic::Status::unavailable("down"))).is_err());
    }
}
