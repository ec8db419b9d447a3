//! Where an output may go: never onto an input of the run, never over something that is not a
//! regular file.
//!
//! Inputs are compared by identity (device and inode, so hard links and other spellings of the
//! same file are caught) and by canonical path (so a target that does not exist yet, reached
//! through a symlinked folder, is still compared with where it would land).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{WriteError, WriteErrorKind};
use crate::checkpoint::Checkpoint;

/// Every file a checkpoint was read from: the path given, the file opened (a sharded set's
/// index), and each shard.
pub fn checkpoint_inputs(given: &Path, ckpt: &Checkpoint) -> Vec<PathBuf> {
    let mut out = vec![given.to_path_buf(), ckpt.path.clone()];
    let dir = ckpt.path.parent().unwrap_or(Path::new(""));
    out.extend(ckpt.info.shards.iter().map(|s| dir.join(s)));
    out
}

/// Refuses `target` when it exists and is not a regular file (a symbolic link, folder, device,
/// FIFO or socket: renaming over those replaces the link or node rather than writing where it
/// points, which no caller means), or when it is, or would land on, one of `inputs`.
pub fn check_target(target: &Path, inputs: &[&Path]) -> Result<(), WriteError> {
    let refuse_input = |input: &Path| {
        Err(WriteError::new(
            target,
            WriteErrorKind::IsInput(input.to_path_buf()),
        ))
    };
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(WriteError::new(target, WriteErrorKind::Symlink));
        }
        Ok(m) if !m.is_file() => {
            return Err(WriteError::new(
                target,
                WriteErrorKind::NotRegular(kind(&m)),
            ));
        }
        Ok(m) => {
            for input in inputs {
                if let Ok(im) = std::fs::metadata(input)
                    && im.dev() == m.dev()
                    && im.ino() == m.ino()
                {
                    return refuse_input(input);
                }
            }
        }
        Err(_) => {}
    }
    if let Some(landing) = landing_path(target) {
        for input in inputs {
            if std::fs::canonicalize(input).is_ok_and(|c| c == landing) {
                return refuse_input(input);
            }
        }
    }
    Ok(())
}

/// Whether two targets, existing or not, name the same directory entry (after resolving their
/// folders): two outputs of one run that would overwrite each other.
pub fn same_target(a: &Path, b: &Path) -> bool {
    match (landing_path(a), landing_path(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Where a rename onto `target` lands: its folder resolved, its own name kept (the rename
/// replaces that directory entry, whatever it is).
fn landing_path(target: &Path) -> Option<PathBuf> {
    let name = target.file_name()?;
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(name))
}

fn kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.pt");
        std::fs::write(&input, b"x").unwrap();
        let hard = dir.path().join("hard.pt");
        std::fs::hard_link(&input, &hard).unwrap();
        let link = dir.path().join("link.pt");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let inputs = [input.as_path()];
        assert!(check_target(&dir.path().join("new.pt"), &inputs).is_ok());
        let e = check_target(&hard, &inputs).unwrap_err();
        assert!(
            e.to_string().contains("refusing to overwrite the input"),
            "{e}"
        );
        let e = check_target(&link, &inputs).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = check_target(dir.path(), &inputs).unwrap_err();
        assert!(e.to_string().contains("a folder"), "{e}");
        let e = check_target(Path::new("/dev/null"), &inputs).unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
        // Through a symlinked folder.
        let alias = dir.path().join("alias");
        std::os::unix::fs::symlink(dir.path(), &alias).unwrap();
        assert!(check_target(&alias.join("in.pt"), &inputs).is_err());
        assert!(same_target(
            &alias.join("x.json"),
            &dir.path().join("x.json")
        ));
        assert!(!same_target(
            &alias.join("x.json"),
            &dir.path().join("y.json")
        ));
    }
}
