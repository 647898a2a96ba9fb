//! The QUIC ingest server: accept loop → `handle_connection` → `handle_stream`.
//!
//! A connection attempt is admitted first (`admission`: connections server-wide and per address,
//! the handshake budget); then the terminal connects (TLS 1.3, ALPN `faccia/2` or `faccia/1`), presents its
//! credential once on the first stream (hello), and opens one bidirectional stream per batch:
//! frame in, reply out. Every frame is checked before it costs anything: the header against
//! `frame_bytes_max` before the payload is read, the payload against the byte budgets (the
//! connection's share, then the server's `buffered_bytes_max`) before it is buffered, the
//! archive with bytecheck and then value by value. A valid new batch is charged to the
//! terminal's vote budget, its flags are decided (a vote whose time is implausible is a clock
//! fault, stored at the receive time — never a reason to refuse the batch — then `misuse`), and
//! only then is it appended to the log. The municipality of every vote is the terminal's registered one. A
//! terminal revoked while connected is disconnected once the directory reload notices it.
//!
//! Architecture invariant: only `ingest` and `terminal` know QUIC. This never touches the disk: a batch goes
//! to the engine and the reply waits for the engine's durable acknowledgement.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use quinn_proto::ConnectionIdGenerator;
use tokio::sync::{Semaphore, SemaphorePermit, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::clock::Clock;
use crate::config::Config;
use crate::ingest::admission::{AddressTicket, Admission, Admit, Attempt, ConnectionLimit, VoteRates};
use crate::ingest::misuse::{MisuseDetector, Rule};
use crate::limits::{Limits, REQUEST_OVERHEAD_BYTES};
use crate::metrics::{Metrics, RuleLabel};
use crate::model::{IstatCode, TerminalId};
use crate::registry::{AuthError, Catalog, Secret, TerminalDirectory};
use crate::storage::dedup::{Begin, PendingOutcome};
use crate::storage::engine::{Engine, Placement};
use crate::storage::wal::{AppendRequest, WalUnavailable};
use crate::wire::{
    self, ArchiveBuf, BatchReplyV1, BatchRules, BatchView, ErrorCode, FrameHeader, FrameKind, HEADER_BYTES, HelloReplyV1, HelloReplyV2,
    Rejection, Status,
};

/// Largest hello frame: a terminal id, a 32-byte secret and a short client name.
const HELLO_BYTES_MAX: u32 = 256;
/// Shortest time between two stateless resets sent by one ingest socket (see `bind`).
const STATELESS_RESET_INTERVAL: Duration = Duration::from_micros(50);
/// How long a refused connection waits for its reply to be read before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// How long binding waits for an address still held to be released. A server stopped in this
/// process gives its sockets back only when quinn's endpoint driver task next runs, a moment
/// after `Server::stop` returns (longer on a loaded machine); a server restarted in the same
/// process on the same port waits for that instead of failing. Another process holding the
/// address fails the bind after this wait.
const ADDRESS_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// What every connection task shares.
pub struct Shared {
    /// The storage engine: batch sequences (dedup) and the log a batch is appended to.
    pub(crate) engine: Arc<Engine>,
    /// The registered terminals: authenticates hellos, gives each terminal's municipality, notices revocations.
    pub(crate) directory: Arc<TerminalDirectory>,
    /// The ingest limits in force (`[limits]` of the configuration).
    pub(crate) limits: Limits,
    /// The server's metrics (the engine's).
    pub(crate) metrics: Arc<Metrics>,
    /// Wall-clock time in Unix ms: the batch's received time and the window a vote's time must fall in.
    pub(crate) clock: Arc<dyn Clock>,
    /// Bytes of frames being read or waiting to be durable, server-wide (`buffered_bytes_max`).
    budget: Semaphore,
    admission: Admission,
    vote_rates: VoteRates,
    misuse: MisuseDetector,
    /// Origin of the monotonic milliseconds the rate budgets count in.
    started: tokio::time::Instant,
    service_id_max: u16,
    /// Connections being handled, over every endpoint (checked against `connections_max`).
    connections: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// The state shared by the accept loop and every connection; `config` has been checked
    /// (`Config::check`).
    pub(crate) fn new(engine: Arc<Engine>, directory: Arc<TerminalDirectory>, config: &Config, clock: Arc<dyn Clock>) -> Shared {
        let metrics = Arc::clone(&engine.metrics);
        let limits = config.limits.clone();
        let budget = Semaphore::new(limits.buffered_bytes_max.min(Semaphore::MAX_PERMITS as u64) as usize);
        Shared {
            engine,
            directory,
            metrics,
            clock,
            budget,
            admission: Admission::new(&limits, 0),
            vote_rates: VoteRates::new(&limits),
            misuse: MisuseDetector::new(config.misuse.clone()),
            started: tokio::time::Instant::now(),
            service_id_max: Catalog::builtin().service_id_max(),
            limits,
            connections: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Milliseconds since the server started, from a clock that never goes back.
    fn monotonic_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// The QUIC server configuration for `limits`.
///
/// # Errors
/// When the TLS configuration is not usable for QUIC.
pub(crate) fn server_config(tls: rustls::ServerConfig, limits: &Limits) -> anyhow::Result<quinn::ServerConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(limits.streams_per_connection_max));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.max_idle_timeout(Some(Duration::from_millis(limits.idle_timeout_ms).try_into()?));
    // A stream carries one frame: its window need not exceed the largest frame. The connection's
    // window is one frame too, so that what QUIC buffers unread is at most one frame a
    // connection (`connections_max` × 64 KiB server-wide, beyond `buffered_bytes_max`).
    let frame_window = VarInt::from_u32(limits.frame_bytes_max + HEADER_BYTES as u32);
    transport.stream_receive_window(frame_window);
    transport.receive_window(frame_window);
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// How long a validated connection attempt may wait for the handshake budget before it is
/// refused: under the terminals' `HANDSHAKE_TIMEOUT` (5 s), so that a queued terminal is still
/// waiting when its turn comes.
pub(crate) const HANDSHAKE_QUEUE_WAIT_MAX: Duration = Duration::from_secs(3);

/// Validated connection attempts waiting for the handshake budget, first come first served.
///
/// A reconnect storm (a restarted server, thousands of terminals at once) asks for more
/// handshakes than `handshakes_per_second` allows. Refused attempts come back after a random
/// backoff, each a padded 1,200-byte Initial, and the unlucky ones are refused again and wait
/// longer and longer: the last terminal of a storm came back many seconds after the budget
/// could have served it. Queued, an attempt is accepted at the budget's next token, in order;
/// its terminal just waits inside its handshake (QUIC retransmits its Initial, which quinn keeps
/// with the pending attempt). Only validated addresses are queued (an unvalidated one under
/// pressure gets a Retry first), so forged sources cannot fill it; it holds at most
/// `HANDSHAKE_QUEUE_WAIT_MAX` of the budget, and an attempt waiting longer is refused.
struct HandshakeQueue {
    waiting: std::collections::VecDeque<(quinn::Incoming, tokio::time::Instant)>,
    capacity: usize,
}

impl HandshakeQueue {
    fn new(limits: &Limits) -> HandshakeQueue {
        let capacity = (u64::from(limits.handshakes_per_second) * HANDSHAKE_QUEUE_WAIT_MAX.as_secs()) as usize;
        HandshakeQueue { waiting: std::collections::VecDeque::new(), capacity: capacity.max(1) }
    }

    /// Queues `incoming`, or refuses it when the queue is full.
    fn push(&mut self, incoming: quinn::Incoming, shared: &Shared) {
        if self.waiting.len() >= self.capacity {
            shared.metrics.not_admitted(ConnectionLimit::Handshakes.name());
            tracing::debug!(remote = %incoming.remote_address(), "connection refused before its handshake: the handshake queue is full");
            incoming.refuse();
            return;
        }
        shared.metrics.handshakes_queued.inc();
        self.waiting.push_back((incoming, tokio::time::Instant::now()));
    }

    /// When the first waiting attempt may have its turn: the budget's next token.
    fn next_turn(&self, shared: &Shared) -> Option<tokio::time::Instant> {
        let wait_ms = shared.admission.handshake_wait_ms(shared.monotonic_ms());
        (!self.waiting.is_empty()).then(|| tokio::time::Instant::now() + Duration::from_millis(wait_ms.clamp(1, 1_000)))
    }

    /// Takes the first waiting attempt and when it came; refuses those that waited longer than
    /// `HANDSHAKE_QUEUE_WAIT_MAX`.
    fn pop(&mut self, shared: &Shared) -> Option<(quinn::Incoming, tokio::time::Instant)> {
        while let Some((incoming, since)) = self.waiting.pop_front() {
            if since.elapsed() <= HANDSHAKE_QUEUE_WAIT_MAX {
                return Some((incoming, since));
            }
            shared.metrics.not_admitted(ConnectionLimit::Handshakes.name());
            incoming.refuse();
        }
        None
    }

    /// Puts back an attempt whose turn has not come after all, first in line.
    fn put_back(&mut self, incoming: quinn::Incoming, since: tokio::time::Instant) {
        self.waiting.push_front((incoming, since));
    }

    fn refuse_all(&mut self) {
        for (incoming, _) in self.waiting.drain(..) {
            incoming.refuse();
        }
    }
}

/// Accepts connections on `endpoint` until `shutdown` turns true, then waits for the
/// connections to finish their in-flight batches and close. The server runs one per socket.
pub(crate) async fn run(endpoint: quinn::Endpoint, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    let mut queue = HandshakeQueue::new(&shared.limits);
    loop {
        let turn = queue.next_turn(&shared);
        let incoming = tokio::select! {
            incoming = endpoint.accept() => Some(incoming),
            () = tokio::time::sleep_until(turn.unwrap_or_else(tokio::time::Instant::now)), if turn.is_some() => None,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Some(incoming) = incoming else {
            // The queue's turns: accept in order while the budget has tokens.
            while let Some((incoming, since)) = queue.pop(&shared) {
                if let Some(incoming) = admit(incoming, &shared, &mut connections, &shutdown, None) {
                    queue.put_back(incoming, since);
                    break;
                }
            }
            continue;
        };
        let Some(incoming) = incoming else { break };
        while connections.try_join_next().is_some() {}
        if let Some(incoming) = admit(incoming, &shared, &mut connections, &shutdown, Some(&mut queue)) {
            incoming.refuse();
        }
    }
    queue.refuse_all();
    while connections.join_next().await.is_some() {}
}

/// Admits, retries, refuses or queues one attempt. Hands it back when the handshake budget is
/// out and it could not be queued (`queue` full, or none: it came from the queue).
fn admit(
    incoming: quinn::Incoming,
    shared: &Arc<Shared>,
    connections: &mut JoinSet<()>,
    shutdown: &watch::Receiver<bool>,
    queue: Option<&mut HandshakeQueue>,
) -> Option<quinn::Incoming> {
    let remote = incoming.remote_address();
    let attempt = Attempt {
        remote,
        can_retry: incoming.may_retry() && !incoming.remote_address_validated(),
        open: shared.connections.load(std::sync::atomic::Ordering::Relaxed),
    };
    let span = tracing::info_span!("connection", %remote);
    let shared = Arc::clone(shared);
    match shared.admission.admit(attempt, shared.monotonic_ms()) {
        Admit::Accept(ticket) => {
            let counted = ConnectionSlot::take(Arc::clone(&shared));
            let shutdown = shutdown.clone();
            connections.spawn(
                async move {
                    if let Err(error) = handle_connection(incoming, ticket, shared, shutdown).await {
                        tracing::debug!(%error, "connection ended");
                    }
                    drop(counted);
                }
                .instrument(span),
            );
        }
        Admit::Retry => {
            shared.metrics.connections_retried.inc();
            if let Err(error) = incoming.retry() {
                error.into_incoming().refuse();
            }
        }
        Admit::Refuse(ConnectionLimit::Handshakes) => {
            let Some(queue) = queue else { return Some(incoming) };
            queue.push(incoming, &shared);
        }
        Admit::Refuse(limit) => {
            shared.metrics.not_admitted(limit.name());
            span.in_scope(|| tracing::debug!(limit = limit.name(), "connection refused before its handshake"));
            incoming.refuse();
        }
        Admit::Explain(limit) => {
            connections.spawn(explain_refusal(incoming, limit, shared).instrument(span));
        }
    }
    None
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

/// Completes the handshake of a connection over a limit only to close it with a reason that
/// names the limit (`too_many_connections`): the terminal's log says why, not just "refused".
async fn explain_refusal(incoming: quinn::Incoming, limit: ConnectionLimit, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    shared.metrics.refused(ErrorCode::TooManyConnections);
    let Ok(connecting) = incoming.accept() else { return };
    let Ok(connection) = connecting.await else { return };
    let code = ErrorCode::TooManyConnections;
    let reason = format!("{}: {} = {} reached for {}", code.name(), limit.name(), limit.allowed(&shared.limits), remote.ip());
    tracing::info!(%reason, "connection refused");
    connection.close(VarInt::from_u32(code.close_code()), reason.as_bytes());
}

/// Counts an open connection for as long as it lives.
struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

/// Why a connection's loop over its streams ended.
enum Ending {
    /// The terminal closed the connection or it was lost.
    Closed,
    ShuttingDown,
    /// The terminal directory no longer lets this terminal in.
    Revoked(Rejection),
}

async fn handle_connection(
    incoming: quinn::Incoming,
    _ticket: AddressTicket,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let connection = incoming.accept()?.await?;
    // Subscribed before the hello, so that a revocation during the hello is not missed.
    let mut directory_changes = shared.directory.subscribe();
    let connection_budget = Arc::new(Semaphore::new(shared.limits.connection_buffered_bytes_max as usize));
    let (terminal, municipality) = match hello(&connection, &shared, &connection_budget).await {
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
    let mut watching = true;
    let ending = loop {
        let stream = tokio::select! {
            stream = connection.accept_bi() => stream,
            _ = shutdown.wait_for(|stop| *stop) => break Ending::ShuttingDown,
            changed = directory_changes.changed(), if watching => {
                watching = changed.is_ok();
                match shared.directory.check(terminal) {
                    Ok(_) => continue,
                    Err(error) => break Ending::Revoked(auth_rejection(terminal, error)),
                }
            }
        };
        let Ok((send, recv)) = stream else { break Ending::Closed };
        while streams.try_join_next().is_some() {}
        let shared = Arc::clone(&shared);
        let budget = Arc::clone(&connection_budget);
        streams.spawn(async move { handle_stream(send, recv, &shared, &budget, terminal, municipality).await });
    };
    // Answer every batch already being handled, then tell the terminal why we close.
    while streams.join_next().await.is_some() {}
    match ending {
        Ending::Closed => {}
        Ending::ShuttingDown => connection.close(VarInt::from_u32(ErrorCode::ShuttingDown.close_code()), b"shutting_down"),
        Ending::Revoked(rejection) => {
            shared.metrics.connections_revoked.inc();
            tracing::info!(terminal, %rejection, "connection closed");
            connection.close(VarInt::from_u32(rejection.code.close_code()), rejection.to_string().as_bytes());
        }
    }
    Ok(())
}

/// The refusal a terminal receives for an authentication error.
fn auth_rejection(terminal: TerminalId, error: AuthError) -> Rejection {
    match error {
        AuthError::UnknownTerminal => Rejection::new(ErrorCode::UnknownTerminal, format!("terminal {terminal} is not registered")),
        AuthError::BadCredential => Rejection::new(ErrorCode::BadCredential, format!("wrong secret for terminal {terminal}")),
        AuthError::Revoked => Rejection::new(ErrorCode::TerminalRevoked, format!("terminal {terminal} has been revoked")),
    }
}

/// The application protocol TLS negotiated (`wire::ALPN` or `wire::ALPN_V2`).
fn negotiated_protocol(connection: &Connection) -> Option<Vec<u8>> {
    connection.handshake_data()?.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}

/// Reads and checks the hello on the connection's first stream, and answers it (protocol 2's
/// reply, with the server's clock, on a `faccia/2` connection).
async fn hello(connection: &Connection, shared: &Shared, connection_budget: &Semaphore) -> Result<(TerminalId, IstatCode), Rejection> {
    let timeout = Duration::from_millis(shared.limits.hello_timeout_ms);
    let (mut send, mut recv) = tokio::time::timeout(timeout, connection.accept_bi())
        .await
        .map_err(|_| Rejection::new(ErrorCode::Timeout, "no hello within hello_timeout_ms"))?
        .map_err(|e| Rejection::new(ErrorCode::MalformedFrame, format!("connection lost before the hello: {e}")))?;
    let budgets = Budgets { server: &shared.budget, connection: connection_budget, metrics: &shared.metrics };
    let checked = async {
        let (kind, payload) = tokio::time::timeout(timeout, read_frame(&mut recv, HELLO_BYTES_MAX, &budgets))
            .await
            .map_err(|_| Rejection::new(ErrorCode::Timeout, "hello not complete within hello_timeout_ms"))??;
        if kind != FrameKind::Hello {
            return Err(Rejection::new(ErrorCode::NotAuthenticated, "the first stream must carry a hello frame"));
        }
        let hello = wire::read_hello(&payload.0)?;
        let terminal = hello.terminal();
        let municipality = shared.directory.authenticate(terminal, &Secret(hello.secret)).map_err(|e| auth_rejection(terminal, e))?;
        match shared.engine.admit(terminal).await {
            Ok(Placement::Here) => Ok((terminal, municipality)),
            Ok(Placement::Elsewhere(node)) => Err(Rejection::new(
                ErrorCode::ServedElsewhere,
                format!("terminal {terminal} is served by node {node}, which is alive: try another server address"),
            )),
            Err(error) => {
                tracing::warn!(terminal, error = %crate::error_chain(&error), "reading the terminal's lease");
                Err(Rejection::new(ErrorCode::StorageUnavailable, "this node cannot read the terminal's lease in the table storage"))
            }
        }
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
    // Protocol 2 (ALPN `faccia/2`) puts the server's clock before the same reply.
    let framed = if negotiated_protocol(connection).as_deref() == Some(wire::ALPN_V2) {
        wire::encode_hello_reply_v2(&HelloReplyV2 { server_time_ms: shared.clock.now_ms(), reply })
    } else {
        wire::encode_hello_reply(&reply)
    };
    let sent = send.write_all(&framed).await.is_ok() && send.finish().is_ok();
    if checked.is_err() && sent {
        let _ = tokio::time::timeout(REFUSAL_LINGER, send.stopped()).await;
    }
    checked
}

/// The byte budgets a payload is charged to: its connection's share, then the server's.
struct Budgets<'a> {
    server: &'a Semaphore,
    connection: &'a Semaphore,
    metrics: &'a Metrics,
}

impl<'a> Budgets<'a> {
    /// Waits until both budgets hold `bytes`, and takes them. Waiting here is the back-pressure:
    /// the stream is not read, so QUIC flow control slows the sender.
    async fn charge(&self, bytes: u64) -> Result<Charge<'a>, Rejection> {
        let closed = |_| Rejection::new(ErrorCode::ShuttingDown, "server is shutting down");
        let permits = u32::try_from(bytes).expect("frames are far below 4 GiB");
        let connection = self.connection.acquire_many(permits).await.map_err(closed)?;
        let server = self.server.acquire_many(permits).await.map_err(closed)?;
        self.metrics.buffered(bytes as i64);
        Ok(Charge { _connection: connection, _server: server, bytes, metrics: self.metrics })
    }
}

/// Bytes held in the budgets while a payload is alive; given back when it is dropped.
struct Charge<'a> {
    _connection: SemaphorePermit<'a>,
    _server: SemaphorePermit<'a>,
    bytes: u64,
    metrics: &'a Metrics,
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.metrics.unbuffered(self.bytes as i64);
    }
}

/// A payload read from a stream and the budget it holds while it is alive.
struct Payload<'a>(ArchiveBuf, Charge<'a>);

/// Reads one frame: header, then (within `payload_bytes_max` and the byte budgets) the payload,
/// then the end of the stream. The same checks as `wire::decode_frame`, on a stream.
async fn read_frame<'a>(
    recv: &mut RecvStream,
    payload_bytes_max: u32,
    budgets: &Budgets<'a>,
) -> Result<(FrameKind, Payload<'a>), Rejection> {
    let truncated = |what: &str| Rejection::new(ErrorCode::MalformedFrame, format!("stream ended inside the frame {what}"));
    let mut header = [0u8; HEADER_BYTES];
    recv.read_exact(&mut header).await.map_err(|_| truncated("header"))?;
    let header = FrameHeader::decode(&header, payload_bytes_max)?;
    let len = header.payload_bytes as usize;
    let charge = budgets.charge(len as u64 + REQUEST_OVERHEAD_BYTES).await?;
    let mut payload = ArchiveBuf::with_capacity(len);
    debug_assert!(payload.capacity() as u64 <= charge.bytes, "a payload allocation is covered by its charge");
    payload.resize(len, 0);
    recv.read_exact(payload.as_mut_slice()).await.map_err(|_| truncated("payload"))?;
    let mut extra = [0u8; 1];
    match recv.read(&mut extra).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err(Rejection::new(ErrorCode::MalformedFrame, format!("bytes after the {len}-byte payload the header announced")));
        }
        Err(_) => return Err(truncated("end")),
    }
    Ok((header.kind, Payload(payload, charge)))
}

async fn handle_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    shared: &Shared,
    connection_budget: &Semaphore,
    terminal: TerminalId,
    municipality: IstatCode,
) {
    shared.metrics.batches_received.inc();
    let timeout = Duration::from_millis(shared.limits.frame_timeout_ms);
    let budgets = Budgets { server: &shared.budget, connection: connection_budget, metrics: &shared.metrics };
    let outcome = match tokio::time::timeout(timeout, read_frame(&mut recv, shared.limits.frame_bytes_max, &budgets)).await {
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
    let view = match BatchView::validate(&payload.0, &rules) {
        Ok(view) => view,
        Err(rejection) => {
            let seq = BatchView::access(&payload.0).map_or(0, |v| v.seq());
            return (seq, Status::Rejected, Some(rejection));
        }
    };
    let (seq, votes) = (view.seq(), view.len() as u64);
    shared.metrics.votes_received.inc_by(votes);
    let retry = |code: ErrorCode, message: &str| (seq, Status::RetryLater, Some(Rejection::new(code, message)));
    let mut guard = match shared.engine.sequences.begin(terminal, seq) {
        Begin::Stored => return (seq, Status::Duplicate, None),
        Begin::Stale => {
            let message = format!("batch {seq} is older than the last {} batches this server remembers", crate::limits::SEQ_WINDOW);
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
        Begin::Unpublished => {
            let message = format!(
                "batch {seq} is more than {} above what this node has published for the terminal (the table storage is unreachable)",
                crate::limits::SEQ_WINDOW
            );
            return retry(ErrorCode::StorageUnavailable, &message);
        }
    };
    let misuse = match admit_votes(shared, terminal, municipality, &view, &rules) {
        Ok(misuse) => misuse,
        Err(rejection) => {
            shared.engine.sequences.abort(&mut guard);
            return (seq, Status::RetryLater, Some(rejection));
        }
    };
    let Payload(archive, _charge) = payload;
    let flagged = flag_counts(&misuse);
    let (durable, acknowledged) = tokio::sync::oneshot::channel();
    let request = AppendRequest { terminal, municipality, seq, received_ms: rules.now_ms, archive, misuse, guard, durable };
    if let Err(mut request) = shared.engine.submit_durable(request) {
        shared.engine.sequences.abort(&mut request.guard);
        return retry(ErrorCode::ShuttingDown, "server is shutting down; nothing was stored");
    }
    match acknowledged.await {
        Ok(Ok(_lsn)) => {
            shared.metrics.batches_stored.inc();
            shared.metrics.votes_stored.inc_by(votes);
            for (rule, count) in flagged {
                if rule == Rule::Clock {
                    shared.metrics.votes_clock_faulted.inc_by(count);
                }
                shared.metrics.votes_flagged.get_or_create(&RuleLabel { rule: rule.name() }).inc_by(count);
            }
            (seq, Status::Stored, None)
        }
        Ok(Err(WalUnavailable::ShuttingDown)) => retry(ErrorCode::ShuttingDown, "server is shutting down; nothing was stored"),
        Ok(Err(WalUnavailable::Storage)) | Err(_) => {
            retry(ErrorCode::StorageUnavailable, "the log cannot be written now (see the server log); nothing was stored")
        }
    }
}

/// Charges a new batch to its terminal's vote budget and decides its flags — clock faults
/// against `rules` (the server's clock at receipt), then misuse — before the log append, so
/// that the flags are written in the record (beside the receive time a faulted vote is stored
/// at) and replay never decides again.
///
/// # Errors
/// `rate_limited` (retry later) past `votes_per_terminal_per_minute_max`.
fn admit_votes(
    shared: &Shared,
    terminal: TerminalId,
    municipality: IstatCode,
    view: &BatchView<'_>,
    rules: &BatchRules,
) -> Result<Vec<u8>, Rejection> {
    let votes = view.len() as u32;
    shared.vote_rates.try_take(terminal, votes, shared.monotonic_ms()).map_err(|wait_ms| {
        let limit = shared.limits.votes_per_terminal_per_minute_max;
        let message = format!(
            "terminal {terminal} is over votes_per_terminal_per_minute_max = {limit}; this batch of {votes} votes fits in {wait_ms} ms"
        );
        Rejection::new(ErrorCode::RateLimited, message)
    })?;
    Ok(shared.misuse.flags_with_clock(terminal, view.seq(), view.votes(municipality, terminal), |at_ms| rules.clock_fault(at_ms)))
}

/// How many votes each rule flagged.
fn flag_counts(flags: &[u8]) -> Vec<(Rule, u64)> {
    Rule::ALL
        .into_iter()
        .map(|rule| (rule, flags.iter().filter(|&&f| f == rule.id()).count() as u64))
        .filter(|(_, count)| *count > 0)
        .collect()
}

/// Binds the ingest server's QUIC endpoints: `sockets` UDP sockets sharing `listen` with
/// `SO_REUSEPORT`, one endpoint driver per socket on its own worker thread. Endpoint `i` issues
/// only connection IDs whose first byte is `i` modulo `sockets` (`SteeredConnectionIds`), and
/// the kernel delivers each packet to the socket its connection ID names
/// (`transport::udp::steer_by_connection_id`), so a connection keeps its endpoint when a NAT
/// rebinding changes the terminal's address or port. Where the kernel refuses the steering
/// program, one socket is used (a warning says so): more sockets would break rebound
/// connections. `reset_key` signs stateless resets: kept across restarts (see
/// `transport::tls::reset_key`), it lets a restarted server tell the terminals of the previous
/// process at once that their connections are gone, instead of leaving them to time out.
///
/// # Errors
/// When the address cannot be bound.
pub(crate) fn bind(listen: SocketAddr, config: quinn::ServerConfig, reset_key: &[u8], sockets: usize) -> std::io::Result<Listeners> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(key.clone()));
    // quinn sends at most one stateless reset per 20 ms by default: after a restart, 10,000
    // terminals would learn that their connections are gone at 50 a second (most would wait for
    // their reply timeout instead). A reset is always smaller than the packet that caused it,
    // so it amplifies nothing; this interval only bounds the packets a flood of stale ones
    // makes the server send (at most 20,000 a second per socket).
    endpoint_config.min_reset_interval(STATELESS_RESET_INTERVAL);
    // Connection IDs carry a keyed hash that lets the endpoint drop packets for IDs it never
    // issued without answering them. quinn keys it at random per process, so a restarted
    // server would silently drop every packet of its previous connections (terminals then wait
    // for their reply timeout); keyed from the same persistent secret, the restarted server
    // recognises them and answers with a stateless reset at once.
    let cid_key = u64::from_le_bytes(ring::hmac::sign(&key, b"faccia connection id key").as_ref()[..8].try_into().expect("8 bytes"));
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("the ingest endpoint needs a tokio runtime"))?;
    // SO_REUSEPORT would let a second server on the same port silently take half the traffic:
    // make sure nobody holds the address first (this also picks the port when asked for 0).
    let addr = bind_unshared(listen)?.local_addr()?;
    let mut group = Vec::with_capacity(sockets.clamp(1, STEERED_SOCKETS_MAX));
    for _ in 0..sockets.clamp(1, STEERED_SOCKETS_MAX) {
        group.push(crate::transport::udp::udp_socket_shared(addr)?);
    }
    if group.len() > 1
        && let Err(error) = crate::transport::udp::steer_by_connection_id(&group)
    {
        tracing::warn!(%error, sockets = group.len(), "the kernel refused to steer packets by connection ID: serving on one socket");
        group.truncate(1);
    }
    let count = group.len();
    let mut endpoints = Vec::with_capacity(count);
    for (index, socket) in group.into_iter().enumerate() {
        let mut endpoint_config = endpoint_config.clone();
        endpoint_config.cid_generator(move || Box::new(SteeredConnectionIds::new(cid_key, index, count)));
        endpoints.push(quinn::Endpoint::new(endpoint_config, Some(config.clone()), socket, Arc::clone(&runtime))?);
    }
    Ok(Listeners { endpoints, addr })
}

/// At most this many ingest sockets: the steering program names a socket by one byte of the
/// connection ID.
const STEERED_SOCKETS_MAX: usize = 256;

/// The connection IDs of ingest endpoint `socket` of `sockets`: quinn's keyed-hash IDs (8
/// bytes: a 3-byte random nonce, then a 5-byte keyed hash of it, so packets for IDs never issued
/// are recognised without state) drawn until the first byte modulo `sockets` is `socket` — the
/// byte `transport::udp::steer_by_connection_id` steers by. Drawing keeps every endpoint's IDs
/// valid for every other (one key), costs `sockets` draws on average, and leaves
/// 2^24 / `sockets` nonces per endpoint (65,536 with 256 sockets) for the IDs in use at once.
struct SteeredConnectionIds {
    inner: quinn_proto::HashedConnectionIdGenerator,
    socket: usize,
    sockets: usize,
}

impl SteeredConnectionIds {
    fn new(key: u64, socket: usize, sockets: usize) -> SteeredConnectionIds {
        SteeredConnectionIds { inner: quinn_proto::HashedConnectionIdGenerator::from_key(key), socket, sockets: sockets.max(1) }
    }
}

impl ConnectionIdGenerator for SteeredConnectionIds {
    fn generate_cid(&mut self) -> quinn_proto::ConnectionId {
        loop {
            let id = self.inner.generate_cid();
            if usize::from(id[0]) % self.sockets == self.socket {
                return id;
            }
        }
    }

    fn validate(&self, id: &quinn_proto::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        self.inner.validate(id)
    }

    fn cid_len(&self) -> usize {
        self.inner.cid_len()
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.inner.cid_lifetime()
    }
}

/// The ingest server's bound QUIC sockets: `sockets` endpoints sharing one address
/// (`SO_REUSEPORT`), each with its own accept loop. What the server holds of QUIC.
pub(crate) struct Listeners {
    endpoints: Vec<quinn::Endpoint>,
    addr: SocketAddr,
}

impl Listeners {
    /// The address terminals connect to (the port picked when 0 was asked for).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many sockets share the address.
    pub(crate) fn sockets(&self) -> usize {
        self.endpoints.len()
    }

    /// Accepts connections on every socket (`run`, one loop each) until `shutdown` turns true,
    /// and returns once every connection has finished its in-flight batches.
    pub(crate) async fn serve(&self, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
        let loops = self.endpoints.iter().map(|e| run(e.clone(), Arc::clone(&shared), shutdown.clone()));
        futures::future::join_all(loops).await;
    }

    /// Closes every connection still open with `shutting_down` and waits up to `linger` for
    /// the terminals to be told.
    pub(crate) async fn close(&self, linger: Duration) {
        for endpoint in &self.endpoints {
            endpoint.close(VarInt::from_u32(ErrorCode::ShuttingDown.close_code()), b"shutting_down");
        }
        let idle = futures::future::join_all(self.endpoints.iter().map(quinn::Endpoint::wait_idle));
        let _ = tokio::time::timeout(linger, idle).await;
    }
}

/// Binds `listen` without `SO_REUSEPORT`, retrying for up to `ADDRESS_RELEASE_WAIT` while the
/// address is in use. Called once at start; the waits are short blocking sleeps.
fn bind_unshared(listen: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let deadline = std::time::Instant::now() + ADDRESS_RELEASE_WAIT;
    loop {
        match std::net::UdpSocket::bind(listen) {
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_issues_connection_ids_that_name_its_socket_and_validate_everywhere() {
        // Proves: endpoint i of n issues IDs whose first byte is i mod n (what the kernel steers
        // by), and an ID of one endpoint validates at every other (one key, across restarts).
        for sockets in [1, 2, 3, 16] {
            for socket in 0..sockets {
                let mut ids = SteeredConnectionIds::new(42, socket, sockets);
                let other = SteeredConnectionIds::new(42, (socket + 1) % sockets, sockets);
                for _ in 0..50 {
                    let id = ids.generate_cid();
                    assert_eq!(usize::from(id[0]) % sockets, socket);
                    assert!(other.validate(&id).is_ok());
                }
            }
        }
        let stranger = SteeredConnectionIds::new(7, 0, 2);
        assert!(stranger.validate(&SteeredConnectionIds::new(42, 0, 2).generate_cid()).is_err());
    }

    #[test]
    fn binding_waits_for_an_address_being_released_and_no_longer() {
        // Proves: an address released within ADDRESS_RELEASE_WAIT is bound (a server restarted in
        // the same process on its predecessor's port), one held longer fails with AddrInUse.
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        assert_eq!(bind_unshared(addr).unwrap().local_addr().unwrap(), addr);
        release.join().unwrap();
        let kept = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let error = bind_unshared(kept.local_addr().unwrap()).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    }
}
