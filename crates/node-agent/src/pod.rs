//! One worker per pod bound to the agent's node: it prepares the container (image, env,
//! credentials), runs it as a local process, probes it, restarts it per `restartPolicy`,
//! reports the pod status, and on deletion sends SIGTERM, waits the grace period, sends
//! SIGKILL and finally deletes the pod with grace 0, as the kubelet does.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    Pod, PodCondition, PodIP,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::config::Kubeconfig;
use kube::{Api, Client, ResourceExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::{Instant, interval_at};

use crate::env::{ApiSources, container_env, expand};
use crate::images::ImageMap;
use crate::kubelet::{ContainerLogs, LogIndex, log_file};
use crate::node::NODE_IP;
use crate::probe::{ProbeSpec, ProbeState};
use crate::token;

/// Everything the pod workers share.
pub struct Agent {
    /// API client with the agent's own credentials.
    pub client: Client,
    /// The agent's kubeconfig, the template of pods' service account kubeconfigs.
    pub kubeconfig: Kubeconfig,
    /// Name of the agent's Node.
    pub node_name: String,
    /// Which executable runs which image.
    pub images: ImageMap,
    /// Root of the per-pod folders (logs, credentials).
    pub state_dir: PathBuf,
    /// HTTP client of the probes.
    pub http: reqwest::Client,
    /// Pod IPs handed out, by pod uid.
    pub ips: Mutex<IpPool>,
    /// The containers' logs, served by the kubelet endpoint.
    pub logs: LogIndex,
    /// Process groups of running containers, killed when the agent stops.
    pub running: Mutex<BTreeSet<i32>>,
}

/// Hands out unique pod IPs from the node's /16 (`127.N.0.0/16`).
pub struct IpPool {
    prefix: String,
    next: u32,
    by_pod: HashMap<String, String>,
}

impl IpPool {
    /// The pool of a pod CIDR `127.N.0.0/16`, or why it cannot be one.
    pub fn of_cidr(cidr: &str) -> Result<Self, String> {
        let refuse = || format!("pod CIDR {cidr:?} is not of the form 127.N.0.0/16 (N from 1 to 254)");
        let rest = cidr.strip_prefix("127.").ok_or_else(refuse)?;
        let (octet, tail) = rest.split_once('.').ok_or_else(refuse)?;
        let n: u8 = octet.parse().map_err(|_| refuse())?;
        if tail != "0.0/16" || n == 0 || n == 255 {
            return Err(refuse());
        }
        Ok(Self {
            prefix: format!("127.{n}"),
            next: 0,
            by_pod: HashMap::new(),
        })
    }

    /// The IP of pod `uid`, reusing `previous` (from the pod status) when it has one.
    pub fn assign(&mut self, uid: &str, previous: Option<String>) -> String {
        if let Some(ip) = self.by_pod.get(uid) {
            return ip.clone();
        }
        let ip = previous
            .filter(|ip| !self.by_pod.values().any(|used| used == ip))
            .unwrap_or_else(|| {
                loop {
                    self.next = self.next % 60_000 + 1;
                    let candidate = format!(
                        "{}.{}.{}",
                        self.prefix,
                        (self.next + 1) / 250,
                        (self.next + 1) % 250 + 2
                    );
                    if !self.by_pod.values().any(|used| *used == candidate) {
                        break candidate;
                    }
                }
            });
        self.by_pod.insert(uid.to_string(), ip.clone());
        ip
    }

    /// Frees the IP of pod `uid`.
    pub fn release(&mut self, uid: &str) {
        self.by_pod.remove(uid);
    }
}

/// How a supervised container run ended.
enum RunEnd {
    /// The process exited by itself.
    Exited(ExitStatus),
    /// The liveness probe failed and the process was killed.
    LivenessFailed(ExitStatus),
    /// The pod is being deleted; the process was stopped gracefully.
    Deleting(ExitStatus),
    /// The pod is gone from the API; the process was killed.
    Gone,
}

struct Worker {
    agent: Arc<Agent>,
    pod: Pod,
    ip: String,
    dir: PathBuf,
    restarts: i32,
    /// The log file number of the current run (or of the last, while none runs).
    run: i32,
    /// The number of the next run's log file.
    next_run: i32,
    /// The last run that ended, if one did (`kubectl logs --previous`).
    last_terminated: Option<i32>,
    ready: bool,
    ready_since: Time,
    started: Time,
    last_state: Option<ContainerState>,
    /// A status the API server did not take (it was away): posted again until it is.
    unpublished: Option<(String, ContainerState)>,
}

/// How often a status the API server did not take is posted again while the container runs.
const REPUBLISH: Duration = Duration::from_secs(2);

/// Runs the pod whose latest version `updates` carries (`None` once it is gone).
pub async fn run(agent: Arc<Agent>, mut updates: watch::Receiver<Option<Pod>>) {
    let Some(pod) = updates.borrow_and_update().clone() else {
        return;
    };
    let uid = pod.uid().unwrap_or_default();
    let previous_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
    let ip = agent.ips.lock().unwrap().assign(&uid, previous_ip);
    // One folder per pod object, as the kubelet's `/var/log/pods/<ns>_<pod>_<uid>`: a
    // replacement under the same name starts with no logs and no `--previous`.
    let dir = agent.state_dir.join("pods").join(format!(
        "{}_{}_{uid}",
        pod.namespace().unwrap_or_default(),
        pod.name_any()
    ));
    if let Err(error) = std::fs::create_dir_all(&dir) {
        tracing::error!(pod = %pod.name_any(), %error, "cannot create the pod folder");
    }
    // Runs a previous agent started for this pod keep their files: the next one follows them.
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone());
    let first_run = container.map_or(0, |c| next_log_number(&dir, &c));
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let finished = matches!(phase, Some("Succeeded" | "Failed"));
    let now = Time(Timestamp::now());
    let mut worker = Worker {
        agent: agent.clone(),
        pod,
        ip,
        dir,
        restarts: 0,
        // Until a run starts, `kubectl logs` shows the last one an earlier agent ran (a
        // finished pod's, which runs no more).
        run: (first_run - 1).max(0),
        next_run: first_run,
        // Of an earlier agent's runs, the one before the last (for a finished pod, whose last
        // run is its final one) or the last (for a pod that runs again).
        last_terminated: Some(first_run - if finished { 2 } else { 1 }).filter(|run| *run >= 0),
        ready: false,
        ready_since: now.clone(),
        started: now,
        last_state: None,
        unpublished: None,
    };
    // The newest pod of this name on this node: its entry replaces an older pod's.
    let key = worker.name();
    agent
        .logs
        .lock()
        .unwrap()
        .insert(key.clone(), worker.container_logs(false));
    worker.run(&mut updates).await;
    agent.ips.lock().unwrap().release(&uid);
    let mut logs = agent.logs.lock().unwrap();
    if logs.get(&key).is_some_and(|l| l.dir == worker.dir) {
        logs.remove(&key);
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

impl Worker {
    /// `namespace/name` of the pod (also its key in the log index).
    fn name(&self) -> String {
        format!("{}/{}", self.pod.namespace().unwrap_or_default(), self.pod.name_any())
    }

    fn container_logs(&self, running: bool) -> ContainerLogs {
        ContainerLogs {
            dir: self.dir.clone(),
            container: self.container().name,
            run: self.run,
            running,
            last_terminated: self.last_terminated,
        }
    }

    /// Tells the log endpoint where the current run's log is and whether it runs, unless a
    /// newer pod of the same name took the entry (this one is being deleted).
    fn index_logs(&self, running: bool) {
        if let Some(entry) = self.agent.logs.lock().unwrap().get_mut(&self.name())
            && entry.dir == self.dir
        {
            *entry = self.container_logs(running);
        }
    }

    fn deleting(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    fn container(&self) -> Container {
        self.pod
            .spec
            .as_ref()
            .map(|s| s.containers[0].clone())
            .unwrap_or_default()
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn grace(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| self.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30);
        Duration::from_secs(seconds.max(0) as u64)
    }

    /// Takes the next version of the pod; false once the pod is gone.
    async fn next_update(&mut self, updates: &mut watch::Receiver<Option<Pod>>) -> bool {
        if updates.changed().await.is_err() {
            return false;
        }
        match updates.borrow_and_update().clone() {
            Some(pod) => {
                self.pod = pod;
                true
            }
            None => false,
        }
    }

    /// Waits for a pod update or `delay`; false once the pod is gone.
    async fn wait_update_or(&mut self, updates: &mut watch::Receiver<Option<Pod>>, delay: Duration) -> bool {
        tokio::select! {
            alive = self.next_update(updates) => alive,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Waits `delay` before a restart; only a deletion ends it early (the agent's own status
    /// writes come back as updates and must not shorten it into a hot loop).
    async fn back_off(&mut self, updates: &mut watch::Receiver<Option<Pod>>, delay: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                alive = self.next_update(updates) => {
                    if !alive {
                        return false;
                    }
                    if self.deleting() {
                        return true;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return true,
            }
        }
    }

    async fn run(&mut self, updates: &mut watch::Receiver<Option<Pod>>) {
        let phase = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return self.finish(updates).await;
        }
        let spec = self.pod.spec.clone().unwrap_or_default();
        if spec.containers.len() != 1 || spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
            let message = "the node agent runs pods of exactly one container and no init containers";
            self.publish("Failed", waiting("Unsupported", message)).await;
            return self.finish(updates).await;
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            if self.deleting() {
                return self.delete_now().await;
            }
            let command = match self.prepare().await {
                Ok(command) => command,
                Err((reason, message)) => {
                    tracing::warn!(pod = %self.name(), reason, %message, "container cannot start");
                    self.publish("Pending", waiting(reason, &message)).await;
                    if !self.wait_update_or(updates, Duration::from_secs(2)).await {
                        return;
                    }
                    continue;
                }
            };
            let end = match self.start(command).await {
                Ok(child) => self.supervise(child, updates).await,
                Err(message) => {
                    self.publish("Pending", waiting("RunContainerError", &message)).await;
                    if !self.wait_update_or(updates, Duration::from_secs(2)).await {
                        return;
                    }
                    continue;
                }
            };
            let status = match end {
                RunEnd::Gone => return,
                RunEnd::Deleting(status) => {
                    self.publish("Running", terminated(status, &self.started)).await;
                    return self.delete_now().await;
                }
                RunEnd::Exited(status) | RunEnd::LivenessFailed(status) => status,
            };
            let restart = match self.restart_policy().as_str() {
                "Never" => false,
                "OnFailure" => !status.success() || matches!(end, RunEnd::LivenessFailed(_)),
                _ => true,
            };
            let mut state = terminated(status, &self.started);
            if let Some(terminated) = state.terminated.as_mut() {
                terminated.message = self.termination_message(status);
            }
            if !restart {
                let phase = if status.success() { "Succeeded" } else { "Failed" };
                self.publish(phase, state).await;
                return self.finish(updates).await;
            }
            self.last_state = Some(state);
            // The run that ended is `--previous` from now on, also while the next one waits.
            self.last_terminated = Some(self.run);
            self.index_logs(false);
            self.restarts += 1;
            let message = format!("back-off {}s restarting failed container", backoff.as_secs());
            self.publish("Running", waiting("CrashLoopBackOff", &message)).await;
            if !self.back_off(updates, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Resolves the executable, the environment and the credentials of the container.
    async fn prepare(&self) -> Result<Command, (&'static str, String)> {
        let container = self.container();
        let image = container.image.clone().unwrap_or_default();
        // A reference the kubelet could not parse is never pulled, nor run here.
        crate::images::check_reference(&image).map_err(|m| ("InvalidImageName", m))?;
        let binary = self.agent.images.resolve(&image).map_err(|m| ("ErrImagePull", m))?;
        let mut pod = self.pod.clone();
        let status = pod.status.get_or_insert_with(Default::default);
        status.pod_ip = Some(self.ip.clone());
        status.host_ip = Some(NODE_IP.into());
        let sources = ApiSources {
            client: self.agent.client.clone(),
            namespace: pod.namespace().unwrap_or_default(),
        };
        let env = container_env(&pod, &container, &sources)
            .await
            .map_err(|m| ("CreateContainerConfigError", m))?;
        let mut base = vec![
            ("PATH".to_string(), "/usr/local/bin:/usr/bin:/bin".to_string()),
            ("HOME".to_string(), self.dir.display().to_string()),
            ("HOSTNAME".to_string(), pod.name_any()),
        ];
        if token::wants_token(&pod) {
            let token = token::request_token(&self.agent.client, &pod)
                .await
                .map_err(|m| ("CreateContainerConfigError", m))?;
            let path = token::write_kubeconfig(
                &self.agent.kubeconfig,
                &self.dir,
                &token,
                &pod.namespace().unwrap_or_default(),
            )
            .map_err(|m| ("CreateContainerConfigError", m))?;
            base.push(("KUBECONFIG".into(), path));
        }
        base.retain(|(name, _)| !env.iter().any(|(n, _)| n == name));
        base.extend(env);
        // `command` replaces the image's entrypoint: its first word names the image's binary.
        let mut argv: Vec<String> = container
            .command
            .clone()
            .unwrap_or_default()
            .into_iter()
            .skip(1)
            .collect();
        argv.extend(container.args.clone().unwrap_or_default());
        let argv: Vec<String> = argv.iter().map(|a| expand(a, &base)).collect();
        let mut command = Command::new(binary);
        command
            .args(argv)
            .env_clear()
            .envs(base)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        Ok(command)
    }

    fn log_path(&self) -> PathBuf {
        log_file(&self.dir, &self.container().name, self.run)
    }

    /// The kubelet's `terminationMessagePolicy: FallbackToLogsOnError`: a failed container's
    /// termination message is the tail of its log.
    fn termination_message(&self, status: ExitStatus) -> Option<String> {
        let policy = self.container().termination_message_policy;
        if status.success() || policy.as_deref() != Some("FallbackToLogsOnError") {
            return None;
        }
        let log = std::fs::read(self.log_path()).ok()?;
        Some(log_tail(&log, TERMINATION_MESSAGE_LINES, TERMINATION_MESSAGE_BYTES)).filter(|m| !m.is_empty())
    }

    async fn start(&mut self, mut command: Command) -> Result<Child, String> {
        self.run = self.next_run;
        self.next_run += 1;
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        command.stdout(log).stderr(log_err).process_group(0).kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to signal the child when
        // the agent dies, so that no container outlives the agent.
        unsafe {
            command.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
        }
        let child = command.spawn().map_err(|e| format!("start container: {e}"))?;
        let pid = child.id().unwrap_or_default() as i32;
        self.agent.running.lock().unwrap().insert(pid);
        self.started = now();
        self.ready = false;
        self.index_logs(true);
        tracing::info!(pod = %self.name(), pid, ip = %self.ip, "container started");
        let state = ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(self.started.clone()),
            }),
            ..ContainerState::default()
        };
        self.publish("Running", state).await;
        Ok(child)
    }

    async fn supervise(&mut self, mut child: Child, updates: &mut watch::Receiver<Option<Pod>>) -> RunEnd {
        let container = self.container();
        let pid = child.id().unwrap_or_default() as i32;
        let readiness = container
            .readiness_probe
            .as_ref()
            .map(|p| ProbeSpec::new(&container, p));
        let liveness = container.liveness_probe.as_ref().map(|p| ProbeSpec::new(&container, p));
        let far = Duration::from_secs(86_400 * 365);
        let start = Instant::now();
        let mut ready_tick = interval_at(
            start + readiness.as_ref().map_or(far, |p| p.initial_delay),
            readiness.as_ref().map_or(far, |p| p.period),
        );
        let mut live_tick = interval_at(
            start + liveness.as_ref().map_or(far, |p| p.initial_delay),
            liveness.as_ref().map_or(far, |p| p.period),
        );
        let (mut ready_state, mut live_state) = (ProbeState::default(), ProbeState::default());
        let mut republish = interval_at(start + REPUBLISH, REPUBLISH);
        // Not polled while nothing waits: no burst of missed ticks when something does.
        republish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if readiness.is_none() {
            self.set_ready(true).await;
        }
        let end = loop {
            tokio::select! {
                status = child.wait() => {
                    let status = status.unwrap_or_else(|_| ExitStatus::from_raw(255 << 8));
                    tracing::info!(pod = %self.name(), ?status, "container exited");
                    break RunEnd::Exited(status);
                }
                _ = ready_tick.tick(), if readiness.is_some() => {
                    let probe = readiness.as_ref().unwrap();
                    let result = probe.run(&self.agent.http, &self.ip).await;
                    if let Some(passing) = ready_state.record(probe, result.is_ok()) {
                        self.set_ready(passing).await;
                    }
                }
                _ = republish.tick(), if self.unpublished.is_some() => {
                    if let Some((phase, state)) = self.unpublished.take() {
                        self.publish(&phase, state).await;
                    }
                }
                _ = live_tick.tick(), if liveness.is_some() => {
                    let probe = liveness.as_ref().unwrap();
                    let result = probe.run(&self.agent.http, &self.ip).await;
                    if live_state.record(probe, result.is_ok()) == Some(false) {
                        tracing::warn!(pod = %self.name(), error = ?result.err(), "liveness probe failed; restarting");
                        break RunEnd::LivenessFailed(stop(&mut child, self.grace()).await);
                    }
                }
                alive = self.next_update(updates) => {
                    if !alive {
                        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                        let _ = child.wait().await;
                        break RunEnd::Gone;
                    }
                    if self.deleting() {
                        tracing::info!(pod = %self.name(), grace = ?self.grace(), "pod deleted: stopping container");
                        break RunEnd::Deleting(stop(&mut child, self.grace()).await);
                    }
                }
            }
        };
        self.agent.running.lock().unwrap().remove(&pid);
        self.ready = false;
        self.index_logs(false);
        end
    }

    async fn set_ready(&mut self, ready: bool) {
        if ready != self.ready {
            self.ready = ready;
            self.ready_since = now();
            tracing::info!(pod = %self.name(), ready, "readiness changed");
            let state = ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(self.started.clone()),
                }),
                ..ContainerState::default()
            };
            self.publish("Running", state).await;
        }
    }

    /// Writes the pod status; one the API server does not take (it is away, as in a control
    /// plane restart) is kept and posted again, as a kubelet does.
    async fn publish(&mut self, phase: &str, state: ContainerState) {
        let status = self.status_of(phase, &state);
        let pods = Api::<Pod>::namespaced(self.agent.client.clone(), &self.pod.namespace().unwrap_or_default());
        match pods
            .patch_status(
                &self.pod.name_any(),
                &PatchParams::default(),
                // The uid makes the API server refuse a status meant for an earlier pod of
                // the same name.
                // A strategic merge patch merges the conditions by type: those others set (the
                // API server's `DisruptionTarget` on an eviction) stay, as with the kubelet's.
                &Patch::Strategic(json!({"metadata": {"uid": self.pod.uid()}, "status": status})),
            )
            .await
        {
            Ok(_) => self.unpublished = None,
            Err(error) => {
                tracing::warn!(pod = %self.name(), %error, "cannot update pod status; posting it again later");
                self.unpublished = Some((phase.to_string(), state));
            }
        }
    }

    /// The pod status: phase, IPs, conditions and the container's status.
    fn status_of(&self, phase: &str, state: &ContainerState) -> serde_json::Value {
        let container = self.container();
        let running = state.running.is_some();
        let ready = self.ready && running;
        let ready_text = if ready { "True" } else { "False" };
        let condition = |type_: &str, status: &str, since: &Time| PodCondition {
            type_: type_.into(),
            status: status.into(),
            last_transition_time: Some(since.clone()),
            ..PodCondition::default()
        };
        let created = self.pod.metadata.creation_timestamp.clone().unwrap_or_else(now);
        json!({
            "phase": phase,
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "podIP": self.ip,
            "podIPs": [PodIP { ip: self.ip.clone() }],
            "startTime": created,
            "conditions": [
                condition("PodScheduled", "True", &created),
                condition("Initialized", "True", &created),
                condition("PodReadyToStartContainers", "True", &created),
                condition("ContainersReady", ready_text, &self.ready_since),
                condition("Ready", ready_text, &self.ready_since),
            ],
            "containerStatuses": [ContainerStatus {
                name: container.name.clone(),
                image: container.image.clone().unwrap_or_default(),
                image_id: String::new(),
                ready,
                started: Some(running),
                restart_count: self.restarts,
                state: Some(state.clone()),
                last_state: self.last_state.clone(),
                ..ContainerStatus::default()
            }],
        })
    }

    /// A pod that will not run again: wait for its deletion, then complete it.
    async fn finish(&mut self, updates: &mut watch::Receiver<Option<Pod>>) {
        while !self.deleting() {
            // A final status the API server did not take (it was away) is posted again.
            let alive = match self.unpublished.take() {
                Some((phase, state)) => {
                    self.publish(&phase, state).await;
                    self.wait_update_or(updates, REPUBLISH).await
                }
                None => self.next_update(updates).await,
            };
            if !alive {
                return;
            }
        }
        self.delete_now().await;
    }

    /// The final delete with grace 0, once the container has stopped.
    async fn delete_now(&self) {
        let pods = Api::<Pod>::namespaced(self.agent.client.clone(), &self.pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: self.pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&self.pod.name_any(), &params).await {
            Ok(_) => tracing::info!(pod = %self.name(), "pod deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(error) => tracing::warn!(pod = %self.name(), %error, "final pod delete failed"),
        }
    }
}

/// The number of the next log file of `container` in the pod folder `dir`: one more than the
/// highest there (files of runs an earlier agent started), 0 when there is none.
fn next_log_number(dir: &std::path::Path, container: &str) -> i32 {
    let prefix = format!("{container}.");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_prefix(&prefix)?.strip_suffix(".log")?.parse::<i32>().ok()
        })
        .max()
        .map_or(0, |highest| highest + 1)
}

/// SIGTERM to the container's process group, SIGKILL after `grace`.
async fn stop(child: &mut Child, grace: Duration) -> ExitStatus {
    let pid = Pid::from_raw(child.id().unwrap_or_default() as i32);
    let _ = killpg(pid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => status,
        _ => {
            let _ = killpg(pid, Signal::SIGKILL);
            child
                .wait()
                .await
                .unwrap_or_else(|_| ExitStatus::from_raw(Signal::SIGKILL as i32))
        }
    }
}

fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message: Some(message.into()),
        }),
        ..ContainerState::default()
    }
}

/// Lines of log a fallback termination message keeps at most (as the kubelet).
const TERMINATION_MESSAGE_LINES: usize = 80;
/// Bytes of log a fallback termination message keeps at most (as the kubelet).
const TERMINATION_MESSAGE_BYTES: usize = 2048;

/// The last `max_lines` lines of `log`, cut to its last `max_bytes` bytes.
fn log_tail(log: &[u8], max_lines: usize, max_bytes: usize) -> String {
    let text = String::from_utf8_lossy(log);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let tail = lines[lines.len().saturating_sub(max_lines)..].join("\n");
    let mut start = tail.len().saturating_sub(max_bytes);
    while !tail.is_char_boundary(start) {
        start += 1;
    }
    tail[start..].to_string()
}

/// The terminated state of an exit status, with the kubelet's exit code convention
/// (128 + signal for a process killed by a signal).
fn terminated(status: ExitStatus, started: &Time) -> ContainerState {
    let (exit_code, signal) = match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (128 + signal, Some(signal)),
        (None, None) => (255, None),
    };
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code,
            signal,
            reason: Some(if exit_code == 0 { "Completed" } else { "Error" }.into()),
            started_at: Some(started.clone()),
            finished_at: Some(now()),
            ..ContainerStateTerminated::default()
        }),
        ..ContainerState::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_are_unique_and_reused_per_pod() {
        let mut pool = IpPool::of_cidr("127.2.0.0/16").unwrap();
        let a = pool.assign("a", None);
        let b = pool.assign("b", None);
        assert_ne!(a, b);
        assert!(a.starts_with("127.2."), "{a}");
        for bad in ["10.0.0.0/16", "127.0.0.0/16", "127.2.0.0/24", "127.x.0.0/16"] {
            assert!(IpPool::of_cidr(bad).is_err(), "{bad}");
        }
        assert_eq!(pool.assign("a", None), a);
        let c = pool.assign("c", Some(b.clone()));
        assert_ne!(c, b, "an IP in use is not handed out twice");
        pool.release("a");
        assert_eq!(
            pool.assign("d", Some(a.clone())),
            a,
            "a freed IP from the pod status is reused"
        );
    }

    #[test]
    fn log_files_continue_the_numbering_of_an_earlier_agent() {
        let dir = std::env::temp_dir().join(format!("orc-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(next_log_number(&dir, "server"), 0);
        for name in [
            "server.0.log",
            "server.2.log",
            "other.7.log",
            "server.x.log",
            "kubeconfig",
        ] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        assert_eq!(next_log_number(&dir, "server"), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn termination_message_is_the_log_tail() {
        let log: String = (1..=100).map(|n| format!("line {n}\n")).collect();
        let tail = log_tail(log.as_bytes(), 80, 2048);
        assert!(tail.starts_with("line 21\n") && tail.ends_with("line 100"), "{tail}");
        assert_eq!(log_tail(log.as_bytes(), 80, 8), "line 100");
        assert_eq!(log_tail("é".repeat(10).as_bytes(), 80, 3), "é");
    }

    #[test]
    fn exit_codes_follow_the_kubelet_convention() {
        let started = now();
        let killed = terminated(ExitStatus::from_raw(9), &started).terminated.unwrap();
        assert_eq!((killed.exit_code, killed.signal), (137, Some(9)));
        let clean = terminated(ExitStatus::from_raw(0), &started).terminated.unwrap();
        assert_eq!((clean.exit_code, clean.reason.as_deref()), (0, Some("Completed")));
        let failed = terminated(ExitStatus::from_raw(3 << 8), &started).terminated.unwrap();
        assert_eq!((failed.exit_code, failed.reason.as_deref()), (3, Some("Error")));
    }
}
