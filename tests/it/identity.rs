//! Terminal identity: credentials issued, listed and revoked with the `faccia` binary, revoked
//! terminals disconnected, and the server verified by the terminal (development CA or a
//! production certificate), never "accept anything".

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use faccia::config::Config;
use faccia::registry::Credential;
use faccia::server::Server;
use faccia::terminal::client::{ClientError, ServerTarget, Session, batch_frame};
use faccia::wire::{ErrorCode, Status};

use crate::common::*;

fn faccia(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faccia")).arg("terminals").arg("--data-dir").arg(dir).args(args).output().expect("faccia runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn terminals_are_added_listed_and_revoked_with_the_command_line() {
    // Proves: `faccia terminals add|list|revoke` issue, show and revoke credentials; unknown
    // municipalities and terminals are refused by name; the server honours the result.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("creds.csv");
    let added = faccia(
        dir.path(),
        &["add", "--municipality", "001003", "--count", "2", "--label", "sala consiliare", "--out", out.to_str().unwrap()],
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert_eq!(text(&added.stdout).lines().count(), 3, "header and two credentials: {}", text(&added.stdout));
    let credentials = Credential::read_csv(&out).unwrap();
    assert_eq!(credentials.iter().map(|c| (c.id, c.municipality)).collect::<Vec<_>>(), [(1, ALA_DI_STURA), (2, ALA_DI_STURA)]);
    assert!(
        !std::fs::read_to_string(dir.path().join("terminals.json")).unwrap().contains(&credentials[0].secret.to_hex()),
        "only digests are kept"
    );

    let revoked = faccia(dir.path(), &["revoke", "1"]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let list = text(&faccia(dir.path(), &["list"]).stdout);
    let line = |id: &str| list.lines().find(|l| l.split_whitespace().next() == Some(id)).unwrap_or_default().to_string();
    assert!(line("1").contains("Ala di Stura") && line("1").contains("revoked"), "{list}");
    assert!(line("2").contains("active") && line("2").contains("sala consiliare"), "{list}");

    let unknown = faccia(dir.path(), &["add", "--municipality", "999999"]);
    assert!(!unknown.status.success());
    assert!(text(&unknown.stderr).contains("municipality 999999 is not in the registry"), "{}", text(&unknown.stderr));
    let malformed = faccia(dir.path(), &["add", "--municipality", "Torino"]);
    assert!(!malformed.status.success() && text(&malformed.stderr).contains("--municipality"), "{}", text(&malformed.stderr));
    let missing = faccia(dir.path(), &["revoke", "42"]);
    assert!(!missing.status.success() && text(&missing.stderr).contains("terminal 42 is not registered"), "{}", text(&missing.stderr));

    let server = start(dir.path()).await;
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    match Session::connect(&endpoint, &target(&server), &credentials[0]).await {
        Err(ClientError::Refused(rejection)) => assert_eq!(rejection.code, ErrorCode::TerminalRevoked),
        other => panic!("a revoked terminal must be refused, got {:?}", other.err()),
    }
    let session = session(&server, &credentials[1]).await;
    assert_eq!(session.municipality, ALA_DI_STURA, "the municipality comes from the registration");
    let reply = session.send_frame(&batch_frame(1, ALA_DI_STURA, &human_votes(faccia::clock::now_ms() - 60_000, 2))).await.unwrap();
    assert_eq!(reply.status, Status::Stored as u8);
    server.stop().await;
}

#[tokio::test]
async fn revoking_a_connected_terminal_closes_its_connection() {
    // Proves: once the server notices a revocation (directory reload), the terminal's open
    // connection is closed with `terminal_revoked`, after what it sent before was answered.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    let session = session(&server, &credential).await;
    let reply = session.send_frame(&batch_frame(1, AGLIE, &human_votes(faccia::clock::now_ms() - 60_000, 3))).await.unwrap();
    assert_eq!(reply.status, Status::Stored as u8);
    faccia::registry::revoke_terminal(dir.path(), credential.id).unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(15), session.connection.closed()).await.expect("closed within 15 s");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code.into_inner(), ErrorCode::TerminalRevoked as u64);
            assert!(String::from_utf8_lossy(&close.reason).contains("has been revoked"), "{close:?}");
        }
        other => panic!("expected terminal_revoked, got {other}"),
    }
    assert_eq!(server.engine.metrics.connections_revoked.get(), 1);
    server.stop().await;
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, 3);
}

#[tokio::test]
async fn a_terminal_trusting_another_ca_or_name_does_not_connect() {
    // Proves: the terminal verifies the server's certificate: a CA that did not sign it, or a
    // name it does not carry, fails the handshake for good (no retry, no credential sent).
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let (_, other_ca) = faccia::transport::tls::dev_identity(elsewhere.path()).unwrap();
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    for target in [
        ServerTarget::new(server.ingest_addr, "localhost", &other_ca).unwrap(),
        ServerTarget::new(server.ingest_addr, "faccia.example.org", server.ca_path.as_ref().unwrap()).unwrap(),
    ] {
        let error = Session::connect(&endpoint, &target, &credential).await.err().expect("verification fails");
        assert!(error.is_final(), "a certificate that does not verify is not retried: {error}");
    }
    assert_eq!(server.engine.metrics.connections_accepted.get(), 0, "no hello reached the server");
    server.stop().await;
}

/// A CA and a server certificate for `name` signed by it, as an operator would get them.
fn production_identity(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test]
async fn a_configured_production_certificate_replaces_the_development_one() {
    // Proves: with tls_cert and tls_key configured the server presents that certificate, makes
    // no development CA, and terminals trusting the production CA connect and store votes.
    let dir = tempfile::tempdir().unwrap();
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = production_identity(pki.path(), "faccia.example.org");
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let config = Config { tls_cert: Some(cert), tls_key: Some(key), ..loopback_config() };
    let server = Server::start(dir.path().to_path_buf(), config).await.unwrap();
    let development = ["ca.pem", "server.pem", "server.key"].map(|f| dir.path().join("tls").join(f));
    assert!(server.ca_path.is_none() && !development.iter().any(|p| p.exists()), "no development identity");
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    let target = ServerTarget::new(server.ingest_addr, "faccia.example.org", &ca).unwrap();
    let session = Session::connect(&endpoint, &target, &credential).await.unwrap();
    let reply = session.send_frame(&batch_frame(1, AGLIE, &human_votes(faccia::clock::now_ms() - 60_000, 2))).await.unwrap();
    assert_eq!(reply.status, Status::Stored as u8);
    server.stop().await;
}
