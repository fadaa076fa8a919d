//! VERIFYING: between "every participant voted PREPARED" and COMMIT, the environment's
//! verify steps run against the staged set, one at a time in the pipeline file's order
//! (an approval after the performance test is given knowing its outcome). Each step is
//! triggered with its own deadline; it passes (http status as expected, a runner's
//! `passed`, a person's approval) or it fails (wrong status, `failed`, a rejection, the
//! deadline), and the first failure decides ABORT as a refused vote does. When the last
//! step passes, COMMIT is decided as usual.
//!
//! The transaction is undecided throughout: participants stay staged and hear
//! "undecided" when they ask. A restart resumes the recorded steps (the record is
//! written at every step change): steps that passed stay passed, and the step that
//! was running is triggered again with its whole deadline (no wall clock is trusted
//! across a restart). Nothing here sends anything to a participant.

use std::time::Duration;

use lockstep::pb;

use super::{Effect, Show, Transaction, events};
use crate::{
    access::roles::person,
    model::{Participant, StepKind, StepRun, StepStatus, TxState},
};

/// What a test runner says about an external step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It began.
    Started,
    /// The staged set passed.
    Passed,
    /// The staged set failed.
    Failed,
}

/// A report, approval or rejection, with who made it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Where the results are.
    pub link: String,
}

impl Transaction {
    /// Every participant prepared and the environment has verify steps: VERIFYING,
    /// written before the first step is triggered.
    pub(super) fn start_verifying(&mut self) -> Vec<Effect> {
        self.record.state = TxState::Verifying;
        let steps = events::plural(self.record.steps.len(), "verify step");
        self.record.reason = format!("every participant prepared; running {steps}");
        let started = events::verify_started(&self.record);
        let mut effects = vec![Effect::StopPreparing];
        effects.extend(with_first(self.trigger_next_step(), started));
        effects
    }

    /// Triggers the first step that has not passed; COMMIT when every one has. Its
    /// first effect is the write of that step (or of the decision), which the caller
    /// may put its own event in front of: a step's outcome and what follows from it
    /// are one write.
    fn trigger_next_step(&mut self) -> Vec<Effect> {
        let Some(index) = self.record.steps.iter().position(|s| !passed(s)) else {
            let steps = events::plural(self.record.steps.len(), "verify step");
            let reason = format!("every participant prepared and {steps} passed");
            return self.decide_commit(reason);
        };
        let step = &mut self.record.steps[index];
        step.status = StepStatus::Triggered;
        let name = step.step.name.clone();
        self.record.reason = format!("verifying: step {name} triggered");
        let triggered = events::step_triggered(&self.record, index);
        let mut effects = vec![self.write(vec![triggered], Show::WhenDurable)];
        effects.extend(self.run_step(index));
        effects
    }

    /// The step's deadline, and for an http step the request.
    fn run_step(&mut self, index: usize) -> Vec<Effect> {
        let step = &self.record.steps[index].step;
        let mut effects = vec![Effect::StartDeadline(Duration::from_millis(
            step.deadline_ms,
        ))];
        if let StepKind::Http { url, .. } = &step.kind {
            let (name, url) = (step.name.clone(), url.clone());
            match render(&url, &self.record.participants) {
                Ok(url) => effects.push(Effect::Probe { step: name, url }),
                Err(reason) => return self.step_failed(index, reason, String::new()),
            }
        }
        effects
    }

    /// The step running now, if the transaction is verifying.
    fn running(&self) -> Option<usize> {
        if self.record.state != TxState::Verifying {
            return None;
        }
        self.record.steps.iter().position(|s| s.status.is_running())
    }

    /// The coordinator's request of http step `step` was answered with `status` (or
    /// failed).
    pub fn probed(&mut self, step: &str, status: Result<u16, String>) -> Vec<Effect> {
        let Some(index) = self.running().filter(|i| self.step_named(*i, step)) else {
            return Vec::new();
        };
        let StepKind::Http { url, expect_status } = self.record.steps[index].step.kind.clone()
        else {
            return Vec::new();
        };
        let url = render(&url, &self.record.participants).unwrap_or(url);
        let system = Report {
            actor: String::new(),
            reason: String::new(),
            link: String::new(),
        };
        match status {
            Ok(got) if got == expect_status => {
                let reason = format!("GET {url} answered {got}");
                self.step_passed(index, Report { reason, ..system })
            }
            Ok(got) => {
                let reason = format!("GET {url} answered {got}, expected {expect_status}");
                self.step_failed(index, reason, String::new())
            }
            Err(error) => self.step_failed(index, format!("GET {url}: {error}"), String::new()),
        }
    }

    /// A test runner's report on external step `step`. `Err` says why it is refused
    /// (the transaction is not verifying, no such step, not its turn, not external).
    pub fn report(
        &mut self,
        step: &str,
        outcome: Outcome,
        report: Report,
    ) -> Result<Vec<Effect>, String> {
        let index = self.reportable(step)?;
        Ok(match outcome {
            Outcome::Started => self.step_started(index, report),
            Outcome::Passed => self.step_passed(index, report),
            Outcome::Failed => {
                let reason = or_no_reason(&report.reason);
                self.record.steps[index].actor = report.actor.clone();
                let failed = self.step_failed(index, reason, report.link.clone());
                with_actor(failed, &report.actor)
            }
        })
    }

    fn reportable(&self, step: &str) -> Result<usize, String> {
        let index = self.current_step()?;
        let steps = &self.record.steps;
        let Some(named) = steps.iter().position(|s| s.step.name == step) else {
            let names: Vec<&str> = steps.iter().map(|s| s.step.name.as_str()).collect();
            return Err(format!(
                "step: {} has no verify step {step:?} (its steps: {})",
                self.record.id,
                names.join(", ")
            ));
        };
        if named != index {
            let (current, status) = (&steps[index].step.name, steps[named].status);
            return Err(format!(
                "step: {step} is {status:?}; {} is on step {current} now",
                self.record.id
            ));
        }
        if steps[index].step.kind != StepKind::External {
            return Err(format!(
                "step: {step} is not an external step ({}); only external steps take reports",
                steps[index].step.describe()
            ));
        }
        Ok(index)
    }

    /// The step running now, or why there is none.
    fn current_step(&self) -> Result<usize, String> {
        let id = &self.record.id;
        self.running().ok_or_else(|| {
            let state = self.record.state;
            format!(
                "id: {id} is {state:?}; only a transaction in VERIFYING takes reports, approvals and rejections"
            )
        })
    }

    /// A person approved the current step, which must be an approval step. The
    /// creator of the transaction cannot approve it (when callers are known).
    pub fn approve(&mut self, report: Report) -> Result<Vec<Effect>, String> {
        let index = self.current_step()?;
        let step = &self.record.steps[index].step;
        if step.kind != StepKind::Approval {
            return Err(format!(
                "id: {} is on step {}; there is no approval to give until an approval step is triggered",
                self.record.id,
                step.describe()
            ));
        }
        let creator = &self.record.created_by;
        if !creator.is_empty() && person(creator) == person(&report.actor) {
            return Err(format!(
                "id: {creator} created {}; a transaction needs someone else's approval",
                self.record.id
            ));
        }
        Ok(self.step_passed(index, report))
    }

    /// A person rejected the transaction, whatever step it is on: ABORT.
    pub fn reject(&mut self, report: Report) -> Result<Vec<Effect>, String> {
        let index = self.current_step()?;
        let reason = format!(
            "rejected by {}: {}",
            who(&report.actor),
            or_no_reason(&report.reason)
        );
        self.record.steps[index].actor = report.actor.clone();
        let failed = self.step_failed(index, reason, report.link.clone());
        Ok(with_actor(failed, &report.actor))
    }

    /// The current step's deadline passed without an outcome.
    pub(super) fn step_deadline(&mut self) -> Vec<Effect> {
        let Some(index) = self.running() else {
            return Vec::new();
        };
        let deadline = events::humanize(self.record.steps[index].step.deadline_ms);
        self.step_failed(
            index,
            format!("no outcome within its deadline of {deadline}"),
            String::new(),
        )
    }

    fn step_started(&mut self, index: usize, report: Report) -> Vec<Effect> {
        let step = &mut self.record.steps[index];
        step.status = StepStatus::Started;
        record(step, &report);
        let started = events::step_started(&self.record, index);
        vec![self.write(vec![started], Show::WhenDurable)]
    }

    /// The step passed: written with the next step's trigger, or with the COMMIT
    /// decision when it was the last (never COMMITTING in one write and the decision
    /// in another).
    fn step_passed(&mut self, index: usize, report: Report) -> Vec<Effect> {
        let step = &mut self.record.steps[index];
        step.status = StepStatus::Passed;
        record(step, &report);
        let finished = events::step_finished(&self.record, index);
        with_first(self.trigger_next_step(), finished)
    }

    /// The step failed: recorded, then ABORT (every staged part is undone).
    fn step_failed(&mut self, index: usize, reason: String, link: String) -> Vec<Effect> {
        let step = &mut self.record.steps[index];
        step.status = StepStatus::Failed;
        step.reason = reason.clone();
        step.link = link;
        let name = step.step.name.clone();
        let finished = events::step_finished(&self.record, index);
        // One write with the ABORT decision: a failed step is never stored without
        // its decision (a restart would run it again), and it is shown only once
        // durable, so no participant hears ABORT that a crash could take back.
        let decided = self.decide_abort(format!("verify step {name} failed: {reason}"));
        with_first(decided, finished)
    }

    /// After a restart: the recorded steps go on; the running one is triggered again.
    pub(super) fn resume_verifying(&mut self) -> Vec<Effect> {
        let done = self.record.steps.iter().filter(|s| passed(s)).count();
        let total = self.record.steps.len();
        let message = format!(
            "resuming verification after a restart: {done} of {total} steps passed; the next is triggered again with its whole deadline"
        );
        let recovered = events::recovered(&self.record, message);
        if let Some(failed) = self
            .record
            .steps
            .iter()
            .find(|s| s.status == StepStatus::Failed)
        {
            // Stored by a version that wrote a failed step apart from its decision.
            let reason = format!("verify step {} failed: {}", failed.step.name, failed.reason);
            return with_first(self.decide_abort(reason), recovered);
        }
        match self.running() {
            Some(index) => {
                let again = events::step_triggered(&self.record, index);
                let mut effects = vec![self.write(vec![recovered, again], Show::WhenDurable)];
                effects.extend(self.run_step(index));
                effects
            }
            None => with_first(self.trigger_next_step(), recovered),
        }
    }

    fn step_named(&self, index: usize, name: &str) -> bool {
        self.record.steps[index].step.name == name
    }
}

/// Puts `event` first in the first write of `effects` (there is always one: a trigger,
/// a decision).
fn with_first(mut effects: Vec<Effect>, event: pb::Event) -> Vec<Effect> {
    let first = effects.iter_mut().find_map(|e| match e {
        Effect::Write { events, .. } | Effect::DecideCommit { events, .. } => Some(events),
        _ => None,
    });
    first
        .expect("a step's outcome is followed by a write")
        .insert(0, event);
    effects
}

fn passed(step: &StepRun) -> bool {
    step.status == StepStatus::Passed
}

fn record(step: &mut StepRun, report: &Report) {
    step.actor = report.actor.clone();
    step.reason = report.reason.clone();
    if !report.link.is_empty() {
        step.link = report.link.clone();
    }
}

/// Names `actor` on the ABORT decision a person's (or runner's) failure caused (the
/// step's own event names them already, from the step record).
fn with_actor(mut effects: Vec<Effect>, actor: &str) -> Vec<Effect> {
    for effect in &mut effects {
        if let Effect::Write { events, .. } = effect {
            let decided = events.iter_mut().filter(|e| is_abort_decision(e));
            decided.for_each(|e| e.actor = actor.to_string());
        }
    }
    effects
}

fn is_abort_decision(e: &pb::Event) -> bool {
    e.kind == pb::EventKind::DecidedAbort as i32
}

fn who(actor: &str) -> &str {
    if actor.is_empty() { "someone" } else { actor }
}

fn or_no_reason(reason: &str) -> String {
    if reason.is_empty() {
        "no reason given".into()
    } else {
        reason.to_string()
    }
}

/// The URL of an http step with `{test_uri:PROJECT}` and `{version:PROJECT}` replaced
/// by that participant's staged test URI and version. `Err` names a placeholder that
/// cannot be filled (unknown project, no test URI reported, unknown name).
pub fn render(template: &str, participants: &[Participant]) -> Result<String, String> {
    fill_in(template, |placeholder| fill(placeholder, participants))
}

/// The URL of an http step as a pipeline file is checked: each placeholder well formed
/// and filled with a stand-in (`http://test-uri.invalid`, `0`), so that the rest can be
/// checked as a URL before any transaction runs it.
pub fn sample(template: &str) -> Result<String, String> {
    fill_in(template, |placeholder| match placeholder.split_once(':') {
        Some(("test_uri", p)) if !p.is_empty() => Ok("http://test-uri.invalid".into()),
        Some(("version", p)) if !p.is_empty() => Ok("0".into()),
        _ => Err(format!(
            "{{{placeholder}}} is no placeholder (test_uri:PROJECT or version:PROJECT)"
        )),
    })
}

fn fill_in(
    template: &str,
    fill: impl Fn(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("url {template:?}: an unclosed {{"))?;
        out.push_str(&fill(&rest[open + 1..open + close])?);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn fill(placeholder: &str, participants: &[Participant]) -> Result<String, String> {
    let (what, project) = placeholder.split_once(':').unwrap_or((placeholder, ""));
    let p = participants
        .iter()
        .find(|p| p.project.as_str() == project)
        .ok_or_else(|| format!("url: {{{placeholder}}} names no project taking part"))?;
    match what {
        "version" => Ok(p.to_version.to_string()),
        "test_uri" if p.test_uri.is_empty() => Err(format!(
            "url: {{{placeholder}}}: {project} reported no test URI in its PREPARED vote (start its agent with --serve-hook)"
        )),
        "test_uri" => Ok(p.test_uri.clone()),
        _ => Err(format!(
            "url: {{{placeholder}}} is no placeholder (test_uri:PROJECT or version:PROJECT)"
        )),
    }
}
