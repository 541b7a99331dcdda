//! `orc-test-server`: a tiny HTTP server for the local cluster's own tests. It serves
//! `/readyz` and `/livez` on `$POD_IP:$HTTP_PORT`, logs the signals it gets, and either exits
//! on SIGTERM (after `--drain-seconds`) or ignores it (`--ignore-sigterm`), so tests can watch
//! the node agent's SIGTERM, grace period and SIGKILL.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use clap::Parser;

/// Test server options.
#[derive(Debug, Parser)]
struct Args {
    /// Ignored: lets a pod's `serve` argument through.
    mode: Option<String>,
    /// Keep running on SIGTERM (only SIGKILL stops it).
    #[arg(long)]
    ignore_sigterm: bool,
    /// Seconds to keep serving after SIGTERM before exiting 0.
    #[arg(long, default_value_t = 0)]
    drain_seconds: u64,
    /// Exit with this code right after starting (a run-to-completion container).
    #[arg(long)]
    exit_with: Option<i32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(code) = args.exit_with {
        println!("exiting with {code}");
        std::process::exit(code);
    }
    let ip = std::env::var("POD_IP").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("HTTP_PORT").unwrap_or_else(|_| "8080".into());
    let listener = tokio::net::TcpListener::bind(format!("{ip}:{port}")).await?;
    println!("serving on {ip}:{port}");
    let app = Router::new()
        .route("/readyz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        term.recv().await;
        println!("received SIGTERM");
        if !args.ignore_sigterm {
            tokio::time::sleep(Duration::from_secs(args.drain_seconds)).await;
            println!("exiting after SIGTERM");
            server.abort();
            return Ok(());
        }
    }
}
