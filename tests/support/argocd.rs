//! Runs the Argo CD health check of `docs/argocd-health.lua` (the file the README shows) on a
//! real object with a Lua interpreter (Debian's `lua5.4`, installed by `hack/setup.sh`), as Argo
//! CD does: the object is the global `obj`, the script returns `{status, message}`.

use serde_json::Value;

use super::e2e::root;

/// A JSON value as a Lua table constructor (`null` becomes `nil`, arrays are 1-indexed).
pub(crate) fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items
                .iter()
                .filter(|v| !v.is_null())
                .map(lua_literal)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for byte in s.bytes() {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(byte as char),
            other => out.push_str(&format!("\\{other:03}")),
        }
    }
    out.push('"');
    out
}

/// The health Argo CD would show for `object` (any serializable Kubernetes object):
/// `(status, message)`.
pub(crate) fn health(object: &impl serde::Serialize) -> (String, String) {
    let value = serde_json::to_value(object).unwrap();
    let script = root().join("docs/argocd-health.lua");
    let program = format!(
        "obj = {}\nlocal check = assert(loadfile({}))\nlocal hs = check()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua_literal(&value),
        lua_string(script.to_str().unwrap())
    );
    let out = std::process::Command::new("lua5.4")
        .args(["-e", &program])
        .output()
        .expect("lua5.4 is installed (hack/setup.sh installs Debian's lua5.4)");
    assert!(
        out.status.success(),
        "the health check failed on {value}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}
