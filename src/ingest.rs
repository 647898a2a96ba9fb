//! The QUIC ingest server: accept loop → `handle_connection` → `handle_stream`.
//!
//! A terminal connects (TLS 1.3, ALPN `faccia/1`), presents its credential once on the first
//! stream (hello), then opens one bidirectional stream per batch: frame in, reply out. Every
//! frame is checked before it costs anything: the header against `frame_bytes_max` before the
//! payload is read, the payload against the byte budget (`buffered_bytes_max`) before it is
//! buffered, the archive with bytecheck and then value by value. The municipality of every vote
//! is the terminal's registered one.
//!
//! Architecture invariant: only this module knows QUIC. It never touches the disk: a batch goes
//! to the engine and the reply waits for the engine's durable acknowledgement.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::clock::Clock;
use crate::dedup::{Begin, PendingOutcome};
use crate::engine::Engine;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::model::{IstatCode, TerminalId};
use crate::registry::{AuthError, Catalog, Secret, TerminalDirectory};
use crate::wal::{AppendRequest, WalUnavailable};
use crate::wire::{
    self, ArchiveBuf, BatchReplyV1, BatchRules, BatchView, ErrorCode, FrameHeader, FrameKind, HEADER_BYTES,
    HelloReplyV1, Rejection, Status,
};

/// Largest hello frame: a terminal id, a 32-byte secret and a short client name.
const HELLO_BYTES_MAX: u32 = 256;
/// Bytes charged to the budget per batch beyond its payload (request bookkeeping).
const REQUEST_OVERHEAD_BYTES: usize = 256;
/// How long a refused connection waits for its reply to be read before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// What every connection task shares.
pub struct Shared {
    pub engine: Arc<Engine>,
    pub directory: Arc<TerminalDirectory>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    budget: Semaphore,
    service_id_max: u16,
    /// Connections being handled, over every endpoint (checked against `connections_max`).
    connections: std::sync::atomic::AtomicUsize,
}

impl Shared {
    pub fn new(engine: Arc<Engine>, directory: Arc<TerminalDirectory>, limits: Limits, clock: Arc<dyn Clock>) -> Shared {
        let metrics = Arc::clone(&engine.metrics);
        let budget = Semaphore::new(limits.buffered_bytes_max.min(Semaphore::MAX_PERMITS as u64) as usize);
        Shared {
            engine,
            directory,
            limits,
            metrics,
            clock,
            budget,
            service_id_max: Catalog::builtin().service_id_max(),
            connections: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

/// The QUIC server configuration for `limits`.
///
/// # Errors
/// When the TLS configuration is not usable for QUIC.
pub fn server_config(tls: rustls::ServerConfig, limits: &Limits) -> anyhow::Result<quinn::ServerConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(limits.streams_per_connection_max));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.max_idle_timeout(Some(Duration::from_millis(limits.idle_timeout_ms).try_into()?));
    // A stream carries one frame: its window need not exceed the largest frame.
    transport.stream_receive_window(VarInt::from_u32(limits.frame_bytes_max + HEADER_BYTES as u32));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts connections on `endpoint` until `shutdown` turns true, then waits for the
/// connections to finish their in-flight batches and close. The server runs one per socket.
pub async fn run(endpoint: quinn::Endpoint, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Some(incoming) = incoming else { break };
        while connections.try_join_next().is_some() {}
        if shared.connections.load(std::sync::atomic::Ordering::Relaxed) >= shared.limits.connections_max as usize {
            shared.metrics.refused(ErrorCode::TooManyConnections);
            incoming.refuse();
            continue;
        }
        let span = tracing::info_span!("connection", remote = %incoming.remote_address());
        let counted = ConnectionSlot::take(Arc::clone(&shared));
        let shutdown = shutdown.clone();
        connections.spawn(
            async move {
                let shared = Arc::clone(&counted.0);
                if let Err(error) = handle_connection(incoming, shared, shutdown).await {
                    tracing::debug!(%error, "connection ended");
                }
                drop(counted);
            }
            .instrument(span),
        );
    }
    while connections.join_next().await.is_some() {}
}

/// Holds one of the `connections_max` slots while a connection is handled.
struct ConnectionSlot(Arc<Shared>);

impl ConnectionSlot {
    fn take(shared: Arc<Shared>) -> ConnectionSlot {
        shared.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ConnectionSlot(shared)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Counts an open connection for as long as it lives.
struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

async fn handle_connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let connection = incoming.accept()?.await?;
    let (terminal, municipality) = match hello(&connection, &shared).await {
        Ok(who) => who,
        Err(rejection) => {
            shared.metrics.refused(rejection.code);
            tracing::info!(%rejection, "terminal refused");
            connection.close(VarInt::from_u32(rejection.code.close_code()), rejection.code.name().as_bytes());
            return Ok(());
        }
    };
    shared.metrics.connections_accepted.inc();
    shared.metrics.connections_open.inc();
    let _open = OpenConnection(Arc::clone(&shared.metrics));
    tracing::debug!(terminal, %municipality, "terminal connected");
    let mut streams = JoinSet::new();
    loop {
        let stream = tokio::select! {
            stream = connection.accept_bi() => stream,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Ok((send, recv)) = stream else { break };
        while streams.try_join_next().is_some() {}
        let shared = Arc::clone(&shared);
        streams.spawn(async move { handle_stream(send, recv, &shared, terminal, municipality).await });
    }
    // Answer every batch already being handled, then tell the terminal why we close.
    while streams.join_next().await.is_some() {}
    if *shutdown.borrow() {
        connection.close(VarInt::from_u32(ErrorCode::ShuttingDown.close_code()), b"shutting_down");
    }
    Ok(())
}

/// Reads and checks the hello on the connection's first stream, and answers it.
async fn hello(connection: &Connection, shared: &Shared) -> Result<(TerminalId, IstatCode), Rejection> {
    let timeout = Duration::from_millis(shared.limits.hello_timeout_ms);
    let (mut send, mut recv) = tokio::time::timeout(timeout, connection.accept_bi())
        .await
        .map_err(|_| Rejection::new(ErrorCode::Timeout, "no hello within hello_timeout_ms"))?
        .map_err(|e| Rejection::new(ErrorCode::MalformedFrame, format!("connection lost before the hello: {e}")))?;
    let checked = async {
        let (kind, payload) = tokio::time::timeout(timeout, read_frame(&mut recv, HELLO_BYTES_MAX, &shared.budget))
            .await
            .map_err(|_| Rejection::new(ErrorCode::Timeout, "hello not complete within hello_timeout_ms"))??;
        if kind != FrameKind::Hello {
            return Err(Rejection::new(ErrorCode::NotAuthenticated, "the first stream must carry a hello frame"));
        }
        let hello = wire::read_hello(&payload.0)?;
        let terminal = hello.terminal();
        let municipality = shared.directory.authenticate(terminal, &Secret(hello.secret)).map_err(|e| match e {
            AuthError::UnknownTerminal => Rejection::new(ErrorCode::UnknownTerminal, format!("terminal {terminal} is not registered")),
            AuthError::BadCredential => Rejection::new(ErrorCode::BadCredential, format!("wrong secret for terminal {terminal}")),
            AuthError::Revoked => Rejection::new(ErrorCode::TerminalRevoked, format!("terminal {terminal} has been revoked")),
        })?;
        Ok((terminal, municipality))
    }
    .await;
    let reply = match &checked {
        Ok((terminal, municipality)) => HelloReplyV1 {
            last_seq: shared.engine.sequences.last_seq(*terminal),
            municipality: municipality.0,
            batch_votes_max: shared.limits.batch_votes_max,
            streams_max: shared.limits.streams_per_connection_max,
            status: Status::Stored as u8,
            code: 0,
            message: Vec::new(),
        },
        Err(rejection) => HelloReplyV1 {
            last_seq: 0,
            municipality: 0,
            batch_votes_max: 0,
            streams_max: 0,
            status: Status::Rejected as u8,
            code: rejection.code as u16,
            message: rejection.message.clone().into_bytes(),
        },
    };
    let sent = send.write_all(&wire::encode_hello_reply(&reply)).await.is_ok() && send.finish().is_ok();
    if checked.is_err() && sent {
        let _ = tokio::time::timeout(REFUSAL_LINGER, send.stopped()).await;
    }
    checked
}

/// A payload read from a stream and the budget it holds while it is alive.
struct Payload<'a>(ArchiveBuf, #[allow(dead_code)] tokio::sync::SemaphorePermit<'a>);

/// Reads one frame: header, then (within `payload_bytes_max` and the byte budget) the payload,
/// then the end of the stream.
async fn read_frame<'a>(
    recv: &mut RecvStream,
    payload_bytes_max: u32,
    budget: &'a Semaphore,
) -> Result<(FrameKind, Payload<'a>), Rejection> {
    let truncated = |what: &str| Rejection::new(ErrorCode::MalformedFrame, format!("stream ended inside the frame {what}"));
    let mut header = [0u8; HEADER_BYTES];
    recv.read_exact(&mut header).await.map_err(|_| truncated("header"))?;
    let header = FrameHeader::decode(&header, payload_bytes_max)?;
    let len = header.payload_bytes as usize;
    let permit = budget
        .acquire_many((len + REQUEST_OVERHEAD_BYTES) as u32)
        .await
        .map_err(|_| Rejection::new(ErrorCode::ShuttingDown, "server is shutting down"))?;
    let mut payload = ArchiveBuf::with_capacity(len);
    payload.resize(len, 0);
    recv.read_exact(payload.as_mut_slice()).await.map_err(|_| truncated("payload"))?;
    let mut extra = [0u8; 1];
    match recv.read(&mut extra).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err(Rejection::new(
                ErrorCode::MalformedFrame,
                format!("bytes after the {len}-byte payload the header announced"),
            ));
        }
        Err(_) => return Err(truncated("end")),
    }
    Ok((header.kind, Payload(payload, permit)))
}

async fn handle_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    shared: &Shared,
    terminal: TerminalId,
    municipality: IstatCode,
) {
    shared.metrics.batches_received.inc();
    let timeout = Duration::from_millis(shared.limits.frame_timeout_ms);
    let outcome = match tokio::time::timeout(timeout, read_frame(&mut recv, shared.limits.frame_bytes_max, &shared.budget)).await {
        Err(_) => Err(Rejection::new(ErrorCode::Timeout, "batch frame not complete within frame_timeout_ms")),
        Ok(Err(rejection)) => Err(rejection),
        Ok(Ok((FrameKind::Batch, payload))) => Ok(payload),
        Ok(Ok((kind, _))) => Err(Rejection::new(ErrorCode::MalformedFrame, format!("expected a batch frame, got {kind:?}"))),
    };
    let (seq, status, rejection) = match outcome {
        Ok(payload) => store_batch(payload, shared, terminal, municipality).await,
        Err(rejection) => {
            let _ = recv.stop(VarInt::from_u32(rejection.code.close_code()));
            (0, Status::Rejected, Some(rejection))
        }
    };
    match (&status, &rejection) {
        (Status::Rejected, Some(r)) => {
            shared.metrics.rejected(r.code);
            tracing::debug!(terminal, seq, rejection = %r, "batch rejected");
        }
        (Status::RetryLater, Some(r)) => shared.metrics.retry_later(r.code),
        (Status::Duplicate, _) => {
            shared.metrics.batches_duplicate.inc();
        }
        _ => {}
    }
    let reply = BatchReplyV1 {
        seq,
        status: status as u8,
        code: rejection.as_ref().map_or(0, |r| r.code as u16),
        message: rejection.map(|r| r.message.into_bytes()).unwrap_or_default(),
    };
    if send.write_all(&wire::encode_batch_reply(&reply)).await.is_ok() {
        let _ = send.finish();
    }
}

/// Validates a batch and makes it durable, or says why not.
async fn store_batch(
    payload: Payload<'_>,
    shared: &Shared,
    terminal: TerminalId,
    municipality: IstatCode,
) -> (u64, Status, Option<Rejection>) {
    let rules = BatchRules::new(&shared.limits, municipality, shared.clock.now_ms(), shared.service_id_max);
    let (seq, votes) = match BatchView::validate(&payload.0, &rules) {
        Ok(view) => (view.seq(), view.len() as u64),
        Err(rejection) => {
            let seq = BatchView::access(&payload.0).map_or(0, |v| v.seq());
            return (seq, Status::Rejected, Some(rejection));
        }
    };
    shared.metrics.votes_received.inc_by(votes);
    let retry = |code: ErrorCode, message: &str| (seq, Status::RetryLater, Some(Rejection::new(code, message)));
    let guard = match shared.engine.sequences.begin(terminal, seq) {
        Begin::Stored => return (seq, Status::Duplicate, None),
        Begin::Stale => {
            let message = format!("batch {seq} is older than the last {} batches this server remembers", wire::SEQ_WINDOW);
            return (seq, Status::Rejected, Some(Rejection::new(ErrorCode::StaleSequence, message)));
        }
        Begin::Pending(mut first_copy) => {
            let outcome = first_copy.wait_for(|o| *o != PendingOutcome::Waiting).await.map(|o| *o);
            return match outcome {
                Ok(PendingOutcome::Stored) => (seq, Status::Duplicate, None),
                _ => retry(ErrorCode::StorageUnavailable, "the first copy of this batch was not stored; send it again"),
            };
        }
        Begin::New(guard) => guard,
    };
    let Payload(archive, _permit) = payload;
    let (durable, acknowledged) = tokio::sync::oneshot::channel();
    let misuse = Vec::new();
    let request = AppendRequest { terminal, municipality, seq, received_ms: rules.now_ms, archive, misuse, guard, durable };
    if let Err(mut request) = shared.engine.submit_durable(request) {
        shared.engine.sequences.abort(&mut request.guard);
        return retry(ErrorCode::ShuttingDown, "server is shutting down; nothing was stored");
    }
    match acknowledged.await {
        Ok(Ok(_lsn)) => {
            shared.metrics.batches_stored.inc();
            shared.metrics.votes_stored.inc_by(votes);
            (seq, Status::Stored, None)
        }
        Ok(Err(WalUnavailable::ShuttingDown)) => retry(ErrorCode::ShuttingDown, "server is shutting down; nothing was stored"),
        Ok(Err(WalUnavailable::Storage)) | Err(_) => {
            retry(ErrorCode::StorageUnavailable, "the log cannot be written now (see the server log); nothing was stored")
        }
    }
}

/// Binds the ingest server's QUIC endpoints: `sockets` UDP sockets sharing `listen` with
/// `SO_REUSEPORT`, so that the kernel spreads connections over them (by address hash, so a
/// connection's packets always reach the same socket) and one endpoint driver per socket runs
/// on its own worker thread. `reset_key` signs stateless resets: kept across restarts (see
/// `tls::reset_key`), it lets a restarted server tell the terminals of the previous process at
/// once that their connections are gone, instead of leaving them to time out.
///
/// # Errors
/// When the address cannot be bound.
pub fn bind(listen: SocketAddr, config: quinn::ServerConfig, reset_key: &[u8], sockets: usize) -> std::io::Result<Vec<quinn::Endpoint>> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
    let endpoint_config = quinn::EndpointConfig::new(Arc::new(key));
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("the ingest endpoint needs a tokio runtime"))?;
    // SO_REUSEPORT would let a second server on the same port silently take half the traffic:
    // make sure nobody holds the address first (this also picks the port when asked for 0).
    let addr = std::net::UdpSocket::bind(listen)?.local_addr()?;
    let mut endpoints = Vec::with_capacity(sockets.max(1));
    for _ in 0..sockets.max(1) {
        let socket = crate::terminal::udp_socket_shared(addr)?;
        let endpoint = quinn::Endpoint::new(endpoint_config.clone(), Some(config.clone()), socket, Arc::clone(&runtime))?;
        endpoints.push(endpoint);
    }
    Ok(endpoints)
}
