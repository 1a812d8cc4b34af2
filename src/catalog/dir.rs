//! A directory of YAML files as the object source. Each file is re-parsed only when its
//! bytes change; a file or document that fails to parse keeps its last good objects, and
//! the problem is reported as a diagnostic.

use crate::api::{parse_documents, Diagnostic, ObjectKey};
use crate::compile::{CatalogEntry, Snapshot};
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Default)]
struct FileState {
    /// (modified time, length) when last read; unchanged metadata skips the read.
    stamp: Option<(std::time::SystemTime, u64)>,
    digest: [u8; 32],
    /// Sorted by key. A file holds a few objects, and a map per file would cost ~1 KiB
    /// of empty slots each (10 MB at 10,000 files).
    objects: Box<[(ObjectKey, CatalogEntry)]>,
    diagnostics: Vec<Diagnostic>,
}

pub struct DirCatalog {
    dir: PathBuf,
    files: HashMap<PathBuf, FileState>,
}

impl DirCatalog {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirCatalog {
            dir: dir.into(),
            files: HashMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory and returns the snapshot of everything in it.
    pub fn scan(&mut self) -> Snapshot {
        let mut seen = std::collections::HashSet::new();
        let mut dir_problem = None;
        match list_yaml_files(&self.dir) {
            Ok(paths) => {
                for path in paths {
                    // A file that vanished between listing and reading is simply gone.
                    let Ok(meta) = std::fs::metadata(&path) else {
                        continue;
                    };
                    let stamp = meta.modified().ok().map(|m| (m, meta.len()));
                    let state = self.files.entry(path.clone()).or_default();
                    if stamp.is_none() || state.stamp != stamp {
                        let Ok(bytes) = std::fs::read(&path) else {
                            continue;
                        };
                        let digest: [u8; 32] = Sha256::digest(&bytes).into();
                        if state.digest != digest || state.stamp.is_none() {
                            reparse(state, &path, &bytes);
                            state.digest = digest;
                        }
                        state.stamp = stamp;
                    }
                    seen.insert(path);
                }
            }
            Err(e) => {
                dir_problem = Some(
                    Diagnostic::error(format!("cannot read catalog directory: {e}"))
                        .in_file(Some(&self.dir.display().to_string())),
                );
            }
        }
        if dir_problem.is_none() {
            self.files.retain(|p, _| seen.contains(p));
        }
        let mut snapshot = self.snapshot();
        snapshot.diagnostics.extend(dir_problem);
        snapshot
    }

    /// Everything the files hold; an object defined in two files: the first path wins.
    fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let mut paths: Vec<&PathBuf> = self.files.keys().collect();
        paths.sort();
        for path in paths {
            let state = &self.files[path];
            snapshot
                .diagnostics
                .extend(state.diagnostics.iter().cloned());
            for (key, entry) in &state.objects {
                if let Some(first) = snapshot.objects.get(key) {
                    snapshot.diagnostics.push(
                        Diagnostic::error(format!(
                            "duplicate object; {} already defines it and wins",
                            first.file.as_deref().unwrap_or("?")
                        ))
                        .in_file(entry.file.as_deref())
                        .on_object(key.to_string()),
                    );
                    continue;
                }
                snapshot.objects.insert(key.clone(), entry.clone());
            }
        }
        snapshot
    }

    /// Starts watching the directory; every completed change (create, rename, delete,
    /// a writer closing a file) notifies `signal`. Keep the returned value alive.
    pub fn watch(&self, signal: Arc<Notify>) -> notify::Result<DirWatch> {
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if res.is_ok_and(|e| signals_complete_change(&e.kind)) {
                    signal.notify_one();
                }
            })?;
        watcher.watch(&self.dir, RecursiveMode::Recursive)?;
        Ok(DirWatch {
            _watcher: Box::new(watcher),
        })
    }
}

/// A plain `write()` is not a completed change: a file rewritten in place passes through
/// truncated and partial states, and scanning then would drop its objects for a moment.
/// Its writer closing it is the signal (editors' and ConfigMaps' renames signal too).
fn signals_complete_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    use notify::EventKind;
    match kind {
        EventKind::Modify(ModifyKind::Data(_)) => false,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// A snapshot of named texts read the way the directory catalog reads files, for
/// `fngate check`, tests and benchmarks.
pub fn snapshot_from_texts<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Snapshot {
    let mut catalog = DirCatalog::new("");
    for (name, text) in files {
        let path = PathBuf::from(name);
        let state = catalog.files.entry(path.clone()).or_default();
        reparse(state, &path, text.as_bytes());
    }
    catalog.snapshot()
}

pub struct DirWatch {
    _watcher: Box<dyn Watcher + Send>,
}

fn list_yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Editors' swap and backup files, and Kubernetes ConfigMap `..data` links.
            if name.starts_with('.') {
                continue;
            }
            let ft = entry.file_type()?;
            if ft.is_dir() || (ft.is_symlink() && path.is_dir()) {
                stack.push(path);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn reparse(state: &mut FileState, path: &Path, bytes: &[u8]) {
    // Shared by every object of the file.
    let file: Arc<str> = path.display().to_string().into();
    state.diagnostics.clear();
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            state
                .diagnostics
                .push(Diagnostic::error(format!("not UTF-8 text: {e}")).in_file(Some(&file)));
            keep_last_good_note(state, &file);
            return;
        }
    };
    let docs = match parse_documents(text, Some(&file)) {
        Ok(docs) => docs,
        Err(d) => {
            state.diagnostics.push(d);
            keep_last_good_note(state, &file);
            return;
        }
    };
    let mut objects = BTreeMap::new();
    for doc in docs {
        match doc.result {
            Ok(object) => {
                let key = object.key();
                let version = object.content_hash();
                if objects.contains_key(&key) {
                    state.diagnostics.push(
                        Diagnostic::error("object defined twice in this file; the first one wins")
                            .in_file(Some(&file))
                            .on_object(key.to_string()),
                    );
                    continue;
                }
                objects.insert(
                    key,
                    CatalogEntry {
                        object: Arc::new(object),
                        file: Some(file.clone()),
                        version,
                    },
                );
            }
            Err(d) => {
                state.diagnostics.push(d);
                if let Some(key) = doc.key {
                    if let Some(last_good) = state.last_good(&key).cloned() {
                        state.diagnostics.push(
                            Diagnostic::warning(
                                "still serving the last good version of this object",
                            )
                            .in_file(Some(&file))
                            .on_object(key.to_string()),
                        );
                        objects.insert(key, last_good);
                    }
                }
            }
        }
    }
    state.objects = objects.into_iter().collect();
}

impl FileState {
    /// This file's current version of `key`.
    fn last_good(&self, key: &ObjectKey) -> Option<&CatalogEntry> {
        self.objects
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &self.objects[i].1)
    }
}

fn keep_last_good_note(state: &mut FileState, file: &str) {
    if !state.objects.is_empty() {
        state.diagnostics.push(
            Diagnostic::warning(format!(
                "file unreadable; still serving its {} last good objects",
                state.objects.len()
            ))
            .in_file(Some(file)),
        );
    }
}
