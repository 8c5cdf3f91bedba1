//! The open-file limit. A proxy holds two or three descriptors per connection, and the soft
//! limit a process inherits is often 1024 (a shell's `ulimit -n`, systemd's default) while the
//! hard limit allows far more: each binary raises its soft limit to the hard one at start, as
//! Istio's ztunnel does.

/// Raises this process's soft RLIMIT_NOFILE to its hard limit. Returns (soft limit before,
/// soft limit now = the hard limit).
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur == limit.rlim_max {
        return Ok((before, before));
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard one
    // needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((before, limit.rlim_max))
}

/// [`raise_nofile`], logged once logging is up: `program` names the process in the message.
pub fn raise_nofile_and_log(program: &str) {
    match raise_nofile() {
        Ok((before, now)) if before == now => {
            tracing::info!(soft = now, hard = now, "{program}: open-file limit {now}");
        }
        Ok((before, now)) => tracing::info!(
            soft_before = before,
            soft = now,
            hard = now,
            "{program}: open-file limit raised from {before} to the hard limit {now}"
        ),
        Err(e) => tracing::warn!("{program}: cannot raise the open-file limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    /// Run twice: the second call finds soft == hard and changes nothing.
    #[test]
    fn raising_leaves_soft_equal_to_hard() {
        let (_, now) = super::raise_nofile().unwrap();
        assert_eq!(super::raise_nofile().unwrap(), (now, now));
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(limit.rlim_cur, now);
    }
}
