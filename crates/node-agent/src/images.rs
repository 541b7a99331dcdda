//! The image-to-binary map: which local executable runs a container of a given image.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Maps image names (the last path segment, without tag or digest) to local executables.
#[derive(Clone, Debug, Default)]
pub struct ImageMap(BTreeMap<String, PathBuf>);

impl ImageMap {
    /// Parses `NAME=PATH` entries.
    pub fn parse(entries: &[String]) -> anyhow::Result<Self> {
        let mut map = BTreeMap::new();
        for entry in entries {
            let (name, path) = entry
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("image map entry {entry:?} is not NAME=PATH"))?;
            map.insert(name.to_string(), PathBuf::from(path));
        }
        Ok(Self(map))
    }

    /// The executable for `image`, or a message saying why there is none.
    pub fn resolve(&self, image: &str) -> Result<PathBuf, String> {
        let name = image_name(image);
        let path = self.0.get(name).ok_or_else(|| {
            format!(
                "image {image:?} is not in the node agent's image map (known: {})",
                self.known()
            )
        })?;
        if !path.is_file() {
            return Err(format!(
                "image {image:?} maps to {}, which does not exist; build it first",
                path.display()
            ));
        }
        Ok(path.clone())
    }

    fn known(&self) -> String {
        self.0.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Whether `image` is an image reference, as the kubelet checks it before a pull (the
/// distribution reference grammar: `[registry[:port]/]path[:tag][@digest]`, the path
/// lowercase); the kubelet's message when it is not. Parsed with `oci-spec`, the OCI's own
/// crate, rather than a hand-written grammar.
pub fn check_reference(image: &str) -> Result<(), String> {
    image
        .parse::<oci_spec::distribution::Reference>()
        .map(|_| ())
        .map_err(|_| {
            format!("Failed to apply default image tag {image:?}: couldn't parse image name {image:?}: invalid reference format")
        })
}

/// `registry.example:5000/team/server:1.2@sha256:...` → `server`.
pub fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ignore_registry_tag_and_digest() {
        assert_eq!(image_name("orchestrator-server"), "orchestrator-server");
        assert_eq!(
            image_name("ghcr.io/orchestrator-dev/orchestrator-server:1.0.0"),
            "orchestrator-server"
        );
        assert_eq!(image_name("localhost:5000/x/server:2@sha256:abc"), "server");
    }

    #[test]
    fn references_the_kubelet_refuses_are_refused() {
        for good in [
            "orchestrator-server",
            "ghcr.io/orchestrator-dev/orchestrator-server:1.0.0",
            "localhost:5000/x/server:2",
            "Registry.Example.com/team/server:v1_2",
            "server@sha256:0123456789012345678901234567890123456789012345678901234567890123",
        ] {
            assert_eq!(check_reference(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Server:1",
            "server:1.0+build",
            "ghcr.io/Team/server",
            "server name:1",
            "server:",
        ] {
            let err = check_reference(bad).unwrap_err();
            assert!(err.contains("invalid reference format"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_image_is_a_clear_error() {
        let map = ImageMap::parse(&["orc-test-server=/nonexistent/bin".to_string()]).unwrap();
        let err = map.resolve("nginx:1.27").unwrap_err();
        assert!(
            err.contains("not in the node agent's image map") && err.contains("orc-test-server"),
            "{err}"
        );
        let err = map.resolve("orc-test-server:1").unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        assert!(ImageMap::parse(&["no-equals".to_string()]).is_err());
    }
}
