//! UDP sockets for QUIC endpoints that carry many connections: large kernel buffers, and
//! `SO_REUSEPORT` so that several ingest sockets share one address.

use std::net::SocketAddr;

/// Socket buffer size asked for on endpoints that carry many connections. A burst of
/// handshakes or acknowledgements overflowing the default ~200 KiB buffer loses packets, and a
/// lost Initial packet costs a retransmission timeout of a second.
pub(crate) const UDP_BUFFER_BYTES: usize = 8 << 20;

/// A UDP socket with `UDP_BUFFER_BYTES` of send and receive buffer (the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`).
///
/// # Errors
/// When the socket cannot be created or bound.
pub(crate) fn udp_socket(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    udp_socket_with(bind, false)
}

/// As `udp_socket`, with `SO_REUSEPORT`: several sockets share one address and the kernel
/// spreads incoming flows over them.
///
/// # Errors
/// When the socket cannot be created or bound.
pub(crate) fn udp_socket_shared(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    udp_socket_with(bind, true)
}

fn udp_socket_with(bind: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer still works, it only drops more under bursts.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&bind.into())?;
    Ok(socket.into())
}
