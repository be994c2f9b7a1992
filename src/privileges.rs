//! The privilege model: a privileged parent, unprivileged workers.
//!
//! Started as root with `daemon.user` (and/or `daemon.group`) set, the
//! parent keeps root, as the masters of nginx and php-fpm do: it runs no
//! worker code, reads only bounded, typed requests on a control socket that
//! only root (and the parent's own uid) may use, and owns its pidfile and
//! socket. Only the workers switch to the configured account, for good, right
//! after the fork: a forked Rust worker first thing in its life (see
//! [`become_worker`]), an external command between fork and exec (see
//! `sys::child_setup`). A compromised worker, or any other process running as
//! that user, can therefore neither signal the parent nor talk to it.
//!
//! The account is resolved once, when the daemon starts, and kept in
//! [`set_workers`] for the daemon's life (changing `user` or `group` needs a
//! restart): a worker needs no passwd lookup after its fork.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use nix::unistd::{setgid, setgroups, setuid, Gid, Group, Uid, User};

/// The account to run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// User id.
    pub uid: Uid,
    /// Group id.
    pub gid: Gid,
}

/// Why the switch could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The user does not exist.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// The group does not exist.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// Not root, and asked to become someone else.
    #[error("cannot switch to user {user:?}: the daemon runs as uid {uid}, not root")]
    NotRoot {
        /// Wanted user.
        user: String,
        /// Our uid.
        uid: u32,
    },
    /// A system call failed.
    #[error("cannot switch to user {user:?}: {what} failed: {errno}")]
    Failed {
        /// Wanted user.
        user: String,
        /// Which call.
        what: &'static str,
        /// Errno.
        errno: nix::errno::Errno,
    },
}

/// Resolves `user` / `group` to ids. `None` if neither is set.
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Account>, PrivilegeError> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let (uid, mut gid) = match user {
        Some(u) => {
            let pw = User::from_name(u)
                .ok()
                .flatten()
                .ok_or_else(|| PrivilegeError::UnknownUser(u.into()))?;
            (pw.uid, pw.gid)
        }
        None => (Uid::current(), Gid::current()),
    };
    if let Some(g) = group {
        gid = Group::from_name(g)
            .ok()
            .flatten()
            .ok_or_else(|| PrivilegeError::UnknownGroup(g.into()))?
            .gid;
    }
    Ok(Some(Account { uid, gid }))
}

/// Whether this process can run as `acct`: it already does, or it is root
/// and can switch. Called before the daemon opens anything, so a non-root
/// start with another account configured fails at once with
/// [`PrivilegeError::NotRoot`] rather than on the first `chown`.
pub fn check(acct: Account, user: &str) -> Result<(), PrivilegeError> {
    let me = Uid::effective();
    if me.is_root() || (me == acct.uid && Gid::effective() == acct.gid) {
        return Ok(());
    }
    Err(PrivilegeError::NotRoot {
        user: user.into(),
        uid: me.as_raw(),
    })
}

/// Drops to `acct`: supplementary groups, then gid, then uid. Afterwards
/// the process cannot regain root (real, effective and saved ids all
/// change, since setuid as root sets all three).
pub fn drop_to(acct: Account, user: &str) -> Result<(), PrivilegeError> {
    if Uid::effective() == acct.uid && Gid::effective() == acct.gid {
        return Ok(());
    }
    check(acct, user)?;
    let fail = |what, errno| PrivilegeError::Failed {
        user: user.into(),
        what,
        errno,
    };
    setgroups(&[acct.gid]).map_err(|e| fail("setgroups", e))?;
    setgid(acct.gid).map_err(|e| fail("setgid", e))?;
    setuid(acct.uid).map_err(|e| fail("setuid", e))?;
    if acct.uid.as_raw() != 0 && setuid(Uid::from_raw(0)).is_ok() {
        return Err(fail("dropping root for good", nix::errno::Errno::EPERM));
    }
    Ok(())
}

/// Who the workers run as: the account, a name for messages, and the login
/// environment of the configured user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerIdentity {
    /// The ids to switch to.
    pub account: Account,
    /// The configured user name (or the uid), for error messages.
    pub label: String,
    /// `HOME`, `USER`, `LOGNAME` and `SHELL` from the user's passwd entry,
    /// as `su` and systemd set them. Empty when only `group` is configured
    /// (the user does not change, nor does its environment).
    pub env: Vec<(&'static str, OsString)>,
}

/// Resolves `user` / `group` to the identity of the workers: `None` if
/// neither is set.
pub fn worker_identity(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<WorkerIdentity>, PrivilegeError> {
    let Some(account) = resolve(user, group)? else {
        return Ok(None);
    };
    let mut env = Vec::new();
    if let Some(u) = user {
        let pw = User::from_name(u)
            .ok()
            .flatten()
            .ok_or_else(|| PrivilegeError::UnknownUser(u.into()))?;
        env = login_env(&pw);
    }
    Ok(Some(WorkerIdentity {
        account,
        label: user.map_or_else(|| account.uid.to_string(), str::to_string),
        env,
    }))
}

/// The login variables for `pw`; an empty shell means `/bin/sh` (passwd(5)).
fn login_env(pw: &User) -> Vec<(&'static str, OsString)> {
    let shell = if pw.shell.as_os_str().is_empty() {
        OsString::from("/bin/sh")
    } else {
        pw.shell.clone().into_os_string()
    };
    vec![
        ("HOME", pw.dir.clone().into_os_string()),
        ("USER", OsString::from(pw.name.clone())),
        ("LOGNAME", OsString::from(pw.name.clone())),
        ("SHELL", shell),
    ]
}

static WORKERS: OnceLock<Option<WorkerIdentity>> = OnceLock::new();

/// Records, once at startup, who the workers run as. A second call keeps
/// the first value (the account cannot change while the daemon runs).
pub fn set_workers(identity: Option<WorkerIdentity>) {
    let _ = WORKERS.set(identity);
}

/// Who the workers run as: `None` when they run as the parent does (no
/// `user` or `group` configured, or not recorded yet).
pub fn workers() -> Option<&'static WorkerIdentity> {
    WORKERS.get().and_then(Option::as_ref)
}

/// In a freshly forked Rust worker, before anything else: switches to the
/// workers' account for good (groups, gid, uid; see [`drop_to`]) and sets
/// the user's login environment. A no-op when no account is configured.
///
/// Must run before `PR_SET_PDEATHSIG` is set: a credential change clears it.
pub fn become_worker(identity: Option<&WorkerIdentity>) -> Result<(), PrivilegeError> {
    let Some(id) = identity else {
        return Ok(());
    };
    drop_to(id.account, &id.label)?;
    for (k, v) in &id.env {
        // The worker was just forked from a single-threaded parent: no other
        // thread reads the environment while it changes.
        std::env::set_var(k, v);
    }
    Ok(())
}

/// Opens the log file (as [`crate::logging::open_log`] does) and, when this
/// call created it, gives it to the workers' account, so that forked
/// workers, which write to it and reopen it by path after a rotation, can.
///
/// A file that already existed keeps its owner: the parent (root) never
/// `chown`s a file it did not create, such as a hard link to a root-owned
/// file planted in the log directory. The check after the open (one link,
/// owned by us) closes the race with a file planted between the two steps.
pub fn open_log_shared(path: &Path) -> std::io::Result<File> {
    // issue 9: `open_log` creates with O_EXCL and says whether it did, and
    // refuses links, FIFOs and devices.
    let log = crate::logging::open_log(path)?;
    if let Some(w) = workers().filter(|_| log.created) {
        let m = log.file.metadata()?;
        if m.nlink() == 1 && m.uid() == Uid::effective().as_raw() && m.uid() != w.account.uid.as_raw() {
            nix::unistd::fchown(&log.file, Some(w.account.uid), Some(w.account.gid))?;
        }
    }
    Ok(log.file)
}

/// The groups, gid and uid an external command switches to between fork
/// and exec (`None`: it keeps the parent's): plain integers, so that the
/// child needs no allocation or lookup.
pub fn command_ids() -> Option<(u32, u32)> {
    workers().map(|w| (w.account.uid.as_raw(), w.account.gid.as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_environment_comes_from_the_passwd_entry() {
        let id = worker_identity(Some("root"), None).unwrap().unwrap();
        let root = User::from_uid(Uid::from_raw(0)).unwrap().unwrap();
        assert_eq!(id.account.uid.as_raw(), 0);
        assert_eq!(id.label, "root");
        let get = |k: &str| id.env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_os_str());
        assert_eq!(get("HOME"), Some(root.dir.as_os_str()));
        assert_eq!(get("USER"), Some("root".as_ref()));
        assert_eq!(get("LOGNAME"), Some("root".as_ref()));
        assert!(get("SHELL").is_some_and(|s| s.as_encoded_bytes().starts_with(b"/")));
        assert_eq!(id.env.len(), 4);
    }

    #[test]
    fn an_empty_login_shell_means_bin_sh() {
        let mut pw = User::from_uid(Uid::from_raw(0)).unwrap().unwrap();
        pw.shell = std::path::PathBuf::new();
        let env = login_env(&pw);
        assert_eq!(env[3], ("SHELL", OsString::from("/bin/sh")));
    }

    #[test]
    fn a_group_alone_changes_the_gid_but_not_the_user_or_its_environment() {
        let id = worker_identity(None, Some("root")).unwrap().unwrap();
        assert_eq!(id.account.uid, Uid::current());
        assert_eq!(id.account.gid.as_raw(), 0);
        assert!(id.env.is_empty());
        assert_eq!(id.label, Uid::current().to_string());
    }

    #[test]
    fn nothing_configured_means_no_switch_and_unknown_names_are_errors() {
        assert_eq!(worker_identity(None, None).unwrap(), None);
        assert!(matches!(
            worker_identity(Some("rookery-no-such-user"), None),
            Err(PrivilegeError::UnknownUser(_))
        ));
        assert!(matches!(
            worker_identity(None, Some("rookery-no-such-group")),
            Err(PrivilegeError::UnknownGroup(_))
        ));
        assert!(become_worker(None).is_ok());
    }
}
