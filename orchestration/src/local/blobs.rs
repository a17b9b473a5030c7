//! [`FileBlobs`]: the [`Blobs`] port on a local directory, reproducing the S3 semantics the
//! core relies on: a `PutObject` is atomic (readers see the old object or the new one, never
//! a partial one), `PutObject` with `If-None-Match: *` creates at most once (412 →
//! [`BlobError::AlreadyExists`]), `GetObject` of a missing key is "no such key", `ListObjectsV2`
//! returns keys under a prefix in UTF-8 binary order, and `DeleteObject` of a missing key
//! succeeds.
//!
//! A key `a/b/c` is the file `<root>/a/b/c`. Unlike S3, the file system cannot hold both `a`
//! and `a/b`; writing the second fails with a backend error.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::ports::{limits, BlobError, BlobSize, Blobs};

/// Files being written are named `.tmp-…` next to their destination; listings skip them and
/// keys may not use the prefix, so a temp file is never mistaken for an object.
const TEMP_PREFIX: &str = ".tmp-";

/// S3 objects in a directory.
pub struct FileBlobs {
    root: PathBuf,
}

fn backend(e: impl std::fmt::Display) -> BlobError {
    BlobError::Backend(e.to_string())
}

/// Components that would escape the root, alias another key (`a//b`, `a/./b`) or collide
/// with temp files are rejected, so the key ↔ path mapping is one-to-one and stays inside.
fn check_components<'a>(
    whole: &str,
    components: impl Iterator<Item = &'a str>,
) -> Result<(), BlobError> {
    for c in components {
        if c.is_empty() || c == "." || c == ".." || c.starts_with(TEMP_PREFIX) {
            return Err(BlobError::InvalidKey(whole.to_string()));
        }
    }
    Ok(())
}

fn check_chars(key: &str) -> Result<(), BlobError> {
    if key.starts_with('/') || key.contains('\\') || key.contains('\0') {
        return Err(BlobError::InvalidKey(key.to_string()));
    }
    Ok(())
}

fn validate_key(key: &str) -> Result<(), BlobError> {
    if key.is_empty() {
        return Err(BlobError::InvalidKey(key.to_string()));
    }
    limits::check_object_key(key).map_err(BlobError::TooLarge)?;
    check_chars(key)?;
    check_components(key, key.split('/'))
}

/// A prefix may end anywhere (`results/ab`), but the directories it names must be valid.
fn validate_prefix(prefix: &str) -> Result<(), BlobError> {
    check_chars(prefix)?;
    match prefix.rsplit_once('/') {
        Some((dirs, _)) => check_components(prefix, dirs.split('/')),
        None => Ok(()),
    }
}

fn temp_name() -> String {
    format!(
        "{TEMP_PREFIX}{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// Writes `bytes` to a fresh temp file in `dir` (created if needed) and returns its path.
/// Deliberately no fsync: like the SQLite databases (`synchronous=NORMAL`), blobs survive a
/// process crash, not a power loss, and an fsync per object would dominate small writes.
fn write_temp(dir: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    let mut attempts = 0;
    loop {
        let created = fs::create_dir_all(dir).and_then(|()| {
            let path = dir.join(temp_name());
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            Ok((path, file))
        });
        match created {
            Ok((path, mut file)) => {
                if let Err(e) = file.write_all(bytes) {
                    let _ = fs::remove_file(&path);
                    return Err(e);
                }
                return Ok(path);
            }
            // A concurrent delete may prune a directory we are creating or have just created.
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

fn parent_of(path: &Path) -> io::Result<&Path> {
    path.parent()
        .ok_or_else(|| io::Error::other(format!("no parent directory: {}", path.display())))
}

fn put_blocking(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = write_temp(parent_of(path)?, bytes)?;
    // rename replaces the destination atomically, so readers never see a partial object.
    fs::rename(&temp, path).inspect_err(|_| {
        let _ = fs::remove_file(&temp);
    })
}

fn put_if_absent_blocking(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = write_temp(parent_of(path)?, bytes)?;
    // Unlike rename, link fails if the destination exists, and it publishes the complete
    // file in one step: an atomic create-if-absent that never exposes a partial object.
    let linked = fs::hard_link(&temp, path);
    let _ = fs::remove_file(&temp);
    linked
}

fn get_blocking(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // `a` when only `a/b` exists: a directory is not an object.
        Err(_) if path.is_dir() => Ok(None),
        Err(e) => Err(e),
    }
}

fn get_range_blocking(path: &Path, start: u64, end: u64) -> io::Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if file.metadata()?.is_dir() {
        return Ok(None);
    }
    // Objects are replaced by rename, never written in place: this handle reads one version.
    // Sized up front: growing a Vec while reading a 4 MiB range copies it over and over.
    let size = file.metadata()?.len();
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity(end.min(size).saturating_sub(start) as usize);
    file.take(end.saturating_sub(start))
        .read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

fn list_sizes_blocking(root: &Path, prefix: &str) -> io::Result<Vec<BlobSize>> {
    let mut out = Vec::new();
    for key in list_blocking(root, prefix)? {
        match fs::metadata(root.join(&key)) {
            Ok(meta) => out.push(BlobSize {
                key,
                size: meta.len(),
            }),
            // Deleted since the listing: it is no longer an object.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn list_blocking(root: &Path, prefix: &str) -> io::Result<Vec<String>> {
    // Only the directory the prefix fully names needs walking.
    let base = match prefix.rsplit_once('/') {
        Some((dirs, _)) => format!("{dirs}/"),
        None => String::new(),
    };
    let mut keys = Vec::new();
    let mut pending = vec![base];
    while let Some(dir_key) = pending.pop() {
        let entries = match fs::read_dir(root.join(&dir_key)) {
            Ok(entries) => entries,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not created by us: keys are UTF-8
            };
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let key = format!("{dir_key}{name}");
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                // Skip subtrees that cannot contain a match.
                let sub = format!("{key}/");
                if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                    pending.push(sub);
                }
            } else if file_type.is_file() && key.starts_with(prefix) {
                keys.push(key);
            }
        }
    }
    keys.sort_unstable();
    Ok(keys)
}

fn delete_blocking(root: &Path, path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    // S3 has no directories: prune the ones left empty so `a` can be written after `a/b` is
    // gone. remove_dir fails on a non-empty directory, which ends the walk up.
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

impl FileBlobs {
    /// Opens (creating if needed) the blob directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(backend)?;
        Ok(Self { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    /// File I/O blocks, so it runs on tokio's blocking pool rather than a runtime worker.
    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> Result<T, BlobError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(backend)?
            .map_err(backend)
    }
}

#[async_trait]
impl Blobs for FileBlobs {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        let path = self.path(key)?;
        limits::check_object(bytes.len() as u64).map_err(BlobError::TooLarge)?;
        Self::blocking(move || put_blocking(&path, &bytes)).await
    }

    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        let path = self.path(key)?;
        limits::check_object(bytes.len() as u64).map_err(BlobError::TooLarge)?;
        let result = tokio::task::spawn_blocking(move || put_if_absent_blocking(&path, &bytes))
            .await
            .map_err(backend)?;
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(BlobError::AlreadyExists(key.to_string()))
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(key)?;
        Self::blocking(move || get_blocking(&path)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        validate_prefix(prefix)?;
        let root = self.root.clone();
        let prefix = prefix.to_string();
        Self::blocking(move || list_blocking(&root, &prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path(key)?;
        let root = self.root.clone();
        Self::blocking(move || delete_blocking(&root, &path)).await
    }

    async fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
    ) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(key)?;
        Self::blocking(move || get_range_blocking(&path, start, end)).await
    }

    async fn list_sizes(&self, prefix: &str) -> Result<Vec<BlobSize>, BlobError> {
        validate_prefix(prefix)?;
        let root = self.root.clone();
        let prefix = prefix.to_string();
        Self::blocking(move || list_sizes_blocking(&root, &prefix)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn round_trip_overwrite_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FileBlobs::open(dir.path().join("blobs")).unwrap();
        assert_eq!(blobs.get("results/abc.json").await.unwrap(), None);
        blobs
            .put("results/abc.json", b"one".to_vec())
            .await
            .unwrap();
        assert_eq!(
            blobs.get("results/abc.json").await.unwrap().as_deref(),
            Some(&b"one"[..])
        );
        blobs
            .put("results/abc.json", b"two!".to_vec())
            .await
            .unwrap();
        assert_eq!(
            blobs.get("results/abc.json").await.unwrap().as_deref(),
            Some(&b"two!"[..])
        );
        blobs.put("empty", Vec::new()).await.unwrap();
        assert_eq!(blobs.get("empty").await.unwrap(), Some(Vec::new()));

        blobs.delete("results/abc.json").await.unwrap();
        assert_eq!(blobs.get("results/abc.json").await.unwrap(), None);
        blobs.delete("results/abc.json").await.unwrap();
        blobs.delete("never/was").await.unwrap();
        // The emptied directory is pruned, so its name is usable as a key again.
        blobs.put("results", b"file".to_vec()).await.unwrap();
        assert_eq!(blobs.list("").await.unwrap(), ["empty", "results"]);
        // Data lives in files: another handle on the directory sees it.
        let again = FileBlobs::open(dir.path().join("blobs")).unwrap();
        assert_eq!(
            again.get("results").await.unwrap().as_deref(),
            Some(&b"file"[..])
        );
        // A directory is not an object.
        blobs.put("dir/child", b"x".to_vec()).await.unwrap();
        assert_eq!(blobs.get("dir").await.unwrap(), None);
    }

    #[tokio::test]
    async fn ranges_and_sizes_match_the_default_implementation() {
        /// The trait's defaults, over the same files: what an adapter without ranges does.
        struct Defaults(FileBlobs);
        #[async_trait]
        impl Blobs for Defaults {
            async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
                self.0.put(key, bytes).await
            }
            async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
                self.0.put_if_absent(key, bytes).await
            }
            async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
                self.0.get(key).await
            }
            async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
                self.0.list(prefix).await
            }
            async fn delete(&self, key: &str) -> Result<(), BlobError> {
                self.0.delete(key).await
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let blobs = FileBlobs::open(dir.path()).unwrap();
        let defaults = Defaults(FileBlobs::open(dir.path()).unwrap());
        blobs.put("d/ten", b"0123456789".to_vec()).await.unwrap();
        blobs.put("d/empty", Vec::new()).await.unwrap();
        blobs.put("e/x", b"x".to_vec()).await.unwrap();
        for adapter in [&blobs as &dyn Blobs, &defaults] {
            let range = |s, e| adapter.get_range("d/ten", s, e);
            assert_eq!(range(0, 10).await.unwrap().unwrap(), b"0123456789");
            assert_eq!(range(3, 5).await.unwrap().unwrap(), b"34");
            assert_eq!(range(8, 100).await.unwrap().unwrap(), b"89");
            assert_eq!(range(10, 20).await.unwrap().unwrap(), b"");
            assert_eq!(range(15, 20).await.unwrap().unwrap(), b"");
            assert_eq!(range(5, 2).await.unwrap().unwrap(), b"");
            assert_eq!(adapter.get_range("d/none", 0, 1).await.unwrap(), None);
            assert_eq!(adapter.get_range("d", 0, 1).await.unwrap(), None);
            assert_eq!(
                adapter.get_range("d/empty", 0, 1).await.unwrap().unwrap(),
                b""
            );
            assert_eq!(
                adapter.list_sizes("d/").await.unwrap(),
                [
                    BlobSize {
                        key: "d/empty".into(),
                        size: 0
                    },
                    BlobSize {
                        key: "d/ten".into(),
                        size: 10
                    }
                ]
            );
            assert!(adapter.list_sizes("nothing/").await.unwrap().is_empty());
        }
        assert!(matches!(
            blobs.get_range("../x", 0, 1).await,
            Err(BlobError::InvalidKey(_))
        ));
    }

    #[tokio::test]
    async fn put_if_absent_creates_once() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FileBlobs::open(dir.path()).unwrap();
        blobs
            .put_if_absent("jobs/j1/result", b"first".to_vec())
            .await
            .unwrap();
        let err = blobs
            .put_if_absent("jobs/j1/result", b"second".to_vec())
            .await
            .unwrap_err();
        assert!(
            matches!(err, BlobError::AlreadyExists(ref k) if k == "jobs/j1/result"),
            "{err}"
        );
        assert_eq!(
            blobs.get("jobs/j1/result").await.unwrap().as_deref(),
            Some(&b"first"[..])
        );
        // No temp files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("jobs/j1"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["result"]);
    }

    #[tokio::test]
    async fn list_by_prefix_sorted_without_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FileBlobs::open(dir.path()).unwrap();
        for key in [
            "results/b.json",
            "results/a.json",
            "results/sub/c.json",
            "resultsx",
            "spill/j1/0001",
            "spill/j1/0000",
            "spill/j2/0000",
        ] {
            blobs.put(key, key.as_bytes().to_vec()).await.unwrap();
        }
        fs::write(dir.path().join("results/.tmp-123-abc"), b"partial").unwrap();

        assert_eq!(
            blobs.list("results/").await.unwrap(),
            ["results/a.json", "results/b.json", "results/sub/c.json"]
        );
        assert_eq!(
            blobs.list("results").await.unwrap(),
            [
                "results/a.json",
                "results/b.json",
                "results/sub/c.json",
                "resultsx"
            ]
        );
        assert_eq!(
            blobs.list("spill/j1/").await.unwrap(),
            ["spill/j1/0000", "spill/j1/0001"]
        );
        assert_eq!(
            blobs.list("spill/j").await.unwrap(),
            ["spill/j1/0000", "spill/j1/0001", "spill/j2/0000"]
        );
        assert_eq!(blobs.list("").await.unwrap().len(), 7);
        assert!(blobs.list("nothing/here/").await.unwrap().is_empty());
        assert!(blobs.list("resultsx/").await.unwrap().is_empty());
        assert!(matches!(
            blobs.list("../").await,
            Err(BlobError::InvalidKey(_))
        ));
    }

    #[tokio::test]
    async fn invalid_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FileBlobs::open(dir.path().join("root")).unwrap();
        for key in [
            "",
            "/etc/passwd",
            "../escape",
            "a/../../escape",
            "a/..",
            "a\\b",
            "a\0b",
            "a//b",
            "a/./b",
            "a/",
            ".tmp-1",
        ] {
            let err = blobs.put(key, b"x".to_vec()).await.unwrap_err();
            assert!(matches!(err, BlobError::InvalidKey(_)), "{key:?}: {err}");
            assert!(matches!(
                blobs.put_if_absent(key, b"x".to_vec()).await,
                Err(BlobError::InvalidKey(_))
            ));
            assert!(matches!(
                blobs.get(key).await,
                Err(BlobError::InvalidKey(_))
            ));
            assert!(matches!(
                blobs.delete(key).await,
                Err(BlobError::InvalidKey(_))
            ));
        }
        assert!(!dir.path().join("escape").exists());
        // Dots inside a component are fine.
        blobs.put("a..b/.hidden/x.y", b"ok".to_vec()).await.unwrap();
        assert_eq!(blobs.list("a").await.unwrap(), ["a..b/.hidden/x.y"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_put_if_absent_has_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(FileBlobs::open(dir.path()).unwrap());
        for round in 0..10 {
            let key = format!("claims/{round}");
            let tasks: Vec<_> = (0..8u8)
                .map(|i| {
                    let blobs = Arc::clone(&blobs);
                    let key = key.clone();
                    tokio::spawn(async move {
                        let body = vec![i; 64 * 1024];
                        (i, blobs.put_if_absent(&key, body).await)
                    })
                })
                .collect();
            let mut winners = Vec::new();
            for t in tasks {
                match t.await.unwrap() {
                    (i, Ok(())) => winners.push(i),
                    (_, Err(BlobError::AlreadyExists(_))) => {}
                    (_, Err(e)) => panic!("unexpected {e}"),
                }
            }
            assert_eq!(winners.len(), 1, "round {round}");
            let stored = blobs.get(&key).await.unwrap().unwrap();
            assert_eq!(stored, vec![winners[0]; 64 * 1024]);
        }
        assert_eq!(blobs.list("claims/").await.unwrap().len(), 10);
    }
}
