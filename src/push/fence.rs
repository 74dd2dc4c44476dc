//! Epoch fencing at the destination: the last line of defence against a
//! leader that lost its lease without knowing it (paused, partitioned, its
//! clock stalled) and delivers anyway.
//!
//! Every delivery under `ha:` carries the leader's epoch (its election
//! revision: each new leader's is higher). Beside each delivered file lies a
//! marker, `.<file name>.epoch`, holding the highest epoch that wrote it.
//! A delivery with a lower epoch is refused (`fenced`) and leaves the file
//! alone; otherwise the file is written and the marker raised. The marker's
//! name starts with a dot and ends in `.epoch`, so no file_sd glob
//! (`*.json`, `*.yml`) picks it up. The shipped playbook keeps the same
//! marker; this module is `push: local`'s side.
//!
//! Check and write happen under an exclusive lock on the marker, so an old
//! leader cannot slip its file in between a new leader's check and write.
//! The lock is waited for at most [`LOCK_WAIT`]: a writer paused while
//! holding it (SIGSTOP, a frozen VM) must not block the new leader for
//! good, so that delivery fails instead and is retried on the next pass.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest wait for another writer's lock on a marker.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Why a fenced write did not happen.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FenceError {
    #[error(
        "fenced: {marker} holds epoch {held}, newer than this delivery's {epoch}; another leader took over"
    )]
    Fenced {
        marker: PathBuf,
        held: u64,
        epoch: u64,
    },
    #[error("{0}")]
    Io(String),
}

/// The marker of `dest`: `.<file name>.epoch` in the same directory.
pub fn marker_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.epoch"))
}

/// Run `write` (which writes `dest`) only if `dest`'s marker holds no
/// epoch above `epoch`, then record `epoch` in the marker.
pub fn write_fenced<T>(
    dest: &Path,
    epoch: u64,
    write: impl FnOnce() -> Result<T, String>,
) -> Result<T, FenceError> {
    write_fenced_within(dest, epoch, LOCK_WAIT, write)
}

fn write_fenced_within<T>(
    dest: &Path,
    epoch: u64,
    lock_wait: Duration,
    write: impl FnOnce() -> Result<T, String>,
) -> Result<T, FenceError> {
    let marker = marker_path(dest);
    let io = |e: std::io::Error| FenceError::Io(format!("{}: {e}", marker.display()));
    if let Some(dir) = marker.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&marker)
        .map_err(io)?;
    // Released when `file` is dropped (also on error).
    lock_within(&file, &marker, lock_wait)?;
    let held = read_epoch(&mut file, &marker)?;
    if held > epoch {
        return Err(FenceError::Fenced {
            marker,
            held,
            epoch,
        });
    }
    let out = write().map_err(FenceError::Io)?;
    if held != epoch {
        record(&mut file, epoch).map_err(io)?;
    }
    Ok(out)
}

/// Take the exclusive lock on `file`, waiting at most `wait` for a holder.
fn lock_within(file: &File, marker: &Path, wait: Duration) -> Result<(), FenceError> {
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(FenceError::Io(format!(
                    "{}: locked by another writer for over {}s (a paused promshard instance?); not written",
                    marker.display(),
                    wait.as_secs_f64()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(FenceError::Io(format!("{}: {e}", marker.display())));
            }
        }
    }
}

/// The epoch in a marker; an empty marker (just created) holds 0.
fn read_epoch(file: &mut File, marker: &Path) -> Result<u64, FenceError> {
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| FenceError::Io(format!("{}: {e}", marker.display())))?;
    let t = text.trim();
    if t.is_empty() {
        return Ok(0);
    }
    t.parse().map_err(|_| {
        FenceError::Io(format!(
            "{}: holds {t:?}, not an epoch; remove it if no promshard cluster delivers here",
            marker.display()
        ))
    })
}

/// Overwrite the marker in place (a rename would leave the lock behind on
/// the old file). Epochs only grow, so the new text is never shorter.
fn record(file: &mut File, epoch: u64) -> std::io::Result<()> {
    let text = format!("{epoch}\n");
    file.seek(SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())?;
    file.set_len(text.len() as u64)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_epoch_is_refused_and_the_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sd").join("node.json");
        let put = |epoch: u64, body: &'static str| {
            let d = dest.clone();
            write_fenced(&dest, epoch, move || {
                std::fs::write(&d, body).map_err(|e| e.to_string())
            })
        };
        put(7, "seven").unwrap();
        assert_eq!(std::fs::read_to_string(marker_path(&dest)).unwrap(), "7\n");
        put(7, "seven again").unwrap();
        put(12, "twelve").unwrap();
        let refused = put(9, "stale").unwrap_err();
        assert!(
            matches!(
                refused,
                FenceError::Fenced {
                    held: 12,
                    epoch: 9,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(refused.to_string().starts_with("fenced: "), "{refused}");
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "twelve");
        assert_eq!(std::fs::read_to_string(marker_path(&dest)).unwrap(), "12\n");
    }

    #[test]
    fn the_marker_name_matches_no_sd_glob() {
        let m = marker_path(Path::new("/srv/sd/node.json"));
        assert_eq!(m, Path::new("/srv/sd/.node.json.epoch"));
        let name = m.file_name().unwrap().to_str().unwrap();
        assert!(!name.ends_with(".json") && !name.ends_with(".yml") && !name.ends_with(".yaml"));
    }

    #[test]
    fn a_writer_holding_the_lock_delays_the_next_only_until_the_wait_ends() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("n.json");
        write_fenced(&dest, 3, || Ok(())).unwrap();
        // Another open file description: the lock a paused instance holds.
        let holder = File::open(marker_path(&dest)).unwrap();
        holder.lock().unwrap();
        let written = std::cell::Cell::new(false);
        let e = write_fenced_within(&dest, 4, Duration::from_millis(100), || {
            written.set(true);
            Ok(())
        })
        .unwrap_err();
        assert!(
            matches!(e, FenceError::Io(ref m) if m.contains("locked by another writer")),
            "{e}"
        );
        assert!(!written.get(), "wrote without the lock");
        drop(holder);
        write_fenced_within(&dest, 4, Duration::from_millis(100), || Ok(())).unwrap();
        assert_eq!(std::fs::read_to_string(marker_path(&dest)).unwrap(), "4\n");
    }

    #[test]
    fn a_garbled_marker_fails_loudly() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("n.json");
        std::fs::write(marker_path(&dest), "x1").unwrap();
        let e = write_fenced(&dest, 3, || Ok(())).unwrap_err();
        assert!(
            matches!(e, FenceError::Io(ref m) if m.contains("not an epoch")),
            "{e}"
        );
    }
}
