//! TLS to a broker or an HTTP endpoint a component names (MQTT `ssl://`, `bindings.http`
//! `https://`): the server checked against the component's CA, or the system's roots
//! without one (as Go's TLS does), and a client certificate when the component gives one.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// The PEMs a component gives, and the metadata keys they came under (CA, client
/// certificate, client key), for errors.
pub struct ClientPems<'a> {
    pub ca: Option<&'a str>,
    pub cert: Option<&'a str>,
    pub key: Option<&'a str>,
    pub keys: [&'static str; 3],
}

/// The TLS client, or the metadata key at fault and why.
pub fn client_config(
    pems: &ClientPems<'_>,
) -> Result<Arc<rustls::ClientConfig>, (&'static str, String)> {
    let [ca_key, cert_key, key_key] = pems.keys;
    let mut roots = rustls::RootCertStore::empty();
    match pems.ca {
        Some(pem) => {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| (ca_key, format!("not a PEM certificate: {e}")))?;
            if certs.is_empty() {
                return Err((ca_key, "holds no PEM certificate".into()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| (ca_key, format!("not a CA certificate: {e}")))?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err((
                    ca_key,
                    "none given, and this system has no root certificates to check the server with"
                        .into(),
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| (ca_key, e.to_string()))?
    .with_root_certificates(roots);
    let config = match (pems.cert, pems.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| (cert_key, format!("not a PEM certificate: {e}")))?;
            if chain.is_empty() {
                return Err((cert_key, "holds no PEM certificate".into()));
            }
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| (key_key, format!("not a PEM private key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| (key_key, format!("does not go with the certificate: {e}")))?
        }
        (Some(_), None) => return Err((key_key, "a client certificate needs its key".into())),
        (None, Some(_)) => return Err((cert_key, "a client key needs its certificate".into())),
    };
    Ok(Arc::new(config))
}
