//! `rookery run -- COMMAND`: the command resolved once, where it was typed,
//! and a pool name derived from it.
//!
//! The daemon changes directory (to `daemon.workdir`, `/` by default), so
//! a relative `./worker.sh` would name another file, or none, once
//! detached: it is made absolute against the directory `run` was typed in.
//!
//! Two unrelated `rookery run` pools must not share a pidfile (the second
//! would say "already running" and exit 0): without `--name`, each gets a
//! name of its own, from the program's base name and a short stable hash
//! of the resolved command line, so the same command finds the same pool
//! again (`stop`, `status`) and another command gets another pool.

use std::path::Path;

/// `command` with a program path (`./worker.sh`, `bin/w`) made absolute
/// against `cwd`, where it was typed. A bare name (`php`) is kept: the
/// daemon looks it up in the same `$PATH`, and `argv[0]` and the process
/// titles stay as typed. A program that cannot be run fails the start with
/// the reason (exit 1), as before. An error is one line for the operator.
pub fn resolve(command: &[String], cwd: &Path) -> Result<Vec<String>, String> {
    let Some(program) = command.first() else {
        return Err("no command given: rookery run -- COMMAND [ARGS...]".into());
    };
    if program.trim().is_empty() {
        return Err(format!(
            "the command is empty ({program:?}): rookery run -- COMMAND [ARGS...]"
        ));
    }
    let mut out = command.to_vec();
    if program.contains('/') {
        out[0] = normalize(&cwd.join(program)).to_string_lossy().into_owned();
    }
    Ok(out)
}

/// `p` without `.` components (`/home/me/./worker.sh` reads better as
/// `/home/me/worker.sh`); `..` is kept, as a symlink may stand before it.
fn normalize(p: &Path) -> std::path::PathBuf {
    p.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// The pool name for a resolved `command`: `rookery-BASE-HASH`, where BASE
/// is the program's file name (characters a name may not hold become `_`,
/// cut to 10, as the name appears twice in the default socket path, which
/// must fit in 107 bytes) and HASH 8 hex digits of FNV-1a over the words
/// (stable across builds and machines, unlike std's hasher).
pub fn pool_name(command: &[String]) -> String {
    let base: String = command
        .first()
        .and_then(|p| Path::new(p).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(10)
        .collect();
    let mut h: u32 = 0x811c_9dc5;
    for word in command {
        for b in word.bytes().chain([0]) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    format!("rookery-{}-{h:08x}", base.trim_start_matches(['.', '-']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn relative_commands_are_made_absolute_where_typed_and_bare_ones_found_in_path() {
        let sh = resolve(&words(&["sh", "-c", "true"]), Path::new("/nowhere")).unwrap();
        assert_eq!(sh, ["sh", "-c", "true"]);
        let bin = resolve(&words(&["./w.sh", "-x"]), Path::new("/srv/app")).unwrap();
        assert_eq!(bin, ["/srv/app/w.sh", "-x"]);
        let up = resolve(&words(&["../bin/w"]), Path::new("/srv/app")).unwrap();
        assert_eq!(up, ["/srv/app/../bin/w"]);
        assert_eq!(resolve(&words(&["/bin/w"]), Path::new("/x")).unwrap(), ["/bin/w"]);
        let e = resolve(&words(&[""]), Path::new("/")).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        assert!(resolve(&words(&[" "]), Path::new("/")).is_err());
    }

    #[test]
    fn pool_names_are_stable_valid_and_differ_by_command() {
        let a = pool_name(&words(&["/usr/bin/php", "worker.php"]));
        assert_eq!(a, pool_name(&words(&["/usr/bin/php", "worker.php"])));
        assert!(
            a.starts_with("rookery-php-") && a.len() == "rookery-php-".len() + 8,
            "{a}"
        );
        assert_ne!(a, pool_name(&words(&["/usr/bin/php", "other.php"])));
        // Word boundaries count: ["a b"] is not ["a", "b"].
        assert_ne!(
            pool_name(&words(&["/x", "a b"])),
            pool_name(&words(&["/x", "a", "b"]))
        );
        let odd = pool_name(&words(&["/opt/my worker$", "x"]));
        assert!(odd.starts_with("rookery-my_worker_-"), "{odd}");
        let long = pool_name(&words(&["/opt/a-very-long-program-name"]));
        assert!(
            long.starts_with("rookery-a-very-lon-") && long.len() == 27,
            "{long}"
        );
        assert!(crate::config::check_name(&odd).is_ok(), "{odd}");
    }
}
