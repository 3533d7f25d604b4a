//! A step's or alert hook's component, resolved: the one place a plugin reference
//! (`builtin:NAME`, or a `.wasm` path relative to the plan or the inventory) becomes bytes and a
//! digest. Validation resolves every reference once and keeps the result in [`Components`]; a
//! run loads what validation read, so what was checked is what runs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use lifeboat_plan::plan::PluginRef;
use sha2::{Digest, Sha256};

/// A component's bytes and their sha256 (lowercase hex).
#[derive(Debug)]
pub struct Component {
    pub bytes: Arc<[u8]>,
    pub sha256: String,
}

/// Why a reference does not resolve.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ComponentError {
    #[error("no built-in step `builtin:{0}`")]
    NoBuiltin(String),
    #[error("{reason}")]
    Unreadable { path: String, reason: String },
}

impl Component {
    /// Reads `reference`, a path relative to `dir`.
    pub fn read(reference: &PluginRef, dir: &Path) -> Result<Self, ComponentError> {
        let bytes: Arc<[u8]> = match reference {
            PluginRef::Builtin(name) => lifeboat_builtins::builtin(name)
                .ok_or_else(|| ComponentError::NoBuiltin(name.clone()))?
                .into(),
            PluginRef::Path(relative) => {
                let path = dir.join(relative);
                let unreadable = |reason: String| ComponentError::Unreadable {
                    path: path.display().to_string(),
                    reason,
                };
                if path.is_dir() {
                    return Err(unreadable("it is a directory".into()));
                }
                std::fs::read(&path)
                    .map_err(|e| {
                        unreadable(match e.kind() {
                            std::io::ErrorKind::NotFound => "no such file".into(),
                            _ => e.to_string(),
                        })
                    })?
                    .into()
            }
        };
        let sha256 = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self { bytes, sha256 })
    }
}

/// Every component a configuration names, each read once, by where it comes from.
#[derive(Clone, Debug, Default)]
pub struct Components(HashMap<String, Result<Arc<Component>, ComponentError>>);

impl Components {
    /// What names a reference resolved against `dir`: the built-in's name, or the file's path.
    fn key(reference: &PluginRef, dir: &Path) -> String {
        match reference {
            PluginRef::Builtin(name) => format!("builtin:{name}"),
            PluginRef::Path(relative) => dir.join(relative).display().to_string(),
        }
    }

    /// `reference` (relative to `dir`), read the first time it is asked for.
    pub fn resolve(
        &mut self,
        reference: &PluginRef,
        dir: &Path,
    ) -> Result<Arc<Component>, ComponentError> {
        self.0
            .entry(Self::key(reference, dir))
            .or_insert_with(|| Component::read(reference, dir).map(Arc::new))
            .clone()
    }

    /// `reference` as validation read it; a reference it never resolved is read now.
    pub fn get(&self, reference: &PluginRef, dir: &Path) -> Result<Arc<Component>, ComponentError> {
        match self.0.get(&Self::key(reference, dir)) {
            Some(resolved) => resolved.clone(),
            None => Component::read(reference, dir).map(Arc::new),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_once_and_a_builtin_is_the_embedded_one() {
        let dir = std::env::temp_dir().join(format!("lifeboat-components-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s.wasm"), b"abc").unwrap();
        let mut components = Components::default();
        let file = PluginRef::Path("s.wasm".into());
        let first = components.resolve(&file, &dir).unwrap();
        assert_eq!(
            first.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Changed on disk afterwards: the configuration keeps what it validated.
        std::fs::write(dir.join("s.wasm"), b"changed").unwrap();
        assert_eq!(&*components.get(&file, &dir).unwrap().bytes, b"abc");
        let wait = components
            .resolve(&PluginRef::Builtin("wait".into()), &dir)
            .unwrap();
        assert_eq!(&*wait.bytes, lifeboat_builtins::builtin("wait").unwrap());
        assert_eq!(
            components
                .resolve(&PluginRef::Builtin("nope".into()), &dir)
                .unwrap_err(),
            ComponentError::NoBuiltin("nope".into())
        );
        let missing = components.resolve(&PluginRef::Path("gone.wasm".into()), &dir);
        assert!(
            matches!(&missing, Err(ComponentError::Unreadable { reason, .. }) if reason == "no such file"),
            "{missing:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
