//! TLS for `turns:` (RFC 8656 §3.1): the server configuration from PEM files, reloaded on
//! SIGHUP, and (in `connection`) one connection driven sans-IO on the mio loop.
//!
//! rustls with the ring provider, TLS 1.3 and 1.2. ALPN `stun.turn` (RFC 7443) is chosen
//! when a client offers it; a client that offers no ALPN is served all the same. (A client
//! that offers only other protocols is refused with `no_application_protocol`, RFC 7301 §3.2:
//! it did not come for TURN.)

pub(super) mod connection;
#[cfg(test)]
mod test_pki;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring;
use rustls::version::{TLS12, TLS13};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use connection::{Received, TlsConnection};

/// The ALPN protocol ID of TURN over TLS (RFC 7443).
pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";

/// Why a certificate and key could not be loaded. Each names the file at fault.
#[derive(Debug)]
pub enum TlsError {
    /// The file is missing, unreadable or not PEM.
    Read { path: PathBuf, error: pem::Error },
    /// The certificate file holds no certificate.
    NoCertificate { path: PathBuf },
    /// The key file holds no private key.
    NoKey { path: PathBuf },
    /// The private key is not the certificate's.
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// rustls refused the pair otherwise (an unsupported key type, say).
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            TlsError::NoCertificate { path } => {
                write!(f, "no PEM certificate in {}", path.display())
            }
            TlsError::NoKey { path } => write!(f, "no PEM private key in {}", path.display()),
            TlsError::KeyMismatch { cert, key } => write!(
                f,
                "the private key in {} does not match the certificate in {}",
                key.display(),
                cert.display()
            ),
            TlsError::Rejected { cert, key, error } => write!(
                f,
                "cannot use the certificate in {} with the key in {}: {error}",
                cert.display(),
                key.display()
            ),
        }
    }
}

impl std::error::Error for TlsError {}

/// Loads the certificate chain (end-entity certificate first) and its private key from PEM
/// files into a server configuration.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |error| TlsError::Read { path, error }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(read_error(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error(cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let private_key = match PrivateKeyDer::from_pem_file(key) {
        Ok(private_key) => private_key,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: key.to_path_buf(),
            });
        }
        Err(error) => return Err(read_error(key)(error)),
    };
    // with_single_cert checks that the key is the certificate's (CertifiedKey::keys_match).
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&TLS13, &TLS12])
        .and_then(|builder| {
            builder
                .with_no_client_auth()
                .with_single_cert(chain, private_key)
        })
        .map_err(|error| match error {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsError::KeyMismatch {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                }
            }
            error => TlsError::Rejected {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                error,
            },
        })?;
    config.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
    Ok(Arc::new(config))
}

/// ring's suites and key exchanges. rustls 0.23.48 deprecates this provider because it has no
/// post-quantum key exchange (X25519MLKEM768 needs aws-lc-rs), but aws-lc-rs would add a C
/// and assembly build and megabytes to the static binary; clients offering the hybrid group
/// fall back to X25519 (TURN carries WebRTC media, itself end-to-end encrypted by DTLS-SRTP).
#[allow(deprecated)]
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The configuration new connections get, and the files it was loaded from. A reload swaps
/// in a new configuration only if it loads; connections already open keep theirs.
pub struct ReloadableConfig {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<ServerConfig>,
}

impl ReloadableConfig {
    /// Loads the files once; an error here is a start-up error.
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Self, TlsError> {
        let (cert, key) = (cert.into(), key.into());
        let current = load_server_config(&cert, &key)?;
        Ok(ReloadableConfig { cert, key, current })
    }

    /// For the next connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current)
    }

    /// Reads the files again (on SIGHUP). On error the current configuration stays.
    pub fn reload(&mut self) -> Result<(), TlsError> {
        self.current = load_server_config(&self.cert, &self.key)?;
        Ok(())
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    pub fn key_path(&self) -> &Path {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::test_pki::{Pki, ScratchDir, handshake};
    use super::*;

    #[test]
    fn loads_a_chain_and_its_key() {
        let pki = Pki::new();
        let dir = ScratchDir::new("loads");
        let server = pki.server("relay.test");
        let (cert, key) = dir.write_pair(&server);
        let config = load_server_config(&cert, &key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"stun.turn".to_vec()]);
        let done = handshake(&pki, config, "relay.test", &TLS13, None);
        assert_eq!(done.peer_leaf, server.cert_der);
    }

    #[test]
    fn errors_name_the_file_at_fault() {
        let pki = Pki::new();
        let dir = ScratchDir::new("errors");
        let (cert, key) = dir.write_pair(&pki.server("relay.test"));
        let missing = dir.path("missing.pem");
        let empty = dir.write("empty.pem", "");
        let other = pki.server("other.test");
        let other_key = dir.write("other-key.pem", &other.key_pem);
        let garbled = dir.write(
            "garbled.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        );

        let error = load_server_config(&missing, &key).unwrap_err();
        assert!(matches!(&error, TlsError::Read { path, .. } if *path == missing));
        assert!(error.to_string().contains("missing.pem"), "{error}");

        let error = load_server_config(&cert, &missing).unwrap_err();
        assert!(matches!(&error, TlsError::Read { path, .. } if *path == missing));

        let error = load_server_config(&garbled, &key).unwrap_err();
        assert!(matches!(&error, TlsError::Read { path, .. } if *path == garbled));

        for no_cert in [&empty, &key] {
            let error = load_server_config(no_cert, &key).unwrap_err();
            assert!(matches!(&error, TlsError::NoCertificate { path } if path == no_cert));
            assert!(
                error.to_string().contains("no PEM certificate in"),
                "{error}"
            );
        }
        for no_key in [&empty, &cert] {
            let error = load_server_config(&cert, no_key).unwrap_err();
            assert!(matches!(&error, TlsError::NoKey { path } if path == no_key));
        }

        let error = load_server_config(&cert, &other_key).unwrap_err();
        assert!(
            matches!(&error, TlsError::KeyMismatch { cert: c, key: k } if *c == cert && *k == other_key),
            "{error:?}"
        );
        assert!(error.to_string().contains("does not match"), "{error}");
    }

    #[test]
    fn a_bad_reload_keeps_the_old_configuration() {
        let pki = Pki::new();
        let dir = ScratchDir::new("bad-reload");
        let server = pki.server("relay.test");
        let (cert, key) = dir.write_pair(&server);
        let mut holder = ReloadableConfig::load(&cert, &key).unwrap();
        let before = holder.current();

        // A half-written renewal: the new certificate, the old key.
        dir.write("cert.pem", &pki.server("relay.test").cert_pem);
        assert!(matches!(holder.reload(), Err(TlsError::KeyMismatch { .. })));
        assert!(Arc::ptr_eq(&before, &holder.current()));
        dir.write("cert.pem", "");
        assert!(matches!(
            holder.reload(),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(Arc::ptr_eq(&before, &holder.current()));

        let done = handshake(&pki, holder.current(), "relay.test", &TLS13, None);
        assert_eq!(done.peer_leaf, server.cert_der);
    }

    #[test]
    fn a_reload_serves_the_new_certificate_to_the_next_connection() {
        let pki = Pki::new();
        let dir = ScratchDir::new("reload");
        let first = pki.server("relay.test");
        let (cert, key) = dir.write_pair(&first);
        let mut holder = ReloadableConfig::load(&cert, &key).unwrap();
        let old = holder.current();

        let second = pki.server("relay.test");
        dir.write_pair(&second);
        holder.reload().unwrap();

        let done = handshake(&pki, holder.current(), "relay.test", &TLS12, None);
        assert_eq!(done.peer_leaf, second.cert_der);
        // A connection opened before the reload keeps its configuration.
        let done = handshake(&pki, old, "relay.test", &TLS13, None);
        assert_eq!(done.peer_leaf, first.cert_der);
    }
}
