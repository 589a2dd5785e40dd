//! A run's outputs as one unit.
//!
//! While a run goes, its files are written into a staging folder inside the output directory
//! (`DIR/.vggtd-staging-<run id>/`). At the end (a clean end or the first stop signal) they
//! replace the previous run's files together: the previous run's files (listed in
//! `DIR/.vggtd-run.json`) are moved aside into `DIR/.vggtd-previous-<run id>/`, the new ones
//! moved in, the manifest rewritten, and the set-aside folder removed. A run that fails before
//! it has anything to write abandons its staging folder and leaves the previous outputs as they
//! were. A commit cut short (power loss, a second signal at the wrong moment) is finished or
//! rolled back by the next run in the same directory, so the folder never stays mixed.
//!
//! A file outside the output directory (`--rrd /elsewhere/run.rrd`) joins the unit through
//! [`Staging::external`]: it is written beside its target under a hidden temporary name and
//! renamed over the target right after the commit. Files marked with [`Staging::keep_on_failure`]
//! (the recording) are not thrown away with a failed run: [`Staging::fail`] keeps them under a
//! name that says so (`recording.failed-<run id>.rrd`), never over the previous run's file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the manifest of the last committed run.
pub const MANIFEST: &str = ".vggtd-run.json";
const STAGING_PREFIX: &str = ".vggtd-staging-";
const PREVIOUS_PREFIX: &str = ".vggtd-previous-";

/// Error of the staging area.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StagingError {
    let path = path.to_owned();
    move |source| StagingError::Io { what, path, source }
}

/// What `DIR/.vggtd-run.json` says of the run that wrote the directory's files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    /// The run's id.
    pub run_id: String,
    /// Its files and folders, relative to the output directory.
    pub files: Vec<String>,
}

/// The staging area of one run.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    stage: PathBuf,
    run_id: String,
    /// Files outside the output directory: (temporary path, target).
    external: Vec<(PathBuf, PathBuf)>,
    /// Files kept when the run fails: (where written, where kept).
    keep: Vec<(PathBuf, PathBuf)>,
}

/// The last component of `path`, as text.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned())
}

/// `name` with `.failed-<run id>` before its extension: `run.rrd` -> `run.failed-<id>.rrd`.
pub fn failed_name(name: &str, run_id: &str) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.failed-{run_id}.{ext}"),
        _ => format!("{name}.failed-{run_id}"),
    }
}

impl Staging {
    /// Opens a staging area in `dir` (created if needed) for run `run_id`, after finishing or
    /// rolling back what an earlier run left half done.
    pub fn begin(dir: &Path, run_id: &str) -> Result<Self, StagingError> {
        std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
        recover(dir)?;
        let stage = dir.join(format!("{STAGING_PREFIX}{run_id}"));
        if stage.exists() {
            std::fs::remove_dir_all(&stage).map_err(io("cannot clear", &stage))?;
        }
        std::fs::create_dir_all(&stage).map_err(io("cannot create", &stage))?;
        Ok(Self {
            dir: dir.to_owned(),
            stage,
            run_id: run_id.to_owned(),
            external: Vec::new(),
            keep: Vec::new(),
        })
    }

    /// Where to write `target`, a file outside the output directory that is replaced together
    /// with the run's outputs: a hidden temporary name beside it.
    pub fn external(&mut self, target: &Path) -> PathBuf {
        let temporary =
            target.with_file_name(format!(".{}.{}.partial", file_name(target), self.run_id));
        self.external.push((temporary.clone(), target.to_owned()));
        temporary
    }

    /// Keeps the file written at `written_at` (a [`Self::path`] or an [`Self::external`] path)
    /// when the run fails, under a failed name where it would have gone.
    pub fn keep_on_failure(&mut self, written_at: &Path) {
        let target = self
            .external
            .iter()
            .find(|(temporary, _)| temporary == written_at)
            .map_or_else(
                || {
                    let name = written_at.strip_prefix(&self.stage).unwrap_or(written_at);
                    self.dir.join(name)
                },
                |(_, target)| target.clone(),
            );
        let kept = target.with_file_name(failed_name(&file_name(&target), &self.run_id));
        self.keep.push((written_at.to_owned(), kept));
    }

    /// Where to write output `name` (a file or folder name in the output directory).
    pub fn path(&self, name: &str) -> PathBuf {
        self.stage.join(name)
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Replaces the previous run's outputs with everything staged; returns the final paths.
    pub fn commit(self) -> Result<Vec<PathBuf>, StagingError> {
        let mut names: Vec<String> = std::fs::read_dir(&self.stage)
            .map_err(io("cannot list", &self.stage))?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        names.sort();
        let previous = read_manifest(&self.dir)
            .map(|m| m.files)
            .unwrap_or_default();
        let aside = self.dir.join(format!("{PREVIOUS_PREFIX}{}", self.run_id));
        std::fs::create_dir_all(&aside).map_err(io("cannot create", &aside))?;
        // The old manifest first: from here on, recovery knows a commit was under way.
        for name in previous
            .iter()
            .map(String::as_str)
            .chain(names.iter().map(String::as_str))
            .chain([MANIFEST])
        {
            let old = self.dir.join(name);
            if old.exists() && !aside.join(name).exists() {
                std::fs::rename(&old, aside.join(name)).map_err(io("cannot move aside", &old))?;
            }
        }
        let mut moved = Vec::new();
        for name in &names {
            let to = self.dir.join(name);
            std::fs::rename(self.stage.join(name), &to).map_err(io("cannot move in", &to))?;
            moved.push(to);
        }
        let manifest = RunManifest {
            run_id: self.run_id.clone(),
            files: names,
        };
        let text = serde_json::to_string_pretty(&manifest)
            .unwrap_or_else(|e| unreachable!("the manifest serialises: {e}"));
        let path = self.dir.join(MANIFEST);
        submap::io::write_atomic(&path, text.as_bytes()).map_err(io("cannot write", &path))?;
        std::fs::remove_dir_all(&aside).map_err(io("cannot remove", &aside))?;
        std::fs::remove_dir_all(&self.stage).map_err(io("cannot remove", &self.stage))?;
        for (temporary, target) in &self.external {
            if temporary.exists() {
                std::fs::rename(temporary, target).map_err(io("cannot move in", target))?;
                moved.push(target.clone());
            }
        }
        Ok(moved)
    }

    /// Drops everything staged: the previous run's outputs stay as they are.
    pub fn abandon(self) {
        for (temporary, _) in &self.external {
            if temporary.exists() {
                if let Err(e) = std::fs::remove_file(temporary) {
                    tracing::warn!(path = %temporary.display(), error = %e, "cannot remove a temporary output");
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.stage) {
            tracing::warn!(path = %self.stage.display(), error = %e, "cannot remove the staging folder");
        }
    }

    /// The run failed: the previous run's outputs stay as they are, and the files marked with
    /// [`Self::keep_on_failure`] are kept under a failed name; returns their paths.
    pub fn fail(self) -> Vec<PathBuf> {
        let mut kept = Vec::new();
        for (from, to) in self.keep.iter().filter(|(from, _)| from.exists()) {
            match std::fs::rename(from, to) {
                Ok(()) => kept.push(to.clone()),
                Err(e) => {
                    tracing::warn!(path = %from.display(), error = %e, "cannot keep a failed run's file")
                }
            }
        }
        self.abandon();
        kept
    }
}

/// The manifest of the last committed run in `dir`, if any.
pub fn read_manifest(dir: &Path) -> Option<RunManifest> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(MANIFEST)).ok()?).ok()
}

/// Finishes or rolls back a commit an earlier run left half done, and removes stale staging
/// folders. A set-aside folder means a commit was under way: if the new manifest was written the
/// commit completed (only the clean-up is missing); otherwise the set-aside files go back and
/// whatever of the new run was moved in is removed.
fn recover(dir: &Path) -> Result<(), StagingError> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io("cannot list", dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    for path in &entries {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(run_id) = name.strip_prefix(PREVIOUS_PREFIX) {
            let committed = read_manifest(dir).is_some_and(|m| m.run_id == run_id);
            if !committed {
                tracing::warn!(
                    run = run_id,
                    "rolling back an interrupted commit of the outputs"
                );
                // Whatever of the new run got moved in is still in its staging list: remove it.
                let stage = dir.join(format!("{STAGING_PREFIX}{run_id}"));
                let aside: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(io("cannot list", path))?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .collect();
                for old in &aside {
                    let Some(n) = old.file_name() else { continue };
                    let target = dir.join(n);
                    if target.exists() && !stage.join(n).exists() {
                        remove(&target)?;
                    }
                    std::fs::rename(old, &target).map_err(io("cannot restore", &target))?;
                }
            }
            std::fs::remove_dir_all(path).map_err(io("cannot remove", path))?;
        }
    }
    for path in &entries {
        let Some(run_id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(STAGING_PREFIX))
        else {
            continue;
        };
        if !path.exists() {
            continue;
        }
        // A run that never committed (killed by a second signal): its recording is kept under
        // a failed name, the rest goes.
        for entry in std::fs::read_dir(path)
            .map_err(io("cannot list", path))?
            .filter_map(Result::ok)
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".rrd") {
                let kept = dir.join(failed_name(&name, run_id));
                tracing::warn!(path = %kept.display(), "kept the recording of a run that did not finish");
                std::fs::rename(entry.path(), &kept).map_err(io("cannot keep", &kept))?;
            }
        }
        std::fs::remove_dir_all(path).map_err(io("cannot remove", path))?;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), StagingError> {
    if path.is_dir() {
        std::fs::remove_dir_all(path).map_err(io("cannot remove", path))
    } else {
        std::fs::remove_file(path).map_err(io("cannot remove", path))
    }
}

/// A run id from its start time: UTC time and process id, e.g. `20261202T071530Z-4242`.
pub fn run_id(started: std::time::SystemTime) -> String {
    let (y, m, d, hh, mm, ss) = utc(started);
    format!(
        "{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z-{}",
        std::process::id()
    )
}

/// `time` in UTC as RFC 3339, e.g. `2026-12-02T07:15:30Z`.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    let (y, m, d, hh, mm, ss) = utc(time);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

fn utc(time: std::time::SystemTime) -> (i64, u32, u32, u64, u64, u64) {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    (y, m, d, rem / 3600, (rem / 60) % 60, rem % 60)
}

/// The UTC date of a day count since 1970-01-01 (Howard Hinnant's civil calendar algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write");
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).expect("read")
    }

    #[test]
    fn a_commit_replaces_the_previous_run_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Staging::begin(dir.path(), "a").expect("begin");
        write(&first.path("trajectory.txt"), "a");
        write(&first.path("run.rrd"), "a");
        first.commit().expect("commit");
        assert_eq!(read(&dir.path().join("trajectory.txt")), "a");
        // The second run writes no recording: the old one goes with the rest of run a.
        let second = Staging::begin(dir.path(), "b").expect("begin");
        write(&second.path("trajectory.txt"), "b");
        let files = second.commit().expect("commit");
        assert_eq!(files, [dir.path().join("trajectory.txt")]);
        assert_eq!(read(&dir.path().join("trajectory.txt")), "b");
        assert!(
            !dir.path().join("run.rrd").exists(),
            "no file of run a is left"
        );
        assert_eq!(read_manifest(dir.path()).expect("manifest").run_id, "b");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 2, "trajectory and manifest only: {left:?}");
    }

    #[test]
    fn an_abandoned_run_leaves_the_previous_outputs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Staging::begin(dir.path(), "a").expect("begin");
        write(&first.path("map.ply"), "a");
        first.commit().expect("commit");
        let failed = Staging::begin(dir.path(), "b").expect("begin");
        write(&failed.path("map.ply"), "b");
        failed.abandon();
        assert_eq!(read(&dir.path().join("map.ply")), "a");
        assert_eq!(read_manifest(dir.path()).expect("manifest").run_id, "a");
    }

    #[test]
    fn an_interrupted_commit_is_rolled_back_by_the_next_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Staging::begin(dir.path(), "a").expect("begin");
        write(&first.path("trajectory.txt"), "a");
        write(&first.path("map.ply"), "a");
        first.commit().expect("commit");
        // Run b was cut short while committing: run a's files set aside, one new file moved in.
        let aside = dir.path().join(".vggtd-previous-b");
        std::fs::create_dir_all(&aside).expect("mkdir");
        for name in ["trajectory.txt", "map.ply", MANIFEST] {
            std::fs::rename(dir.path().join(name), aside.join(name)).expect("move");
        }
        let stage = dir.path().join(".vggtd-staging-b");
        std::fs::create_dir_all(&stage).expect("mkdir");
        write(&stage.join("map.ply"), "b");
        write(&dir.path().join("trajectory.txt"), "b");
        // The next run finds it and restores run a before anything else.
        let next = Staging::begin(dir.path(), "c").expect("begin");
        assert_eq!(read(&dir.path().join("trajectory.txt")), "a");
        assert_eq!(read(&dir.path().join("map.ply")), "a");
        assert_eq!(read_manifest(dir.path()).expect("manifest").run_id, "a");
        assert!(!aside.exists() && !stage.exists());
        next.abandon();
    }

    #[test]
    fn an_external_file_joins_the_commit_and_a_failed_run_keeps_it_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let elsewhere = dir.path().join("run.rrd");
        write(&elsewhere, "old recording");
        let mut first = Staging::begin(&out, "a").expect("begin");
        let partial = first.external(&elsewhere);
        assert_ne!(partial, elsewhere);
        write(&partial, "new recording");
        assert_eq!(read(&elsewhere), "old recording", "not before the commit");
        write(&first.path("trajectory.txt"), "a");
        let files = first.commit().expect("commit");
        assert!(files.contains(&elsewhere), "{files:?}");
        assert_eq!(read(&elsewhere), "new recording");
        assert!(!partial.exists());

        let mut failed = Staging::begin(&out, "b").expect("begin");
        let partial = failed.external(&elsewhere);
        failed.keep_on_failure(&partial);
        failed.keep_on_failure(&failed.path("recording.rrd"));
        write(&partial, "failed recording");
        write(&failed.path("recording.rrd"), "failed, staged");
        write(&failed.path("trajectory.txt"), "b");
        let kept = failed.fail();
        assert_eq!(
            read(&elsewhere),
            "new recording",
            "the old file is untouched"
        );
        assert_eq!(
            read(&dir.path().join("run.failed-b.rrd")),
            "failed recording"
        );
        assert_eq!(read(&out.join("recording.failed-b.rrd")), "failed, staged");
        assert_eq!(kept.len(), 2);
        assert_eq!(read(&out.join("trajectory.txt")), "a");
        assert!(!partial.exists());
    }

    #[test]
    fn a_killed_run_loses_its_staging_but_its_recording_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Staging::begin(dir.path(), "a").expect("begin");
        write(&first.path("map.ply"), "a");
        first.commit().expect("commit");
        // Run b was killed before its commit.
        let stage = dir.path().join(".vggtd-staging-b");
        std::fs::create_dir_all(&stage).expect("mkdir");
        write(&stage.join("map.ply"), "b");
        write(&stage.join("recording.rrd"), "b");
        Staging::begin(dir.path(), "c").expect("begin").abandon();
        assert_eq!(read(&dir.path().join("map.ply")), "a");
        assert_eq!(read(&dir.path().join("recording.failed-b.rrd")), "b");
        assert!(!stage.exists());
    }

    #[test]
    fn failed_names_say_so() {
        assert_eq!(failed_name("run.rrd", "x"), "run.failed-x.rrd");
        assert_eq!(failed_name("recording", "x"), "recording.failed-x");
        assert_eq!(failed_name(".hidden", "x"), ".hidden.failed-x");
    }

    #[test]
    fn run_ids_are_utc_times() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_789), (2026, 12, 2));
        let id = run_id(std::time::SystemTime::now());
        assert!(id.len() > 17, "{id}");
        assert_eq!(&id[8..9], "T");
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_195_730);
        assert_eq!(rfc3339(at), "2026-12-02T07:15:30Z");
        assert!(run_id(at).starts_with("20261202T071530Z-"));
    }
}
