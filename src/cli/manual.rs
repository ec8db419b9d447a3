//! `completions` and `man`: what clap knows about the command line, as shell scripts and roff.

use super::{EXIT_OK, fail};
use crate::write;

/// `completions`: the script for `shell` on stdout.
pub(super) fn completions(shell: clap_complete::Shell, cmd: &mut clap::Command) -> i32 {
    clap_complete::generate(shell, cmd, "fuse-ema", &mut std::io::stdout());
    EXIT_OK
}

/// `man`: fuse-ema.1 on stdout, or a page per command written into `dir`.
pub(super) fn man(dir: Option<&std::path::Path>, cmd: clap::Command) -> i32 {
    let Some(dir) = dir else {
        let mut out = std::io::stdout().lock();
        return match clap_mangen::Man::new(cmd).render(&mut out) {
            Ok(()) => EXIT_OK,
            Err(e) => fail(format_args!("man page: {e}")),
        };
    };
    let mut pages = vec![("fuse-ema".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("fuse-ema-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let mut bytes = Vec::new();
        if let Err(e) = clap_mangen::Man::new(page).render(&mut bytes) {
            return fail(format_args!("man page {name}: {e}"));
        }
        let path = dir.join(format!("{name}.1"));
        let written = write::AtomicFile::create(&path, &[]).and_then(|mut f| {
            std::io::Write::write_all(f.file(), &bytes)
                .map_err(|e| write::WriteError::new(&path, e))?;
            f.commit()
        });
        if let Err(e) = written {
            return fail(e);
        }
    }
    EXIT_OK
}
