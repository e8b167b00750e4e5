//! The client port's TCP listener, one per shard core.
//!
//! glommio's `TcpListener::bind` sets `SO_REUSEPORT` only (every shard core listens on the
//! same port and the kernel spreads connections), which does not let a restarted member
//! bind while connections its predecessor closed are still in TIME-WAIT: a restart
//! failed with "Address already in use" for up to a minute (issue 10), where etcd (Go
//! sets `SO_REUSEADDR` on every listener) starts at once. This listener sets both.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections per listener: glommio's own value.
const BACKLOG: i32 = 1024;

/// Binds and listens on `address` with `SO_REUSEADDR` and `SO_REUSEPORT`. Call on the
/// glommio executor that will accept on it.
pub fn bind_client(address: SocketAddr) -> io::Result<glommio::net::TcpListener> {
    let domain = if address.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    // SAFETY: a bound, listening TCP socket whose descriptor we hand over (into_raw_fd
    // gives up our ownership); glommio's listener takes it as its own.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) })
}
