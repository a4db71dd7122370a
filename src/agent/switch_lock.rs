//! One lock per deploy path on this machine: a switch and a Task's command never overlap.
//!
//! Whichever asks first wins (tokio's mutex is fair): a Task ordered during a switch
//! waits until the switch, health verification included, is over and then runs in the
//! new `current`; a switch waits for a running command to end (at most its timeout).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::OwnedMutexGuard;

/// The locks by deploy path. Entries stay: one per Application the machine has run.
fn locks() -> &'static Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    LOCKS.get_or_init(Default::default)
}

/// Waits for the deploy path `path` to be free, and holds it until the guard drops.
pub async fn lock(path: &Path) -> OwnedMutexGuard<()> {
    let lock = locks()
        .lock()
        .expect("the lock map is never poisoned: no code panics while holding it")
        .entry(path.to_path_buf())
        .or_default()
        .clone();
    lock.lock_owned().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn a_deploy_path_should_be_held_by_one_step_at_a_time_and_others_should_be_free() {
        let a = Path::new("/srv/deploy/default/api");
        let held = lock(a).await;
        assert!(lock(a).now_or_never().is_none(), "the second waits");
        assert!(
            lock(Path::new("/srv/deploy/default/web"))
                .now_or_never()
                .is_some(),
            "another application's path is free"
        );
        let waiting = tokio::spawn(async move {
            let _g = lock(a).await;
        });
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("the waiter gets the path once it is released")
            .expect("the waiter does not panic");
    }
}
