//! Test certificates made at test time (a CA and server certificates it signs), scratch
//! files for them, and an in-memory handshake between a rustls client and `TlsConnection`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, SupportedProtocolVersion,
};
use rustls_pki_types::{CertificateDer, ServerName};

use super::TlsConnection;

/// A test CA.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
}

/// A server certificate (signed by the test CA) and its key.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "relay test CA");
        let ca_der = params.self_signed(&key).unwrap().der().clone();
        Pki {
            issuer: Issuer::new(params, key),
            ca_der,
        }
    }

    /// A new key and a certificate for `name`.
    pub fn server(&self, name: &str) -> ServerCert {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        }
    }

    fn client_config(
        &self,
        version: &'static SupportedProtocolVersion,
        alpn: Option<Vec<Vec<u8>>>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(super::crypto_provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.unwrap_or_default();
        Arc::new(config)
    }
}

/// A server configuration built from the PEM texts, as `load_server_config` does from files.
pub fn server_config(server: &ServerCert) -> Arc<ServerConfig> {
    let dir = ScratchDir::new("config");
    let (cert, key) = dir.write_pair(server);
    super::load_server_config(&cert, &key).unwrap()
}

/// A directory of its own under the system's temporary directory, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> ScratchDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "relay-tls-{}-{label}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Writes cert.pem and key.pem.
    pub fn write_pair(&self, server: &ServerCert) -> (PathBuf, PathBuf) {
        (
            self.write("cert.pem", &server.cert_pem),
            self.write("key.pem", &server.key_pem),
        )
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Both ends after a completed handshake.
pub struct Done {
    pub client: ClientConnection,
    pub server: TlsConnection,
    /// The end-entity certificate the client was shown.
    pub peer_leaf: CertificateDer<'static>,
}

/// Handshakes a rustls client trusting the test CA with a new `TlsConnection` on `config`.
pub fn handshake(
    pki: &Pki,
    config: Arc<ServerConfig>,
    name: &str,
    version: &'static SupportedProtocolVersion,
    alpn: Option<Vec<Vec<u8>>>,
) -> Done {
    let server = TlsConnection::new(config, 1 << 20).unwrap();
    handshake_with(pki, server, name, version, alpn)
}

pub fn handshake_with(
    pki: &Pki,
    mut server: TlsConnection,
    name: &str,
    version: &'static SupportedProtocolVersion,
    alpn: Option<Vec<Vec<u8>>>,
) -> Done {
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut client = ClientConnection::new(pki.client_config(version, alpn), name).unwrap();
    for _ in 0..10 {
        if !client.is_handshaking() && server.is_handshake_complete() && !server.wants_write() {
            break;
        }
        pump(&mut client, &mut server);
    }
    assert!(!client.is_handshaking() && server.is_handshake_complete());
    let peer_leaf = client.peer_certificates().unwrap()[0].clone();
    Done {
        client,
        server,
        peer_leaf,
    }
}

/// Moves every byte either way until both are idle; returns the plaintext the server got.
pub fn pump(client: &mut ClientConnection, server: &mut TlsConnection) -> Vec<u8> {
    let mut got = Vec::new();
    let mut plaintext = [0u8; 1500];
    loop {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut rest = &wire[..];
        let mut progressed = !wire.is_empty();
        loop {
            let received = server.receive(rest).unwrap();
            rest = &rest[received.consumed..];
            let mut read = server.read_plaintext(&mut plaintext);
            while read > 0 {
                got.extend_from_slice(&plaintext[..read]);
                read = server.read_plaintext(&mut plaintext);
            }
            if rest.is_empty() && received.plaintext == 0 {
                break;
            }
        }
        let mut back = Vec::new();
        server.write_ciphertext(&mut back).unwrap();
        if !back.is_empty() {
            progressed = true;
            let mut rest = &back[..];
            while !rest.is_empty() {
                client.read_tls(&mut rest).unwrap();
                client.process_new_packets().unwrap();
            }
        }
        if !progressed {
            return got;
        }
    }
}
