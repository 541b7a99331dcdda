//! End-to-end: the operator against a real PostgreSQL with real server processes on the local
//! cluster. Servers join one at a time, every failed precondition blocks adding servers with
//! its own reason and recovers by itself, scale-down drains through the database, a killed
//! server shows up as Degraded, and the password never leaks.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod, Secret};
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use orchestrator_contract as contract;
use orchestrator_operator::crd::OrchestratorCluster;
use serde_json::{Value, json};
use testing_postgres::TestPostgres;

use crate::support::e2e::{
    MINUTE, Operator, TestNamespace, condition, db, patch_spec, pod_of, server_binary, wait_condition, wait_for,
    wait_ready,
};
use crate::support::pods::server_pid;
use crate::support::spec::ClusterSpec;

/// The cluster of these tests: 20 s drains.
fn cluster(replicas: i32, pg: &TestPostgres) -> ClusterSpec {
    ClusterSpec::new(replicas, pg).drain_timeout("20s")
}

async fn set_replicas(ns: &TestNamespace, replicas: i32) {
    patch_spec(ns, json!({"replicas": replicas})).await;
}

async fn pods(ns: &TestNamespace) -> Vec<Pod> {
    ns.api::<Pod>().list(&ListParams::default()).await.unwrap().items
}

async fn active_rows(db: &tokio_postgres::Client) -> Vec<String> {
    contract::membership(db)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.state == "active")
        .map(|m| pod_of(&m.server_id))
        .collect()
}

#[tokio::test]
async fn servers_join_one_by_one_and_status_shows_both_views() {
    let ns = TestNamespace::new("join").await;
    let pg = ns.database().await;
    let db = db(&pg).await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    let statefulsets = ns.api::<StatefulSet>();
    let config = watcher::Config::default().fields("metadata.name=prod");
    let mut events = std::pin::pin!(watcher::watcher(statefulsets, config));
    ns.create_cluster(&cluster(3, &pg)).await;
    let mut seen = 0;
    let deadline = Instant::now() + 2 * MINUTE;
    while seen < 3 {
        assert!(Instant::now() < deadline, "the StatefulSet did not reach 3 replicas");
        let Some(Ok(Event::Apply(sts) | Event::InitApply(sts))) = events.next().await else {
            continue;
        };
        let replicas = sts.spec.and_then(|s| s.replicas).unwrap_or(0);
        if replicas > seen {
            assert_eq!(replicas, seen + 1, "one server at a time");
            let active = active_rows(&db).await;
            for previous in 0..seen {
                assert!(
                    active.contains(&format!("prod-{previous}")),
                    "prod-{seen} added before prod-{previous} joined: {active:?}"
                );
            }
            seen = replicas;
        }
    }
    let cr = wait_ready(&ns, 3).await;
    let status = cr.status.unwrap();
    assert_eq!(
        active_rows(&db).await.len(),
        3,
        "readyReplicas 3 only with three active rows"
    );
    let servers: Vec<_> = status
        .servers
        .iter()
        .map(|s| (s.name.as_str(), s.pod_exists, s.ready, s.state.as_deref(), s.joined))
        .collect();
    assert_eq!(
        servers,
        vec![
            ("prod-0", true, true, Some("active"), true),
            ("prod-1", true, true, Some("active"), true),
            ("prod-2", true, true, Some("active"), true)
        ]
    );
    assert!(
        status
            .servers
            .iter()
            .all(|s| s.version.as_deref() == Some("2.0.0") && s.joined && s.last_heartbeat_time.is_none())
    );
    assert_eq!(status.database.unwrap().schema_version, Some(contract::LATEST_SCHEMA));
}

#[tokio::test]
async fn credentials_problems_block_with_their_reason_and_recover_and_never_leak() {
    let ns = TestNamespace::new("creds").await;
    let pg = TestPostgres::start();
    let mut admin = db(&pg).await;
    contract::migrations::migrate(&mut admin, contract::LATEST_SCHEMA, false)
        .await
        .unwrap();
    // A user name found nowhere else, so that a search for it means something: a login with
    // the owner's privileges (a member of its role).
    let user = format!("login_{}", ns.name.replace('-', "_"));
    pg.psql_as_superuser(
        testing_postgres::DATABASE,
        &format!(
            "CREATE ROLE {user} LOGIN PASSWORD '{}' IN ROLE {}",
            pg.password,
            testing_postgres::USER
        ),
    );
    let operator = Operator::start(&ns.name, "orchestrator-server").await;
    ns.create_cluster(&cluster(1, &pg)).await;

    let cr = wait_condition(&ns, "DatabaseReady", "False", "SecretMissing", MINUTE).await;
    assert_eq!(condition(&cr, "CapacityBlocked").unwrap().reason, "DatabaseNotReady");
    assert!(
        condition(&cr, "DatabaseReady")
            .unwrap()
            .message
            .contains("secret process-db does not exist")
    );

    // A Secret of that name without the opt-in label is not read: no value of it reaches the
    // operator (its metadata cache shows the label is missing; no GET of its data is made).
    let secrets = ns.api::<Secret>();
    let only_user: Secret =
        serde_json::from_value(json!({"metadata": {"name": "process-db"}, "stringData": {"username": user}})).unwrap();
    secrets.create(&PostParams::default(), &only_user).await.unwrap();
    let cr = wait_condition(&ns, "DatabaseReady", "False", "SecretNotOptedIn", MINUTE).await;
    let message = &condition(&cr, "DatabaseReady").unwrap().message;
    assert!(
        message.contains("secret process-db does not carry the label orchestrator.dev/credentials=true"),
        "{message}"
    );
    let label = json!({"metadata": {"labels": {"orchestrator.dev/credentials": "true"}}});
    secrets
        .patch("process-db", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    let cr = wait_condition(&ns, "DatabaseReady", "False", "SecretKeyMissing", MINUTE).await;
    assert!(
        condition(&cr, "DatabaseReady")
            .unwrap()
            .message
            .contains("secret process-db has no key 'password'")
    );

    let wrong = "e2e-wrong-password-value";
    let patch = json!({"stringData": {"password": wrong}});
    secrets
        .patch("process-db", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_condition(&ns, "DatabaseReady", "False", "LoginFailed", MINUTE).await;
    assert!(pods(&ns).await.is_empty(), "nothing is created while blocked");

    let patch = json!({"stringData": {"password": pg.password}});
    secrets
        .patch("process-db", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_condition(&ns, "DatabaseReady", "True", "ConnectedUnverified", MINUTE).await;
    wait_ready(&ns, 1).await;

    let status = serde_json::to_string(&ns.api::<OrchestratorCluster>().get("prod").await.unwrap()).unwrap();
    let events = serde_json::to_string(&ns.api::<CoreEvent>().list(&ListParams::default()).await.unwrap()).unwrap();
    let logs = operator.logs();
    assert!(
        events.contains("was refused: check the user and password in secret process-db"),
        "the test saw the failure it checks for leaks: {events}"
    );
    for (what, text) in [("status", &status), ("events", &events), ("operator log", &logs)] {
        assert!(
            !text.contains(&pg.password),
            "the database password appears in the {what}"
        );
        assert!(!text.contains(wrong), "the wrong password appears in the {what}");
        assert!(!text.contains(&user), "the database user name appears in the {what}");
    }
}

#[tokio::test]
async fn runtime_preconditions_block_scale_up_and_recover() {
    let ns = TestNamespace::new("runtime").await;
    let pg = ns.database().await;
    let db = db(&pg).await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    ns.create_cluster(&cluster(1, &pg)).await;
    wait_ready(&ns, 1).await;

    // prod-0's heartbeats stop reaching the database (its row freezes) while its pod stays ready.
    db.batch_execute(
        "CREATE FUNCTION freeze_heartbeat() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN NEW.heartbeat_at := OLD.heartbeat_at; RETURN NEW; END $$;
         CREATE TRIGGER freeze_row BEFORE UPDATE ON servers FOR EACH ROW
           WHEN (NEW.server_id LIKE '%/prod-0' AND NEW.state = 'active') EXECUTE FUNCTION freeze_heartbeat();",
    )
    .await
    .unwrap();
    let cr = wait_condition(&ns, "Degraded", "True", "ServerProblems", MINUTE).await;
    assert!(
        condition(&cr, "Degraded")
            .unwrap()
            .message
            .contains("prod-0: pod ready but its last heartbeat was at")
    );
    set_replicas(&ns, 2).await;
    wait_condition(&ns, "CapacityBlocked", "True", "NoServerJoined", MINUTE).await;
    assert_eq!(pods(&ns).await.len(), 1, "no server added while blocked");
    db.batch_execute("DROP TRIGGER freeze_row ON servers").await.unwrap();
    wait_ready(&ns, 2).await;

    // An existing server's row is stale while another has joined: still blocked, by that server.
    db.batch_execute(
        "CREATE TRIGGER freeze_row BEFORE UPDATE ON servers FOR EACH ROW
           WHEN (NEW.server_id LIKE '%/prod-1' AND NEW.state = 'active') EXECUTE FUNCTION freeze_heartbeat();",
    )
    .await
    .unwrap();
    wait_condition(&ns, "Degraded", "True", "ServerProblems", MINUTE).await;
    set_replicas(&ns, 3).await;
    let cr = wait_condition(&ns, "CapacityBlocked", "True", "ServerUnhealthy", MINUTE).await;
    assert!(condition(&cr, "CapacityBlocked").unwrap().message.contains("prod-1"));
    db.batch_execute("DROP TRIGGER freeze_row ON servers").await.unwrap();
    wait_ready(&ns, 3).await;

    // The database goes away: adding servers waits with DatabaseNotReady, then recovers.
    pg.stop();
    set_replicas(&ns, 4).await;
    let cr = wait_condition(&ns, "CapacityBlocked", "True", "DatabaseNotReady", MINUTE).await;
    assert_eq!(condition(&cr, "DatabaseReady").unwrap().reason, "Unreachable");
    assert_eq!(pods(&ns).await.len(), 3);
    pg.start_again();
    wait_ready(&ns, 4).await;
}

#[tokio::test]
async fn scale_up_and_down_under_load_loses_nothing() {
    let ns = TestNamespace::new("scale").await;
    let pg = ns.database().await;
    let db = db(&pg).await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    ns.create_cluster(&cluster(3, &pg)).await;
    wait_ready(&ns, 3).await;
    let urls: Vec<String> = pods(&ns)
        .await
        .iter()
        .map(|p| format!("http://{}:8080", p.status.as_ref().unwrap().pod_ip.clone().unwrap()))
        .collect();
    let mut loadgen = tokio::process::Command::new(server_binary());
    loadgen.args([
        "loadgen",
        "--rate",
        "25",
        "--duration",
        "30",
        "--kind",
        "sleep",
        "--sleep-ms",
        "300",
        "--batch",
        "scale",
    ]);
    for url in &urls {
        loadgen.args(["--url", url]);
    }
    let load = loadgen.envs(pg.env()).kill_on_drop(true).output();
    let scaling = async {
        set_replicas(&ns, 5).await;
        wait_ready(&ns, 5).await;
        set_replicas(&ns, 2).await;
        wait_ready(&ns, 2).await;
    };
    let (output, ()) = tokio::join!(load, scaling);
    let output = output.unwrap();
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&output.stderr)));
    assert!(report["acknowledged"].as_i64().unwrap() > 500, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["outcome"]["executed_more_than_once"], 0, "{report}");
    assert_eq!(report["outcome"]["completed"], report["acknowledged"], "{report}");
    let names: Vec<String> = pods(&ns).await.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, vec!["prod-0", "prod-1"], "highest ordinals removed");
    for gone in ["prod-2", "prod-3", "prod-4"] {
        let log = ns.pod_log(gone, "server");
        assert!(
            log.contains("drain requested through the database"),
            "{gone} drained through the database:\n{log}"
        );
        assert!(
            log.contains("stopped") && !log.contains("handed back"),
            "{gone} finished its jobs:\n{log}"
        );
    }
    let deadline = Instant::now() + MINUTE;
    loop {
        let rows: Vec<String> = contract::membership(&db)
            .await
            .unwrap()
            .into_iter()
            .map(|m| pod_of(&m.server_id))
            .collect();
        if rows == ["prod-0", "prod-1"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rows of removed servers not cleaned: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn killed_server_shows_as_degraded_and_rejoins() {
    let ns = TestNamespace::new("kill").await;
    let pg = ns.database().await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    ns.create_cluster(&cluster(2, &pg)).await;
    wait_ready(&ns, 2).await;
    let pid = server_pid(&ns.name, "prod-1").expect("the server process of prod-1");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let killed_at = Instant::now();
    let cr = wait_condition(&ns, "Degraded", "True", "ServerProblems", MINUTE).await;
    assert!(
        condition(&cr, "Degraded").unwrap().message.contains("prod-1"),
        "{:?}",
        condition(&cr, "Degraded")
    );
    println!("Degraded shown {:?} after SIGKILL", killed_at.elapsed());
    let cr = wait_for(
        &ns.api::<OrchestratorCluster>(),
        "prod",
        "prod-1 rejoined",
        MINUTE,
        |c: Option<&OrchestratorCluster>| {
            c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                s.servers
                    .iter()
                    .any(|s| s.name == "prod-1" && s.joined && s.restarts >= 1)
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(cr.status.unwrap().ready_replicas, 2);
    assert_ne!(server_pid(&ns.name, "prod-1"), Some(pid), "a new process");
}

#[tokio::test]
async fn tls_verify_full_needs_the_ca_and_then_works_for_operator_and_servers() {
    let ns = TestNamespace::new("tls").await;
    let pg = TestPostgres::start_with_tls();
    let mut admin = db(&pg).await;
    contract::migrations::migrate(&mut admin, contract::LATEST_SCHEMA, false)
        .await
        .unwrap();
    ns.create_db_secret("process-db", testing_postgres::USER, &pg.password)
        .await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    ns.create_cluster(&cluster(1, &pg).ssl_mode("verify-full")).await;

    let cr = wait_condition(&ns, "DatabaseReady", "False", "TlsFailed", MINUTE).await;
    let message = &condition(&cr, "DatabaseReady").unwrap().message;
    assert!(
        message.contains("UnknownIssuer") && message.contains("ca.crt"),
        "{message}"
    );
    assert!(pods(&ns).await.is_empty());

    let ca = String::from_utf8(pg.ca_pem()).unwrap();
    let patch = json!({"stringData": {"ca.crt": ca}});
    ns.api::<Secret>()
        .patch("process-db", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_ready(&ns, 1).await;
    let check = db(&pg).await;
    let tls: i64 = check
        .query_one("SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND application_name = 'orchestrator-server'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(tls >= 1, "the server's connections use TLS");
    let cr = ns.api::<OrchestratorCluster>().get("prod").await.unwrap();
    assert_eq!(condition(&cr, "DatabaseReady").unwrap().reason, "Connected");

    // verify-full binds the login to the channel by default: a role the database logs in with
    // MD5 is refused before its password is sent, until the spec opts out.
    pg.add_login("md5_login", "md5-secret", "md5", "md5");
    let patch = json!({"stringData": {"username": "md5_login", "password": "md5-secret"}});
    ns.api::<Secret>()
        .patch("process-db", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let cr = wait_condition(&ns, "DatabaseReady", "False", "ChannelBindingRefused", MINUTE).await;
    let message = &condition(&cr, "DatabaseReady").unwrap().message;
    assert!(message.contains("channelBinding: prefer"), "{message}");
    assert!(
        !message.contains("md5_login") && !message.contains("md5-secret"),
        "{message}"
    );
    patch_spec(&ns, json!({"database": {"channelBinding": "prefer"}})).await;
    let cr = wait_condition(&ns, "DatabaseReady", "True", "ConnectedUnverified", MINUTE).await;
    let message = &condition(&cr, "DatabaseReady").unwrap().message;
    assert!(message.contains("channelBinding prefer"), "{message}");
}
