//! Which users may own a segment the exporter reads.
//!
//! Anyone who can write the segment directory (on most hosts `/dev/shm`, writable by every
//! user) can drop a file there with a valid header. Only files owned by a user trusted to run
//! inferd are read; the owner is taken from `fstat` of the descriptor the reader holds, so it
//! is the owner of the very bytes that are read.

use std::ffi::{CStr, CString};

use crate::{Error, Result};

/// The user inferd runs as under the shipped systemd units (`systemd/sysusers.d/inferd.conf`).
pub const INFERD_USER: &str = "inferd";

/// The users whose segment files are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owners {
    /// (uid, how it was named), in the order given.
    allowed: Vec<(u32, String)>,
}

impl Owners {
    /// The owners named by `--segment-owner` (user names or numeric uids), or the defaults
    /// when none is named: [`INFERD_USER`] if that user exists, root, and the user the exporter
    /// runs as (for local runs, where inferd runs as the same user).
    pub fn from_specs(specs: &[String]) -> Result<Owners> {
        if specs.is_empty() {
            return Ok(Owners::defaults());
        }
        let allowed = specs
            .iter()
            .map(|spec| {
                let uid = resolve(spec)?;
                Ok((uid, spec.clone()))
            })
            .collect::<Result<_>>()?;
        Ok(Owners { allowed })
    }

    /// The defaults of [`Owners::from_specs`].
    pub fn defaults() -> Owners {
        let mut owners = Owners {
            allowed: Vec::new(),
        };
        if let Some(uid) = uid_of(INFERD_USER) {
            owners.add(uid, INFERD_USER.to_owned());
        }
        owners.add(0, "root".to_owned());
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        owners.add(me, format!("uid {me} (this exporter)"));
        owners
    }

    fn add(&mut self, uid: u32, name: String) {
        if !self.allowed.iter().any(|(u, _)| *u == uid) {
            self.allowed.push((uid, name));
        }
    }

    /// Whether `uid` may own a segment.
    pub fn allows(&self, uid: u32) -> bool {
        self.allowed.iter().any(|(u, _)| *u == uid)
    }

    /// `Ok` if `uid` may own the segment `segment`, else [`Error::ForeignOwner`].
    pub fn check(&self, segment: &str, uid: u32) -> Result<()> {
        if self.allows(uid) {
            return Ok(());
        }
        Err(Error::ForeignOwner {
            segment: segment.to_owned(),
            uid,
            allowed: self.describe(),
        })
    }

    /// The allowed owners, for messages: `inferd (uid 998), root (uid 0)`.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .allowed
            .iter()
            .map(|(uid, name)| {
                if name.parse::<u32>().is_ok() || name.starts_with("uid ") {
                    name.clone()
                } else {
                    format!("{name} (uid {uid})")
                }
            })
            .collect();
        names.join(", ")
    }
}

/// A user name or numeric uid, as `--segment-owner` takes it.
fn resolve(spec: &str) -> Result<u32> {
    if let Ok(uid) = spec.parse::<u32>() {
        return Ok(uid);
    }
    uid_of(spec).ok_or_else(|| Error::Owner(spec.to_owned()))
}

/// The uid of the user called `name`, from the passwd database.
fn uid_of(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value of a plain C struct of ints and pointers.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwnam_r writes strings only into `buf`,
    // whose length it is given, and sets `found` to `&pwd` or null.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    // SAFETY: on success `pwd.pw_name` points into `buf`, a NUL-terminated string.
    let _ = unsafe { CStr::from_ptr(pwd.pw_name) };
    Some(pwd.pw_uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uids_resolve_and_unknown_users_are_errors() {
        let o = Owners::from_specs(&["root".into(), "4242".into()]).unwrap();
        assert!(o.allows(0) && o.allows(4242) && !o.allows(4243));
        let err = Owners::from_specs(&["no-such-user-xyz".into()]).unwrap_err();
        assert!(err.to_string().contains("no-such-user-xyz"), "{err}");
    }

    #[test]
    fn defaults_allow_root_and_this_process_but_not_others() {
        let o = Owners::defaults();
        // SAFETY: no preconditions.
        let me = unsafe { libc::geteuid() };
        assert!(o.allows(0) && o.allows(me));
        assert!(!o.allows(65_534_123));
        let err = o.check("inferd-evil", 65_534_123).unwrap_err().to_string();
        assert!(
            err.contains("inferd-evil") && err.contains("65534123"),
            "{err}"
        );
    }
}
