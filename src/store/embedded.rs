//! The embedded store: one SQLite file (WAL mode) shared by several processes.
//! (Placeholder: being written.)

use super::*;
use std::path::{Path, PathBuf};

/// `$XDG_STATE_HOME/deployctl/store.db`, else `~/.local/state/deployctl/store.db`.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("deployctl").join("store.db")
}

pub struct EmbeddedStore {}

impl EmbeddedStore {
    pub fn open(_path: &Path) -> Result<EmbeddedStore> {
        Err(Error::Other("embedded store not written yet".into()))
    }
}
