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
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(key, value)| match have.get(key) {
            Some(live) => is_contained(value, live),
            None => is_empty(value),
        }),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| is_contained(w, h))
        }
        (want, have) => want == have,
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
