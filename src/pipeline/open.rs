//! Opening a checkpoint for a command, with the `--strict` judgement applied once, whether the
//! file could be read or not.

use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::checkpoint::judge::{self, AllowList, Finding};
use crate::checkpoint::uses::UseLog;
use crate::io::ReadError;

/// Why a command does not get the checkpoint it asked for.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file cannot be read (and nothing it named before the failure was refused).
    #[error(transparent)]
    Read(Box<ReadError>),
    /// `--strict` refused the globals the file names (for an unreadable file, those its pickles
    /// named before the failure, which Python would already have imported).
    #[error("{} refused: {}", path.display(), judge::summary(findings))]
    Refused {
        /// The checkpoint.
        path: PathBuf,
        /// Every finding of the judgement.
        findings: Vec<Finding>,
        /// The read failure, when the file could not be read to the end.
        #[source]
        read_error: Option<Box<ReadError>>,
    },
}

/// Opens `path`; with `strict` (the allow-list to judge against), refuses a file whose globals
/// fail the judgement, also when the file cannot be read but the globals its pickles named
/// before the failure already fail it.
pub fn open_checked(path: &Path, strict: Option<&AllowList>) -> Result<Checkpoint, OpenError> {
    let refused = |uses: &UseLog| {
        let allow = strict?;
        judge::strict_check(uses, allow).err().map(|r| r.0)
    };
    match crate::io::open(path) {
        Ok(c) => match refused(c.graph.uses()) {
            None => Ok(c),
            Some(findings) => Err(OpenError::Refused {
                path: path.to_path_buf(),
                findings,
                read_error: None,
            }),
        },
        Err(e) => match refused(&e.named) {
            None => Err(OpenError::Read(Box::new(e))),
            Some(findings) => Err(OpenError::Refused {
                path: path.to_path_buf(),
                findings,
                read_error: Some(Box::new(e)),
            }),
        },
    }
}
