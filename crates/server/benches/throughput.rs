//! Throughput benchmark of the reference server on a real PostgreSQL:
//! `cargo bench -p orchestrator-server --bench throughput` (or `make bench`).
//!
//! Baseline: one connection looping over the contract's claim + complete SQL, in this process.
//! Then 1, 2 and 4 server processes (4 workers each) draining the same number of no-op jobs.
//! Figures are printed as ratios against the baseline of the same run, since the machine is
//! shared and noisy. Claim latency of the servers comes from their `/metrics` histogram
//! (interpolated within buckets); the baseline's is exact.

use std::process::Stdio;
use std::time::{Duration, Instant};

use orchestrator_contract::{self as contract, env};
use testing_postgres::TestPostgres;
use tokio_postgres::{Client, NoTls};

async fn connect(pg: &TestPostgres) -> Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn insert_noops(db: &Client, batch: &str, count: i64) {
    db.execute(
        "INSERT INTO jobs (kind, payload) SELECT 'noop', jsonb_build_object('batch', $1::text, 'seq', s)
         FROM generate_series(1, $2::bigint) s",
        &[&batch, &count],
    )
    .await
    .unwrap();
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// Quantile from merged Prometheus histogram buckets `(upper bound, cumulative count)`.
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    let target = q * total;
    let mut previous = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= target {
            if bound.is_infinite() {
                return previous.0;
            }
            let within = if count > previous.1 {
                (target - previous.1) / (count - previous.1)
            } else {
                0.0
            };
            return previous.0 + (bound - previous.0) * within;
        }
        previous = (bound, count);
    }
    previous.0
}

async fn claim_buckets(ips: &[String]) -> Vec<(f64, f64)> {
    let mut merged: Vec<(f64, f64)> = Vec::new();
    for ip in ips {
        let text = reqwest::get(format!("http://{ip}:9090/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let lines = text
            .lines()
            .filter(|l| l.starts_with("orchestrator_server_claim_latency_seconds_bucket"));
        for (index, line) in lines.enumerate() {
            let bound = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
            let bound: f64 = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().unwrap()
            };
            let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            if merged.len() <= index {
                merged.push((bound, 0.0));
            }
            merged[index].1 += count;
        }
    }
    merged
}

struct Figures {
    jobs_per_second: f64,
    p50: f64,
    p99: f64,
}

async fn baseline(pg: &TestPostgres, jobs: i64) -> Figures {
    let mut db = connect(pg).await;
    let registration = contract::Registration {
        server_id: "baseline",
        version: "2.0.0",
        schema: contract::schema_range_for_version("2.0.0"),
    };
    contract::register(&db, &registration).await.unwrap();
    insert_noops(&db, "baseline", jobs).await;
    let mut latencies = Vec::with_capacity(jobs as usize);
    let started = Instant::now();
    loop {
        let t = Instant::now();
        let Some(job) = contract::claim_job(&db, "baseline", Duration::from_secs(30))
            .await
            .unwrap()
        else {
            break;
        };
        latencies.push(t.elapsed().as_secs_f64());
        contract::complete_job(&mut db, "baseline", &job, true, &serde_json::json!({}))
            .await
            .unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Figures {
        jobs_per_second: latencies.len() as f64 / elapsed,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    }
}

async fn with_servers(pg: &TestPostgres, db: &Client, count: usize, jobs: i64) -> Figures {
    let ips: Vec<String> = (0..count).map(|i| format!("127.4.{count}.{}", i + 2)).collect();
    let mut children = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestrator-server"))
            .arg("serve")
            .envs(pg.env())
            .env(env::SERVER_ID, format!("bench-{count}-{i}"))
            .env(env::SERVER_VERSION, "2.0.0")
            .env(env::POD_IP, ip)
            .env(env::WORKERS, "4")
            .env(env::IDLE_POLL_MILLISECONDS, "5")
            .env(env::RUST_LOG, "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        children.push(child);
    }
    for ip in &ips {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !reqwest::get(format!("http://{ip}:8080/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "server on {ip} not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let batch = format!("servers-{count}");
    let started = Instant::now();
    insert_noops(db, &batch, jobs).await;
    loop {
        let outcome = contract::batch_outcome(db, &batch).await.unwrap();
        if outcome.unfinished == 0 {
            assert_eq!(outcome.executed_more_than_once, 0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let buckets = claim_buckets(&ips).await;
    for child in &children {
        let _ = std::process::Command::new("kill")
            .arg(child.id().unwrap().to_string())
            .status();
    }
    for mut child in children {
        let _ = child.wait().await;
    }
    Figures {
        jobs_per_second: jobs as f64 / elapsed,
        p50: bucket_quantile(&buckets, 0.5),
        p99: bucket_quantile(&buckets, 0.99),
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let jobs: i64 = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let pg = TestPostgres::start();
    let mut db = connect(&pg).await;
    contract::migrations::migrate(&mut db, contract::LATEST_SCHEMA, false)
        .await
        .unwrap();
    let base = baseline(&pg, jobs).await;
    println!("throughput benchmark: {jobs} no-op jobs per configuration, PostgreSQL on 127.0.0.1");
    println!(
        "{:<34} {:>10} {:>7} {:>12} {:>7} {:>12} {:>7}",
        "configuration", "jobs/s", "ratio", "claim p50", "ratio", "claim p99", "ratio"
    );
    let row = |name: &str, f: &Figures| {
        println!(
            "{:<34} {:>10.0} {:>7.2} {:>10.3}ms {:>7.2} {:>10.3}ms {:>7.2}",
            name,
            f.jobs_per_second,
            f.jobs_per_second / base.jobs_per_second,
            f.p50 * 1e3,
            f.p50 / base.p50,
            f.p99 * 1e3,
            f.p99 / base.p99
        );
    };
    row("baseline: 1 connection, in-process", &base);
    for servers in [1, 2, 4] {
        let figures = with_servers(&pg, &db, servers, jobs).await;
        row(&format!("{servers} server(s) x 4 workers"), &figures);
    }
}
