//! TLS for the direct `tokio-postgres` connections, with libpq's meaning of `sslmode`:
//! `disable` never encrypts; `prefer` (the default) and `require` encrypt without checking who
//! answers, as libpq does without a root certificate; `verify-ca` checks the server's
//! certificate against the roots, `verify-full` also that it names the host. The roots are the
//! PEM file `sslrootcert` names, or the system's; given a root file, `prefer` and `require`
//! check the chain too, as libpq's do. tokio-postgres knows neither the `verify-*` modes nor
//! `sslrootcert`, so [`split`] takes them out of the URL and hands it on with `sslmode=require`.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::Socket;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connector every direct connection is made with.
pub type Connector = MakeRustlsConnect;

/// A connection made through [`Connector`]: driving it yields the session's messages.
pub type Connection = tokio_postgres::Connection<Socket, <Connector as MakeTlsConnect<Socket>>::Stream>;

/// A TLS setting of the database URL that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PostgresTlsError {
    #[error("sslrootcert {path}: {reason}")]
    RootCertificate { path: String, reason: String },
    #[error("sslmode={0} checks the server's certificate, but the system has no root certificate; set sslrootcert")]
    NoSystemRoots(&'static str),
    #[error("TLS to Postgres cannot be set up: {0}")]
    Setup(String),
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Encryption only (`prefer`, `require`).
    Nothing,
    /// Signed by a root (`verify-ca`).
    Chain,
    /// Signed by a root and issued for the host connected to (`verify-full`).
    ChainAndName,
}

/// `url` as tokio-postgres parses it, and the connector for the TLS it asks for.
pub fn split(url: &str) -> Result<(String, Connector), PostgresTlsError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), connector(Check::Nothing, None)?));
    };
    let (mut check, mut root_file, mut kept) = (Check::Nothing, None, Vec::new());
    for pair in query.split('&') {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("sslrootcert", path) => root_file = Some(percent_encoding::percent_decode_str(path).decode_utf8_lossy()),
            ("sslmode", mode @ ("verify-ca" | "verify-full")) => {
                check = if mode == "verify-ca" { Check::Chain } else { Check::ChainAndName };
                kept.push("sslmode=require".to_owned());
            }
            _ => kept.push(pair.to_owned()),
        }
    }
    let disabled = kept.iter().any(|pair| pair == "sslmode=disable");
    if disabled {
        // libpq ignores the roots of a session it never encrypts.
        root_file = None;
    } else if root_file.is_some() && check == Check::Nothing {
        check = Check::Chain;
    }
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((url, connector(check, root_file.as_deref())?))
}

/// The connector for `check` against `root_file`'s roots. Built anew for every connection, as
/// libpq reads `sslrootcert` anew: a rotated root file takes effect at the next reconnect.
fn connector(check: Check, root_file: Option<&str>) -> Result<Connector, PostgresTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(Lenient { chain: None, algorithms }),
        Check::Chain | Check::ChainAndName => {
            let mode = if check == Check::Chain { "verify-ca" } else { "verify-full" };
            let roots = Arc::new(roots(root_file, mode)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|error| PostgresTlsError::Setup(error.to_string()))?;
            if check == Check::Chain { Arc::new(Lenient { chain: Some(webpki), algorithms }) } else { webpki }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| PostgresTlsError::Setup(error.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The certificates of `root_file`, or the system's roots.
fn roots(root_file: Option<&str>, mode: &'static str) -> Result<RootCertStore, PostgresTlsError> {
    let mut roots = RootCertStore::empty();
    match root_file {
        Some(path) => {
            let invalid = |reason: String| PostgresTlsError::RootCertificate { path: path.to_owned(), reason };
            for certificate in CertificateDer::pem_file_iter(path).map_err(|error| invalid(error.to_string()))? {
                roots
                    .add(certificate.map_err(|error| invalid(error.to_string()))?)
                    .map_err(|e| invalid(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(invalid("holds no certificate".into()));
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(PostgresTlsError::NoSystemRoots(mode));
            }
        }
    }
    Ok(roots)
}

/// What `require` and `verify-ca` check, less than `verify-full`: the chain against the roots
/// when `chain` is set, never the host name; and always that the server holds the certificate's
/// key, so the session is encrypted to whoever presented it.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_tls_settings_is_handed_on_unchanged() {
        let url = "postgres://app@db:5432/openrisk?application_name=x&sslmode=disable";
        assert_eq!(split(url).unwrap().0, url);
        assert_eq!(split("postgres://app@db/openrisk").unwrap().0, "postgres://app@db/openrisk");
    }

    #[test]
    fn the_verify_modes_reach_tokio_postgres_as_require() {
        let (url, _) = split("postgres://app@db/openrisk?sslmode=verify-ca&connect_timeout=3").unwrap();
        assert_eq!(url, "postgres://app@db/openrisk?sslmode=require&connect_timeout=3");
        let (url, _) = split("postgres://app@db/openrisk?connect_timeout=3&sslmode=verify-full").unwrap();
        assert_eq!(url, "postgres://app@db/openrisk?connect_timeout=3&sslmode=require");
    }

    #[test]
    fn a_session_never_encrypted_does_not_read_its_root_file() {
        assert!(split("postgres://db/openrisk?sslmode=disable&sslrootcert=%2Fno%2Fsuch.pem").is_ok());
    }

    #[test]
    fn a_root_file_that_cannot_be_read_is_named_in_the_error() {
        let error = split("postgres://db/openrisk?sslmode=verify-full&sslrootcert=%2Fno%2Fsuch.pem").err().unwrap();
        assert!(error.to_string().starts_with("sslrootcert /no/such.pem: "), "{error}");
    }
}
