//! Several nodes, one table: which node serves each terminal, and which node commits a batch
//! two of them may both hold.
//!
//! Only when the tables are in an object store (`[storage] url = "s3://…"`); a node alone on
//! its data directory needs none of it. Everything lives beside the tables, under `_faccia/`:
//!
//! ```text
//! _faccia/nodes/{node}            the node's published windows: every terminal's stored-sequence
//!                                 window (checkpoint encoding, `watermark` = a beat counter),
//!                                 rewritten every `heartbeat_interval_ms`: its liveness too
//! _faccia/terminals/{terminal}    the terminal's lease (JSON `Lease`): the node that serves it,
//!                                 an epoch, and — when it was taken over — the node it was taken
//!                                 from and that node's published window then (the fence)
//! _faccia/claims/{terminal}/{seq} which node commits a batch two nodes may hold (its id)
//! ```
//!
//! **The protocol.** A node accepts a terminal's hello only with its lease: a free terminal is
//! leased with a put-if-absent, a terminal leased to this node is served, and a terminal leased
//! to another node is taken over only when that node is silent — its `nodes` object unchanged
//! for `node_ttl_ms`, observed on this node's monotonic clock and checked once more, by a look
//! sent after the lease was read, right before the takeover — by a conditional put on the
//! lease's ETag (`If-Match`). Else the hello is
//! answered `served_elsewhere` and the terminal tries its next address. The taker merges the
//! fence into its own window, so a batch the old node had published as stored is answered
//! `duplicate`.
//!
//! What the fence cannot tell is a batch the old node stored after its last publication: it may
//! have been acknowledged (the terminal will not send it again: no conflict) or its
//! acknowledgement lost (the terminal sends it again to the taker: both nodes hold it). A node
//! never stores a batch numbered more than `SEQ_WINDOW` above its last published window of the
//! terminal (`Sequences::bound_by_publication`; a fence it adopted counts only once its own
//! publication holds it, since the next taker reads only that), so such batches are numbered in
//! `(fence.high − SEQ_WINDOW, fence.high + SEQ_WINDOW]`. Both sides **claim** them — a
//! put-if-absent of `_faccia/claims/{terminal}/{seq}` — and only the claim's holder commits the
//! batch: the taker claims the batches it stores in that range (in the store thread, before
//! they reach the buffer), and a node recovering its log claims every uncommitted batch of a
//! terminal it no longer leases, and those in the range of a terminal it took over. A node also
//! publishes its windows right before each flush's commits, so a fence holds everything the
//! node committed: a batch in the fence is never stored by the taker.
//!
//! **Failure cases.** (1) *A node dies with acknowledged batches not yet committed*: they are in
//! its log; when it comes back its recovery commits them (after claiming those of terminals
//! taken over); if its disk is lost for good, so are they — at most `flush_interval_ms` of its
//! acknowledged votes, plus the batches in its last published window that it stored but
//! never acknowledged (the taker answers them `duplicate`). (2) *A node comes back after its
//! terminals moved*: its first act is a publication (so it is seen alive), then it re-takes the
//! lease of every terminal its log tail holds with a conditional put (an epoch bump): a taker
//! that read the lease before fails its own conditional put; a lease already taken makes it
//! claim. (3) *A node cut off from the store while alive*: it keeps acknowledging (its log is
//! local) but commits nothing while its last publication is older than half the TTL; when the
//! store answers again it checks its leases and, if one was taken, exits (status 75) so that
//! its recovery settles the claims. This relies on a commit following its freshness check by
//! less than half the TTL, as every lease without a fencing token does.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::limits::SEQ_WINDOW;
use crate::model::TerminalId;
use crate::storage::StoreError;
use crate::storage::checkpoint::Checkpoint;
use crate::storage::dedup::{SeqWindow, Sequences};

/// Claims and lease reads in flight at once.
const CONCURRENCY: usize = 32;
/// The exit status of a node that found one of its leases taken while it was cut off (EX_TEMPFAIL).
pub(crate) const LEASE_LOST_EXIT: i32 = 75;

/// A terminal's lease: `_faccia/terminals/{terminal}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    /// The node serving the terminal.
    pub(crate) owner: String,
    /// Raised by every change of owner and by an owner re-taking its lease after a restart.
    pub(crate) epoch: u64,
    /// The node the terminal was taken from, if it was taken over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) from: Option<String>,
    /// That node's published window of the terminal when it was taken: its highest number …
    #[serde(default)]
    pub(crate) fence_high: u64,
    /// … and its bitmap (`SeqWindow::bits`).
    #[serde(default)]
    pub(crate) fence_bits: Vec<u64>,
}

impl Lease {
    fn fence(&self) -> Option<SeqWindow> {
        self.from.as_ref()?;
        let mut window = SeqWindow { high: self.fence_high, ..SeqWindow::default() };
        for (word, bits) in window.bits.iter_mut().zip(&self.fence_bits) {
            *word = *bits;
        }
        Some(window)
    }

    /// The numbers both the taker and the node it took the terminal from may hold: `(low, high]`.
    fn ambiguous(&self) -> Option<(u64, u64)> {
        self.from.as_ref()?;
        Some((self.fence_high.saturating_sub(SEQ_WINDOW), self.fence_high.saturating_add(SEQ_WINDOW)))
    }
}

/// The answer to a terminal's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement {
    /// This node holds the terminal's lease.
    Here,
    /// The node named serves the terminal and is alive.
    Elsewhere(String),
}

/// How often a node publishes and how long a silent node is still taken for alive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// `heartbeat_interval_ms`.
    pub(crate) heartbeat: Duration,
    /// `node_ttl_ms`.
    pub(crate) ttl: Duration,
}

/// A node's publication as read, with its ETag.
type Publication = (Option<String>, Arc<Checkpoint>);

struct Peer {
    e_tag: Option<String>,
    changed: Instant,
    /// When the store was last asked directly (`silent`), taken as the request was sent: a
    /// takeover accepts only a look sent after it read the lease, and a fleet's hellos that
    /// read their leases before it share that look.
    asked: Option<Instant>,
}

/// This node's side of the protocol (module documentation).
pub(crate) struct Membership {
    store: Arc<dyn ObjectStore>,
    node: String,
    sequences: Arc<Sequences>,
    timing: Timing,
    started: Instant,
    leases: Mutex<HashMap<TerminalId, Lease>>,
    peers: Mutex<HashMap<String, Peer>>,
    /// The last publication read of each silent node, by ETag: a fleet taken over reads it once.
    fences: tokio::sync::Mutex<HashMap<String, Publication>>,
    /// Held while looking at a node's publication (`silent`): the hellos waiting for a look
    /// take the one sent after their lease read.
    looking: tokio::sync::Mutex<()>,
    /// Wakes the heartbeat to publish now: a terminal was taken over, and its batches above
    /// this node's last publication wait for the next one.
    publish_soon: tokio::sync::Notify,
    last_published: Mutex<Option<Instant>>,
    beats: AtomicU64,
    /// Set when a publication succeeded after more than half the TTL without one: the leases
    /// are checked before the next commit.
    suspect: AtomicBool,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("node", &self.node).field("timing", &self.timing).finish_non_exhaustive()
    }
}

fn node_path(node: &str) -> ObjectPath {
    ObjectPath::from(format!("_faccia/nodes/{node}"))
}

fn lease_path(terminal: TerminalId) -> ObjectPath {
    ObjectPath::from(format!("_faccia/terminals/{terminal}"))
}

fn claim_path(terminal: TerminalId, seq: u64) -> ObjectPath {
    ObjectPath::from(format!("_faccia/claims/{terminal}/{seq}"))
}

fn damaged(path: &ObjectPath, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Location(format!("{path} is damaged: {reason}"))
}

impl Membership {
    /// Joins: reads this node's previous publication back into `sequences` (so that a
    /// publication never shrinks), publishes once, and bounds `sequences` by publication.
    /// `store` is rooted at the tables' location.
    ///
    /// # Errors
    /// The object store's errors, or a damaged previous publication.
    pub(crate) async fn join(
        store: Arc<dyn ObjectStore>,
        node: &str,
        sequences: Arc<Sequences>,
        timing: Timing,
    ) -> Result<Arc<Membership>, StoreError> {
        let membership = Arc::new(Membership {
            store,
            node: node.to_string(),
            sequences,
            timing,
            started: Instant::now(),
            leases: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            fences: tokio::sync::Mutex::new(HashMap::new()),
            looking: tokio::sync::Mutex::new(()),
            publish_soon: tokio::sync::Notify::new(),
            last_published: Mutex::new(None),
            beats: AtomicU64::new(0),
            suspect: AtomicBool::new(false),
        });
        if let Some((_, previous)) = membership.published_windows(node).await? {
            membership.beats.store(previous.watermark, Ordering::Relaxed);
            for (terminal, window) in &previous.windows {
                membership.sequences.merge(*terminal, window);
                membership.sequences.set_published(*terminal, window.high);
            }
        }
        membership.sequences.bound_by_publication();
        membership.publish().await?;
        membership.suspect.store(false, Ordering::Relaxed);
        membership.watch_peers().await?;
        Ok(membership)
    }

    /// Publishes and watches the other nodes every `heartbeat` (and at once after a takeover),
    /// until the returned handle is aborted.
    pub(crate) fn spawn_heartbeat(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let membership = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(membership.timing.heartbeat);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = membership.publish_soon.notified() => {}
                }
                if let Err(error) = membership.beat().await {
                    tracing::warn!(error = %crate::error_chain(&error), "publishing this node's windows; retried at the next heartbeat");
                }
            }
        })
    }

    async fn beat(&self) -> Result<(), StoreError> {
        self.ready_to_commit().await?;
        self.watch_peers().await
    }

    /// Writes this node's windows (all it holds: durable batches only) to `_faccia/nodes/{node}`.
    async fn publish(&self) -> Result<(), StoreError> {
        let windows = self.sequences.snapshot();
        let beat = self.beats.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = Checkpoint { watermark: beat, windows: windows.clone() }.encode();
        self.store.put(&node_path(&self.node), bytes.into()).await?;
        for (terminal, window) in &windows {
            self.sequences.set_published(*terminal, window.high);
        }
        let mut last = self.last_published.lock().expect("membership lock");
        if last.is_some_and(|at| at.elapsed() > self.timing.ttl / 2) {
            self.suspect.store(true, Ordering::Relaxed);
        }
        *last = Some(Instant::now());
        Ok(())
    }

    /// After a stretch without publication: a lease another node took means this node must
    /// not commit what it holds of that terminal without claims, which only its recovery
    /// makes. It exits (`LEASE_LOST_EXIT`); its log keeps every acknowledged batch.
    async fn check_leases(&self) -> Result<(), StoreError> {
        let held: Vec<TerminalId> = self.leases.lock().expect("membership lock").keys().copied().collect();
        let lost = futures::stream::iter(held)
            .map(|terminal| async move { Ok::<_, StoreError>((terminal, self.read_lease(terminal).await?)) })
            .buffer_unordered(CONCURRENCY)
            .try_filter(|(_, lease)| std::future::ready(lease.as_ref().is_none_or(|(l, _)| l.owner != self.node)))
            .try_collect::<Vec<_>>()
            .await?;
        if let Some((terminal, lease)) = lost.first() {
            tracing::error!(
                terminal,
                owner = ?lease.as_ref().map(|(l, _)| &l.owner),
                leases_lost = lost.len(),
                "this node was cut off from the table storage long enough for another node to take its terminals; \
                 exiting so that the restart settles their batches (nothing acknowledged is lost: it is in the log)"
            );
            std::process::exit(LEASE_LOST_EXIT);
        }
        self.suspect.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Lists the nodes' publications and notes which changed.
    async fn watch_peers(&self) -> Result<(), StoreError> {
        let listed: Vec<_> = self.store.list(Some(&ObjectPath::from("_faccia/nodes"))).try_collect().await?;
        let mut peers = self.peers.lock().expect("membership lock");
        for meta in listed {
            let Some(node) = meta.location.filename().map(str::to_string) else { continue };
            note_peer(&mut peers, node, meta.e_tag);
        }
        Ok(())
    }

    /// Publishes right before a flush's commits (so that a fence holds everything this node
    /// committed) and refuses while this node's leases are in doubt.
    ///
    /// # Errors
    /// `StoreError::Location` while the leases are in doubt; the object store's errors.
    pub(crate) async fn ready_to_commit(&self) -> Result<(), StoreError> {
        self.publish().await?;
        if self.suspect.load(Ordering::Relaxed) {
            self.check_leases().await?;
        }
        Ok(())
    }

    /// Decides a terminal's hello (module documentation): `Here` once this node holds the
    /// lease, `Elsewhere` when a live node does. May wait up to `node_ttl_ms` plus a heartbeat
    /// to learn whether the lease's holder is alive.
    ///
    /// # Errors
    /// The object store's errors, or a damaged lease or publication.
    pub(crate) async fn admit(&self, terminal: TerminalId) -> Result<Placement, StoreError> {
        if self.leases.lock().expect("membership lock").contains_key(&terminal) {
            return Ok(Placement::Here);
        }
        let deadline = Instant::now() + self.timing.ttl + self.timing.heartbeat;
        loop {
            let read = self.read_lease(terminal).await?;
            let read_at = Instant::now();
            let (next, mode) = match read {
                None => (Lease { owner: self.node.clone(), epoch: 1, from: None, fence_high: 0, fence_bits: Vec::new() }, PutMode::Create),
                Some((lease, _)) if lease.owner == self.node => {
                    tracing::debug!(terminal, epoch = lease.epoch, "a hello for a terminal leased to this node");
                    self.adopt(terminal, lease);
                    return Ok(Placement::Here);
                }
                Some((lease, version)) => {
                    if !self.silent(&lease.owner, read_at).await? {
                        if Instant::now() >= deadline || self.recently_changed(&lease.owner) {
                            return Ok(Placement::Elsewhere(lease.owner));
                        }
                        tokio::time::sleep(self.timing.heartbeat / 4).await;
                        continue;
                    }
                    let fence = self.fence_of(&lease.owner, terminal).await?;
                    let taken = Lease {
                        owner: self.node.clone(),
                        epoch: lease.epoch + 1,
                        from: Some(lease.owner),
                        fence_high: fence.high,
                        fence_bits: fence.bits.to_vec(),
                    };
                    (taken, PutMode::Update(version))
                }
            };
            if self.put_lease(terminal, &next, mode).await? {
                if let Some(from) = &next.from {
                    tracing::info!(terminal, from, epoch = next.epoch, fence = next.fence_high, "took over a terminal from a silent node");
                }
                self.adopt(terminal, next);
                return Ok(Placement::Here);
            }
        }
    }

    /// Whether `node`'s publication has not changed for the TTL, by a look at it sent after
    /// `lease_read` (when the lease about to be taken was read). A node that comes back
    /// publishes before it re-takes its leases, so the look sees it alive whenever the lease
    /// read saw its re-take; an earlier look would not (the crash test's doubled votes: a
    /// live node's lease taken on a look 60 ms old). Hellos share a look sent after their
    /// reads, so a fleet's takeover costs about one request per look, not per terminal.
    async fn silent(&self, node: &str, lease_read: Instant) -> Result<bool, StoreError> {
        if self.changed_within_ttl(node) {
            return Ok(false);
        }
        let _looking = self.looking.lock().await;
        {
            let peers = self.peers.lock().expect("membership lock");
            if let Some(peer) = peers.get(node)
                && peer.asked.is_some_and(|sent| sent >= lease_read)
            {
                return Ok(peer.changed.elapsed() >= self.timing.ttl);
            }
        }
        let sent = Instant::now();
        let e_tag = match self.store.head(&node_path(node)).await {
            Ok(meta) => meta.e_tag,
            Err(object_store::Error::NotFound { .. }) => None,
            Err(error) => return Err(error.into()),
        };
        let mut peers = self.peers.lock().expect("membership lock");
        match peers.get_mut(node) {
            Some(peer) if peer.e_tag == e_tag => {
                peer.asked = Some(sent);
                Ok(peer.changed.elapsed() >= self.timing.ttl)
            }
            Some(peer) => {
                (peer.e_tag, peer.changed, peer.asked) = (e_tag, sent, Some(sent));
                Ok(false)
            }
            // Watched for the TTL and never published: silent.
            None if e_tag.is_none() => Ok(true),
            None => {
                peers.insert(node.to_string(), Peer { e_tag, changed: sent, asked: Some(sent) });
                Ok(false)
            }
        }
    }

    /// Whether `node`'s publication changed less than the TTL ago (or, never seen, this node
    /// started less than the TTL ago).
    fn changed_within_ttl(&self, node: &str) -> bool {
        let peers = self.peers.lock().expect("membership lock");
        peers.get(node).map_or(self.started, |p| p.changed).elapsed() < self.timing.ttl
    }

    /// `node`'s window of `terminal` in its last publication (read once per ETag).
    async fn fence_of(&self, node: &str, terminal: TerminalId) -> Result<SeqWindow, StoreError> {
        let watched = self.peers.lock().expect("membership lock").get(node).and_then(|p| p.e_tag.clone());
        let mut fences = self.fences.lock().await;
        let publication = match fences.get(node) {
            Some((e_tag, publication)) if e_tag.is_some() && *e_tag == watched => Arc::clone(publication),
            _ => match self.published_windows(node).await? {
                Some((e_tag, publication)) => {
                    let publication = Arc::new(publication);
                    fences.insert(node.to_string(), (e_tag, Arc::clone(&publication)));
                    publication
                }
                None => Arc::new(Checkpoint::default()),
            },
        };
        Ok(publication.windows.iter().find(|(t, _)| *t == terminal).map(|(_, w)| *w).unwrap_or_default())
    }

    fn recently_changed(&self, node: &str) -> bool {
        let peers = self.peers.lock().expect("membership lock");
        peers.get(node).is_some_and(|p| p.changed > self.started && p.changed.elapsed() < 2 * self.timing.heartbeat)
    }

    /// Holds `lease` from now on: its fence joins this node's window of the terminal. The
    /// fence does not count as published by this node: the next node to take the terminal
    /// reads only this node's publication, so until that holds the fence, this node stores
    /// nothing above its own last publication plus `SEQ_WINDOW` (`Begin::Unpublished`; the
    /// heartbeat is woken to publish at once). Counting the fence as published let a taker
    /// store batches the node after it did not claim: the crash test's doubled votes.
    fn adopt(&self, terminal: TerminalId, lease: Lease) {
        if let Some(fence) = lease.fence() {
            self.sequences.merge(terminal, &fence);
            self.publish_soon.notify_one();
        }
        self.leases.lock().expect("membership lock").insert(terminal, lease);
    }

    async fn read_lease(&self, terminal: TerminalId) -> Result<Option<(Lease, UpdateVersion)>, StoreError> {
        let path = lease_path(terminal);
        let got = match self.store.get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
        let bytes = got.bytes().await?;
        let lease = serde_json::from_slice(&bytes).map_err(|e| damaged(&path, e))?;
        Ok(Some((lease, version)))
    }

    /// `false` when another node changed the lease first.
    async fn put_lease(&self, terminal: TerminalId, lease: &Lease, mode: PutMode) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(lease).expect("a lease serializes");
        match self.store.put_opts(&lease_path(terminal), bytes.into(), PutOptions::from(mode)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// `node`'s last publication and its ETag; `None` when it never published.
    async fn published_windows(&self, node: &str) -> Result<Option<(Option<String>, Checkpoint)>, StoreError> {
        let path = node_path(node);
        let (e_tag, bytes) = match self.store.get(&path).await {
            Ok(got) => (got.meta.e_tag.clone(), got.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let publication = Checkpoint::decode(&bytes).map_err(|reason| damaged(&path, reason))?;
        Ok(Some((e_tag, publication)))
    }

    /// Whether a batch this node is storing now must be claimed: it took the terminal over and
    /// the number is in the range the node it took it from may also hold.
    pub(crate) fn must_claim(&self, terminal: TerminalId, seq: u64) -> bool {
        let leases = self.leases.lock().expect("membership lock");
        leases.get(&terminal).and_then(Lease::ambiguous).is_some_and(|(low, high)| seq > low && seq <= high)
    }

    /// Claims each `(terminal, seq)`: `true` where this node holds the claim (it made it now
    /// or earlier), `false` where another node does and commits the batch.
    ///
    /// # Errors
    /// The object store's errors (nothing is decided then; claiming again is safe).
    pub(crate) async fn claim(&self, batches: &[(TerminalId, u64)]) -> Result<Vec<bool>, StoreError> {
        futures::stream::iter(batches.iter().copied())
            .map(|(terminal, seq)| self.claim_one(terminal, seq))
            .buffered(CONCURRENCY)
            .try_collect()
            .await
    }

    async fn claim_one(&self, terminal: TerminalId, seq: u64) -> Result<bool, StoreError> {
        let path = claim_path(terminal, seq);
        let mode = PutOptions::from(PutMode::Create);
        match self.store.put_opts(&path, self.node.clone().into_bytes().into(), mode).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                let holder = self.store.get(&path).await?.bytes().await?;
                Ok(holder.as_ref() == self.node.as_bytes())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The recovery's decision for the batches of this node's log not yet committed: re-takes
    /// the lease of each terminal they belong to (an epoch bump, so a node that read the lease
    /// before cannot take it), then claims those another node may hold. Returns, per batch,
    /// whether this node commits it.
    ///
    /// # Errors
    /// The object store's errors, or a damaged lease.
    pub(crate) async fn settle_recovered(&self, batches: &[(TerminalId, u64)]) -> Result<Vec<bool>, StoreError> {
        let terminals: BTreeSet<TerminalId> = batches.iter().map(|(t, _)| *t).collect();
        let decisions: HashMap<TerminalId, Option<ToClaim>> = futures::stream::iter(terminals)
            .map(|terminal| async move { Ok::<_, StoreError>((terminal, self.retake(terminal).await?)) })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let to_claim: Vec<(TerminalId, u64)> =
            batches.iter().copied().filter(|(t, seq)| decisions[t].as_ref().is_some_and(|claim| claim.covers(*seq))).collect();
        let claimed: HashMap<(TerminalId, u64), bool> = to_claim.iter().copied().zip(self.claim(&to_claim).await?).collect();
        let keep: Vec<bool> = batches.iter().map(|b| claimed.get(b).copied().unwrap_or(true)).collect();
        let dropped = keep.iter().filter(|k| !**k).count();
        if !to_claim.is_empty() {
            tracing::info!(claimed = to_claim.len(), committed_elsewhere = dropped, "settled the log's batches of terminals that moved");
        }
        Ok(keep)
    }

    /// Re-takes `terminal`'s lease for recovery. Returns the numbers to claim: none for a
    /// terminal this node held alone, all for one another node took. (Not "all but the fence
    /// taken from this node": a fence also holds what this node merged from others' fences,
    /// batches another node stored and claimed; the two-node crash test found the double.)
    async fn retake(&self, terminal: TerminalId) -> Result<Option<ToClaim>, StoreError> {
        loop {
            let (next, mode) = match self.read_lease(terminal).await? {
                None => (Lease { owner: self.node.clone(), epoch: 1, from: None, fence_high: 0, fence_bits: Vec::new() }, PutMode::Create),
                Some((lease, version)) if lease.owner == self.node => (Lease { epoch: lease.epoch + 1, ..lease }, PutMode::Update(version)),
                Some((lease, _)) => {
                    tracing::debug!(
                        terminal,
                        owner = lease.owner,
                        epoch = lease.epoch,
                        "recovery: the terminal moved; claiming its batches"
                    );
                    return Ok(Some(ToClaim { low: 0, high: u64::MAX }));
                }
            };
            if self.put_lease(terminal, &next, mode).await? {
                tracing::debug!(terminal, epoch = next.epoch, from = ?next.from, fence = next.fence_high, "recovery: re-took the lease");
                let claim = next.ambiguous().map(|(low, high)| ToClaim { low, high });
                self.adopt(terminal, next);
                return Ok(claim);
            }
        }
    }

    /// The batches among `batches` another node claimed (a table caught up from the log leaves
    /// them out, as the flush it completes did). One GET per batch, `CONCURRENCY` at once: a
    /// listing of the terminal's claims would read every claim it ever had.
    ///
    /// # Errors
    /// The object store's errors.
    pub(crate) async fn claimed_elsewhere(&self, batches: &[(TerminalId, u64)]) -> Result<BTreeSet<(TerminalId, u64)>, StoreError> {
        let wanted: BTreeSet<(TerminalId, u64)> = batches.iter().copied().collect();
        futures::stream::iter(wanted)
            .map(|(terminal, seq)| async move {
                match self.store.get(&claim_path(terminal, seq)).await {
                    Ok(got) => Ok(Some((terminal, seq, got.bytes().await?))),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(error) => Err(StoreError::from(error)),
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|claim| async move {
                Ok(claim.filter(|(_, _, holder)| holder.as_ref() != self.node.as_bytes()).map(|(terminal, seq, _)| (terminal, seq)))
            })
            .try_collect()
            .await
    }
}

/// The numbers of a terminal a recovering node claims: `(low, high]`.
struct ToClaim {
    low: u64,
    high: u64,
}

impl ToClaim {
    fn covers(&self, seq: u64) -> bool {
        seq > self.low && seq <= self.high
    }
}

fn note_peer(peers: &mut HashMap<String, Peer>, node: String, e_tag: Option<String>) {
    match peers.get_mut(&node) {
        Some(peer) if peer.e_tag == e_tag => {}
        Some(peer) => {
            peer.e_tag = e_tag;
            peer.changed = Instant::now();
        }
        None => {
            peers.insert(node, Peer { e_tag, changed: Instant::now(), asked: None });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn node(store: &Arc<dyn ObjectStore>, name: &str, timing: Timing) -> Arc<Membership> {
        Membership::join(Arc::clone(store), name, Arc::new(Sequences::default()), timing).await.unwrap()
    }

    #[tokio::test]
    async fn a_takeover_looks_at_the_holder_after_reading_its_lease() {
        // Proves: a takeover decides "silent" on a look at the holder's publication taken after
        // the lease was read. Node B holds terminals 1 and 2 and goes silent; A takes 2 over
        // (and so has just looked at B: silent). B restarts — publishes, then re-takes 1 for
        // its recovery — and a terminal's hello for 1 reaches A right after: A must send it
        // elsewhere, not take 1 from a live B on its earlier look (the two-node crash test's
        // doubled votes: both nodes then served terminal 1 from their lease caches).
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        // A long heartbeat: A's look at B stays recent for the whole test.
        let timing = Timing { heartbeat: Duration::from_secs(2), ttl: Duration::from_millis(150) };
        let b = node(&store, "b", timing).await;
        assert_eq!(b.admit(1).await.unwrap(), Placement::Here);
        assert_eq!(b.admit(2).await.unwrap(), Placement::Here);
        let a = node(&store, "a", timing).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(a.admit(2).await.unwrap(), Placement::Here, "B is silent: A takes terminal 2");
        drop(b);
        let b = node(&store, "b", timing).await;
        assert_eq!(b.settle_recovered(&[(1, 7)]).await.unwrap(), vec![true], "B still holds terminal 1");
        assert_eq!(a.admit(1).await.unwrap(), Placement::Elsewhere("b".into()), "B is back: A must not take terminal 1");
        let (lease, _) = a.read_lease(1).await.unwrap().unwrap();
        assert_eq!(lease.owner, "b");
    }

    #[tokio::test]
    async fn a_taker_stores_nothing_the_node_taking_it_over_next_would_not_claim() {
        // Proves: a node that took a terminal over stores no batch beyond its own last
        // publication plus SEQ_WINDOW, even though the fence it adopted is higher — the next
        // taker reads only its publication (the two-node crash test's doubled votes: B took
        // over at fence 2967 while its publication still said 1416, stored up to 3168, died; A
        // took over at fence 1416 and did not claim 2968…3168, which both then committed).
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let timing = Timing { heartbeat: Duration::from_secs(2), ttl: Duration::from_millis(150) };
        let a = node(&store, "a", timing).await;
        assert_eq!(a.admit(1).await.unwrap(), Placement::Here);
        for seq in 1..=3000 {
            a.sequences.mark_stored(1, seq);
        }
        a.ready_to_commit().await.unwrap();
        let b = node(&store, "b", timing).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(b.admit(1).await.unwrap(), Placement::Here, "A is silent: B takes terminal 1 at fence 3000");
        let stored_unpublished = match b.sequences.begin(1, 3001) {
            crate::storage::dedup::Begin::New(mut guard) => {
                b.sequences.mark_stored(1, 3001);
                guard.settled_by_log();
                true
            }
            crate::storage::dedup::Begin::Unpublished => false,
            other => panic!("batch 3001 is new to B: {other:?}"),
        };
        if stored_unpublished {
            // B dies before publishing; C takes terminal 1 over from it.
            let c = node(&store, "c", timing).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(c.admit(1).await.unwrap(), Placement::Here);
            assert!(c.must_claim(1, 3001), "B stored 3001 unpublished: C must claim it");
        }
        // Once B publishes (its heartbeat is woken by the takeover), it takes the batch.
        b.ready_to_commit().await.unwrap();
        match b.sequences.begin(1, 3002) {
            crate::storage::dedup::Begin::New(mut guard) => b.sequences.abort(&mut guard),
            other => panic!("B published its window: batch 3002 is new, not {other:?}"),
        }
    }
}
