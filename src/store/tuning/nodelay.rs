//! TCP_NODELAY for the PostgreSQL connections.
//!
//! sqlx 0.9.0 connects without TCP_NODELAY (launchbadge/sqlx#4335; the fix,
//! #4336, is not in a release: 0.9.0 is the newest sqlx-core and
//! sqlx-postgres on crates.io), so a message that spans more than one TCP
//! segment (a batch INSERT, say) waits for the server's delayed ACK: 40 ms
//! on Linux, on every such statement. sqlx gives no access to its socket,
//! so in a process that opted in ([`super::tune_process`]) each new
//! connection sets the option on every TCP socket the process has open,
//! the new one among them. Every socket of this service wants it
//! (the gRPC listener sets it on accepted connections too), and setting it
//! twice, or on a socket that is not TCP (which refuses), is harmless.

/// Sets TCP_NODELAY on every TCP socket of the process; returns how many
/// sockets took it.
#[cfg(target_os = "linux")]
pub(super) fn disable_nagle_everywhere() -> std::io::Result<usize> {
    let mut set = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if is_socket && set_nodelay(fd) {
            set += 1;
        }
    }
    Ok(set)
}

/// Elsewhere there is no /proc to list sockets with; nothing is changed.
#[cfg(not(target_os = "linux"))]
pub(super) fn disable_nagle_everywhere() -> std::io::Result<usize> {
    Ok(0)
}

/// Whether `fd` took TCP_NODELAY (a non-TCP socket refuses it).
#[cfg(target_os = "linux")]
fn set_nodelay(fd: i32) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `&on`, which
    // lives for the call. `fd` is one of this process's descriptors; if it
    // was closed (and even reused) since it was listed, the call fails with
    // EBADF/ENOTSOCK or sets TCP_NODELAY on another of our TCP sockets,
    // which wants it as well. Nothing else about the descriptor changes.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            C_INT_LEN,
        )
    };
    rc == 0
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    fn nodelay(fd: i32) -> libc::c_int {
        let mut value: libc::c_int = -1;
        let mut len = C_INT_LEN;
        // SAFETY: getsockopt writes at most `len` bytes into `value`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        value
    }

    #[test]
    fn every_tcp_socket_of_the_process_gets_nodelay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert_eq!(nodelay(client.as_raw_fd()), 0, "Nagle is on by default");
        let set = disable_nagle_everywhere().unwrap();
        assert!(set >= 2, "took {set}");
        assert_ne!(nodelay(client.as_raw_fd()), 0);
        assert_ne!(nodelay(server.as_raw_fd()), 0);
    }
}

/// The length of a C `int` option value, as `setsockopt` takes it.
#[cfg(target_os = "linux")]
const C_INT_LEN: libc::socklen_t = {
    let len = std::mem::size_of::<libc::c_int>();
    assert!(len <= 64);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "checked just above: a C int is a few bytes"
    )]
    let len = len as libc::socklen_t;
    len
};
