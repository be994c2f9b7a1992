//! Switching to an unprivileged account, for good.

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
