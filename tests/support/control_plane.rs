//! The local cluster's control plane stopped and started for real, as a managed cluster's is
//! during its upgrades: the whole of it (`kwokctl stop cluster`: etcd, kube-apiserver, the
//! controller-manager, the scheduler), or only the kube-apiserver process, killed and started
//! again with its own command line (etcd and the controllers keep running). Only for tests
//! that run alone (`hack/e2e.sh` runs module `serial` after the others): every client of the
//! cluster loses it meanwhile.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::e2e::root;
use super::helm;

/// What is stopped.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outage {
    /// Every process of the control plane, etcd included.
    ControlPlane,
    /// The kube-apiserver alone.
    ApiServer,
}

/// The local cluster's name (`hack/cluster-up.sh`).
fn cluster_name() -> String {
    std::env::var("ORC_CLUSTER_NAME").unwrap_or_else(|_| "orchestrator".into())
}

/// kwokctl's folder of the local cluster.
fn cluster_dir() -> PathBuf {
    root().join(".local/kwok/clusters").join(cluster_name())
}

/// How to start the kube-apiserver again: its command line, folder and environment.
#[derive(Debug)]
pub(crate) struct Process {
    args: Vec<String>,
    cwd: PathBuf,
    env: Vec<(String, String)>,
}

fn apiserver_pid_file() -> PathBuf {
    cluster_dir().join("pids/kube-apiserver.pid")
}

fn read_process(pid: i32) -> Process {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    // NUL-separated, NUL-terminated: an empty argument stays one.
    let split = |path: &Path| -> Vec<String> {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        bytes
            .strip_suffix(&[0])
            .unwrap_or(&bytes)
            .split(|b| *b == 0)
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect()
    };
    Process {
        args: split(&proc.join("cmdline")),
        cwd: std::fs::read_link(proc.join("cwd")).unwrap(),
        env: split(&proc.join("environ"))
            .into_iter()
            .filter_map(|entry| entry.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect(),
    }
}

/// Sends SIGTERM to `pid` and waits (up to 30 s, then SIGKILL) until it is gone.
async fn terminate(pid: i32) {
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let started = Instant::now();
    loop {
        if kill(pid, None).is_err() {
            return;
        }
        let waited = started.elapsed();
        if waited > Duration::from_secs(30) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        assert!(waited < Duration::from_secs(40), "process {pid} did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What was stopped, and how to start it again.
#[derive(Debug)]
enum What {
    /// `kwokctl stop cluster` stopped it.
    ControlPlane,
    /// The kube-apiserver process was stopped; how to start it again.
    ApiServer(Process),
}

impl What {
    /// Starts it again (blocking: also run from a drop, so it reports instead of panicking).
    fn start(self) -> Result<(), String> {
        match self {
            What::ControlPlane => kwokctl("start"),
            What::ApiServer(process) => {
                let log = std::fs::OpenOptions::new()
                    .append(true)
                    .open(cluster_dir().join("logs/kube-apiserver.log"))
                    .map_err(|e| format!("open the kube-apiserver log: {e}"))?;
                // Its own process group, not a child the test's runtime kills: it outlives the
                // test as kwokctl's did, and `kwokctl delete cluster` stops it through the pid
                // file.
                let mut child = std::process::Command::new(&process.args[0])
                    .args(&process.args[1..])
                    .current_dir(&process.cwd)
                    .env_clear()
                    .envs(process.env)
                    .stdout(log.try_clone().map_err(|e| e.to_string())?)
                    .stderr(log)
                    .process_group(0)
                    .spawn()
                    .map_err(|e| format!("start kube-apiserver again: {e}"))?;
                std::fs::write(apiserver_pid_file(), child.id().to_string()).map_err(|e| e.to_string())?;
                // Reaped when it ends (stopped again by a test), so no zombie is left behind.
                std::thread::spawn(move || child.wait());
                Ok(())
            }
        }
    }
}

/// A stopped control plane (or API server). [`start`] starts it again; so does dropping it (a
/// test that failed meanwhile), so that the tests after it find a cluster.
#[derive(Debug)]
pub(crate) struct Stopped(Option<What>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(what) = self.0.take()
            && let Err(error) = what.start()
        {
            eprintln!("could not start the control plane again after a failed test: {error}");
        }
    }
}

/// Runs `kwokctl <verb> cluster` on the local cluster (blocking), with the binary of the local
/// cluster's tools (`hack/build-tools.sh` prints their folder last).
fn kwokctl(verb: &str) -> Result<(), String> {
    let tools = std::process::Command::new("bash")
        .arg(root().join("hack/build-tools.sh"))
        .output()
        .expect("run hack/build-tools.sh");
    let folder = String::from_utf8_lossy(&tools.stdout);
    let kwokctl = PathBuf::from(folder.lines().last().unwrap_or_default().trim()).join("kwokctl");
    let output = std::process::Command::new(kwokctl)
        .args([verb, "cluster", "--name", &cluster_name()])
        .env("KWOK_WORKDIR", root().join(".local/kwok"))
        .output()
        .map_err(|e| format!("kwokctl {verb} cluster: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "kwokctl {verb} cluster: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Stops what `outage` names; returns once it no longer answers.
pub(crate) async fn stop(outage: Outage) -> Stopped {
    match outage {
        Outage::ControlPlane => {
            tokio::task::spawn_blocking(|| kwokctl("stop")).await.unwrap().unwrap();
            Stopped(Some(What::ControlPlane))
        }
        Outage::ApiServer => {
            let pid: i32 = std::fs::read_to_string(apiserver_pid_file())
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let process = read_process(pid);
            terminate(pid).await;
            Stopped(Some(What::ApiServer(process)))
        }
    }
}

/// Starts again what `stopped` stopped, then waits (up to two minutes) until the API server
/// says it is ready. Returns when the API server first answered a request (`/version`, polled
/// every 100 ms from before the start, so the instant depends neither on how long
/// `kwokctl start` takes to return nor on `/readyz`, which clients do not wait for).
pub(crate) async fn start(mut stopped: Stopped) -> Instant {
    let answered = tokio::spawn(answered(Duration::from_secs(120)));
    if let Some(what) = stopped.0.take() {
        tokio::task::spawn_blocking(move || what.start())
            .await
            .unwrap()
            .unwrap();
    }
    let answered = answered.await.expect("the answer poll");
    ready(Duration::from_secs(120)).await;
    answered
}

/// Waits until the API server answers `/version`; when the request that it first answered was
/// sent.
async fn answered(timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        let asked = Instant::now();
        if helm::run("kubectl", &["get", "--raw", "/version"])
            .await
            .status
            .success()
        {
            return asked;
        }
        assert!(
            Instant::now() < deadline,
            "the API server did not answer within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the API server answers `/readyz` with `ok`; the instant it first did.
pub(crate) async fn ready(timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        let out = helm::run("kubectl", &["get", "--raw", "/readyz"]).await;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the API server is not ready {timeout:?} after the start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
