//! Drift detection: is everything the operator wants already in the live object?
//!
//! The API server adds defaults and status to what was applied, so the live object is a
//! superset of the desired one. Comparing "desired is contained in live" lets a reconcile of
//! an unchanged cluster skip its writes, while a hand edit of a field the operator sets (a
//! Service deleted, the StatefulSet's replicas or template changed) is seen and reverted.

use serde_json::Value;

/// True when every field of `desired` is present in `live` with the same value. Objects may
/// have extra keys in `live`; arrays must have the same length and match element by element.
pub(crate) fn is_contained(desired: &Value, live: &Value) -> bool {
    contained(desired, live, false)
}

/// [`is_contained`]; `quantities`: the values are resource quantities (under `requests` or
/// `limits`), which the API server stores in canonical form (`0.5` becomes `500m`, `1024Mi`
/// becomes `1Gi`): equal amounts are no drift, or a spec that writes one another way would be
/// written again at every reconcile.
fn contained(desired: &Value, live: &Value, quantities: bool) -> bool {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(key, value)| match have.get(key) {
            Some(live) => contained(value, live, quantities || key == "requests" || key == "limits"),
            // An empty string too, as the direct value of a missing key: Kubernetes' types omit
            // empty string fields (an env entry's `value: ""`, a toleration's `effect: ""`).
            // The price: a map entry with an empty value (`pool: ""`) removed by hand is not
            // seen; a whole map removed still is.
            None => is_empty(value) || value.as_str() == Some(""),
        }),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| contained(w, h, quantities))
        }
        (Value::String(want), Value::String(have)) if quantities && want != have => {
            matches!((quantity(want), quantity(have)), (Some(w), Some(h)) if (w - h).abs() <= w.abs().max(h.abs()) * 1e-12)
        }
        (want, have) => want == have,
    }
}

/// The amount of a Kubernetes quantity (`500m`, `1Gi`, `1e3`, `2`), if it is one.
fn quantity(text: &str) -> Option<f64> {
    const BINARY: [(&str, f64); 6] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
    ];
    const DECIMAL: [(char, f64); 9] = [
        ('n', 1e-9),
        ('u', 1e-6),
        ('m', 1e-3),
        ('k', 1e3),
        ('M', 1e6),
        ('G', 1e9),
        ('T', 1e12),
        ('P', 1e15),
        ('E', 1e18),
    ];
    let number = |digits: &str| {
        (!digits.is_empty()
            && digits
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .then(|| digits.parse::<f64>().ok())
        .flatten()
    };
    if let Some((digits, factor)) = BINARY
        .iter()
        .find_map(|(suffix, f)| Some((text.strip_suffix(suffix)?, *f)))
    {
        return number(digits).map(|n| n * factor);
    }
    if let Some((digits, factor)) = DECIMAL
        .iter()
        .find_map(|(suffix, f)| Some((text.strip_suffix(*suffix)?, *f)))
    {
        return number(digits).map(|n| n * factor);
    }
    // A plain number, or one with a decimal exponent (`1e3`, `5E-3`).
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i32>().ok()?),
        None => (text, 0),
    };
    number(mantissa).map(|n| n * 10f64.powi(exponent))
}

/// The paths of `desired` not contained in `live` (`spec.containers[server].image`), for a
/// person: list elements are named by their `name` when they have one. Values are shown only for
/// an `image` (never an env value, which may be a secret someone wrote in).
pub(crate) fn differences(desired: &Value, live: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(desired, Some(live), "", &mut out);
    out
}

fn walk(desired: &Value, live: Option<&Value>, path: &str, out: &mut Vec<String>) {
    let Some(live) = live else {
        if !is_empty(desired) {
            out.push(format!("{path} (added)"));
        }
        return;
    };
    if contained(desired, live, false) {
        return;
    }
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => {
            for (key, value) in want {
                let at = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                walk(value, have.get(key), &at, out);
            }
        }
        (Value::Array(want), Value::Array(have)) if want.len() == have.len() => {
            for (i, (w, h)) in want.iter().zip(have).enumerate() {
                let name = w
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or(i.to_string(), str::to_string);
                walk(w, Some(h), &format!("{path}[{name}]"), out);
            }
        }
        (Value::String(want), Value::String(have)) if path.ends_with(".image") => {
            out.push(format!("{path}: {have} -> {want}"));
        }
        _ => out.push(path.to_string()),
    }
}

/// Values the API server drops when they are applied (empty maps and lists, null).
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.values().all(is_empty),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn differences_name_the_paths_and_only_an_images_values() {
        let live = serde_json::json!({"spec": {"containers": [{"name": "server", "image": "a/s:1", "env": [{"name": "PASSWORD", "value": "old"}], "tty": false}]}, "extra": 1});
        let want = serde_json::json!({"spec": {"containers": [{"name": "server", "image": "b/s:1", "env": [{"name": "PASSWORD", "value": "hunter2"}]}]}, "metadata": {"labels": {"x": "y"}}});
        assert_eq!(
            super::differences(&want, &live),
            vec![
                "metadata (added)".to_string(),
                "spec.containers[server].env[PASSWORD].value".to_string(),
                "spec.containers[server].image: a/s:1 -> b/s:1".to_string(),
            ]
        );
        assert!(super::differences(&live, &live).is_empty());
    }

    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn server_defaults_are_not_drift() {
        let desired = json!({"spec": {"replicas": 3, "template": {"containers": [{"name": "server"}]}}});
        let live = json!({"spec": {"replicas": 3, "revisionHistoryLimit": 10,
            "template": {"containers": [{"name": "server", "imagePullPolicy": "IfNotPresent"}]}},
            "status": {"replicas": 3}});
        assert!(is_contained(&desired, &live));
    }

    #[test]
    fn equal_quantities_written_another_way_are_not_drift() {
        let desired = json!({"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"cpu": "2", "memory": "1e3"}}});
        let live = json!({"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1k"}}});
        assert!(is_contained(&desired, &live));
        let more = json!({"resources": {"requests": {"cpu": "600m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1k"}}});
        assert!(!is_contained(&desired, &more), "another amount is drift");
        // Elsewhere strings compare as written.
        assert!(!is_contained(
            &json!({"env": [{"value": "0.5"}]}),
            &json!({"env": [{"value": "500m"}]})
        ));
        assert_eq!(quantity("1.5Gi"), Some(1.5 * 1_073_741_824.0));
        assert_eq!(quantity("5E-3"), Some(0.005));
        assert_eq!(quantity("2E"), Some(2e18));
        assert_eq!((quantity("abc"), quantity("Mi"), quantity("")), (None, None, None));
    }

    #[test]
    fn an_empty_value_the_api_server_drops_is_not_drift() {
        let desired = json!({"env": [{"name": "WORKERS", "value": ""}]});
        assert!(is_contained(&desired, &json!({"env": [{"name": "WORKERS"}]})));
        assert!(!is_contained(
            &json!({"env": [{"name": "WORKERS", "value": "8"}]}),
            &json!({"env": [{"name": "WORKERS"}]})
        ));
    }

    #[test]
    fn hand_edits_are_drift() {
        let desired = json!({"spec": {"replicas": 3, "ports": [{"port": 8080}, {"port": 9090}]}});
        assert!(!is_contained(
            &desired,
            &json!({"spec": {"replicas": 5, "ports": [{"port": 8080}, {"port": 9090}]}})
        ));
        assert!(!is_contained(
            &desired,
            &json!({"spec": {"replicas": 3, "ports": [{"port": 8080}]}})
        ));
        assert!(!is_contained(&desired, &json!({"spec": {}})));
    }

    #[test]
    fn empty_values_match_absent_ones() {
        assert!(is_contained(
            &json!({"a": {"emptyDir": {}}, "b": []}),
            &json!({"a": {"emptyDir": {}}})
        ));
        assert!(is_contained(
            &json!({"volumes": [{"emptyDir": {}}]}),
            &json!({"volumes": [{"emptyDir": {}}]})
        ));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z]{0,4}".prop_map(Value::from)
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn every_value_contains_itself(value in json_value()) {
            prop_assert!(is_contained(&value, &value));
        }

        #[test]
        fn extra_live_keys_never_count_as_drift(value in json_value(), extra in json_value()) {
            let desired = json!({"spec": value});
            let live = json!({"spec": desired["spec"].clone(), "status": extra});
            prop_assert!(is_contained(&desired, &live));
        }
    }
}
