//! The pipeline file (a "shipyard"): every environment on the promotion path with its
//! stages (verify steps before commit, soak and verify steps after, auto-promotion)
//! and, if it says so, its projects (endpoint, children), in one TOML file applied
//! with `lockstep env apply -f FILE`. A project the file does not name is left as it
//! is: removing one stays an explicit `lockstep project remove`. Pure: text in, the
//! environments it declares out, or an error naming the line and the key. The graph
//! check (upstreams known, no cycle) runs over the file together with the environments
//! declared already.

use std::{collections::BTreeMap, time::Duration};

use lockstep::{
    limits::MAX_ENVIRONMENTS,
    names::{Environment, FieldError, ProjectName},
};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    model::{EnvironmentRecord, LiveFailure, ProjectRecord, Stages, Step, StepKind},
    reach::any_cycle,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    environment: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: Spanned<String>,
    #[serde(default)]
    after: Option<Spanned<After>>,
    #[serde(default)]
    verify: Option<Vec<StepEntry>>,
    #[serde(default)]
    auto_promote: Option<bool>,
    #[serde(default)]
    soak: Option<Spanned<String>>,
    #[serde(default)]
    verify_live: Option<Vec<StepEntry>>,
    #[serde(default)]
    on_live_failure: Option<Spanned<String>>,
    #[serde(default)]
    project: Vec<ProjectEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectEntry {
    name: Spanned<String>,
    endpoint: Spanned<String>,
    #[serde(default)]
    requires: Option<Spanned<Vec<String>>>,
}

/// What a pipeline file declares.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// Its environments, in file order (without author).
    pub environments: Vec<EnvironmentRecord>,
    /// Its projects, per environment in file order.
    pub projects: Vec<ProjectRecord>,
    /// The projects whose entry has no `requires` key: a registered one keeps its
    /// children (see `Registry::apply_pipeline`).
    pub requires_unset: Vec<(Environment, ProjectName)>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum After {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepEntry {
    name: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    expect_status: Option<u16>,
    #[serde(default)]
    deadline: Option<Spanned<String>>,
}

/// The longest soak or step deadline a file may ask for (a longer one is a mistake;
/// before stop 60 one beyond u64 milliseconds wrapped to a short one).
const LONGEST: Duration = Duration::from_secs(366 * 24 * 3600);

/// The default deadline of a verify step.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);

/// Parses and checks `text`; `declared` are the environments declared already (an
/// upstream may be one of them or of the file). The records come without author.
pub fn parse(
    text: &str,
    declared: &BTreeMap<Environment, EnvironmentRecord>,
) -> Result<Declared, FieldError> {
    let file: File = toml::from_str(text).map_err(|e| FieldError::new("file", e.to_string()))?;
    at_most(file.environment.len(), "in the file")?;
    let line_of = line_numbers(text);
    let at = |span: std::ops::Range<usize>| line_of(span.start);
    let mut records: Vec<EnvironmentRecord> = Vec::new();
    let mut projects: Vec<ProjectRecord> = Vec::new();
    let mut requires_unset = Vec::new();
    for (i, entry) in file.environment.iter().enumerate() {
        let record = environment(entry, &format!("environment[{i}]"), &at, declared)?;
        let key = format!("environment[{i}].project");
        projects.extend(projects_of(&record.name, &entry.project, &key, &at)?);
        let unset = entry.project.iter().filter(|p| p.requires.is_none());
        for p in unset {
            let name = ProjectName::parse(&key, p.name.get_ref())?;
            requires_unset.push((record.name.clone(), name));
        }
        if records.iter().any(|r| r.name == record.name) {
            let key = format!("line {}: environment[{i}].name", at(entry.name.span()));
            return Err(FieldError::new(
                key,
                format!("{} is declared twice", record.name),
            ));
        }
        records.push(record);
    }
    let new = records
        .iter()
        .filter(|r| !declared.contains_key(&r.name))
        .count();
    if new > 0 {
        at_most(declared.len() + new, "declared with the file's")?;
    }
    check_graph(&file, &records, declared, &at)?;
    Ok(Declared {
        environments: records,
        projects,
        requires_unset,
    })
}

/// The line number (from 1) of a byte offset of `text`, found by a binary search of
/// its newlines: each field's label names its line, and counting the newlines before
/// each anew made a parse quadratic in the file's size (stop 62).
fn line_numbers(text: &str) -> impl Fn(usize) -> usize + '_ {
    let newlines: Vec<usize> = text.match_indices('\n').map(|(i, _)| i).collect();
    move |offset| newlines.partition_point(|&n| n < offset) + 1
}

/// Each project endpoint of `text`, with the field that names it (`line 6:
/// environment[0].project[0].endpoint`), so a check the file's parse cannot make (the
/// coordinator's TLS setting) names the line too. Empty when the file does not parse:
/// [`parse`] says why.
pub fn endpoints(text: &str) -> Vec<(String, String)> {
    let Ok(file) = toml::from_str::<File>(text) else {
        return Vec::new();
    };
    let at = line_numbers(text);
    let mut out = Vec::new();
    for (i, entry) in file.environment.iter().enumerate() {
        for (j, p) in entry.project.iter().enumerate() {
            let line = at(p.endpoint.span().start);
            let field = format!("line {line}: environment[{i}].project[{j}].endpoint");
            out.push((field, p.endpoint.get_ref().clone()));
        }
    }
    out
}

/// The projects an environment entry declares, each named once.
fn projects_of(
    env: &Environment,
    entries: &[ProjectEntry],
    key: &str,
    at: &impl Fn(std::ops::Range<usize>) -> usize,
) -> Result<Vec<ProjectRecord>, FieldError> {
    let mut out: Vec<ProjectRecord> = Vec::new();
    for (j, e) in entries.iter().enumerate() {
        let field = |span, name: &str| format!("line {}: {key}[{j}].{name}", at(span));
        let name = ProjectName::parse(&field(e.name.span(), "name"), e.name.get_ref())?;
        if out.iter().any(|p| p.name == name) {
            let why = format!("project {name} is declared twice in environment {env}");
            return Err(FieldError::new(field(e.name.span(), "name"), why));
        }
        let endpoint = e.endpoint.get_ref().clone();
        crate::network::validate_endpoint(&field(e.endpoint.span(), "endpoint"), &endpoint)?;
        let mut requires = Vec::new();
        if let Some(r) = &e.requires {
            for child in r.get_ref() {
                requires.push(ProjectName::parse(&field(r.span(), "requires"), child)?);
            }
        }
        requires.sort();
        requires.dedup();
        out.push(ProjectRecord {
            name,
            environment: env.clone(),
            endpoint,
            requires,
            live_from: 0,
        });
    }
    Ok(out)
}

/// The environment `entry` declares. A key the entry leaves out keeps what the
/// environment is declared with (`declared`), as a project's left-out `requires` keeps
/// its children: a file written to add a project to production must not strip its
/// upstream, its approval and its live checks (review finding of stop 60). `after =
/// []`, `verify = []`, `soak = "0s"` and the like remove what they name.
fn environment(
    entry: &Entry,
    key: &str,
    at: &impl Fn(std::ops::Range<usize>) -> usize,
    declared: &BTreeMap<Environment, EnvironmentRecord>,
) -> Result<EnvironmentRecord, FieldError> {
    let field = |span, name: &str| format!("line {}: {key}.{name}", at(span));
    let name = Environment::parse(&field(entry.name.span(), "name"), entry.name.get_ref())?;
    let kept = declared.get(&name);
    let after = match &entry.after {
        Some(a) => upstreams(a, &field(a.span(), "after"))?,
        None => kept.map(|k| k.after.clone()).unwrap_or_default(),
    };
    let was = kept.map(|k| k.stages.clone()).unwrap_or_default();
    let verify = entry.verify.as_deref();
    let verify_live = entry.verify_live.as_deref();
    let soak = entry.soak.as_ref();
    let on_failure = entry.on_live_failure.as_ref();
    let stages = Stages {
        verify: keep(verify, was.verify, |v| {
            steps(v, &format!("{key}.verify"), at)
        })?,
        auto_promote: entry.auto_promote.unwrap_or(was.auto_promote),
        // `soak = "0s"` is no soak: it removes a declared one.
        soak_ms: match soak {
            Some(s) => {
                optional_duration(Some(s), &|span| field(span, "soak"))?.filter(|ms| *ms > 0)
            }
            None => was.soak_ms,
        },
        verify_live: keep(verify_live, was.verify_live, |v| {
            live_steps(v, &format!("{key}.verify_live"), at)
        })?,
        on_live_failure: keep(on_failure, was.on_live_failure, |v| {
            live_failure(Some(v), &|span| field(span, "on_live_failure"))
        })?,
    };
    Ok(EnvironmentRecord {
        name,
        after,
        created_by: String::new(),
        stages,
        pipeline_version: 0,
    })
}

/// `value` parsed when the entry gives it, else what was declared.
fn keep<V: ?Sized, T>(
    value: Option<&V>,
    was: T,
    parse: impl FnOnce(&V) -> Result<T, FieldError>,
) -> Result<T, FieldError> {
    value.map_or(Ok(was), parse)
}

/// The upstreams an `after` key names, sorted, once each.
fn upstreams(a: &Spanned<After>, field: &str) -> Result<Vec<Environment>, FieldError> {
    let names = match a.get_ref() {
        After::One(one) => vec![one.clone()],
        After::Many(many) => many.clone(),
    };
    let mut after = Vec::new();
    for n in names {
        after.push(Environment::parse(field, &n)?);
    }
    after.sort();
    after.dedup();
    Ok(after)
}

fn steps(
    entries: &[StepEntry],
    key: &str,
    at: &impl Fn(std::ops::Range<usize>) -> usize,
) -> Result<Vec<Step>, FieldError> {
    let mut steps: Vec<Step> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let field = |span, name: &str| format!("line {}: {key}[{i}].{name}", at(span));
        let name = ProjectName::parse(&field(e.name.span(), "name"), e.name.get_ref())?.to_string();
        if steps.iter().any(|s| s.name == name) {
            return Err(FieldError::new(
                field(e.name.span(), "name"),
                format!("step {name} is declared twice"),
            ));
        }
        let kind = match (e.kind.get_ref().as_str(), &e.url) {
            ("http", Some(url)) => {
                let at = field(url.span(), "url");
                let sample = crate::txn::verify::sample(url.get_ref())
                    .map_err(|e| FieldError::new(at.clone(), e))?;
                crate::convert::http_url(&at, &sample)?;
                StepKind::Http {
                    url: url.get_ref().clone(),
                    expect_status: e.expect_status.unwrap_or(200),
                }
            }
            ("http", None) => {
                return Err(FieldError::new(
                    field(e.kind.span(), "url"),
                    "an http step needs a url",
                ));
            }
            ("external", _) => StepKind::External,
            ("approval", _) => StepKind::Approval,
            (other, _) => {
                let why = format!("{other:?} is no step kind (http, external, approval)");
                return Err(FieldError::new(field(e.kind.span(), "kind"), why));
            }
        };
        let deadline = optional_duration(e.deadline.as_ref(), &|span| field(span, "deadline"))?;
        let deadline_ms = deadline.unwrap_or(DEFAULT_DEADLINE.as_millis() as u64);
        steps.push(Step {
            name,
            kind,
            deadline_ms,
        });
    }
    Ok(steps)
}

/// How a URL template names a staged (green) instance.
const STAGED: &str = "{test_uri:";

/// The steps run after commit: only http ones, since nobody is asked to report on or
/// approve a change that is already live.
fn live_steps(
    entries: &[StepEntry],
    key: &str,
    at: &impl Fn(std::ops::Range<usize>) -> usize,
) -> Result<Vec<Step>, FieldError> {
    let steps = steps(entries, key, at)?;
    for (i, step) in steps.iter().enumerate() {
        let url = match &step.kind {
            StepKind::Http { url, .. } => url,
            _ => {
                return Err(FieldError::new(
                    format!("line {}: {key}[{i}].kind", at(entries[i].kind.span())),
                    "only http steps run after commit (external and approval steps belong in verify)",
                ));
            }
        };
        if url.contains(STAGED) {
            let span = entries[i]
                .url
                .as_ref()
                .map_or(entries[i].name.span(), |u| u.span());
            return Err(FieldError::new(
                format!("line {}: {key}[{i}].url", at(span)),
                "a test_uri placeholder names the staged (green) instance, which the agent stops at commit: a step after commit checks what is live, at the service URL",
            ));
        }
    }
    Ok(steps)
}

fn optional_duration(
    value: Option<&Spanned<String>>,
    field: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<Option<u64>, FieldError> {
    let Some(v) = value else { return Ok(None) };
    let d = humantime::parse_duration(v.get_ref())
        .map_err(|e| FieldError::new(field(v.span()), format!("{:?}: {e}", v.get_ref())))?;
    if d > LONGEST {
        let why = format!("{:?} is longer than a year", v.get_ref());
        return Err(FieldError::new(field(v.span()), why));
    }
    Ok(Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

fn live_failure(
    value: Option<&Spanned<String>>,
    field: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<LiveFailure, FieldError> {
    match value.map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("revert", _)) => Ok(LiveFailure::Revert),
        Some(("notify", _)) => Ok(LiveFailure::Notify),
        Some((other, span)) => Err(FieldError::new(
            field(span),
            format!("{other:?} is neither revert nor notify"),
        )),
    }
}

/// `Err` when `count` environments ("in the file", or declared with it) are more than
/// [`MAX_ENVIRONMENTS`].
fn at_most(count: usize, which: &str) -> Result<(), FieldError> {
    match count > MAX_ENVIRONMENTS {
        true => Err(FieldError::new(
            "environment",
            format!("{count} environments {which}; at most {MAX_ENVIRONMENTS}"),
        )),
        false => Ok(()),
    }
}

/// Every upstream is in the file or declared, and the whole graph has no cycle.
fn check_graph(
    file: &File,
    records: &[EnvironmentRecord],
    declared: &BTreeMap<Environment, EnvironmentRecord>,
    at: &impl Fn(std::ops::Range<usize>) -> usize,
) -> Result<(), FieldError> {
    let mut graph: BTreeMap<&Environment, &[Environment]> = declared
        .values()
        .map(|r| (&r.name, r.after.as_slice()))
        .collect();
    graph.extend(records.iter().map(|r| (&r.name, r.after.as_slice())));
    let key = |i: usize| {
        let entry = &file.environment[i];
        let span = entry.after.as_ref().map_or(entry.name.span(), |a| a.span());
        format!("line {}: environment[{i}].after", at(span))
    };
    for (i, record) in records.iter().enumerate() {
        if let Some(up) = record.after.iter().find(|up| !graph.contains_key(up)) {
            let why = format!("{up} is neither in this file nor declared");
            return Err(FieldError::new(key(i), why));
        }
    }
    // The declared graph has no cycle: one the file makes goes through its entries.
    let ups = |e: &Environment| graph.get(e).copied().unwrap_or_default();
    let Some(cycle) = any_cycle(ups, records.iter().map(|r| &r.name)) else {
        return Ok(());
    };
    let on_it = |r: &EnvironmentRecord| cycle.contains(&r.name.to_string());
    let i = records.iter().position(on_it).unwrap_or(0);
    let why = format!("makes a cycle: {}", cycle.join(" -> "));
    Err(FieldError::new(key(i), why))
}

/// What applying `new` changes, one line per project of the file.
pub fn diff_projects(
    current: &BTreeMap<Environment, std::sync::Arc<BTreeMap<ProjectName, ProjectRecord>>>,
    new: &[ProjectRecord],
) -> Vec<String> {
    new.iter()
        .map(|n| {
            let at = format!("project {}/{}", n.environment, n.name);
            match current.get(&n.environment).and_then(|m| m.get(&n.name)) {
                None => format!("+ {at}: {}", describe(n)),
                Some(c) if c == n => format!("= {at}: unchanged"),
                Some(c) => format!("~ {at}: {} -> {}", describe(c), describe(n)),
            }
        })
        .collect()
}

fn describe(p: &ProjectRecord) -> String {
    let children: Vec<&str> = p.requires.iter().map(|r| r.as_str()).collect();
    match children.is_empty() {
        true => format!("at {}", p.endpoint),
        false => format!("at {}, requires {}", p.endpoint, children.join(", ")),
    }
}

/// What applying `new` changes, one line per environment of the file.
pub fn diff(
    current: &BTreeMap<Environment, EnvironmentRecord>,
    new: &[EnvironmentRecord],
) -> Vec<String> {
    new.iter()
        .map(|n| match current.get(&n.name) {
            None => format!("+ {}: {}", n.name, n.describe()),
            Some(c) if c.after == n.after && c.stages == n.stages => {
                format!("= {}: unchanged", n.name)
            }
            Some(c) => format!("~ {}: {} -> {}", n.name, c.describe(), n.describe()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The issue's pipeline file, as examples/ ships it.
    const SHIPYARD: &str = include_str!("../../examples/pipeline.toml");

    fn refusal(text: &str) -> String {
        parse(text, &BTreeMap::new()).unwrap_err().to_string()
    }

    /// Stop 62: a file of any number of environments was checked, in time quadratic in
    /// their number and recursing once per environment of a chain, under the state
    /// lock. Given a file of one more than the limit, when it is parsed, then it is
    /// refused naming the field and the limit; a chain of exactly the limit parses.
    #[test]
    fn a_file_of_more_environments_than_the_limit_is_refused() {
        let chain = |n: usize| {
            let mut text = String::from("[[environment]]\nname = \"e0\"\n");
            for i in 1..n {
                let below = i - 1;
                text.push_str(&format!(
                    "[[environment]]\nname = \"e{i}\"\nafter = [\"e{below}\"]\n"
                ));
            }
            text
        };
        let too_many = refusal(&chain(MAX_ENVIRONMENTS + 1));
        assert!(too_many.contains("environment"), "{too_many}");
        assert!(too_many.contains("at most 1000"), "{too_many}");
        let envs = parse(&chain(MAX_ENVIRONMENTS), &BTreeMap::new())
            .unwrap()
            .environments;
        assert_eq!(envs.len(), MAX_ENVIRONMENTS);
    }

    #[test]
    fn the_issue_s_shipyard_parses() {
        let envs = parse(SHIPYARD, &BTreeMap::new()).unwrap().environments;
        assert_eq!(envs.len(), 3);
        assert_eq!(envs[1].stages.verify[0].kind, StepKind::External);
        assert_eq!(envs[1].stages.verify[0].deadline_ms, 600_000);
        assert!(envs[2].stages.auto_promote);
        assert_eq!(envs[2].after[0].as_str(), "hardening");
    }

    /// Review finding of stop 60: a file naming production only to add a project to it
    /// stripped production of its upstream, its verify steps and its auto-promotion.
    #[test]
    fn a_key_left_out_keeps_what_is_declared_and_an_empty_one_removes_it() {
        let shipyard = parse(SHIPYARD, &BTreeMap::new()).unwrap().environments;
        let declared: BTreeMap<_, _> = shipyard
            .iter()
            .map(|e| (e.name.clone(), e.clone()))
            .collect();
        let project = "[[environment]]\nname = \"production\"\n  [[environment.project]]\n  name = \"api\"\n  endpoint = \"http://127.0.0.1:1\"\n";

        let kept = &parse(project, &declared).unwrap().environments[0];

        assert_eq!(kept.after, shipyard[2].after);
        assert_eq!(kept.stages, shipyard[2].stages);
        let emptied = "[[environment]]\nname = \"production\"\nafter = []\nverify = []\nauto_promote = false\n";
        let emptied = &parse(emptied, &declared).unwrap().environments[0];
        assert!(emptied.after.is_empty() && emptied.stages.verify.is_empty());
        assert!(!emptied.stages.auto_promote);
        let soaking = "[[environment]]\nname = \"production\"\nsoak = \"1h\"\n";
        let soaking = parse(soaking, &declared).unwrap().environments[0].clone();
        let mut declared = declared;
        declared.insert(soaking.name.clone(), soaking);
        let unsoaked = "[[environment]]\nname = \"production\"\nsoak = \"0s\"\n";
        let unsoaked = &parse(unsoaked, &declared).unwrap().environments[0];
        assert_eq!(
            unsoaked.stages.soak_ms, None,
            "soak = \"0s\" removes the soak"
        );
        let long = SHIPYARD.replace("deadline = \"30s\"", "deadline = \"18446744073709552s\"");
        assert!(
            refusal(&long).contains("longer than a year"),
            "{}",
            refusal(&long)
        );
    }

    /// Review finding of stop 60: a live step probing `{test_uri:P}` failed after every
    /// commit (the agent stops the green instance at commit), so every release was
    /// reverted automatically.
    #[test]
    fn a_live_step_may_not_probe_the_staged_instance() {
        let green = "[[environment]]\nname = \"qa\"\n  [[environment.verify_live]]\n  name = \"health\"\n  kind = \"http\"\n  url = \"{test_uri:api}/health\"\n";
        let why = refusal(green);
        assert!(
            why.contains("line 6: environment[0].verify_live[0].url"),
            "{why}"
        );
        let live = green.replace("{test_uri:api}", "http://api.internal");
        assert!(parse(&live, &BTreeMap::new()).is_ok());
    }

    #[test]
    fn bad_files_name_the_line_and_the_key() {
        let unknown = SHIPYARD.replace("after = \"dev\"", "after = \"qa\"");
        let why = refusal(&unknown);
        assert!(
            why.contains("line 6") && why.contains("environment[1].after") && why.contains("qa"),
            "{why}"
        );
        let cycle = SHIPYARD.replace("name = \"dev\"", "name = \"dev\"\nafter = \"production\"");
        assert!(refusal(&cycle).contains("cycle"), "{}", refusal(&cycle));
        let kind = SHIPYARD.replace("\"external\"", "\"smoke\"");
        let why = refusal(&kind);
        assert!(
            why.contains("environment[1].verify[0].kind") && why.contains("smoke"),
            "{why}"
        );
        let twice = format!("{SHIPYARD}\n[[environment]]\nname = \"dev\"\n");
        assert!(
            refusal(&twice).contains("declared twice"),
            "{}",
            refusal(&twice)
        );
        let typo = SHIPYARD.replace("auto_promote", "auto_promot");
        assert!(refusal(&typo).contains("auto_promot"), "{}", refusal(&typo));
    }

    #[test]
    fn http_urls_are_templates_and_live_steps_are_http_only() {
        let smoke = "[[environment]]\nname = \"hardening\"\n  [[environment.STEPS]]\n  name = \"smoke\"\n  kind = \"KIND\"\n  url = \"URL\"\n";
        let file = |steps: &str, kind: &str, url: &str| {
            smoke
                .replace("STEPS", steps)
                .replace("KIND", kind)
                .replace("URL", url)
        };
        let good = file(
            "verify",
            "http",
            "{test_uri:foobar-backend}/health?v={version:foobar-backend}",
        );
        assert!(parse(&good, &BTreeMap::new()).is_ok());
        let why = refusal(&file("verify", "http", "{colour:foobar-backend}/health"));
        assert!(
            why.contains("verify[0].url") && why.contains("no placeholder"),
            "{why}"
        );
        let why = refusal(&file("verify_live", "external", "https://shop.example"));
        assert!(
            why.contains("verify_live[0].kind") && why.contains("only http"),
            "{why}"
        );
    }
}
