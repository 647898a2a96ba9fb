//! UDP sockets for QUIC endpoints that carry many connections: large kernel buffers,
//! `SO_REUSEPORT` so that several ingest sockets share one address, and the steering that keeps
//! each connection's packets on the socket that owns it when the terminal's address changes.

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

/// Makes the kernel deliver each packet arriving at a group of `SO_REUSEPORT` sockets to the
/// socket that owns its connection: `group[i]` (bound in this order, the group's whole
/// membership) receives every packet whose destination connection ID starts with a byte `b`
/// where `b % group.len() == i`. The ingest endpoints issue connection IDs that way
/// (`ingest::endpoint`), so a connection stays on its socket when a NAT rebinding changes the
/// terminal's address or port — the kernel's default steering hashes the address and port, which
/// sends a rebound connection to a socket that does not know it (its endpoint answers with a
/// stateless reset and the terminal must connect again).
///
/// How: a classic BPF program attached with `SO_ATTACH_REUSEPORT_CBPF` (Linux 4.5+) reads the
/// connection ID where QUIC's version-independent header puts it (RFC 8999 §5: a short header's
/// destination connection ID starts at byte 1; a long header has the ID's length at byte 5 and
/// the ID from byte 6). The first packet of a connection carries an ID the terminal chose at
/// random, which spreads new connections evenly; a long header with an empty ID falls back to
/// the kernel's hash. The program sees the UDP payload (the kernel skips the UDP header first).
///
/// # Errors
/// When the kernel refuses the program (not Linux, a kernel before 4.5, or a sandbox that
/// forbids it), or the group is empty or larger than 256 sockets.
pub(crate) fn steer_by_connection_id(group: &[std::net::UdpSocket]) -> std::io::Result<()> {
    let sockets = u32::try_from(group.len()).ok().filter(|n| (1..=256).contains(n)).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{} sockets: steering needs 1 to 256", group.len()))
    })?;
    attach_reuseport_program(&group[0], &steering_program(sockets))
}

/// The classic BPF program of `steer_by_connection_id` for a group of `sockets` sockets.
fn steering_program(sockets: u32) -> Vec<libc::sock_filter> {
    // Opcodes (linux/bpf_common.h, linux/filter.h).
    const LD_B_ABS: u16 = 0x10 | 0x20; // BPF_LD (0) | BPF_B | BPF_ABS
    const JMP_JSET_K: u16 = 0x05 | 0x40;
    const JMP_JEQ_K: u16 = 0x05 | 0x10;
    const ALU_MOD_K: u16 = 0x04 | 0x90;
    const RET_A: u16 = 0x06 | 0x10;
    const RET_K: u16 = 0x06;
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    vec![
        op(LD_B_ABS, 0, 0, 0),        // 0: A = the first byte (header form)
        op(JMP_JSET_K, 3, 0, 0x80),   // 1: long header? → 5
        op(LD_B_ABS, 0, 0, 1),        // 2: short header: A = the ID's first byte
        op(ALU_MOD_K, 0, 0, sockets), // 3: A %= sockets
        op(RET_A, 0, 0, 0),           // 4: → socket A
        op(LD_B_ABS, 0, 0, 5),        // 5: long header: A = the ID's length
        op(JMP_JEQ_K, 3, 0, 0),       // 6: empty ID? → 10
        op(LD_B_ABS, 0, 0, 6),        // 7: A = the ID's first byte
        op(ALU_MOD_K, 0, 0, sockets), // 8: A %= sockets
        op(RET_A, 0, 0, 0),           // 9: → socket A
        op(RET_K, 0, 0, u32::MAX),    // 10: out of range: the kernel's hash decides
    ]
}

#[cfg(target_os = "linux")]
fn attach_reuseport_program(socket: &std::net::UdpSocket, program: &[libc::sock_filter]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fprog = libc::sock_fprog { len: u16::try_from(program.len()).expect("a short program"), filter: program.as_ptr().cast_mut() };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies it.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn attach_reuseport_program(_: &std::net::UdpSocket, _: &[libc::sock_filter]) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "steering packets by connection ID needs Linux"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    /// Which socket of `group` receives `payload` sent from a fresh socket (a new source port).
    fn receiver(group: &[UdpSocket], payload: &[u8]) -> usize {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(payload, group[0].local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..200 {
            for (i, socket) in group.iter().enumerate() {
                if socket.recv_from(&mut buf).is_ok() {
                    return i;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no socket of the group received the packet");
    }

    #[test]
    fn packets_reach_the_socket_their_connection_id_names_from_any_source_port() {
        // Proves: whatever the sender's port (a NAT rebinding), a short-header packet whose
        // connection ID starts with byte b reaches socket b % n, and a long-header one too.
        let first = udp_socket_shared("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let mut group = vec![first];
        for _ in 1..4 {
            group.push(udp_socket_shared(addr).unwrap());
        }
        for socket in &group {
            socket.set_nonblocking(true).unwrap();
        }
        steer_by_connection_id(&group).unwrap();
        for id_byte in [0u8, 1, 2, 3, 5, 6, 255] {
            for _ in 0..3 {
                let short = [0x40, id_byte, 9, 9, 9, 9, 9, 9, 9, 0, 0, 0];
                assert_eq!(receiver(&group, &short), usize::from(id_byte) % 4, "short header, ID byte {id_byte}");
                let long = [0xc0, 0, 0, 0, 1, 8, id_byte, 7, 7, 7, 7, 7, 7, 7, 0, 0];
                assert_eq!(receiver(&group, &long), usize::from(id_byte) % 4, "long header, ID byte {id_byte}");
            }
        }
    }
}
