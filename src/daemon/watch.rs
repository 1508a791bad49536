//! Watching the manifests directory with notify: events are only a trigger (the daemon rescans
//! and hashes the whole tree after a quiet period). The directory is watched, never single
//! files (an atomic save replaces the file a file-watch would follow). Events under `.git/`,
//! and files that are not manifests (editor swap and temp files), are ignored.

use std::path::Path;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

use super::Event;
use crate::manifest::is_manifest_path;

/// Whether an event path can change what loads.
fn relevant(root: &Path, path: &Path) -> bool {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let hidden = rel
        .components()
        .any(|c| c.as_os_str().to_str().is_some_and(|s| s.starts_with('.')));
    !hidden && (is_manifest_path(path) || path.extension().is_none())
}

/// Watch the manifests directory's files. Keep the returned watcher alive.
pub fn files(
    root: &Path,
    tx: UnboundedSender<Event>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let base = root.clone();
    start(&root, move |p| relevant(&base, p), tx)
}

/// Watch a directory, sending a trigger for events on paths `wanted` accepts.
pub fn start(
    dir: &Path,
    wanted: impl Fn(&Path) -> bool + Send + 'static,
    tx: UnboundedSender<Event>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) => {
                if matches!(event.kind, EventKind::Access(_)) {
                    return;
                }
                let rescan = event.need_rescan();
                if rescan || event.paths.iter().any(|p| wanted(p)) {
                    let _ = tx.send(Event::ManifestsChanged);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "watch error: rescanning");
                let _ = tx.send(Event::ManifestsChanged);
            }
        })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_internals_swap_files_and_other_files_are_ignored() {
        let root = Path::new("/m");
        assert!(relevant(root, Path::new("/m/a.yaml")));
        assert!(relevant(root, Path::new("/m/dir/b.yml")));
        assert!(relevant(root, Path::new("/m/dir")));
        assert!(!relevant(root, Path::new("/m/.git/index")));
        assert!(!relevant(root, Path::new("/m/.a.yaml.swp")));
        assert!(!relevant(root, Path::new("/m/a.yaml~")));
        assert!(!relevant(root, Path::new("/m/notes.txt")));
        assert!(
            !relevant(root, Path::new("/m/4913")) || Path::new("/m/4913").extension().is_none()
        );
    }
}
