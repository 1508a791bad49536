//! TLS for [`NomadDouble::start_tls`](crate::NomadDouble::start_tls): the CA and the server and
//! client certificates minted at start (rcgen, nothing on disk), and the listener that runs each
//! rustls handshake before axum sees the connection, recording it as a [`Handshake`].
//! Must not touch the HTTP API: it knows nothing of requests, jobs or the cluster state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::{Handshake, Shared, TlsMaterial, TlsMode};

/// The crypto provider the double's TLS uses: ring, as tend's client does. Passed explicitly,
/// so the test process's default provider is left alone.
fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA minted at start, with a server and a client certificate it signed (ECDSA P-256, as
/// `nomad tls ca create` / `nomad tls cert create` make).
pub(crate) struct Pki {
    ca: rcgen::Certificate,
    server: rcgen::Certificate,
    server_key: rcgen::KeyPair,
    client: rcgen::Certificate,
    client_key: rcgen::KeyPair,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Unique, as `nomad tls ca create` makes it: two CAs never share a name, so a
        // certificate of another CA is an unknown issuer, not a bad signature.
        let serial: u64 = rand::random();
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!("Nomad Agent CA {serial} (tend test double)"),
        );
        ca_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca = ca_params.self_signed(&ca_key).expect("ca certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |sans: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(sans).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
            (cert, key)
        };
        let (server, server_key) = leaf(
            vec![
                "server.global.nomad".into(),
                "localhost".into(),
                "127.0.0.1".into(),
            ],
            "server.global.nomad",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(
            vec!["cli.global.nomad".into()],
            "cli.global.nomad",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki {
            ca,
            server,
            server_key,
            client,
            client_key,
        }
    }

    pub(crate) fn material(&self) -> TlsMaterial {
        TlsMaterial {
            ca_cert: self.ca.pem(),
            client_cert: self.client.pem(),
            client_key: self.client_key.serialize_pem(),
        }
    }

    pub(crate) fn server_config(&self, mode: TlsMode) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let builder = rustls::ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .expect("nomad double: TLS versions");
        let builder = match mode {
            TlsMode::ServerOnly => builder.with_no_client_auth(),
            TlsMode::RequireClientCert => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(self.ca.der().clone())
                    .expect("nomad double: CA root");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    ring(),
                )
                .build()
                .expect("nomad double: client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.serialize_der()));
        let mut config = builder
            .with_single_cert(vec![self.server.der().clone()], key)
            .expect("nomad double: server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

type TlsConn = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// An axum listener that yields only connections whose TLS handshake completed. Handshakes run
/// in their own tasks (a client that never finishes one holds up no other), each recorded in
/// [`Shared::handshakes`].
pub(crate) struct TlsListener {
    incoming: tokio::sync::mpsc::UnboundedReceiver<(TlsConn, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub(crate) fn new(
        tcp: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        shared: Arc<Shared>,
    ) -> TlsListener {
        let local = tcp.local_addr().expect("nomad double: local addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, incoming) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(_) => {
                        // Out of file descriptors and the like: what axum's own loop does.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx, shared) = (acceptor.clone(), tx.clone(), shared.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(stream).into_fallible(),
                    )
                    .await;
                    let (record, conn, refused) = match handshake {
                        Ok(Ok(conn)) => {
                            let client_cert = conn
                                .get_ref()
                                .1
                                .peer_certificates()
                                .is_some_and(|c| !c.is_empty());
                            let record = Handshake {
                                ok: true,
                                client_cert,
                                error: None,
                            };
                            (record, Some(conn), None)
                        }
                        Ok(Err((e, io))) => (Handshake::failed(e.to_string()), None, Some(io)),
                        Err(_) => (Handshake::failed("handshake timed out".into()), None, None),
                    };
                    shared
                        .handshakes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(record);
                    if let Some(conn) = conn {
                        let _ = tx.send((conn, peer));
                    }
                    if let Some(io) = refused {
                        close_gracefully(io).await;
                    }
                });
            }
        });
        TlsListener { incoming, local }
    }
}

/// Close a refused connection so that the client reads the alert already sent: FIN, then read
/// what the client still sends until it closes. Go's server (so Nomad) just closes; under TLS
/// 1.3 a client that has already sent its request may then get a reset (the unread request)
/// instead of the alert, at random. The double leaves that race out, so tests are repeatable.
async fn close_gracefully(mut io: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = io.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}

impl Handshake {
    fn failed(error: String) -> Handshake {
        Handshake {
            ok: false,
            client_cert: false,
            error: Some(error),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsConn, SocketAddr) {
        match self.incoming.recv().await {
            Some(conn) => conn,
            // The accept task is gone (the runtime is shutting down): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
