//! TLS identities for the QUIC endpoints: the server's certificate and what terminals trust.
//!
//! A configured certificate and key (PEM) are used as they are. Without one, the server makes
//! a development identity on first start and keeps it in `DATA_DIR/tls/`: a private CA
//! (`ca.pem`; its key is discarded once it has signed) and a server certificate for
//! `localhost`, `127.0.0.1` and `::1` signed by it. Terminals verify the server against a CA
//! they are given — the development `ca.pem` or a production CA — never "accept anything".
//! Only TLS 1.3 is offered, with ALPN `faccia/2` or `faccia/1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::wire::{ALPN, ALPN_V2};

/// Why TLS material (a certificate, a key, a secret in `DATA_DIR/tls`) could not be read, made or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing the file at `path` failed.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file at `path` holds no usable PEM item of the kind `what` names (`certificate`, `private key`).
    #[error("{path} holds no usable PEM {what}")]
    Pem {
        /// The PEM file.
        path: PathBuf,
        /// What was looked for: `certificate` or `private key`.
        what: &'static str,
    },
    /// The development CA or server certificate could not be generated.
    #[error("generating the development certificate")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration, e.g. a key that does not match the certificate.
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
    /// An HTTPS client would trust nobody: the system has no root certificates and no CA file was given.
    #[error("no root certificate to trust: the system has none (install ca-certificates) and no CA file was given")]
    NoRoots,
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// The certificate chain (DER), in the order of its PEM file: the server's own certificate first.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The private key of the chain's first certificate (DER).
    pub(crate) key: PrivateKeyDer<'static>,
}

/// Paths of the development identity inside a data directory.
pub(crate) fn dev_paths(data_dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

/// Loads the development identity of `data_dir`, creating it on first use. Returns the
/// identity and the path of the CA certificate that terminals must trust.
///
/// # Errors
/// I/O or generation errors.
pub fn dev_identity(data_dir: &Path) -> Result<(Identity, PathBuf), TlsError> {
    let (ca_path, cert_path, key_path) = dev_paths(data_dir);
    if !(ca_path.exists() && cert_path.exists() && key_path.exists()) {
        generate_dev_identity(&ca_path, &cert_path, &key_path)?;
    }
    Ok((load_identity(&cert_path, &key_path)?, ca_path))
}

fn generate_dev_identity(ca_path: &Path, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(DnType::CommonName, "faccia development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "faccia development server");
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    let dir = ca_path.parent().expect("tls directory");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    crate::fsutil::create_dir_durable(dir).map_err(io(dir))?;
    crate::fsutil::write_atomic(key_path, key.serialize_pem().as_bytes()).map_err(io(key_path))?;
    crate::fsutil::write_atomic(cert_path, cert.pem().as_bytes()).map_err(io(cert_path))?;
    crate::fsutil::write_atomic(ca_path, ca_cert.pem().as_bytes()).map_err(io(ca_path))?;
    tracing::info!(ca = %ca_path.display(), "generated a development certificate; terminals must trust this CA");
    Ok(())
}

/// The key that signs the ingest endpoint's stateless resets, created on first use and kept in
/// `DATA_DIR/tls/reset-key` so that it survives restarts.
///
/// # Errors
/// When the file cannot be read or created.
pub(crate) fn reset_key(data_dir: &Path) -> Result<Vec<u8>, TlsError> {
    persistent_secret(data_dir, "reset-key")
}

/// 64 random bytes kept in `DATA_DIR/tls/NAME`, created on first use.
fn persistent_secret(data_dir: &Path, name: &str) -> Result<Vec<u8>, TlsError> {
    let path = data_dir.join("tls").join(name);
    let io = |source| TlsError::Io { path: path.clone(), source };
    match std::fs::read(&path) {
        Ok(key) if key.len() >= 32 => return Ok(key),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut key = vec![0u8; 64];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    crate::fsutil::create_dir_durable(path.parent().expect("tls directory")).map_err(io)?;
    crate::fsutil::write_atomic(&path, &key).map_err(io)?;
    Ok(key)
}

/// How long a session ticket may be used: tickets are sealed under the key of their UTC day and
/// opened only on that day and the next.
const TICKET_LIFETIME_S: u32 = 24 * 3600;

/// TLS 1.3 session tickets sealed with AES-256-GCM under a key derived, one per UTC day, from the
/// secret in `DATA_DIR/tls/ticket-key`. Because the secret survives restarts, a terminal resumes
/// its session with a restarted server: no certificate is sent or verified and nothing is
/// signed, a fraction of a full handshake's cost on both sides — what lets a whole fleet
/// reconnect within seconds. Resumption still runs a fresh key exchange (`psk_dhe_ke`), so
/// session keys stay forward secret; it does not replace the terminal's hello credential.
#[derive(Debug)]
pub(crate) struct SessionTickets {
    secret: ring::hmac::Key,
    /// Counts the tickets opened (sessions resumed).
    resumed: prometheus_client::metrics::counter::Counter,
}

impl SessionTickets {
    /// # Errors
    /// When the secret cannot be read or created.
    pub(crate) fn open(data_dir: &Path, resumed: prometheus_client::metrics::counter::Counter) -> Result<SessionTickets, TlsError> {
        let secret = persistent_secret(data_dir, "ticket-key")?;
        Ok(SessionTickets { secret: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret), resumed })
    }

    fn key(&self, day: u32) -> ring::aead::LessSafeKey {
        let mut label = b"faccia session ticket key ".to_vec();
        label.extend_from_slice(&day.to_be_bytes());
        let derived = ring::hmac::sign(&self.secret, &label);
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, derived.as_ref()).expect("a 32-byte key");
        ring::aead::LessSafeKey::new(key)
    }

    fn today() -> u32 {
        (crate::clock::now_ms() / 86_400_000) as u32
    }
}

/// Day (4 bytes) and nonce (12 bytes) in front of the sealed ticket.
const TICKET_HEADER: usize = 4 + ring::aead::NONCE_LEN;

impl rustls::server::ProducesTickets for SessionTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_S
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let day = SessionTickets::today();
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
        let mut sealed = plain.to_vec();
        let nonce_value = ring::aead::Nonce::assume_unique_for_key(nonce);
        self.key(day).seal_in_place_append_tag(nonce_value, ring::aead::Aad::from(day.to_be_bytes()), &mut sealed).ok()?;
        let mut ticket = Vec::with_capacity(TICKET_HEADER + sealed.len());
        ticket.extend_from_slice(&day.to_be_bytes());
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < TICKET_HEADER + ring::aead::AES_256_GCM.tag_len() {
            return None;
        }
        let day = u32::from_be_bytes(ticket[..4].try_into().ok()?);
        let today = SessionTickets::today();
        if day != today && day.checked_add(1) != Some(today) {
            return None;
        }
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(&ticket[4..TICKET_HEADER]).ok()?;
        let mut sealed = ticket[TICKET_HEADER..].to_vec();
        let plain = self.key(day).open_in_place(nonce, ring::aead::Aad::from(day.to_be_bytes()), &mut sealed).ok()?;
        self.resumed.inc();
        Some(plain.to_vec())
    }
}

/// Loads a PEM certificate chain and private key.
///
/// # Errors
/// Unreadable files or no certificate / key in them.
pub(crate) fn load_identity(cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
    Ok(Identity { chain: load_certs(cert_path)?, key: load_key(key_path)? })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), what: "certificate" });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::Pem { path: path.to_path_buf(), what: "private key" })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS 1.3 configuration with ALPN `faccia/2` or `faccia/1` (2 preferred), issuing session tickets sealed by
/// `tickets` (resumption across restarts) when given.
///
/// # Errors
/// When the key does not match the certificate.
pub(crate) fn server_config(identity: Identity, tickets: Option<SessionTickets>) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    // rustls picks the first of the server's protocols the client offers.
    config.alpn_protocols = vec![ALPN_V2.to_vec(), ALPN.to_vec()];
    config.max_early_data_size = 0;
    if let Some(tickets) = tickets {
        config.ticketer = Arc::new(tickets);
    }
    Ok(config)
}

/// A terminal's TLS 1.3 configuration trusting the CA certificates in `ca_path`, offering
/// protocol 2 and then 1 (a server that speaks only 1 picks it).
///
/// # Errors
/// When the file holds no certificate.
pub(crate) fn client_config(ca_path: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = client_config_with_alpn(ca_path, ALPN_V2)?;
    config.alpn_protocols.push(ALPN.to_vec());
    Ok(config)
}

/// As `client_config`, offering another application protocol (tests of ALPN refusal).
///
/// # Errors
/// When the file holds no certificate.
pub fn client_config_with_alpn(ca_path: &Path, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca_path)? {
        roots.add(cert)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// The roots outgoing HTTPS (the alerts' webhook) trusts: the system's (`rustls-native-certs`:
/// `/etc/ssl/certs`, `SSL_CERT_FILE`) and, with `extra_ca`, the certificates of that PEM file (a
/// town hall's private CA). Empty on a system without roots and without `extra_ca`; an https
/// client then refuses to start ([`TlsError::NoRoots`]).
///
/// # Errors
/// An unreadable `extra_ca`, or one without a certificate.
pub fn https_roots(extra_ca: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "a system root certificate was not loaded");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        for cert in load_certs(path)? {
            roots.add(cert)?;
        }
    }
    Ok(roots)
}

/// The client configuration of outgoing HTTPS: TLS 1.2 or 1.3 (ring), trusting `roots`.
///
/// # Errors
/// When rustls refuses the protocol versions (it does not with ring).
pub fn https_client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use rustls::server::ProducesTickets;

    use super::*;

    #[test]
    fn tickets_open_only_under_their_own_key_and_unaltered() {
        let dir = tempfile::tempdir().unwrap();
        let counter = prometheus_client::metrics::counter::Counter::default();
        let tickets = SessionTickets::open(dir.path(), counter.clone()).unwrap();
        let ticket = tickets.encrypt(b"session state").unwrap();
        assert_eq!(tickets.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        assert_eq!(counter.get(), 1);
        // The same data directory after a restart opens it; another one does not.
        let reopened = SessionTickets::open(dir.path(), Counter::default()).unwrap();
        assert_eq!(reopened.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        let other_dir = tempfile::tempdir().unwrap();
        assert_eq!(SessionTickets::open(other_dir.path(), Counter::default()).unwrap().decrypt(&ticket), None);
        // Any changed byte (day, nonce, sealed state, tag) is refused; so are short tickets.
        for i in 0..ticket.len() {
            let mut damaged = ticket.clone();
            damaged[i] ^= 1;
            assert_eq!(tickets.decrypt(&damaged), None, "byte {i} changed");
        }
        assert_eq!(tickets.decrypt(&ticket[..TICKET_HEADER + 15]), None);
        assert_eq!(tickets.decrypt(&[]), None);
        assert_eq!(counter.get(), 1, "refused tickets resume nothing");
    }

    #[test]
    fn a_ticket_from_two_days_ago_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tickets = SessionTickets::open(dir.path(), Counter::default()).unwrap();
        let today = SessionTickets::today();
        for (day, opens) in [(today, true), (today - 1, true), (today - 2, false), (today + 1, false)] {
            // Seal under `day`'s key as `encrypt` would have on that day.
            let nonce = [7u8; ring::aead::NONCE_LEN];
            let mut sealed = b"state".to_vec();
            let aad = ring::aead::Aad::from(day.to_be_bytes());
            tickets.key(day).seal_in_place_append_tag(ring::aead::Nonce::assume_unique_for_key(nonce), aad, &mut sealed).unwrap();
            let ticket = [&day.to_be_bytes()[..], &nonce, &sealed].concat();
            assert_eq!(tickets.decrypt(&ticket).is_some(), opens, "day {day} (today {today})");
        }
    }
}
