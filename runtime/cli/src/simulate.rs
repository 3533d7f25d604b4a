//! `lifeboat plan simulate`: runs the simulation and reports it — the timeline, the VMs, the
//! critical path and the predicted RTO for people; the same as JSON; a JUnit test case per step;
//! GitHub annotations. What would stop the recovery is a diagnostic that points into the plan,
//! rendered like `plan validate`'s.

use std::io::Write;
use std::path::Path;

use lifeboat_api::exit_codes;
use lifeboat_loader::Validation;
use lifeboat_orchestrator::simulate::{self, Basis, Problem, Profile, SimOutcome, Simulation};
use lifeboat_plan::plan::Operation;
use lifeboat_plan::{Diagnostic, Plan, Rule, Span};

use crate::orchestration::Loaded;
use crate::report::{self, Format};

/// Simulates `op` of the loaded plan and reports it in `format`; the exit code.
pub fn run(
    loaded: Loaded,
    op: Operation,
    profile: Option<&Path>,
    instant: Option<bool>,
    format: Format,
    io: &mut crate::Io<'_>,
) -> u8 {
    let Some(lifeboat_loader::ResolvedPlan {
        plan,
        path: plan_path,
    }) = &loaded.plan
    else {
        let _ = writeln!(io.stderr, "error: no plan to simulate");
        return exit_codes::USAGE;
    };
    let profile: Option<Profile> = match profile {
        Some(path) => {
            let read = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()));
            match read {
                Ok(p) => Some(p),
                Err(e) => {
                    let _ = writeln!(
                        io.stderr,
                        "error: profile {}: {e} (write one with `lifeboat runs profile RUN`)",
                        path.display()
                    );
                    return exit_codes::FAILED;
                }
            }
        }
        None => match simulate::profile_from_journal(&loaded.env, &plan.name.value, op) {
            Ok(p) => p,
            Err(e) => return crate::orchestration::run_failed(io, &e),
        },
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        let _ = writeln!(io.stderr, "error: cannot start a runtime");
        return exit_codes::INTERNAL;
    };
    let plan_dir = plan_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let sim = match rt.block_on(simulate::simulate(
        &loaded.env,
        plan,
        plan_dir,
        op,
        profile.as_ref(),
        instant,
    )) {
        Ok(s) => s,
        Err(e) => return crate::orchestration::run_failed(io, &e),
    };
    let code = if !sim.recovers() {
        exit_codes::INVALID
    } else if sim.exceeds_objective() {
        exit_codes::RTO_EXCEEDED
    } else {
        exit_codes::OK
    };
    let diagnostics = Validation {
        diagnostics: sim.problems.iter().map(|p| diagnostic(plan, p)).collect(),
        sources: (*loaded.env.config.sources).clone(),
        inventory_source: loaded.env.config.inventory_source,
        inventory: None,
        plans: Vec::new(),
        components: Default::default(),
    };
    let written = match format {
        Format::Human => human(&sim, &diagnostics, io.stdout),
        Format::Json => json(&sim, &diagnostics, io.stdout),
        Format::Junit => junit(&sim, &diagnostics, io.stdout),
        Format::Github => github(&sim, &diagnostics, io.stdout),
        Format::Sarif => report::write(Format::Sarif, &diagnostics, false, io.stdout),
    };
    if let Err(e) = written
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        let _ = writeln!(io.stderr, "error: cannot write the report: {e}");
        return exit_codes::INTERNAL;
    }
    code
}

/// Where in the plan a problem points: its step, else its VM, else the plan's name.
fn span_of(plan: &Plan, p: &Problem) -> Span {
    if let Some(step) = &p.step {
        let mut parts = step.splitn(3, '/');
        let (group, phase, index) = (parts.next(), parts.next(), parts.next());
        if let Some(g) = plan
            .groups
            .iter()
            .find(|g| Some(g.name.value.as_str()) == group)
        {
            let list = match phase {
                Some("pre") => Some(&g.pre),
                Some("post") => Some(&g.post),
                _ => None,
            };
            let at = list
                .zip(index.and_then(|i| i.parse::<usize>().ok()))
                .and_then(|(l, i)| l.get(i));
            return match at {
                Some(s) => s.uses.span,
                None => g.name.span,
            };
        }
    }
    if let Some(vm) = &p.vm
        && let Some(v) = plan
            .groups
            .iter()
            .flat_map(|g| &g.vms)
            .find(|v| &v.value == vm)
    {
        return v.span;
    }
    plan.name.span
}

fn diagnostic(plan: &Plan, p: &Problem) -> Diagnostic {
    let rule = match p.rule {
        "boots-later" => Rule::BootsLater,
        "address-clash" => Rule::AddressClash,
        "address-in-use" => Rule::AddressInUse,
        _ => Rule::StepFailsInDryRun,
    };
    let label = match rule {
        Rule::BootsLater => "this step runs before that VM boots",
        Rule::AddressClash => "these addresses",
        Rule::AddressInUse => "this VM's address is in use",
        _ => "fails when simulated",
    };
    let mut d = Diagnostic::error(rule, span_of(plan, p), p.message.clone(), label);
    d.help = p.help.clone();
    d
}

fn basis(b: Basis) -> &'static str {
    match b {
        Basis::Simulated => "",
        Basis::Measured => " (measured)",
        Basis::Default => " (default)",
    }
}

fn outcome(o: &SimOutcome) -> String {
    match o {
        SimOutcome::Ok => "ok".into(),
        SimOutcome::Failed(why) => format!("FAILED: {why}"),
        SimOutcome::NotReached => "not reached".into(),
    }
}

fn human(sim: &Simulation, diagnostics: &Validation, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "simulated {} of plan {} (dry run: nothing was started, restored or changed)",
        sim.operation.name(),
        sim.plan
    )?;
    let mut group = "";
    for s in &sim.steps {
        if s.group != group {
            group = &s.group;
            writeln!(out, "group {group}")?;
        }
        writeln!(
            out,
            "  +{:7.1}s  {:<22} {:<20} {:6.1}s{}  {}",
            s.start_seconds,
            s.id,
            s.uses,
            s.seconds,
            basis(s.basis),
            outcome(&s.outcome)
        )?;
        for line in &s.log {
            writeln!(out, "             | {line}")?;
        }
    }
    writeln!(out, "VMs")?;
    for v in &sim.vms {
        let t = &v.timeline;
        let when = match (t.restored_at, t.healthy_at) {
            (Some(r), Some(h)) => format!("restored +{r:.1}s, healthy +{h:.1}s"),
            (Some(r), None) => format!("restored +{r:.1}s"),
            _ => "not booted".into(),
        };
        writeln!(
            out,
            "  {} (group {}): {}; point {}; {when}",
            v.vm,
            v.group,
            if v.addresses.is_empty() {
                "no NICs".to_string()
            } else {
                v.addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            v.point
        )?;
    }
    writeln!(out, "critical path")?;
    for leg in &sim.critical_path {
        writeln!(out, "  {:<16} {:7.1}s  {}", leg.group, leg.seconds, leg.why)?;
    }
    for n in &sim.notes {
        writeln!(out, "note: {} (+{:.1}s): {}", n.step, n.at_seconds, n.text)?;
    }
    writeln!(
        out,
        "predicted RTO {:.1}s{} — {}",
        sim.rto_seconds,
        if sim.instant {
            " (instant boot: qemu VMs boot from the repository)"
        } else {
            ""
        },
        sim.basis
    )?;
    if let Some(o) = sim.objective_seconds {
        writeln!(
            out,
            "rto_objective {o:.0}s: {}",
            if sim.exceeds_objective() {
                "EXCEEDED"
            } else {
                "met"
            }
        )?;
    }
    if !sim.recovers() {
        writeln!(out)?;
        report::write(Format::Human, diagnostics, false, out)?;
    }
    Ok(())
}

/// A problem's place, for the JSON report.
#[derive(serde::Serialize)]
struct Located<'a> {
    rule: &'static str,
    message: &'a str,
    help: Option<&'a str>,
    file: &'a str,
    line: usize,
    column: usize,
}

fn located<'a>(diagnostics: &'a Validation) -> Vec<Located<'a>> {
    diagnostics
        .diagnostics
        .iter()
        .filter_map(|d| {
            let r = report::primary_region(diagnostics, d)?;
            Some(Located {
                rule: d.rule.name(),
                message: &d.message,
                help: d.help.as_deref(),
                file: r.file,
                line: r.start.line,
                column: r.start.column,
            })
        })
        .collect()
}

fn json(sim: &Simulation, diagnostics: &Validation, out: &mut dyn Write) -> std::io::Result<()> {
    #[derive(serde::Serialize)]
    struct Report<'a> {
        #[serde(flatten)]
        simulation: &'a Simulation,
        recovers: bool,
        objective_met: Option<bool>,
        diagnostics: Vec<Located<'a>>,
    }
    serde_json::to_writer_pretty(
        &mut *out,
        &Report {
            simulation: sim,
            recovers: sim.recovers(),
            objective_met: sim.objective_seconds.map(|_| !sim.exceeds_objective()),
            diagnostics: located(diagnostics),
        },
    )?;
    writeln!(out)
}

/// XML text and attribute escaping, as `plan validate`'s JUnit report does it.
use report::junit::escape as xml;

/// A test case per step (its predicted time as the case's time), one for the RTO objective, one
/// per problem that is no step's.
fn junit(sim: &Simulation, diagnostics: &Validation, out: &mut dyn Write) -> std::io::Result<()> {
    let at = located(diagnostics);
    let failures = sim
        .steps
        .iter()
        .filter(|s| matches!(s.outcome, SimOutcome::Failed(_)))
        .count()
        + usize::from(sim.exceeds_objective())
        + sim.problems.iter().filter(|p| p.step.is_none()).count();
    let skipped = sim
        .steps
        .iter()
        .filter(|s| s.outcome == SimOutcome::NotReached)
        .count();
    let tests = sim.steps.len()
        + usize::from(sim.objective_seconds.is_some())
        + sim.problems.iter().filter(|p| p.step.is_none()).count();
    let name = xml(&format!(
        "lifeboat plan simulate {} ({})",
        sim.plan,
        sim.operation.name()
    ));
    writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
    writeln!(
        out,
        r#"<testsuites name="{name}" tests="{tests}" failures="{failures}" time="{:.3}">"#,
        sim.rto_seconds
    )?;
    writeln!(
        out,
        r#"  <testsuite name="{name}" tests="{tests}" failures="{failures}" skipped="{skipped}" errors="0" time="{:.3}">"#,
        sim.rto_seconds
    )?;
    for s in &sim.steps {
        write!(
            out,
            r#"    <testcase classname="{}.{}" name="{}" time="{:.3}">"#,
            xml(&sim.plan),
            xml(&s.group),
            xml(&format!("{} ({})", s.id, s.uses)),
            s.seconds
        )?;
        match &s.outcome {
            SimOutcome::Ok => {}
            SimOutcome::NotReached => write!(out, r#"<skipped message="an earlier step fails"/>"#)?,
            SimOutcome::Failed(why) => {
                let problem = sim
                    .problems
                    .iter()
                    .position(|p| p.step.as_deref() == Some(s.id.as_str()));
                let (rule, body) = match problem {
                    Some(i) => (
                        sim.problems[i].rule,
                        at.get(i).map_or_else(
                            || sim.problems[i].message.clone(),
                            |l| format!("{}:{}:{}: {}", l.file, l.line, l.column, l.message),
                        ),
                    ),
                    None => ("step-fails-in-dry-run", why.clone()),
                };
                write!(
                    out,
                    r#"<failure type="{rule}" message="{}">{}</failure>"#,
                    xml(why),
                    xml(&body)
                )?;
            }
        }
        if !s.log.is_empty() {
            write!(out, "<system-out>{}</system-out>", xml(&s.log.join("\n")))?;
        }
        writeln!(out, "</testcase>")?;
    }
    for p in sim.problems.iter().filter(|p| p.step.is_none()) {
        writeln!(
            out,
            r#"    <testcase classname="{}" name="{}"><failure type="{}" message="{}"/></testcase>"#,
            xml(&sim.plan),
            p.rule,
            p.rule,
            xml(&p.message)
        )?;
    }
    if let Some(o) = sim.objective_seconds {
        write!(
            out,
            r#"    <testcase classname="{}" name="rto_objective {o:.0}s" time="{:.3}">"#,
            xml(&sim.plan),
            sim.rto_seconds
        )?;
        if sim.exceeds_objective() {
            write!(
                out,
                r#"<failure type="rto-exceeded" message="predicted RTO {:.1}s exceeds the objective of {o:.0}s">{}</failure>"#,
                sim.rto_seconds,
                xml(&sim.basis)
            )?;
        }
        writeln!(out, "</testcase>")?;
    }
    writeln!(out, "  </testsuite>")?;
    writeln!(out, "</testsuites>")
}

/// GitHub workflow commands: an error per problem at its place in the plan, the RTO as a notice
/// (an error when it exceeds the objective).
fn github(sim: &Simulation, diagnostics: &Validation, out: &mut dyn Write) -> std::io::Result<()> {
    if !sim.recovers() {
        report::write(Format::Github, diagnostics, false, out)?;
    }
    let text = format!(
        "predicted RTO {:.1}s for a {} of plan {} — {}",
        sim.rto_seconds,
        sim.operation.name(),
        sim.plan,
        sim.basis
    );
    let escape = report::github::escape_data;
    match sim.objective_seconds {
        Some(o) if sim.exceeds_objective() => writeln!(
            out,
            "::error title=rto-exceeded::{}",
            escape(&format!("{text}; the plan's rto_objective is {o:.0}s"))
        ),
        _ => writeln!(out, "::notice title=plan simulate::{}", escape(&text)),
    }
}
