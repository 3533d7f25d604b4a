//! Compiled components on disk, keyed by the component's sha256 and the engine's compatibility
//! hash, so a step does not pay Cranelift's compile time twice.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;

use wasmtime::Engine;
use wasmtime::component::Component;

#[derive(Debug)]
pub(crate) struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompileCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> Result<Self, String> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create cache {}: {e}", dir.display()))?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The cached compilation of the component with this digest, if there is a usable one.
    pub fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        if !path.is_file() {
            return None;
        }
        // SAFETY: deserializing runs native code produced by Cranelift. Only files this cache
        // wrote are read: they are named by the digest of the verified component and the
        // engine's compatibility hash, in a directory Lifeboat owns. A file that fails to load
        // is removed and the component recompiled.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(engine, &path) };
        match loaded {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %crate::describe_error(&e), "a cached compilation does not load; compiling again");
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove the unusable cached compilation");
                }
                None
            }
        }
    }

    /// Store a compilation; failures only cost a recompile next time.
    pub fn store(&self, sha256: &str, component: &Component) {
        let bytes = match component.serialize() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %crate::describe_error(&e), "cannot serialize a compilation for the cache");
                return;
            }
        };
        let path = self.path(sha256);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let stored = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = stored {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache a compilation; the next load compiles again");
            let _ = std::fs::remove_file(&tmp);
        }
    }
}
