//! The servers' side of the database contract for every server pod of the fleet at once, so
//! that a thousand clusters fit on one machine: pods run on kwok's fake nodes (no process), and
//! this task plays what each server would do through one database connection.
//!
//! - A server pod bound to a node registers its row (`<namespace>/<pod>`, the pod's
//!   `SERVER_VERSION`) through the contract's `register`, which notifies the operator.
//! - Every row it registered beats together every [`HEARTBEAT`], in one statement (a real
//!   server's heartbeat does not notify either).
//! - A drain request is honoured at once: `draining`, then `stopped`, through the contract's
//!   writes (no jobs run here).
//! - A pod that is gone or terminating stops its row, as a server's friendly shutdown does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use orchestrator_contract::{self as contract, server_state};
use tokio_postgres::NoTls;

/// How often a server beats, as the reference server does.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How often the simulator looks at pods and drain requests.
const TICK: Duration = Duration::from_millis(200);
/// Pods of the operator's servers (the baseline relabels its own).
pub(crate) const SERVER_PODS: &str = "app.kubernetes.io/name=orchestrator-server";

/// Plays every server pod's side of the contract against the database at `url`, forever.
pub(crate) async fn run(client: Client, url: String) {
    let (store, writer) = reflector::store::<Pod>();
    let pods = Api::<Pod>::all(client);
    let stream = reflector::reflector(writer, watcher(pods, watcher::Config::default().labels(SERVER_PODS)))
        .default_backoff()
        .touched_objects();
    tokio::spawn(stream.for_each(|_| async {}));
    store.wait_until_ready().await.expect("the pod watch starts");
    let mut registered: HashMap<String, String> = HashMap::new();
    let mut last_beat = Instant::now();
    let mut config: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
    config.application_name("bench-simulator");
    loop {
        let (db, connection) = match config.connect(NoTls).await {
            Ok(pair) => pair,
            Err(error) => {
                eprintln!("[simulator] cannot connect: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tokio::spawn(connection);
        while !db.is_closed() {
            if let Err(error) = tick(&db, &store, &mut registered, &mut last_beat).await {
                eprintln!("[simulator] {error}");
            }
            tokio::time::sleep(TICK).await;
        }
    }
}

/// The pod uid and version of every server pod bound to a node and not terminating, by server id.
fn live(store: &Store<Pod>) -> HashMap<String, (String, String)> {
    store
        .state()
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none() && bound(pod))
        .filter_map(|pod| {
            let version = pod
                .spec
                .as_ref()?
                .containers
                .first()?
                .env
                .as_ref()?
                .iter()
                .find(|e| e.name == contract::env::SERVER_VERSION)?
                .value
                .clone()?;
            let id = contract::server_identity(pod.namespace().as_deref(), &pod.name_any());
            Some((id, (pod.uid()?, version)))
        })
        .collect()
}

/// Whether the pod was bound to a node: a real server registers as soon as it starts, before
/// its pod is ready; kwok makes a bound pod Running and Ready at once.
fn bound(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| s.node_name.is_some())
}

/// One look: registrations, shutdowns, drains, and the heartbeat when it is due.
async fn tick(
    db: &tokio_postgres::Client,
    store: &Store<Pod>,
    registered: &mut HashMap<String, String>,
    last_beat: &mut Instant,
) -> Result<(), contract::ContractError> {
    let live = live(store);
    for (id, (uid, version)) in &live {
        if registered.get(id) != Some(uid) {
            let server = contract::Registration {
                server_id: id,
                version,
                schema: contract::schema_range_for_version(version),
            };
            contract::register(db, &server).await?;
            registered.insert(id.clone(), uid.clone());
        }
    }
    let gone: Vec<String> = registered
        .keys()
        .filter(|id| !live.contains_key(*id))
        .cloned()
        .collect();
    for id in gone {
        contract::set_state(db, &id, server_state::STOPPED).await?;
        registered.remove(&id);
    }
    let asked = db
        .query(
            "SELECT server_id FROM servers WHERE drain_requested_at IS NOT NULL AND state = $1",
            &[&server_state::ACTIVE],
        )
        .await?;
    for row in asked {
        let id: String = row.get(0);
        if registered.contains_key(&id) {
            contract::set_state_if_drain(db, &id, server_state::DRAINING, true).await?;
            contract::set_state_if_drain(db, &id, server_state::STOPPED, true).await?;
        }
    }
    if last_beat.elapsed() >= HEARTBEAT {
        *last_beat = Instant::now();
        let ids: Vec<&String> = registered.keys().collect();
        db.execute(
            "UPDATE servers SET heartbeat_at = now() WHERE server_id = ANY($1) AND state <> $2",
            &[&ids, &server_state::STOPPED],
        )
        .await?;
    }
    Ok(())
}
