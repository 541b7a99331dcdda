//! End-to-end operator upgrade: an operator restarted with another default server image
//! repository does not roll the fleet at once. Outside the clusters' maintenance windows the
//! change is pending and shown; once a window opens, the clusters roll one at a time within
//! `--max-concurrent-rolls`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use orchestrator_operator::crd::{OrchestratorCluster, Phase};
use serde_json::json;

use crate::maintenance::{cluster, wait_ready};
use crate::support::e2e::{MINUTE, Operator, TestNamespace, wait_for};
use crate::support::pods::{self, server_pods};

/// A daily window of `hours` opening at `offset` hours from the current one (UTC).
fn window(offset: i64, hours: i64) -> serde_json::Value {
    let hour = (Timestamp::now().as_second() / 3600 + offset).rem_euclid(24);
    json!([{"start": format!("{hour:02}:00"), "duration": format!("{hours}h")}])
}

/// Each server pod's image, by pod name, of clusters alpha and beta.
async fn images(ns: &TestNamespace) -> BTreeMap<String, String> {
    let mut images = BTreeMap::new();
    for name in ["alpha", "beta"] {
        for (pod, p) in pods::list(ns, &server_pods(name)).await {
            let image = p.spec.and_then(|s| s.containers.first().and_then(|c| c.image.clone()));
            images.insert(pod, image.unwrap_or_default());
        }
    }
    images
}

#[tokio::test]
async fn an_operator_upgrade_waits_for_the_window_then_rolls_one_cluster_at_a_time() {
    let ns = TestNamespace::new("opupgrade").await;
    let pg = ns.database().await;
    let api = ns.api::<OrchestratorCluster>();
    let names = ["alpha", "beta"];
    let before = {
        let _old = Operator::start(&ns.name, "orchestrator-server").await;
        for name in names {
            // The window opens in 12 hours: closed now.
            ns.create_cluster(&cluster(2, &pg).name(name).windows(window(12, 1)))
                .await;
        }
        for name in names {
            wait_ready(&ns, name, 2).await;
        }
        images(&ns).await
    };
    assert!(before.values().all(|i| i == "orchestrator-server:2.0.0"), "{before:?}");
    // The new operator's default repository is another: every template would change.
    let _new = Operator::with_repository(
        &ns.name,
        "registry.local/orchestrator-server",
        &["--max-concurrent-rolls", "1"],
    );
    for name in names {
        let cr = wait_for(
            &api,
            name,
            "a pending operator change",
            2 * MINUTE,
            |c: Option<&OrchestratorCluster>| {
                c.and_then(|c| c.status.as_ref())
                    .is_some_and(|s| s.pending_operator_change.is_some())
            },
        )
        .await
        .unwrap();
        let pending = cr.status.unwrap().pending_operator_change.unwrap();
        assert!(
            pending
                .changes
                .iter()
                .any(|c| c.contains("orchestrator-server:2.0.0 -> registry.local/orchestrator-server:2.0.0")),
            "{pending:?}"
        );
        assert!(pending.waiting_for.contains("NextWindow"), "{pending:?}");
    }
    // Outside the window the templates keep the old image (nothing would roll even if a
    // window opened by mistake: the template is what a roll follows).
    tokio::time::sleep(Duration::from_secs(6)).await;
    for name in names {
        let sts = ns.api::<StatefulSet>().get(name).await.unwrap();
        let template = sts.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            template.containers[0].image.as_deref(),
            Some("orchestrator-server:2.0.0"),
            "{name}: the template is held"
        );
    }
    assert_eq!(images(&ns).await, before, "nothing rolled outside the window");
    // The window opens (a window is not part of the template): the change goes out, one cluster
    // at a time.
    for name in names {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"maintenance": {"windows": window(0, 2)}}})),
        )
        .await
        .unwrap();
    }
    let deadline = Instant::now() + 4 * MINUTE;
    let mut most_rolling = 0;
    loop {
        let mut rolling = 0;
        for name in names {
            let cr = api.get(name).await.unwrap();
            if cr
                .status
                .as_ref()
                .and_then(|s| s.maintenance.as_ref())
                .is_some_and(|m| m.server.is_some())
            {
                rolling += 1;
            }
        }
        most_rolling = most_rolling.max(rolling);
        let now = images(&ns).await;
        let all_new = now.len() == 4 && now.values().all(|i| i == "registry.local/orchestrator-server:2.0.0");
        let settled = futures::future::join_all(names.map(|name| api.get(name)))
            .await
            .into_iter()
            .all(|cr| {
                cr.unwrap()
                    .status
                    .is_some_and(|s| s.phase == Phase::Ready && s.pending_operator_change.is_none())
            });
        if all_new && settled {
            break;
        }
        assert!(Instant::now() < deadline, "the change did not roll out: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(most_rolling, 1, "never two clusters rolling at once");
}
