//! The terminal client: what runs in a town hall's emoticon terminal (and in the simulators).
//!
//! A `Terminal` numbers its batches, keeps every unacknowledged batch in its outbox (in memory,
//! or on disk so that a power cut loses nothing), sends up to `in_flight_max` of them at once,
//! reconnects with exponential backoff and jitter when the link drops, and resends until each
//! batch is answered `stored` or `duplicate` — or `rejected`, which is final. A batch is never
//! renumbered, so a retransmission is recognised by the server and never counted twice.
//!
//! Clocks: on a protocol 2 connection the hello reply carries the server's clock, anchored to
//! this process's monotonic clock (`ServerClock`). From then on the votes of each batch enqueued
//! are shifted by how far the device's clock is from it (`Terminal::enqueue`), and so are the
//! votes of batches enqueued before it and never sent (the rule in `Terminal::restamp`); a batch
//! that may have been sent keeps its votes, so that a retransmission is the same batch.
//!
//! The driver calls `next_event`, which is cancel-safe: in-flight sends and a connection being
//! set up live in the `Terminal`, not in the future, so it can sit in a `select!` beside a timer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use quinn::crypto::rustls::QuicClientConfig;
use rand::Rng;

use crate::model::{Channel, Face, IstatCode, Reason};
use crate::registry::Credential;
use crate::wire::{
    self, ArchiveBuf, BatchReplyV1, BatchV1, ErrorCode, FrameHeader, FrameKind, HEADER_BYTES, HelloReplyV1, HelloV1, Rejection, Status,
    VoteV1,
};

/// How long a QUIC handshake may take before the terminal tries its next address: a dead
/// node answers nothing, and QUIC would otherwise wait out the whole idle timeout (30 s).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest reply frame a terminal reads.
const REPLY_BYTES_MAX: usize = 64 * 1024;
/// First reconnection delay; doubled after each failure up to `BACKOFF_MAX`, with full jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a terminal waits for a batch's reply before it considers the connection dead,
/// reconnects and resends (the resent copy is answered "duplicate" if the first was stored).
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a connected terminal with nothing to send pings the server. It keeps NAT bindings
/// open (UDP mappings often expire after 30 s), and it is how an idle terminal learns that the
/// server restarted: the ping is answered by a stateless reset and the terminal reconnects at
/// once, so a whole fleet is back within seconds rather than when each next has a vote to send.
/// A ping and its acknowledgement are about 100 bytes: 12 a minute, about 2 MB a day.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// The smallest gap between the device's clock and the server's that the terminal corrects: far
/// above a hello's round trip on any working link (which bounds the error of the server's time
/// as the terminal reads it), far below the server's `future_skew_ms` (5 min).
pub(crate) const CLOCK_STEP_MIN: Duration = Duration::from_secs(2);
/// The client software name sent in the hello.
pub(crate) const CLIENT_NAME: &str = concat!("faccia-terminal/", env!("CARGO_PKG_VERSION"));

/// Why a terminal's connection, exchange or outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// QUIC could not start a connection to `addr` (an invalid address or server name, a closed endpoint).
    #[error("connecting to {addr}")]
    Connect {
        /// The server address.
        addr: SocketAddr,
        /// quinn's reason.
        source: quinn::ConnectError,
    },
    /// The connection failed or was closed (by the server, an idle timeout or a TLS alert).
    #[error("connection lost")]
    Connection(#[from] quinn::ConnectionError),
    /// A stream failed, its reply never came or was cut short, or QUIC could not use the TLS configuration; the text says which.
    #[error("stream failed: {0}")]
    Stream(String),
    /// The server refused the hello; the rejection carries its error code and message.
    #[error("server refused the terminal: {0}")]
    Refused(Rejection),
    /// The server's reply could not be decoded, or was not the frame expected.
    #[error("server sent an invalid reply: {0}")]
    Protocol(Rejection),
    /// Reading or writing the on-disk outbox in `path` failed.
    #[error("outbox {path}")]
    Outbox {
        /// The outbox file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The CA certificate file is unusable.
    #[error("TLS configuration")]
    Tls(#[from] crate::transport::tls::TlsError),
}

impl ClientError {
    /// Whether trying again later cannot help (the credential or the protocol is wrong).
    pub fn is_final(&self) -> bool {
        match self {
            ClientError::Refused(rejection) => !rejection.code.is_transient(),
            ClientError::Protocol(_) | ClientError::Tls(_) | ClientError::Outbox { .. } => true,
            ClientError::Connection(quinn::ConnectionError::TransportError(_))
            | ClientError::Connection(quinn::ConnectionError::VersionMismatch) => true,
            ClientError::Connection(quinn::ConnectionError::ConnectionClosed(close)) => {
                // QUIC carries TLS alerts as transport errors 0x100..=0x1ff (RFC 9001 §4.8): a
                // failed handshake (no_application_protocol, bad certificate) will fail again.
                (0x100..0x200).contains(&u64::from(close.error_code))
            }
            _ => false,
        }
    }
}

/// Where terminals connect and what they trust.
#[derive(Clone)]
pub struct ServerTarget {
    /// The server's ingest address (UDP): the first one a terminal tries.
    pub addr: SocketAddr,
    /// The other nodes' addresses (several nodes on one table), tried in turn when a
    /// connection fails or is refused `served_elsewhere`.
    others: Vec<SocketAddr>,
    /// The name the server's certificate must carry (`localhost` for the development certificate).
    pub server_name: String,
    /// The QUIC configuration each connection uses: the trusted CA, ALPN, idle timeout and keep-alive.
    pub client_config: quinn::ClientConfig,
    tls: Arc<rustls::ClientConfig>,
    transport: Arc<quinn::TransportConfig>,
}

/// TLS sessions a terminal remembers for resumption (the server issues two per connection).
const SESSIONS_REMEMBERED: usize = 4;

impl ServerTarget {
    /// Verifies the server against the CA certificate(s) in `ca_path`.
    ///
    /// # Errors
    /// When the CA file is unusable.
    pub fn new(addr: SocketAddr, server_name: &str, ca_path: &Path) -> Result<ServerTarget, ClientError> {
        ServerTarget::with_tls(addr, server_name, crate::transport::tls::client_config(ca_path)?)
    }

    /// With an explicit TLS configuration (tests use it to offer a wrong ALPN).
    ///
    /// # Errors
    /// When the TLS configuration cannot carry QUIC.
    pub fn with_tls(addr: SocketAddr, server_name: &str, tls: rustls::ClientConfig) -> Result<ServerTarget, ClientError> {
        let tls = Arc::new(tls);
        let mut target = ServerTarget {
            addr,
            others: Vec::new(),
            server_name: server_name.to_string(),
            client_config: quic_client_config(&tls)?,
            tls,
            transport: Arc::new(quinn::TransportConfig::default()),
        };
        target.set_idle_timeout(Duration::from_secs(30));
        Ok(target)
    }

    /// The same target with more server addresses: the nodes of one table, which a terminal
    /// moves between when its node is unreachable. Repeated addresses are ignored.
    pub fn with_other_addresses(mut self, others: impl IntoIterator<Item = SocketAddr>) -> ServerTarget {
        for addr in others {
            if addr != self.addr && !self.others.contains(&addr) {
                self.others.push(addr);
            }
        }
        self
    }

    /// Every server address, the first one first.
    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.addr).chain(self.others.iter().copied())
    }

    /// Sets how long a silent connection lives (keep-alives go out every `KEEP_ALIVE`, or at
    /// half of it if that is shorter).
    pub fn set_idle_timeout(&mut self, idle: Duration) {
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some((idle / 2).min(KEEP_ALIVE)));
        transport.max_idle_timeout(Some(idle.try_into().expect("an idle timeout within QUIC's range")));
        self.transport = Arc::new(transport);
        self.client_config.transport_config(Arc::clone(&self.transport));
    }

    /// The same target with a TLS session cache of its own, as one terminal device has: the
    /// session tickets it receives are its own to resume with (a target cloned across a fleet
    /// would share one cache of a few tickets among thousands of terminals).
    pub fn with_own_sessions(&self) -> ServerTarget {
        let mut tls = (*self.tls).clone();
        tls.resumption = rustls::client::Resumption::in_memory_sessions(SESSIONS_REMEMBERED);
        let tls = Arc::new(tls);
        let mut client_config = quic_client_config(&tls).expect("a configuration that carried QUIC still does");
        client_config.transport_config(Arc::clone(&self.transport));
        ServerTarget { client_config, tls, ..self.clone() }
    }
}

fn quic_client_config(tls: &Arc<rustls::ClientConfig>) -> Result<quinn::ClientConfig, ClientError> {
    let quic = QuicClientConfig::try_from(Arc::clone(tls)).map_err(|e| ClientError::Stream(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// A QUIC client endpoint: one UDP socket whose connections many terminals can share. The
/// tools and tests hold it under this name; only this folder and `ingest` name QUIC's types.
pub(crate) type ClientEndpoint = quinn::Endpoint;

/// Closes every connection of a client endpoint with code 0 ("done"), without waiting for the
/// server to be told (`ClientEndpoint::wait_idle` waits).
pub(crate) fn close_endpoint(endpoint: &ClientEndpoint) {
    endpoint.close(quinn::VarInt::from_u32(0), b"done");
}

/// A client endpoint (one UDP socket) that many terminals can share.
///
/// # Errors
/// When no UDP socket can be bound.
pub fn client_endpoint(server: SocketAddr) -> std::io::Result<ClientEndpoint> {
    let bind: SocketAddr = if server.is_ipv6() { "[::]:0".parse() } else { "0.0.0.0:0".parse() }.expect("valid address");
    quinn::Endpoint::client(bind)
}

/// A client endpoint with large socket buffers, for load generators carrying thousands of
/// connections on one socket.
///
/// # Errors
/// When no UDP socket can be bound.
pub(crate) fn client_endpoint_with_buffers(server: SocketAddr) -> std::io::Result<ClientEndpoint> {
    let bind: SocketAddr = if server.is_ipv6() { "[::]:0".parse() } else { "0.0.0.0:0".parse() }.expect("valid address");
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("a client endpoint needs a tokio runtime"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, crate::transport::udp::udp_socket(bind)?, runtime)
}

/// The terminal device's own wall clock: milliseconds since the Unix epoch (UTC) as the device
/// reads them, however wrong (a dead clock battery reads 2000-01-01). Simulators inject faults here.
pub type DeviceClock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The server's clock as a protocol 2 hello reply gave it, anchored to this process's monotonic
/// clock: `server_ms` was the server's time at `at` (the middle of the hello's round trip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerClock {
    /// The server's time, milliseconds since the Unix epoch (UTC).
    pub server_ms: i64,
    /// The monotonic instant `server_ms` is taken to be at.
    pub at: Instant,
    /// Half the hello's round trip, in ms: how far off `server_ms` can be at `at`.
    pub uncertainty_ms: i64,
}

impl ServerClock {
    /// The server's time at the monotonic instant `at` (before or after the anchor), in ms since the Unix epoch.
    pub fn time_at_ms(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.at) {
            Some(after) => self.server_ms.saturating_add(after.as_millis() as i64),
            None => self.server_ms.saturating_sub(self.at.duration_since(at).as_millis() as i64),
        }
    }
}

/// An authenticated connection.
#[derive(Clone)]
pub struct Session {
    /// The QUIC connection, its hello accepted.
    pub connection: quinn::Connection,
    /// The terminal's registered municipality, from the server's hello reply.
    pub municipality: IstatCode,
    /// Highest batch the server had stored for this terminal when the session opened.
    pub last_seq: u64,
    /// Most votes the server accepts in one batch (its `batch_votes_max` limit).
    pub batch_votes_max: u32,
    /// The server's clock, when the connection speaks protocol 2 (`None` on `faccia/1`).
    pub server_clock: Option<ServerClock>,
}

impl Session {
    /// Connects to the target's first address and presents the credential.
    ///
    /// # Errors
    /// Connection errors, or `Refused` with the server's error code.
    pub async fn connect(endpoint: &quinn::Endpoint, target: &ServerTarget, credential: &Credential) -> Result<Session, ClientError> {
        Session::connect_to(endpoint, target, target.addr, credential).await
    }

    /// Connects to `addr`, one of the target's addresses, and presents the credential.
    ///
    /// # Errors
    /// Connection errors, or `Refused` with the server's error code.
    pub async fn connect_to(
        endpoint: &quinn::Endpoint,
        target: &ServerTarget,
        addr: SocketAddr,
        credential: &Credential,
    ) -> Result<Session, ClientError> {
        let connecting = endpoint
            .connect_with(target.client_config.clone(), addr, &target.server_name)
            .map_err(|source| ClientError::Connect { addr, source })?;
        let connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
            .await
            .map_err(|_| ClientError::Stream(format!("no QUIC handshake with {addr} within {} s", HANDSHAKE_TIMEOUT.as_secs())))??;
        let hello = HelloV1 { terminal: credential.id, secret: credential.secret.0, client: CLIENT_NAME.as_bytes().to_vec() };
        let sent_at = Instant::now();
        let payload = exchange(&connection, &wire::encode_hello(&hello), FrameKind::HelloReply).await?;
        let half_trip = sent_at.elapsed() / 2;
        let protocol =
            connection.handshake_data().and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok()).and_then(|d| d.protocol);
        let (reply, server_clock): (HelloReplyV1, _) = if protocol.as_deref() == Some(wire::ALPN_V2) {
            let reply = wire::read_hello_reply_v2(&payload).map_err(ClientError::Protocol)?;
            let clock =
                ServerClock { server_ms: reply.server_time_ms, at: sent_at + half_trip, uncertainty_ms: half_trip.as_millis() as i64 };
            (reply.reply, Some(clock))
        } else {
            (wire::read_hello_reply(&payload).map_err(ClientError::Protocol)?, None)
        };
        if reply.status != Status::Stored as u8 {
            let code = ErrorCode::from_u16(reply.code).unwrap_or(ErrorCode::Internal);
            return Err(ClientError::Refused(Rejection::new(code, reply.message_text())));
        }
        Ok(Session {
            connection,
            municipality: IstatCode(reply.municipality),
            last_seq: reply.last_seq,
            batch_votes_max: reply.batch_votes_max,
            server_clock,
        })
    }

    /// Sends one complete frame on a new stream and returns the server's reply.
    ///
    /// # Errors
    /// Transport errors, or a reply that is not a valid batch reply.
    pub async fn send_frame(&self, frame: &[u8]) -> Result<BatchReplyV1, ClientError> {
        let payload = exchange(&self.connection, frame, FrameKind::BatchReply).await?;
        wire::read_batch_reply(&payload).map_err(ClientError::Protocol)
    }
}

/// Writes a frame on a new bidirectional stream and reads the reply frame of `kind`.
async fn exchange(connection: &quinn::Connection, frame: &[u8], kind: FrameKind) -> Result<ArchiveBuf, ClientError> {
    let (mut send, mut recv) = connection.open_bi().await?;
    // A server that refuses early stops the stream; its reply is still worth reading.
    let _ = send.write_all(frame).await;
    let _ = send.finish();
    let bytes = recv.read_to_end(REPLY_BYTES_MAX).await.map_err(|e| match e {
        quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(lost)) => ClientError::Connection(lost),
        other => ClientError::Stream(other.to_string()),
    })?;
    let header: &[u8; HEADER_BYTES] = bytes
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| ClientError::Stream(format!("reply of {} bytes has no frame header", bytes.len())))?;
    let header = FrameHeader::decode(header, REPLY_BYTES_MAX as u32).map_err(ClientError::Protocol)?;
    if header.kind != kind || bytes.len() != HEADER_BYTES + header.payload_bytes as usize {
        return Err(ClientError::Protocol(Rejection::new(ErrorCode::MalformedFrame, "unexpected reply frame")));
    }
    let mut payload = ArchiveBuf::with_capacity(bytes.len() - HEADER_BYTES);
    payload.extend_from_slice(&bytes[HEADER_BYTES..]);
    Ok(payload)
}

/// One vote as a terminal records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalVote {
    /// When the vote was cast: terminal clock, milliseconds since the Unix epoch (UTC).
    pub at_ms: i64,
    /// Service id, from `schemas/services.csv`.
    pub service: u16,
    /// The face the citizen tapped.
    pub face: Face,
    /// How the vote was cast: at the counter, by phone or on the web.
    pub channel: Channel,
    /// Why the citizen tapped the red face; `None` if the question was skipped, and always for the other faces.
    pub reason: Option<Reason>,
}

/// Encodes votes as a batch frame. Votes are laid out relative to the earliest one.
pub fn batch_frame(seq: u64, municipality: IstatCode, votes: &[TerminalVote]) -> Vec<u8> {
    let base_ms = votes.iter().map(|v| v.at_ms).min().unwrap_or(0);
    let batch = BatchV1 {
        seq,
        base_ms,
        municipality: municipality.0,
        votes: votes
            .iter()
            .map(|v| VoteV1 {
                offset_ms: u32::try_from(v.at_ms - base_ms).unwrap_or(u32::MAX),
                service: v.service,
                face: v.face.code(),
                channel: v.channel.code(),
                reason: v.reason.map_or(0, Reason::code),
            })
            .collect(),
    };
    wire::frame(FrameKind::Batch, &wire::encode_batch(&batch))
}

/// Names a batch inside one terminal from `enqueue` to its answer. Not the wire sequence
/// number, which a terminal that does not know its numbering yet assigns only after its first
/// hello.
pub(crate) type BatchId = u64;

/// A batch waiting for its acknowledgement.
#[derive(Debug, Clone)]
struct Pending {
    /// Wire sequence number; 0 while the terminal's numbering is not known yet.
    seq: u64,
    votes: usize,
    frame: Arc<Vec<u8>>,
    enqueued: Instant,
    in_flight: bool,
    /// Whether the frame may have reached the server (it was handed to a stream, or it was
    /// loaded from disk): then its votes never change.
    sent: bool,
    /// The device's clock when the batch was enqueued by this process, while no server clock was
    /// known: what `Terminal::restamp` corrects it by. `None` once corrected, or when unknown.
    stamped: Option<i64>,
}

/// Unacknowledged batches, oldest first; optionally mirrored on disk, one file per batch (the
/// frame as it will be sent) plus a `seq` file with the highest number ever assigned.
#[derive(Debug)]
struct Outbox {
    dir: Option<PathBuf>,
    batches: BTreeMap<BatchId, Pending>,
    next_id: BatchId,
}

impl Outbox {
    fn in_memory() -> Outbox {
        Outbox { dir: None, batches: BTreeMap::new(), next_id: 1 }
    }

    fn file(dir: &Path, id: BatchId) -> PathBuf {
        dir.join(format!("{id:020}.batch"))
    }

    fn io_error(&self) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
        move |source| ClientError::Outbox { path: self.dir.clone().unwrap_or_default(), source }
    }

    /// Loads the batches a previous run left on disk. Returns the highest sequence number ever
    /// assigned, or `None` if this outbox never numbered a batch.
    fn open(dir: &Path) -> Result<(Outbox, Option<u64>), ClientError> {
        let io = |source| ClientError::Outbox { path: dir.to_path_buf(), source };
        crate::fsutil::create_dir_durable(dir).map_err(io)?;
        let mut batches = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let id = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".batch")).and_then(|n| n.parse().ok());
            let Some(id) = id else { continue };
            let frame = std::fs::read(&path).map_err(io)?;
            let Some((seq, votes)) = frame_batch(&frame) else {
                tracing::error!(file = %path.display(), "outbox file is not a batch frame; left in place");
                continue;
            };
            let pending =
                Pending { seq, votes, frame: Arc::new(frame), enqueued: Instant::now(), in_flight: false, sent: true, stamped: None };
            batches.insert(id, pending);
        }
        let recorded: Option<u64> = std::fs::read_to_string(dir.join("seq")).ok().and_then(|t| t.trim().parse().ok());
        let highest = batches.values().map(|p| p.seq).max().filter(|s| *s > 0);
        let next_id = batches.keys().next_back().map_or(1, |id| id + 1);
        Ok((Outbox { dir: Some(dir.to_path_buf()), batches, next_id }, recorded.max(highest)))
    }

    fn persist(&self, id: BatchId, seq: u64, frame: &[u8]) -> Result<(), ClientError> {
        if let Some(dir) = &self.dir {
            crate::fsutil::write_atomic(&Outbox::file(dir, id), frame).map_err(self.io_error())?;
            if seq > 0 {
                crate::fsutil::write_atomic(&dir.join("seq"), seq.to_string().as_bytes()).map_err(self.io_error())?;
            }
        }
        Ok(())
    }

    fn push(&mut self, seq: u64, votes: usize, frame: Vec<u8>, stamped: Option<i64>) -> Result<BatchId, ClientError> {
        let id = self.next_id;
        self.persist(id, seq, &frame)?;
        self.next_id += 1;
        let pending = Pending { seq, votes, frame: Arc::new(frame), enqueued: Instant::now(), in_flight: false, sent: false, stamped };
        self.batches.insert(id, pending);
        Ok(id)
    }

    /// Moves every vote of a never-sent batch by `shift_ms` (the same frame otherwise), on disk first.
    fn restamp(
        &mut self,
        id: BatchId,
        shift_ms: i64,
        municipality: IstatCode,
        terminal: crate::model::TerminalId,
    ) -> Result<(), ClientError> {
        let pending = self.batches.get(&id).expect("restamping a batch of the outbox");
        assert!(!pending.sent, "a batch that may have been sent keeps its votes");
        let votes: Vec<TerminalVote> = frame_votes(&pending.frame, municipality, terminal)
            .into_iter()
            .map(|v| TerminalVote { at_ms: v.at_ms.saturating_add(shift_ms), ..v })
            .collect();
        let seq = pending.seq;
        let frame = batch_frame(seq, municipality, &votes);
        self.persist(id, seq, &frame)?;
        let pending = self.batches.get_mut(&id).expect("restamping a batch of the outbox");
        pending.frame = Arc::new(frame);
        pending.stamped = None;
        Ok(())
    }

    /// Gives a batch that was enqueued before the numbering was known its sequence number.
    fn number(&mut self, id: BatchId, seq: u64, municipality: IstatCode, terminal: crate::model::TerminalId) -> Result<(), ClientError> {
        let pending = self.batches.get(&id).expect("numbering a batch of the outbox");
        let votes = frame_votes(&pending.frame, municipality, terminal);
        let frame = batch_frame(seq, municipality, &votes);
        self.persist(id, seq, &frame)?;
        let pending = self.batches.get_mut(&id).expect("numbering a batch of the outbox");
        pending.seq = seq;
        pending.frame = Arc::new(frame);
        Ok(())
    }

    fn remove(&mut self, id: BatchId) -> Option<Pending> {
        let pending = self.batches.remove(&id)?;
        if let Some(dir) = &self.dir
            && let Err(error) = std::fs::remove_file(Outbox::file(dir, id))
        {
            // Harmless: the batch is resent after a restart and answered "duplicate".
            tracing::warn!(%error, seq = pending.seq, "removing an acknowledged batch from the outbox");
        }
        Some(pending)
    }
}

fn frame_archive(frame: &[u8]) -> ArchiveBuf {
    let mut payload = ArchiveBuf::new();
    payload.extend_from_slice(frame.get(HEADER_BYTES..).unwrap_or_default());
    payload
}

/// The sequence number and vote count of a batch frame this client wrote.
fn frame_batch(frame: &[u8]) -> Option<(u64, usize)> {
    let payload = frame_archive(frame);
    wire::BatchView::access(&payload).ok().map(|v| (v.seq(), v.len()))
}

/// The votes of a batch frame this client wrote.
fn frame_votes(frame: &[u8], municipality: IstatCode, terminal: crate::model::TerminalId) -> Vec<TerminalVote> {
    let payload = frame_archive(frame);
    let view = wire::BatchView::access(&payload).expect("the outbox holds frames this client encoded");
    view.votes(municipality, terminal)
        .map(|v| TerminalVote { at_ms: v.at_ms, service: v.service, face: v.face, channel: v.channel, reason: v.reason })
        .collect()
}

/// What happened to the terminal.
#[derive(Debug)]
pub enum Event {
    /// A connection was opened and its hello accepted.
    Connected {
        /// Highest batch sequence number the server had stored for this terminal (0: none).
        last_seq: u64,
    },
    /// A batch was answered `stored` (or `duplicate`: stored by an earlier copy).
    Acknowledged {
        /// The id `enqueue` returned for the batch.
        batch: BatchId,
        /// The batch's wire sequence number.
        seq: u64,
        /// Votes in the batch.
        votes: usize,
        /// Whether the answer was `duplicate` (an earlier copy was stored) rather than `stored`.
        duplicate: bool,
        /// When the batch was put in the outbox, or loaded from disk by this run if a previous run left it there.
        enqueued: Instant,
    },
    /// A batch was refused for good and dropped from the outbox.
    Rejected {
        /// The id `enqueue` returned for the batch.
        batch: BatchId,
        /// The batch's wire sequence number.
        seq: u64,
        /// Votes in the batch, now dropped.
        votes: usize,
        /// The server's error code and message.
        rejection: Rejection,
    },
    /// The link failed; the terminal reconnects after a backoff and resends.
    Disconnected {
        /// Why the link failed, as text (the error and its causes).
        error: String,
    },
    /// The server told us to retry a batch later.
    RetryLater {
        /// The id `enqueue` returned for the batch.
        batch: BatchId,
        /// The batch's wire sequence number.
        seq: u64,
        /// The server's error code and message; the batch stays in the outbox and is resent.
        rejection: Rejection,
    },
    /// Nothing to send and nothing in flight.
    Idle,
    /// Refused for good (bad credential, revoked, wrong protocol): stop this terminal.
    Fatal(ClientError),
}

type SendFuture = Pin<Box<dyn Future<Output = (BatchId, Result<BatchReplyV1, ClientError>)> + Send>>;
type ConnectFuture = Pin<Box<dyn Future<Output = Result<Session, ClientError>> + Send>>;

/// One terminal: credential, numbering, outbox and connection.
pub struct Terminal {
    /// The terminal's id, municipality and secret, presented in each hello.
    pub(crate) credential: Credential,
    endpoint: quinn::Endpoint,
    target: ServerTarget,
    outbox: Outbox,
    /// The next sequence number; `None` until known (from the outbox on disk, or from the
    /// server's `last_seq` at the first hello). Batches enqueued before are numbered then.
    next_seq: Option<u64>,
    in_flight_max: usize,
    ack_timeout: Duration,
    session: Option<Session>,
    connecting: Option<ConnectFuture>,
    in_flight: FuturesUnordered<SendFuture>,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
    /// Which of the target's addresses the next connection goes to.
    address: usize,
    /// The device's wall clock (the system clock unless a simulator injects a fault).
    device_clock: DeviceClock,
    /// The server's clock from the latest protocol 2 hello; `None` before one.
    server_clock: Option<ServerClock>,
    /// Whether votes are corrected by the server's clock (on by default; simulators turn it off
    /// to show what an uncorrected terminal's faults look like on the server).
    clock_correction: bool,
}

impl Terminal {
    /// A terminal with an in-memory outbox (simulators, benchmarks). It learns its numbering
    /// from the server at its first connection, so a second run with the same credential
    /// continues above the batches the first one stored.
    pub fn new(credential: Credential, endpoint: quinn::Endpoint, target: ServerTarget, in_flight_max: usize) -> Terminal {
        Terminal {
            credential,
            endpoint,
            target: target.with_own_sessions(),
            outbox: Outbox::in_memory(),
            next_seq: None,
            in_flight_max: in_flight_max.clamp(1, (crate::limits::SEQ_WINDOW / 2) as usize),
            ack_timeout: ACK_TIMEOUT,
            session: None,
            connecting: None,
            in_flight: FuturesUnordered::new(),
            failures: 0,
            retry_at: None,
            address: 0,
            device_clock: Arc::new(crate::clock::now_ms),
            server_clock: None,
            clock_correction: true,
        }
    }

    /// Replaces the device's wall clock (simulated clock faults: a skew, a reset to 2000-01-01).
    pub fn set_device_clock(&mut self, clock: DeviceClock) {
        self.device_clock = clock;
    }

    /// Turns the correction of votes by the server's clock on or off (on by default).
    pub fn set_clock_correction(&mut self, on: bool) {
        self.clock_correction = on;
    }

    /// The device's wall clock now, in ms since the Unix epoch: what votes are stamped with.
    pub fn device_now_ms(&self) -> i64 {
        (self.device_clock)()
    }

    /// The server's clock as the latest protocol 2 hello gave it; `None` before one.
    pub fn server_clock(&self) -> Option<ServerClock> {
        self.server_clock
    }

    /// How far to move votes stamped `device_ms` by the device at the monotonic instant `at`: the
    /// server's time then minus the device's, or 0 when no server clock is known, correction is
    /// off, or the gap is within `CLOCK_STEP_MIN` (or the server clock's uncertainty).
    fn clock_shift_ms(&self, device_ms: i64, at: Instant) -> i64 {
        let Some(server) = self.server_clock.filter(|_| self.clock_correction) else { return 0 };
        let shift = server.time_at_ms(at).saturating_sub(device_ms);
        let threshold = (CLOCK_STEP_MIN.as_millis() as i64).max(server.uncertainty_ms);
        if shift.abs() <= threshold { 0 } else { shift }
    }

    /// Corrects the batches enqueued before the server's clock was known, by the server's clock
    /// at the moment each was enqueued. The rule, and why it is right:
    /// - only a batch this process enqueued and never handed to a stream: the server has never
    ///   seen it, so changing its votes cannot make a retransmission differ from a stored copy;
    /// - by the device's clock and this process's monotonic clock read together at enqueue, so
    ///   the server's time at that moment is known whatever the device's clock did since (a
    ///   reset to 2000-01-01 after the enqueue does not matter);
    /// - it assumes that the device's clock did not jump between a vote and its enqueue (the
    ///   terminal enqueues as it stamps; the simulators do).
    ///
    /// Batches loaded from disk, or sent once, are never changed: the server stores their
    /// implausible votes as clock faults.
    fn restamp(&mut self) -> Result<(), ClientError> {
        let stamped: Vec<(BatchId, i64, Instant)> = self
            .outbox
            .batches
            .iter()
            .filter(|(_, p)| !p.sent)
            .filter_map(|(id, p)| p.stamped.map(|device_ms| (*id, device_ms, p.enqueued)))
            .collect();
        for (id, device_ms, enqueued) in stamped {
            let shift = self.clock_shift_ms(device_ms, enqueued);
            if shift != 0 {
                tracing::info!(
                    terminal = self.credential.id,
                    shift_ms = shift,
                    "votes enqueued before the server's clock was known corrected by it"
                );
                self.outbox.restamp(id, shift, self.credential.municipality, self.credential.id)?;
            } else if let Some(pending) = self.outbox.batches.get_mut(&id) {
                pending.stamped = None;
            }
        }
        Ok(())
    }

    /// A terminal whose outbox lives in `dir`: batches survive a restart of the terminal.
    ///
    /// # Errors
    /// When the outbox directory cannot be read or created.
    pub fn with_outbox(
        credential: Credential,
        endpoint: quinn::Endpoint,
        target: ServerTarget,
        in_flight_max: usize,
        dir: &Path,
    ) -> Result<Terminal, ClientError> {
        let mut terminal = Terminal::new(credential, endpoint, target, in_flight_max);
        let (outbox, highest) = Outbox::open(dir)?;
        terminal.outbox = outbox;
        terminal.next_seq = highest.map(|h| h + 1);
        Ok(terminal)
    }

    /// Changes how long a reply may take before the connection is considered dead.
    pub fn set_ack_timeout(&mut self, timeout: Duration) {
        self.ack_timeout = timeout;
    }

    /// Puts a batch of votes in the outbox (numbered now if the numbering is known, else at the
    /// first connection). Returns the id its answer will carry. The votes' times are the
    /// device's clock's (`device_now_ms`); once a server clock is known, they are moved by the
    /// gap between the two when it exceeds `CLOCK_STEP_MIN`.
    ///
    /// # Errors
    /// When the outbox is on disk and cannot be written.
    pub fn enqueue(&mut self, votes: &[TerminalVote]) -> Result<BatchId, ClientError> {
        let seq = self.next_seq.unwrap_or(0);
        let device_ms = self.device_now_ms();
        let shift = self.clock_shift_ms(device_ms, Instant::now());
        let frame = if shift == 0 {
            batch_frame(seq, self.credential.municipality, votes)
        } else {
            let shifted: Vec<TerminalVote> = votes.iter().map(|v| TerminalVote { at_ms: v.at_ms.saturating_add(shift), ..*v }).collect();
            batch_frame(seq, self.credential.municipality, &shifted)
        };
        let stamped = self.server_clock.is_none().then_some(device_ms);
        let id = self.outbox.push(seq, votes.len(), frame, stamped)?;
        if let Some(next) = &mut self.next_seq {
            *next += 1;
        }
        Ok(id)
    }

    /// Batches not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.outbox.batches.len()
    }

    /// Connects now (one attempt, after any backoff in force) if not connected.
    ///
    /// # Errors
    /// Why the attempt failed.
    pub async fn connect(&mut self) -> Result<(), ClientError> {
        while self.session.is_none() {
            match self.connect_step().await {
                Some(Event::Fatal(error)) => return Err(error),
                Some(Event::Disconnected { error }) => return Err(ClientError::Stream(error)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Drives the terminal until something happens. Cancel-safe.
    ///
    /// A terminal keeps its connection open like a real one: with nothing to send it waits for
    /// the connection to close (and reports `Disconnected`), and once it has been connected it
    /// reconnects by itself after a backoff. `Idle` means it has nothing to send and has never
    /// connected (or is waiting out a backoff with nothing to send).
    pub async fn next_event(&mut self) -> Event {
        loop {
            if self.session.is_none() {
                let wants_connection = !self.outbox.batches.is_empty() || self.next_seq.is_some();
                if !wants_connection && self.connecting.is_none() {
                    return Event::Idle;
                }
                match self.connect_step().await {
                    Some(event) => return event,
                    None => continue,
                }
            }
            if self.retry_at.is_none_or(|at| at <= tokio::time::Instant::now()) {
                self.retry_at = None;
                self.fill_pipeline();
            }
            if self.in_flight.is_empty() {
                match (self.retry_at, &self.session) {
                    (Some(at), _) => {
                        tokio::time::sleep_until(at).await;
                        continue;
                    }
                    (None, Some(session)) => {
                        let connection = session.connection.clone();
                        let reason = connection.closed().await;
                        self.drop_session();
                        self.reconnect_elsewhere();
                        return Event::Disconnected { error: reason.to_string() };
                    }
                    (None, None) => return Event::Idle,
                }
            }
            let (id, result) = self.in_flight.next().await.expect("in_flight is not empty");
            return self.settle(id, result);
        }
    }

    /// Opens a connection (waiting out the backoff first). `None`: keep going.
    async fn connect_step(&mut self) -> Option<Event> {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
            self.retry_at = None;
        }
        let addresses: Vec<SocketAddr> = self.target.addresses().collect();
        let addr = addresses[self.address % addresses.len()];
        let connecting = self.connecting.get_or_insert_with(|| {
            let (endpoint, target, credential) = (self.endpoint.clone(), self.target.clone(), self.credential.clone());
            Box::pin(async move { Session::connect_to(&endpoint, &target, addr, &credential).await })
        });
        let result = connecting.await;
        self.connecting = None;
        match result {
            Ok(session) => {
                self.failures = 0;
                let last_seq = session.last_seq;
                if let Some(clock) = session.server_clock {
                    self.server_clock = Some(clock);
                    if let Err(error) = self.restamp() {
                        return Some(Event::Fatal(error));
                    }
                }
                if let Err(error) = self.learn_numbering(last_seq) {
                    return Some(Event::Fatal(error));
                }
                self.session = Some(session);
                Some(Event::Connected { last_seq })
            }
            Err(error) if error.is_final() => Some(Event::Fatal(error)),
            Err(error) => {
                self.reconnect_elsewhere();
                Some(Event::Disconnected { error: crate::error_chain(&error) })
            }
        }
    }

    /// Numbers the batches waiting for it once the server's `last_seq` is known, and never
    /// reuses a number the server already stored.
    fn learn_numbering(&mut self, last_seq: u64) -> Result<(), ClientError> {
        match self.next_seq {
            Some(next) if next > last_seq => return Ok(()),
            Some(next) => tracing::warn!(
                terminal = self.credential.id,
                next,
                last_seq,
                "the server stored batches numbered beyond this terminal's numbering; new batches continue above them"
            ),
            None => {}
        }
        let mut next = last_seq + 1;
        let unnumbered: Vec<BatchId> = self.outbox.batches.iter().filter(|(_, p)| p.seq == 0).map(|(id, _)| *id).collect();
        for id in unnumbered {
            self.outbox.number(id, next, self.credential.municipality, self.credential.id)?;
            next += 1;
        }
        self.next_seq = Some(next);
        Ok(())
    }

    /// Pauses sending for a backoff: exponential in the failures since the last success (per
    /// round of the addresses), with jitter.
    fn back_off(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let rounds = self.failures / (1 + self.target.others.len() as u32);
        let ceiling = BACKOFF_MIN.saturating_mul(1 << rounds.min(16)).min(BACKOFF_MAX);
        let delay = rand::rng().random_range(BACKOFF_MIN.as_millis() as u64..=ceiling.as_millis() as u64);
        self.retry_at = Some(tokio::time::Instant::now() + Duration::from_millis(delay));
    }

    /// After a failed connection or link: the next address, at once while some address has
    /// not failed since the last success, else after a backoff.
    fn reconnect_elsewhere(&mut self) {
        let addresses = 1 + self.target.others.len() as u32;
        self.address = (self.address + 1) % addresses as usize;
        self.back_off();
        if !self.failures.is_multiple_of(addresses) {
            self.retry_at = None;
        }
    }

    fn fill_pipeline(&mut self) {
        let Some(session) = &self.session else { return };
        let free = self.in_flight_max.saturating_sub(self.in_flight.len());
        let timeout = self.ack_timeout;
        let ready = self.outbox.batches.iter_mut().filter(|(_, p)| !p.in_flight && p.seq > 0).take(free);
        for (&id, pending) in ready {
            pending.in_flight = true;
            pending.sent = true;
            let session = session.clone();
            let frame = Arc::clone(&pending.frame);
            self.in_flight.push(Box::pin(async move {
                let reply = tokio::time::timeout(timeout, session.send_frame(&frame)).await;
                let no_reply = || ClientError::Stream(format!("no reply within {} ms", timeout.as_millis()));
                (id, reply.unwrap_or_else(|_| Err(no_reply())))
            }));
        }
    }

    fn settle(&mut self, id: BatchId, result: Result<BatchReplyV1, ClientError>) -> Event {
        let reply = match result {
            Ok(reply) => reply,
            Err(error) => return self.link_failed(id, &error),
        };
        let seq = self.outbox.batches.get(&id).map_or(0, |p| p.seq);
        let status = Status::from_u8(reply.status);
        let code = ErrorCode::from_u16(reply.code).unwrap_or(ErrorCode::Internal);
        match status {
            Some(Status::Stored | Status::Duplicate) => {
                self.failures = 0;
                let pending = self.outbox.remove(id).expect("an in-flight batch is in the outbox");
                Event::Acknowledged {
                    batch: id,
                    seq,
                    votes: pending.votes,
                    duplicate: status == Some(Status::Duplicate),
                    enqueued: pending.enqueued,
                }
            }
            Some(Status::Rejected) if !code.is_transient() => {
                let votes = self.outbox.remove(id).map_or(0, |p| p.votes);
                Event::Rejected { batch: id, seq, votes, rejection: Rejection::new(code, reply.message_text()) }
            }
            _ => {
                // Retry later: keep the batch and pause sending for a backoff.
                if let Some(pending) = self.outbox.batches.get_mut(&id) {
                    pending.in_flight = false;
                }
                if code == ErrorCode::ShuttingDown {
                    self.drop_session();
                    self.reconnect_elsewhere();
                } else {
                    self.back_off();
                }
                Event::RetryLater { batch: id, seq, rejection: Rejection::new(code, reply.message_text()) }
            }
        }
    }

    fn link_failed(&mut self, id: BatchId, error: &ClientError) -> Event {
        if let Some(pending) = self.outbox.batches.get_mut(&id) {
            pending.in_flight = false;
        }
        if self.session.is_some() {
            self.drop_session();
            self.reconnect_elsewhere();
        }
        Event::Disconnected { error: crate::error_chain(error) }
    }

    /// Forgets the connection; batches in flight on it are resent on the next one.
    fn drop_session(&mut self) {
        if let Some(session) = self.session.take() {
            session.connection.close(quinn::VarInt::from_u32(0), b"reconnecting");
        }
        // The futures of the old connection are dropped; their batches are marked for resending
        // so that the next connection sends them right away.
        self.in_flight = FuturesUnordered::new();
        for pending in self.outbox.batches.values_mut() {
            pending.in_flight = false;
        }
    }

    /// Closes the connection politely.
    pub fn close(&mut self) {
        if let Some(session) = self.session.take() {
            session.connection.close(quinn::VarInt::from_u32(0), b"bye");
        }
    }
}
