//! `kubectl orc`: the operator's kubectl plugin. Reads and drives an `OrchestratorCluster`
//! through the same API a person would use: the status (servers from both views, the step,
//! what blocks, the plan), an approval, pause and resume, a rolling restart, and a targeted
//! friendly shutdown of one server. Install with `cargo install --path . --bin kubectl-orc`;
//! kubectl finds `kubectl-orc` on the `PATH`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use orchestrator_operator::crd::{
    APPROVE_ANNOTATION, Approval, CanaryPhase, CanaryStatus, JobOutcomes, OPERATOR_CHANGE_ANNOTATION, OperatorChanges,
    OrchestratorCluster, PROMOTE_ANNOTATION, PlanAction, REPLACE_ANNOTATION,
};
use serde_json::json;

/// Read and drive orchestration clusters (`OrchestratorCluster`, short name `orc`).
#[derive(Parser, Debug)]
#[command(name = "kubectl orc", version)]
struct Cli {
    /// Namespace of the cluster (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The kubeconfig file to use (default: `KUBECONFIG`, else `~/.kube/config`).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Output: text for people, or the object read or changed as JSON or YAML.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The cluster's servers from both views, the step in progress, what blocks, the plan.
    Status {
        /// The cluster.
        name: String,
    },
    /// What the operator will do about the current spec (`status.plan`).
    Plan {
        /// The cluster.
        name: String,
    },
    /// Approves the plan of the current generation (`maintenance.approval: Manual`), once the
    /// operator has published it; once approved and its canary passed, promotes it (the rest
    /// of the roll goes on).
    Approve {
        /// The cluster.
        name: String,
        /// Approve only if this is still the current generation (the plan you read).
        #[arg(long)]
        generation: Option<i64>,
    },
    /// Stops starting maintenance steps (a step in progress finishes).
    Pause {
        /// The cluster.
        name: String,
    },
    /// Lets maintenance steps start again.
    Resume {
        /// The cluster.
        name: String,
    },
    /// Requests a rolling restart of every server started before now.
    Restart {
        /// The cluster.
        name: String,
    },
    /// Replaces one server: drained through the database, then evicted and replaced, under the
    /// roll's one-at-a-time rules.
    Drain {
        /// The cluster.
        name: String,
        /// The server (its pod name, e.g. `prod-1`).
        server: String,
    },
}

/// A failure, said for a person: what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("cannot load the Kubernetes configuration: {0} (check KUBECONFIG, --kubeconfig and --context)")]
    Config(String),
    #[error(
        "orchestratorcluster {name} not found in namespace {namespace}: `kubectl get orc -n {namespace}` lists them"
    )]
    NoCluster { name: String, namespace: String },
    #[error("{server} is not a server of {name} (servers: {servers})")]
    NoServer {
        name: String,
        server: String,
        servers: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error("the API server refused: {0}")]
    Api(#[from] kube::Error),
    #[error("cannot print: {0}")]
    Print(String),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let client = client(&cli).await?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let clusters: Api<OrchestratorCluster> = Api::namespaced(client.clone(), &namespace);
    let get = |name: &str| {
        let (clusters, name, namespace) = (clusters.clone(), name.to_string(), namespace.clone());
        async move {
            clusters
                .get_opt(&name)
                .await?
                .ok_or(Failure::NoCluster { name, namespace })
        }
    };
    // A merge patch of a cluster that does not exist fails as reading it would.
    let merge = |name: &str, patch: serde_json::Value| {
        let (clusters, name, namespace) = (clusters.clone(), name.to_string(), namespace.clone());
        async move {
            match clusters
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Err(kube::Error::Api(status)) if status.code == 404 => Err(Failure::NoCluster { name, namespace }),
                patched => Ok(patched?),
            }
        }
    };
    let output = cli.output;
    match &cli.command {
        Command::Status { name } => print_with(&get(name).await?, output, status_table),
        Command::Plan { name } => {
            let cr = get(name).await?;
            let Some(plan) = cr.status.as_ref().and_then(|s| s.plan.clone()) else {
                return Err(Failure::Refused(format!(
                    "{name} has no plan yet: the operator publishes it at its first look (is it running and watching namespace {namespace}?)"
                )));
            };
            print_with(&plan, output, |_| plan_table(&cr))
        }
        Command::Approve {
            name,
            generation: asked,
        } => {
            let cr = get(name).await?;
            let generation = cr.metadata.generation.unwrap_or_default();
            // A held operator change that waits for a person goes first.
            if let Some(pending) = cr
                .status
                .as_ref()
                .and_then(|s| s.pending_operator_change.as_ref())
                .filter(|_| cr.spec.maintenance.operator_changes == Some(OperatorChanges::Manual))
            {
                let hash = pending.template_hash.clone();
                let changes = pending.changes.join(", ");
                let patch = json!({"metadata": {"annotations": {OPERATOR_CHANGE_ANNOTATION: hash}}});
                let cr = merge(name, patch).await?;
                return said(
                    output,
                    &cr,
                    format!(
                        "{name}: the operator's change {hash} of the pod template is approved ({changes}); the roll replaces the servers"
                    ),
                );
            }
            if cr.spec.maintenance.approval != Approval::Manual {
                return said(
                    output,
                    &cr,
                    format!(
                        "{name}: nothing to approve: maintenance.approval is Automatic, so changes go ahead without one"
                    ),
                );
            }
            if let Some(asked) = asked.filter(|asked| *asked != generation) {
                return Err(Failure::Refused(format!(
                    "{name} is at generation {generation}, not {asked}: its spec changed since; read `kubectl orc plan {name}` again"
                )));
            }
            let plan = cr.status.as_ref().and_then(|s| s.plan.as_ref());
            if plan.map(|p| p.generation) != Some(generation) {
                return Err(Failure::Refused(format!(
                    "the plan of generation {generation} is not published yet{}: wait for the operator, read `kubectl orc plan {name}`, then approve",
                    plan.map(|p| format!(" (status.plan is of generation {})", p.generation))
                        .unwrap_or_default()
                )));
            }
            let approved = cr.annotations().get(APPROVE_ANNOTATION) == Some(&generation.to_string());
            // Approved, and its canary passed: what is left to approve is the rest of the roll.
            let passed = cr
                .status
                .as_ref()
                .and_then(|s| s.canary.as_ref())
                .filter(|c| c.version == cr.spec.version && c.phase == CanaryPhase::Passed);
            let promotes = approved
                && passed.is_some()
                && cr.annotations().get(PROMOTE_ANNOTATION) != Some(&generation.to_string());
            let read = match passed {
                Some(canary) => format!("{}{}", canary_lines(canary), plan_table(&cr)),
                None => plan_table(&cr),
            };
            let annotation = if promotes {
                PROMOTE_ANNOTATION
            } else {
                APPROVE_ANNOTATION
            };
            let cr = if approved && !promotes {
                cr
            } else {
                let patch = json!({"metadata": {"annotations": {annotation: generation.to_string()}}});
                merge(name, patch).await?
            };
            let now = cr.metadata.generation.unwrap_or_default();
            said(
                output,
                &cr,
                format!(
                    "{read}{name}: generation {generation} {}{}",
                    match (promotes, approved) {
                        (true, _) => "promoted past its canary: the roll goes on",
                        (false, true) => "was already approved",
                        (false, false) => "approved",
                    },
                    if now == generation {
                        String::new()
                    } else {
                        format!(
                            "; the spec has changed since (generation {now}), and that change needs its own approval: read `kubectl orc plan {name}`"
                        )
                    }
                ),
            )
        }
        Command::Pause { name } | Command::Resume { name } => {
            let paused = matches!(cli.command, Command::Pause { .. });
            let cr = merge(name, json!({"spec": {"maintenance": {"paused": paused}}})).await?;
            said(
                output,
                &cr,
                format!("{name}: maintenance {}", if paused { "paused" } else { "resumed" }),
            )
        }
        Command::Restart { name } => {
            // With its fraction: a server created in the same second before it is restarted
            // too (creation times have whole seconds), never one too few.
            let now = Timestamp::now().to_string();
            let cr = merge(name, json!({"spec": {"maintenance": {"restartRequestedAt": now}}})).await?;
            said(output, &cr, format!("{name}: rolling restart requested at {now}"))
        }
        Command::Drain { name, server } => {
            let cr = get(name).await?;
            let pods: Api<Pod> = Api::namespaced(client, &namespace);
            let pod = drainable(&pods, &cr, server).await?;
            let now = Timestamp::now().to_string();
            // Conditional on the pod read: a replacement made meanwhile is not asked for.
            let patch = json!({"metadata": {
                "resourceVersion": pod.resource_version(),
                "annotations": {REPLACE_ANNOTATION: now},
            }});
            let pod = match pods.patch(server, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    return Err(Failure::Refused(format!(
                        "{server} changed while being asked for (replaced or restarted?): check `kubectl orc status {name}` and run again"
                    )));
                }
                other => other?,
            };
            said(
                output,
                &pod,
                format!(
                    "{name}: {server} will be drained through the database and replaced, in turn and under the maintenance gates (`kubectl orc status {name}` follows it)"
                ),
            )
        }
    }
}

/// The client of `cli`'s kubeconfig and context, or of the pod's service account.
async fn client(cli: &Cli) -> Result<Client, Failure> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let unusable = |e: &dyn std::fmt::Display| Failure::Config(e.to_string());
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| unusable(&e))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| unusable(&e))?
        }
        None if cli.context.is_some() => Config::from_kubeconfig(&options).await.map_err(|e| unusable(&e))?,
        None => Config::infer().await.map_err(|e| unusable(&e))?,
    };
    Client::try_from(config).map_err(|e| unusable(&e))
}

/// The pod of `server` of `cr`, if a replacement may be asked for it now: a server of the
/// cluster with a pod, not terminating, not asked for already, not the step's.
async fn drainable(pods: &Api<Pod>, cr: &OrchestratorCluster, server: &str) -> Result<Pod, Failure> {
    let name = cr.name_any();
    let Some(status) = cr.status.clone() else {
        return Err(Failure::Refused(format!(
            "{name} has no status yet: the operator has not looked at it (is it running and watching this namespace?)"
        )));
    };
    let servers: Vec<String> = status
        .servers
        .iter()
        .filter(|s| s.pod_exists)
        .map(|s| s.name.clone())
        .collect();
    let no_server = || Failure::NoServer {
        name: name.clone(),
        server: server.to_string(),
        servers: servers.join(", "),
    };
    if !servers.iter().any(|s| s == server) {
        return Err(no_server());
    }
    if let Some(m) = status
        .maintenance
        .as_ref()
        .filter(|m| m.server.as_deref() == Some(server))
    {
        return Err(Failure::Refused(format!(
            "{server} is being replaced already (step {}, {}): `kubectl orc status {name}` follows it",
            m.step.as_deref().unwrap_or("-"),
            m.stage.as_deref().unwrap_or("-")
        )));
    }
    let pod = pods.get_opt(server).await?.ok_or_else(no_server)?;
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(Failure::Refused(format!(
            "{server} is terminating already; its replacement comes next (`kubectl orc status {name}`)"
        )));
    }
    if let Some(asked) = pod.annotations().get(REPLACE_ANNOTATION) {
        return Err(Failure::Refused(format!(
            "a replacement of {server} was asked at {asked}; the roll takes it in turn (`kubectl orc status {name}` says what it waits for)"
        )));
    }
    Ok(pod)
}

/// Says `text`, or prints `object` (what was read or changed) as JSON or YAML.
fn said<T: serde::Serialize>(output: Output, object: &T, text: String) -> Result<(), Failure> {
    print_with(object, output, |_| format!("{text}\n"))
}

/// Prints `value` as a table (`table`), JSON or YAML.
fn print_with<T: serde::Serialize>(value: &T, output: Output, table: impl Fn(&T) -> String) -> Result<(), Failure> {
    let text = match output {
        Output::Table => table(value),
        Output::Json => serde_json::to_string_pretty(value).map_err(|e| Failure::Print(e.to_string()))? + "\n",
        Output::Yaml => serde_yaml::to_string(value).map_err(|e| Failure::Print(e.to_string()))?,
    };
    print!("{text}");
    Ok(())
}

/// `text` in `colour` (an ANSI code) when standard output is a terminal.
fn coloured(text: &str, colour: u8) -> String {
    if std::io::stdout().is_terminal() {
        format!("\x1b[{colour}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

const GREEN: u8 = 32;
const RED: u8 = 31;
const YELLOW: u8 = 33;

/// Rows of `cells` with columns padded to their widest cell.
fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            line.join("  ").trim_end().to_string() + "\n"
        })
        .collect()
}

/// The status of `cr` for a person.
fn status_table(cr: &OrchestratorCluster) -> String {
    let name = cr.metadata.name.clone().unwrap_or_default();
    let Some(status) = &cr.status else {
        return format!("{name}: no status yet (is the operator running and watching this namespace?)\n");
    };
    let phase = format!("{:?}", status.phase);
    let phase = match phase.as_str() {
        "Ready" => coloured(&phase, GREEN),
        "Blocked" | "Degraded" => coloured(&phase, RED),
        _ => coloured(&phase, YELLOW),
    };
    let mut out = format!(
        "{name}  {phase}  {} of {} servers joined  version {}\n",
        status.ready_replicas,
        status.desired_replicas.unwrap_or(cr.spec.replicas),
        status.current_version.as_deref().unwrap_or(&cr.spec.version)
    );
    let mut rows = vec![
        [
            "SERVER", "POD", "READY", "DATABASE", "VERSION", "JOINED", "RESTARTS", "NODE", "ZONE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in &status.servers {
        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
        rows.push(vec![
            s.name.clone(),
            if s.pod_exists { "exists" } else { "missing" }.to_string(),
            yes_no(s.ready),
            s.state.clone().unwrap_or_else(|| "-".into()),
            s.version.clone().unwrap_or_else(|| "-".into()),
            yes_no(s.joined),
            s.restarts.to_string(),
            s.node.clone().unwrap_or_else(|| "-".into()),
            s.zone.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push('\n');
    out.push_str(&columns(&rows));
    for s in &status.servers {
        if let Some(why) = &s.disruption {
            out.push_str(&format!("{}: {why}\n", coloured(&format!("{} down", s.name), RED)));
        }
    }
    if let Some(m) = &status.maintenance {
        out.push_str(&format!(
            "\nmaintenance: {} step {} {} {}\n",
            m.reason.as_deref().unwrap_or("-"),
            m.step.as_deref().unwrap_or("-"),
            m.server.as_deref().unwrap_or(""),
            m.stage.as_deref().unwrap_or("")
        ));
    }
    for c in status
        .conditions
        .iter()
        .filter(|c| c.status == "True" && (c.type_.ends_with("Blocked") || c.type_ == "Degraded"))
    {
        out.push_str(&format!("{} ({}): {}\n", coloured(&c.type_, RED), c.reason, c.message));
    }
    match orchestrator_operator::window_at(&cr.spec.maintenance.windows, Timestamp::now()) {
        Ok(None) => {}
        Ok(Some((true, _))) => out.push_str("windows: one is open now\n"),
        Ok(Some((false, next))) => out.push_str(&format!(
            "windows: none open; the next opens at {}\n",
            next.map_or("-".to_string(), |t| t.to_string())
        )),
        Err(e) => out.push_str(&format!("windows: {}\n", coloured(&e.to_string(), RED))),
    }
    if let Some(a) = &status.autoscale {
        out.push_str(&format!(
            "autoscale: {} wanted, {} recommended, floor {}{}\n",
            a.desired_replicas,
            a.recommended_replicas.map_or("-".to_string(), |r| r.to_string()),
            a.floor,
            a.limited_by
                .as_ref()
                .map(|l| format!(", limited by {l}"))
                .unwrap_or_default()
        ));
    }
    if let Some(c) = &status.canary {
        out.push_str(&canary_lines(c));
    }
    if let Some(p) = &status.pending_operator_change {
        out.push_str(&format!(
            "{} {} since {}: {}\n  {}\n",
            coloured("operator change pending", YELLOW),
            p.template_hash,
            p.since.0,
            p.changes.join(", "),
            p.waiting_for
        ));
    }
    out.push('\n');
    out.push_str(&plan_table(cr));
    out
}

/// `status.canary` for a person: where it stands and the figures it is judged on.
fn canary_lines(c: &CanaryStatus) -> String {
    let phase = format!("{:?}", c.phase);
    let phase = match c.phase {
        CanaryPhase::Passed => coloured(&phase, GREEN),
        CanaryPhase::Failed | CanaryPhase::RolledBack => coloured(&phase, RED),
        _ => coloured(&phase, YELLOW),
    };
    let jobs = |o: &Option<JobOutcomes>| o.as_ref().map_or("-".to_string(), JobOutcomes::to_string);
    let mut out = format!(
        "canary: {phase} version {} on {} (the others run {}){}{}\n",
        c.version,
        if c.servers.is_empty() {
            "-".to_string()
        } else {
            c.servers.join(", ")
        },
        c.from_version,
        c.bake_started_at
            .as_ref()
            .map(|t| format!(", baking since {}", t.0))
            .unwrap_or_default(),
        c.shortfall.map(|why| format!(", {why:?}")).unwrap_or_default(),
    );
    if c.canary_jobs.is_some() {
        out.push_str(&format!(
            "  jobs: canary {}; other servers {}\n",
            jobs(&c.canary_jobs),
            jobs(&c.other_jobs)
        ));
    }
    if let Some(message) = &c.message {
        out.push_str(&format!("  {message}\n"));
    }
    out
}

/// `status.plan` of `cr` for a person.
fn plan_table(cr: &OrchestratorCluster) -> String {
    let Some(plan) = cr.status.as_ref().and_then(|s| s.plan.as_ref()) else {
        return "plan: none yet\n".to_string();
    };
    let mut out = format!(
        "plan for generation {}: {:?}{}{}\n",
        plan.generation,
        plan.strategy,
        if plan.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", plan.reason)
        },
        if plan.changes.is_empty() {
            String::new()
        } else {
            format!(": {}", plan.changes.join(", "))
        }
    );
    for (n, step) in plan.steps.iter().enumerate() {
        out.push_str(&format!(
            "  {}. {:?} {}\n",
            n + 1,
            step.action,
            match (step.action, step.server.as_deref()) {
                (_, Some(server)) => server,
                (PlanAction::Bake, None) => "(the canary servers)",
                (_, None) => "(every server)",
            }
        ));
    }
    if plan.more_steps > 0 {
        out.push_str(&format!("  ... and {} more\n", plan.more_steps));
    }
    for gate in &plan.gates {
        out.push_str(&format!("  waits: {}\n", coloured(gate, YELLOW)));
    }
    if let Some(e) = &plan.estimate {
        let seconds = |s: Option<i64>| s.map_or("unknown".to_string(), |s| format!("{s} s"));
        out.push_str(&format!(
            "  estimate: {}, downtime {} ({})\n",
            seconds(e.duration_seconds),
            seconds(e.downtime_seconds),
            e.basis
        ));
    }
    out
}
