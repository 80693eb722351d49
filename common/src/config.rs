//! Layered configuration for the server binaries: built-in defaults, then a
//! YAML file (`--config`), then `GODWIT__…` environment variables, then
//! flags. Binaries read env and flags with clap; this module owns the file
//! layer and the merge. Unknown file fields are rejected.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Reads the config file, or the empty layer when there is none.
pub fn load_file<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: "cannot read config file",
        path: path.to_owned(),
        source,
    })?;
    crate::spec::from_yaml(&text)
        .map_err(|e| Error::Spec(format!("config file {}: {e}", path.display())))
}

/// The first value present among flag/env, file, default.
pub fn pick<T>(flag_or_env: Option<T>, file: Option<T>, default: T) -> T {
    flag_or_env.or(file).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        listen: Option<String>,
    }

    #[test]
    fn layers_apply_in_order() {
        assert_eq!(pick(Some(1), Some(2), 3), 1);
        assert_eq!(pick(None, Some(2), 3), 2);
        assert_eq!(pick(None, None, 3), 3);
    }

    #[test]
    fn file_layer_rejects_unknown_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "listen: 0.0.0.0:1\nlisten_port: 3\n").expect("write");
        let err = load_file::<Sample>(Some(&path))
            .expect_err("unknown field accepted")
            .to_string();
        assert!(
            err.contains("listen_port") && err.contains("c.yaml"),
            "{err}"
        );
        std::fs::write(&path, "listen: 0.0.0.0:1\n").expect("write");
        assert_eq!(
            load_file::<Sample>(Some(&path))
                .expect("valid")
                .listen
                .as_deref(),
            Some("0.0.0.0:1")
        );
    }
}
